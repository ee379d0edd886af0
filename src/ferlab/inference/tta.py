"""Test-time augmentation (TTA): average a model's probabilities over several views of each face.

    "none"     the face as it is
    "flip"     the face and its mirror image (2 views)
    "tencrop"  the 4 corner and the centre 44x44 crops, resized back to 48x48, and their
               mirrors (10 views)

Why one module: `ferlab evaluate` (accuracy of a run) and `Recognizer` (photos, video, the HTTP
service) must compute the same probabilities for the same faces, or a model's measured accuracy
with TTA would not be the accuracy users get. Both call `tta_probs`; models run by onnxruntime in
the Recognizer use its NumPy twin, ferlab.inference.numpyloop (same views, checked against these).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ferlab.inference.numpyloop import TTA_MODES, check_tta  # noqa: F401  (the modes, defined where torch is not needed)


def tencrop(images: torch.Tensor, crop: int = 44) -> list[torch.Tensor]:
    """Ten views (N, 1, 48, 48) of float images: 4 corners + centre of size crop, and mirrors, resized to 48."""
    size = images.shape[-1]
    o = size - crop
    c = o // 2
    views = []
    for y, x in ((0, 0), (0, o), (o, 0), (o, o), (c, c)):
        v = F.interpolate(images[..., y:y + crop, x:x + crop], size=(size, size), mode="bilinear", align_corners=False)
        views += [v, v.flip(3)]
    return views


def tta_views(images: torch.Tensor, tta: str) -> list[torch.Tensor]:
    """The views of a float batch (N, 1, 48, 48) that `tta` averages over."""
    if check_tta(tta) == "none":
        return [images]
    if tta == "flip":
        return [images, images.flip(3)]
    return tencrop(images)


def tta_probs(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, tta: str) -> torch.Tensor:
    """Mean softmax probabilities (N, C), float32, of forward (a batch -> logits) over the views.

    One forward call per view, so a batch of N faces never becomes a 10N-face batch in memory.
    """
    probs = [forward(v).float().softmax(1) for v in tta_views(images, tta)]
    return probs[0] if len(probs) == 1 else torch.stack(probs).mean(0)
