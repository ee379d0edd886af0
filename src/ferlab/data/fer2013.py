"""FER2013 in the Kaggle CSV layout (`emotion,pixels,Usage`), plain or gzip, parsed without Python loops."""

import gzip
from pathlib import Path

import numpy as np

from ferlab.data import FaceDataset
from ferlab.errors import FerlabError


def _parse_pixels(text: bytes, n_rows: int, path) -> np.ndarray:
    """Parse space-separated uint8 values of n_rows rows (one row per line) into (n_rows, 2304) uint8."""
    buf = np.frombuffer(text, dtype=np.uint8)
    is_digit = (buf >= 48) & (buf <= 57)
    edges = np.diff(is_digit.astype(np.int8), prepend=0, append=0)
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    digits = (buf - 48).astype(np.int32)
    lengths = ends - starts
    if len(starts) == 0 or lengths.max() > 3:
        raise FerlabError(f"{path}: pixel values must be integers 0..255")
    values = np.zeros(len(starts), dtype=np.int32)
    for k in range(3):  # at most 3 digits per value: vectorised over all values, 3 passes
        has = lengths > k
        values[has] = values[has] * 10 + digits[starts[has] + k]
    if values.max() > 255:
        raise FerlabError(f"{path}: pixel value {values.max()} out of range 0..255")
    if len(values) != n_rows * 2304:
        raise FerlabError(f"{path}: expected {n_rows * 2304} pixel values, found {len(values)}")
    return values.astype(np.uint8).reshape(n_rows, 48, 48)


def load_fer2013_csv(path) -> FaceDataset:
    path = Path(path)
    if not path.exists():
        raise FerlabError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        header = f.readline().decode().strip().split(",")
        if header[:3] != ["emotion", "pixels", "Usage"]:
            raise FerlabError(f"{path}: expected columns emotion,pixels,Usage, found {','.join(header)}")
        lines = f.read().splitlines()
    lines = [ln for ln in lines if ln.strip()]
    parts = [ln.split(b",") for ln in lines]
    labels = np.array([int(p[0]) for p in parts], dtype=np.int64)
    splits = np.array([p[2].decode().strip() for p in parts])
    images = _parse_pixels(b"\n".join(p[1] for p in parts), len(parts), path)
    return FaceDataset(images=images, labels=labels, splits=splits, source=str(path))
