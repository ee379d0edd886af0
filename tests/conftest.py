"""Shared fixtures. Nothing here needs the bundled default model or /work/shared data."""

import numpy as np
import pytest
import torch

from ferlab.checkpoint import save_weights
from ferlab.labels import FER2013_CLASSES
from ferlab.models import create_model


@pytest.fixture(scope="session")
def fernet_weights(tmp_path_factory):
    """A fernet_s with random (seeded) weights saved as a ferlab .safetensors file."""
    torch.manual_seed(0)
    model = create_model("fernet_s")
    path = tmp_path_factory.mktemp("weights") / "fernet_s_random.safetensors"
    save_weights(path, model, {"model": "fernet_s", "model_kwargs": {}, "classes": list(FER2013_CLASSES)})
    return path


@pytest.fixture(scope="session")
def astronaut():
    """A real face photo (512x512 RGB uint8, one face) shipped by scikit-image."""
    data = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(data.astronaut())


@pytest.fixture(scope="session")
def cat():
    """A photo with no human face (scikit-image's chelsea)."""
    data = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(data.chelsea())


@pytest.fixture(scope="session")
def recognizer(fernet_weights):
    """Recognizer with random fernet_s weights and the MediaPipe detector (shared: read-only use)."""
    pytest.importorskip("mediapipe")
    from ferlab.predict import Recognizer

    rec = Recognizer(fernet_weights, detector="mediapipe")
    yield rec
    rec.close()


@pytest.fixture(scope="module")
def one_thread():
    """Run torch on one thread: on a 2-core machine busy with training, two OpenMP threads that
    spin-wait for each other make a small forward pass 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
