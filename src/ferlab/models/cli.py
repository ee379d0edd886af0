"""`ferlab models`: list the model zoo with parameter counts; `--name NAME` for a Keras-style summary.

The table gives, per registered model, its learnable parameters, the count Keras' summary would
print (learnable + BatchNorm moving mean/variance, the number the papers report) and the first
line of its factory's docstring. `--name` prints every layer's output shape and parameters for
one model, like Keras' `model.summary()`, so a port can be checked against a paper's table.
"""

import argparse

import torch
import torch.nn as nn

from ferlab.models import count_parameters, create_model, list_models
from ferlab.models.registry import model_description


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", metavar="NAME", help="print the layer-by-layer summary of one model")


def run(args: argparse.Namespace) -> int:
    if args.name:
        print(summary(create_model(args.name)))  # create_model raises FerlabError for unknown names
    else:
        print(model_table())
    return 0


def model_table() -> str:
    rows = [("model", "params", "keras params", "description")]
    for name in list_models():
        model = create_model(name)
        rows.append((name, f"{count_parameters(model):,}", f"{count_parameters(model, keras_style=True):,}", model_description(name)))
    return _format(rows, right=(1, 2))


def summary(model: nn.Module, input_size: tuple = (48, 48)) -> str:
    """Leaf modules in call order (nn.Identity placeholders skipped) with output shape and parameters."""
    records, hooks = [], []
    for path, module in model.named_modules():
        if path and not any(module.children()) and not isinstance(module, nn.Identity):
            hooks.append(module.register_forward_hook(
                lambda m, inp, out, path=path: records.append((path, m, tuple(out.shape[1:])))))
    in_chans = getattr(getattr(model, "config", None), "in_chans", 1)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_chans, *input_size))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()

    rows = [("layer (type)", "output shape", "params", "keras params")]
    for path, m, shape in records:
        rows.append((f"{path} ({type(m).__name__})", str(shape), f"{count_parameters(m):,}", f"{count_parameters(m, keras_style=True):,}"))
    total, learnable = count_parameters(model, keras_style=True), count_parameters(model)
    lines = [_format(rows, right=(2, 3)), "",
             f"Total params (Keras-style): {total:,}",
             f"Trainable params: {learnable:,}",
             f"Non-trainable params (BN moving mean/variance): {total - learnable:,}"]
    return "\n".join(lines)


def _format(rows: list[tuple], right: tuple = ()) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
