"""Synthetic FER data for tests: separable toy faces and a FER2013-layout CSV of them; and
`wait_until`, how tests wait for another process (`kill_training_after`: a training killed part-way)."""

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def wait_until(condition, timeout: float = 120, interval: float = 0.05) -> bool:
    """Poll `condition()` until it is true (returns True) or `timeout` seconds pass (returns False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def kill_training_after(args: list, out: Path, epochs: int, env: dict | None = None) -> None:
    """`python -m ferlab ARGS --out OUT` (a `ferlab train`), SIGKILLed once OUT/metrics.csv holds `epochs` epochs."""
    proc = subprocess.Popen([sys.executable, "-m", "ferlab", *map(str, args), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    metrics = out / "metrics.csv"
    wait_until(lambda: metrics.exists() and len(metrics.read_text().splitlines()) > epochs)   # a header line
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def synthetic_faces(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Separable 7-class toy data: a bright square whose position encodes the class, on noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 7, n)
    images = rng.integers(0, 80, (n, 48, 48)).astype(np.uint8)
    for c in range(7):
        r, col = divmod(c, 3)
        images[labels == c, 3 + r * 15: 15 + r * 15, 3 + col * 15: 15 + col * 15] = 230
    return images, labels


def write_csv(path: Path, n_train=420, n_val=140, n_test=140, seed=0) -> Path:
    images, labels = synthetic_faces(n_train + n_val + n_test, seed)
    usage = ["Training"] * n_train + ["PublicTest"] * n_val + ["PrivateTest"] * n_test
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        for img, y, u in zip(images, labels, usage):
            w.writerow([int(y), " ".join(map(str, img.ravel())), u])
    return path
