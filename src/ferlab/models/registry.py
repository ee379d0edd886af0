"""The model registry, timm-style: `@register_model` on a factory, `create_model(name, **kwargs)`.

Every registered model takes (N, 1, 48, 48) float input with pixels scaled to [0, 1] and
returns (N, num_classes) logits; any further normalisation happens inside the model.
"""

from typing import Callable

import torch.nn as nn

from ferlab.errors import FerlabError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a factory under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__} is already registered")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def model_description(name: str) -> str:
    """First line of the model factory's docstring."""
    doc = _MODELS[name].__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def create_model(name: str, **kwargs) -> nn.Module:
    if name not in _MODELS:
        raise FerlabError(f"unknown model {name!r} (known: {', '.join(list_models())})")
    try:
        return _MODELS[name](**kwargs)
    except TypeError as e:
        raise FerlabError(f"model {name}: {e}") from None


def count_parameters(model: nn.Module, keras_style: bool = False) -> int:
    """Learnable parameters; with keras_style, also BatchNorm moving mean/variance as Keras counts them."""
    n = sum(p.numel() for p in model.parameters())
    if keras_style:
        n += sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    return n


def last_linear(model: nn.Module) -> tuple[str, nn.Linear] | None:
    """The name and module of the model's last nn.Linear: its classifier in every registry model
    (its rows are the classes); None when it has none."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None
