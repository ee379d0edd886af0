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
    from ferlab.faces import create_detector, crop_faces_for
    from ferlab.predict import Recognizer

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
