"""Saving and loading weights and training state, safely and atomically.

Weights are safetensors files whose metadata names the architecture (`model`, `model_kwargs`,
`classes`), so `load_model` rebuilds a model from the file alone. Training state (optimizer,
scheduler, RNG, callbacks) goes to a torch file read back with `weights_only=True`. Every write
goes to a temporary file in the same directory and is renamed into place, so a killed process
leaves either the old file or the new one, never half of one.

`load_model` also takes the .onnx files `ferlab export` writes (fp32 or int8), run by onnxruntime
(ferlab.inference.onnxrt.OnnxModel): a bundled `default-int8` is the default model's int8 export.
"""

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ferlab.atomic import atomic_write
from ferlab.bundled import WEIGHTS_DIR, check_card_classes, read_card, resolve_weights  # noqa: F401  (WEIGHTS_DIR re-exported)
from ferlab.errors import FerlabError
from ferlab.labels import check_same_classes  # noqa: F401  (re-exported)
from ferlab.models import create_model
from ferlab.inference.onnxrt import load_onnx


def save_weights(path, model: torch.nn.Module, meta: dict, float_dtype: torch.dtype | None = None) -> None:
    """Write the model's state dict as safetensors with `meta` (JSON-able) in the header.

    float_dtype (e.g. torch.float16) stores floating tensors in that type: half the bytes for a
    bundled model; load_model copies them back into the model's float32 parameters.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if float_dtype is not None:
        state = {k: v.to(float_dtype) if v.is_floating_point() else v for k, v in state.items()}
    header = {"ferlab": json.dumps(meta)}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=header))


def load_weights(path) -> tuple[dict, dict]:
    path = Path(path)
    if not path.is_file():
        raise FerlabError(f"{path}: no such weights file")
    try:
        state = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("ferlab", "{}"))
    except (SafetensorError, OSError, ValueError) as e:
        raise FerlabError(f"{path}: not a readable safetensors weights file ({e})") from None
    if not isinstance(meta, dict):
        raise FerlabError(f"{path}: its ferlab metadata is a JSON {type(meta).__name__}, not an object")
    return state, meta


def load_model(spec: str, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a model from its weights file; returns (model in eval mode, metadata/model card)."""
    path = resolve_weights(spec)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise FerlabError(f"{path}: no such ONNX file")
        model, meta = load_onnx(path)
        return model.eval(), {**meta, "weights_path": str(path)}
    state, meta = load_weights(path)
    if "model" not in meta:
        raise FerlabError(f"{path}: weights file has no ferlab metadata naming its model")
    kwargs = meta.get("model_kwargs", {})
    try:
        if not isinstance(kwargs, dict):
            raise TypeError(f"model_kwargs is a {type(kwargs).__name__}, not an object")
        model = create_model(meta["model"], **kwargs)
    except (TypeError, ValueError, RuntimeError) as e:   # metadata no model can be built from
        raise FerlabError(f"{path}: its metadata does not describe a {meta['model']} model ({str(e).strip()[:160]})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise FerlabError(f"{path}: weights do not fit model {meta['model']} ({str(e).splitlines()[0]})") from None
    card = read_card(path)   # a model card beside the weights: its classes must be theirs; the weights' metadata wins
    check_card_classes(card, path, meta.get("classes", card.get("classes")))
    meta = {**card, **meta}
    meta["weights_path"] = str(path)
    return model.to(device).eval(), meta


def save_state(path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path) -> dict:
    """Read a training-state file written by save_state; never unpickles arbitrary objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or foreign files
        if Path(path).is_file() and Path(path).stat().st_size == 0:
            reason = "the file is empty"
        elif "weights only load failed" in str(e).lower():   # not torch's advice to unpickle it anyway
            reason = "it holds objects other than tensors and plain values"
        else:
            reason = next(iter(str(e).strip().splitlines()), "") or type(e).__name__
        raise FerlabError(f"{path}: not a readable ferlab training checkpoint ({reason[:200]})") from None
