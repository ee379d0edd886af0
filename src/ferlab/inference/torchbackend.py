"""The Recognizer's PyTorch half: loading PyTorch weights, exporting them to ONNX in memory, and
running them (fp32 or bf16 autocast, channels-last) through `ferlab.inference.torchloop.batched_probs`.

`ferlab.inference.recognizer` imports this module only when a member needs torch (a .safetensors file or run
directory that is not bundled with an fp32 ONNX export, an nn.Module, --backend torch, a CUDA
device): `pip install ferlab` has no torch, and `ferlab predict` with the bundled default must not
spend ~2 s importing it. Without torch the import fails and the Recognizer names the extra to install.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from ferlab.checkpoint import load_model
from ferlab.device import native_bf16, resolve_device
from ferlab.posttrain.export import to_onnx
from ferlab.inference.torchloop import batched_probs
from ferlab.inference.onnxrt import OnnxModel

__all__ = ["load_model", "native_bf16", "resolve_device", "is_module", "prepare", "exported", "probs", "set_threads", "channels_last"]


def is_module(obj) -> bool:
    return isinstance(obj, torch.nn.Module)


def prepare(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    return module.to(device).eval()


def exported(module) -> OnnxModel:
    """A PyTorch model's ONNX export, in memory, run by onnxruntime (FerlabError if it does not export)."""
    return OnnxModel(to_onnx(module.cpu().eval()))


def set_threads(n: int) -> None:
    torch.set_num_threads(n)


def channels_last(module) -> None:
    """NHWC layout, in place (the module is its own runner)."""
    module.to(memory_format=torch.channels_last)


def probs(runner, x: np.ndarray, *, tta: str, batch_size: int, device: torch.device, precision: str,
          channels_last: bool, check) -> np.ndarray:
    """(N, 48, 48) float32 faces -> (N, C) probabilities of one member run by PyTorch (a module, or an
    OnnxModel called with tensors); check(num_scores) raises when the output does not fit the classes."""
    return batched_probs(partial(_logits, runner, device, precision, channels_last, check), x, tta, batch_size,
                         device=device)


def _logits(runner, device, precision, channels_last, check, x: torch.Tensor) -> torch.Tensor:
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = runner(x)
    check(logits.shape[1])
    return logits

