"""The one loop that runs a model over many faces: batches, test-time augmentation, softmax.

Training's per-epoch evaluation, `ferlab evaluate`, the `Recognizer` and export's parity check all
call `batched_probs` (or `batched_logits`, for a loss), so a face gets the same probabilities
whichever of them scores it. A `forward` is any function from a float batch (N, 1, 48, 48) to
logits: a PyTorch model wrapped by `model_forward`, an `OnnxModel`, or a caller's own.

Faces are uint8 (N, 48, 48) pixels or float32 (N, 48, 48) / (N, 1, 48, 48) already in [0, 1]; a
uint8 batch is scaled on the device (`ferlab.device.to_input`), as in training.
"""

from typing import Callable

import numpy as np
import torch

from ferlab.device import autocast_dtype, to_input
from ferlab.inference.tta import check_tta, tta_probs

Forward = Callable[[torch.Tensor], torch.Tensor]


def model_forward(model, device, amp: str = "fp32") -> Forward:
    """A model in eval mode as a forward function, under bf16 autocast when `amp` asks for it
    (see ferlab.device.autocast_dtype)."""
    device = torch.device(device)
    dtype = autocast_dtype(amp, device)
    model.eval()

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return model(x)
    return forward


def _batch(faces, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = faces if isinstance(faces, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(faces))
    if x.dtype == torch.uint8:
        return to_input(x, device, channels_last)
    x = x.float().to(device)
    x = x.unsqueeze(1) if x.ndim == 3 else x
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.inference_mode()
def _batched(fn, faces, batch_size: int, device, channels_last: bool) -> list[torch.Tensor]:
    device = torch.device(device)
    return [fn(_batch(faces[lo:lo + batch_size], device, channels_last)).cpu()
            for lo in range(0, len(faces), batch_size)]


def batched_logits(forward: Forward, faces, *, batch_size: int = 256, device="cpu",
                   channels_last: bool = False) -> torch.Tensor:
    """Logits (N, C), float32 on the CPU. channels_last: hand each batch to forward in NHWC layout."""
    out = _batched(lambda x: forward(x).float(), faces, batch_size, device, channels_last)
    return torch.cat(out) if out else torch.empty(0, 0)


def batched_probs(forward: Forward, faces, tta: str = "none", batch_size: int = 256, *, device="cpu",
                  channels_last: bool = False) -> np.ndarray:
    """Class probabilities (N, C), float32: the mean softmax over the `tta` views of each face
    (ferlab.inference.tta), computed batch_size faces at a time."""
    check_tta(tta)
    out = _batched(lambda x: tta_probs(forward, x, tta), faces, batch_size, device, channels_last)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)
