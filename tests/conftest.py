"""Shared fixtures: toy data, random-weight models, photos, and the two ways tests run the `ferlab`
command (in this process, or as a subprocess). Nothing here needs the bundled default model or
/work/shared data."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch

from ferlab.checkpoint import save_weights
from ferlab.cli import main
from ferlab.labels import FER2013_CLASSES, FERPLUS8_CLASSES
from ferlab.models import create_model
from synthetic import write_csv

# The suite never writes to the user's decoded-data cache (~/.cache/ferlab): this process and every
# process a test starts (environments copied from os.environ) cache into a directory removed at exit.
os.environ["FERLAB_CACHE"] = tempfile.mkdtemp(prefix="ferlab-test-cache-")
atexit.register(shutil.rmtree, os.environ["FERLAB_CACHE"], ignore_errors=True)


@pytest.fixture(scope="session")
def make_toy_csv(tmp_path_factory):
    """make_toy_csv(n_train=420, n_val=140, n_test=140) -> a FER2013-layout CSV of separable toy faces
    (tests/synthetic.py) with Training / PublicTest / PrivateTest splits of those sizes, written
    once per size per session."""
    written = {}

    def make(n_train: int = 420, n_val: int = 140, n_test: int = 140):
        key = (n_train, n_val, n_test)
        if key not in written:
            written[key] = write_csv(tmp_path_factory.mktemp("data") / "toy.csv", *key)
        return written[key]
    return make


@pytest.fixture(scope="session")
def toy_csv(make_toy_csv):
    """The default toy CSV: 420 / 140 / 140 faces."""
    return make_toy_csv()


@pytest.fixture(scope="session")
def ferlab():
    """ferlab(*args, check=True, env=None, timeout=300): `python -m ferlab ARGS` in a subprocess with one
    torch thread (a 2-core machine busy with other work), plus `env`; returns the CompletedProcess,
    after asserting exit status 0 unless check=False."""
    def run(*args, check: bool = True, env: dict | None = None, timeout: float = 300):
        proc = subprocess.run([sys.executable, "-m", "ferlab", *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
        if check:
            assert proc.returncode == 0, proc.stderr[-2000:]
        return proc
    return run


@pytest.fixture
def cli(capsys):
    """cli(*args) -> (exit status, stdout, stderr) of `ferlab ARGS` run in this process."""
    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def random_weights(folder, name: str, seed: int, classes=FER2013_CLASSES):
    """A fernet_s with random (seeded) weights for `classes`, saved as folder/name.safetensors."""
    torch.manual_seed(seed)
    kwargs = {} if len(classes) == 7 else {"num_classes": len(classes)}
    path = folder / f"{name}.safetensors"
    save_weights(path, create_model("fernet_s", **kwargs), {"model": "fernet_s", "model_kwargs": kwargs, "classes": list(classes)})
    return path


@pytest.fixture(scope="session")
def fernet_weights(tmp_path_factory):
    """A fernet_s with random (seeded) weights saved as a ferlab .safetensors file."""
    return random_weights(tmp_path_factory.mktemp("weights"), "fernet_s_random", seed=0)


@pytest.fixture(scope="session")
def other_weights(tmp_path_factory):
    """A second 7-class fernet_s, with other random weights: the other member of a test ensemble."""
    return random_weights(tmp_path_factory.mktemp("weights"), "fernet_s_other", seed=1)


@pytest.fixture(scope="session")
def ferplus8_weights(tmp_path_factory):
    """An 8-class fernet_s (FER2013 classes + contempt): cannot join a 7-class ensemble."""
    return random_weights(tmp_path_factory.mktemp("weights"), "fernet_s_ferplus8", seed=2, classes=FERPLUS8_CLASSES)


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
    """Recognizer with random fernet_s weights and the bundled BlazeFace detector (shared: read-only use)."""
    from ferlab import Recognizer

    rec = Recognizer(fernet_weights, detector="blazeface")
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
