"""On a CUDA GPU (skipped without one): training, a killed run's resume and the torch Recognizer run
there, on synthetic data. `ferlab reproduce` on CUDA is test_reproduce.py's smoke test with
--device cuda. The rest of the suite says --device cpu where it means a CPU, so it passes both on a
CPU-only machine and on one where --device auto is cuda."""

import csv

import numpy as np
import pytest
import torch

from ferlab.checkpoint import load_state, load_weights
from synthetic import kill_training_after, synthetic_faces

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TINY = ["--model", "fernet_s", "--model-kwargs", '{"widths": [8, 16, 16, 16], "depths": [1, 1, 1, 1]}']


def read_metrics(run) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_train_then_resume_a_killed_run_on_cuda(ferlab, toy_csv, tmp_path):
    """A run killed part-way resumes on the GPU to its last epoch, on the same schedule; to the straight
    run's numbers within a tolerance only: CUDA's default kernels are not deterministic."""
    args = ["train", *TINY, "--data", toy_csv, "--epochs", 30, "--batch-size", 32, "--optimizer", "sgd", "--lr", 0.05,
            "--schedule", "onecycle", "--augment", "fernet", "--ema", 0.9, "--device", "cuda"]
    straight = ferlab(*args, "--out", tmp_path / "straight")
    assert "on cuda" in straight.stdout, straight.stdout
    _, meta = load_weights(tmp_path / "straight" / "best.safetensors")
    assert torch.cuda.get_device_name() in meta["trained_on"]

    killed = tmp_path / "killed"
    kill_training_after(args, killed, epochs=2)
    done = load_state(killed / "last.pt")["epoch"]
    assert 2 <= done < 30, "the run should have been killed part-way"

    ferlab("train", "--resume", "--out", killed, "--device", "cuda")
    want, got = read_metrics(tmp_path / "straight"), read_metrics(killed)
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
    assert [float(r["lr"]) for r in got] == pytest.approx([float(r["lr"]) for r in want])   # the schedule resumed
    assert float(got[done]["train_loss"]) == pytest.approx(float(want[done]["train_loss"]), rel=0.05)
    assert float(got[-1]["val_acc"]) == pytest.approx(float(want[-1]["val_acc"]), abs=0.1)


def test_torch_recognizer_on_cuda_matches_the_onnx_cpu_path(astronaut):
    from ferlab.inference.faces import create_detector, crop_faces_for
    from ferlab import Recognizer

    detector = create_detector("blazeface")
    crops = crop_faces_for(detector, astronaut, detector.detect(astronaut))
    detector.close()
    x = np.concatenate([crops, synthetic_faces(31, seed=5)[0]]).astype(np.float32) / 255
    on_cuda = Recognizer("default", detector="none", backend="torch", device="cuda")
    on_cpu = Recognizer("default", detector="none", backend="onnx")
    got, want = on_cuda.probabilities(x), on_cpu.probabilities(x)
    # TF32 convolutions (PyTorch's default on CUDA) keep ~1e-3 of fp32's precision; measured 7e-6 on an H200
    assert np.abs(got - want).max() < 1e-3, np.abs(got - want).max()
    assert (got.argmax(1) == want.argmax(1)).all()


def test_data_parallel_on_every_visible_gpu_and_its_resume(toy_csv, tmp_path):
    """torchrun with one process per visible GPU (at least 1): each binds cuda:LOCAL_RANK (NCCL, sums on
    the GPU, SyncBatchNorm), only rank 0 writes the run, and --resume --epochs extends it, every rank
    loading the same last.pt. (2 CPU processes over gloo: test_train's data-parallel test.)"""
    import os
    import subprocess
    import sys

    n, run = torch.cuda.device_count(), tmp_path / "ddp"

    def torchrun(*args):
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-port", "29531",
                   "-m", "ferlab", "train", *map(str, args), "--out", str(run), "--device", "cuda"]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc
    first = torchrun(*TINY, "--data", toy_csv, "--epochs", 2, "--batch-size", 64, "--lr", 3e-3)
    assert f"{n} process(es)" in first.stdout, first.stdout
    torchrun("--resume", "--epochs", 3)
    rows = read_metrics(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert load_state(run / "last.pt")["epoch"] == 3
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])


def test_deterministic_resume_on_cuda_ends_exactly_as_the_straight_run(ferlab, toy_csv, tmp_path):
    """--deterministic: a run killed part-way and resumed on the GPU ends with the uninterrupted run's numbers."""
    args = ["train", *TINY, "--data", toy_csv, "--epochs", 8, "--batch-size", 32, "--optimizer", "sgd", "--lr", 0.05,
            "--schedule", "onecycle", "--augment", "fernet", "--ema", 0.9, "--label-smoothing", 0.1,
            "--deterministic", "--device", "cuda"]
    ferlab(*args, "--out", tmp_path / "straight")
    killed = tmp_path / "killed"
    kill_training_after(args, killed, epochs=2)
    assert 2 <= load_state(killed / "last.pt")["epoch"] < 8, "the run should have been killed part-way"
    ferlab("train", "--resume", "--out", killed, "--device", "cuda")
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(killed)
    assert len(resumed) == len(straight) == 8
    for s, r in zip(straight, resumed):
        for key in ("lr", "train_loss", "train_acc", "val_loss", "val_acc"):
            assert float(s[key]) == pytest.approx(float(r[key]), rel=1e-6, abs=1e-7), (s["epoch"], key)
