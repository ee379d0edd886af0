"""The NumPy twin of `ferlab.inference.torchloop` for models run by onnxruntime: batches, test-time
augmentation, softmax, without torch.

`pip install ferlab` has no PyTorch, so the Recognizer runs ONNX members through this loop (with
or without torch installed: the same faces get the same probabilities either way). The views are
those of `ferlab.inference.tta` (flip: the mirror image; tencrop: the 4 corner and the centre 44x44 crops
resized back to 48x48 bilinearly, half-pixel centres as torch's `interpolate(align_corners=False)`,
and their mirrors); tests/test_lean.py checks the two loops agree to ~1e-6.
"""

from __future__ import annotations

from typing import Callable, Iterable

import cv2
import numpy as np

from ferlab.errors import FerlabError
from ferlab.spec import to_model_input

TTA_MODES = ("none", "flip", "tencrop")
Forward = Callable[[np.ndarray], np.ndarray]  # float32 (N, 1, 48, 48) -> logits (N, C)


def check_tta(tta: str, known: tuple = TTA_MODES) -> str:
    if tta not in known:
        raise FerlabError(f"unknown tta {tta!r} (known: {', '.join(known)})")
    return tta


def tencrop(images: np.ndarray, crop: int = 44) -> list[np.ndarray]:
    """Ten views (N, 1, 48, 48) of float32 images, as ferlab.inference.tta.tencrop makes them."""
    size = images.shape[-1]
    o = size - crop
    c = o // 2
    views = []
    for y, x in ((0, 0), (0, o), (o, 0), (o, o), (c, c)):
        part = images[:, 0, y:y + crop, x:x + crop]
        v = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_LINEAR) for f in part])[:, None]
        views += [v, v[..., ::-1]]
    return [np.ascontiguousarray(v, np.float32) for v in views]


def tta_views(images: np.ndarray, tta: str) -> list[np.ndarray]:
    """The views of a float32 batch (N, 1, 48, 48) that `tta` averages over."""
    if check_tta(tta) == "none":
        return [images]
    if tta == "flip":
        return [images, np.ascontiguousarray(images[..., ::-1])]
    return tencrop(images)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float32) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def batched_probs(forward: Forward, faces: np.ndarray, tta: str = "none", batch_size: int = 256) -> np.ndarray:
    """Class probabilities (N, C), float32: the mean softmax over the `tta` views of each face.
    faces: float32 (N, 48, 48) or (N, 1, 48, 48) in [0, 1], or uint8 (N, 48, 48) pixels."""
    check_tta(tta)
    faces = np.asarray(faces)
    if faces.dtype == np.uint8:
        faces = to_model_input(faces)
    faces = faces.astype(np.float32, copy=False)
    if faces.ndim == 3:
        faces = faces[:, None]
    out = []
    for lo in range(0, len(faces), batch_size):
        batch = np.ascontiguousarray(faces[lo:lo + batch_size])
        probs = [softmax(np.asarray(forward(v))) for v in tta_views(batch, tta)]
        out.append(probs[0] if len(probs) == 1 else np.mean(probs, axis=0, dtype=np.float32))
    return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros((0, 0), np.float32)


def ensemble_mean(members: Iterable[np.ndarray]) -> np.ndarray:
    """An ensemble's probabilities, float32: its members' (N, C) probabilities summed in order and
    divided by their number (Recognizer and `ferlab evaluate` average the same way)."""
    total, n = None, 0
    for probs in members:
        total, n = (probs if total is None else total + probs), n + 1
    return (total / n).astype(np.float32, copy=False)
