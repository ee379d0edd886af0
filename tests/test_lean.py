"""The lean install (`pip install ferlab`, no extras): recognition on onnxruntime without PyTorch.

Two ways, both run by `make test`:
- in this suite, subprocesses in which importing torch fails (a sys.meta_path finder that records
  every attempt): predict, the Recognizer, serve, video and demo must never try; the commands that
  need torch must fail on one line naming `pip install "ferlab[train]"`;
- `make test-lean` installs the checkout with `pip install .` into a second venv that has no torch
  (no --system-site-packages) and runs test_clean_install_without_torch with FERLAB_LEAN_PYTHON
  naming its interpreter (skipped otherwise).
"""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
import torch

from ferlab import Recognizer
from ferlab.bundled import WEIGHTS_DIR
from ferlab.inference.torchloop import batched_probs
from ferlab.inference.numpyloop import batched_probs as np_batched_probs

# Prepended to a `python -c` script: importing torch fails as if it were not installed, and each
# attempt is recorded in sys.torch_attempts.
BLOCK_TORCH = textwrap.dedent("""
    import sys
    sys.torch_attempts = []

    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                sys.torch_attempts.append(name)
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, _NoTorch())
""")

# What a torch-free install must do: recognise the astronaut as happy from the command line and
# the Recognizer, and import the serving and video modules, without trying to import torch.
RECOGNISE = textwrap.dedent("""
    import contextlib, io, json, sys
    from ferlab.cli import main
    from ferlab import Recognizer
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["predict", sys.argv[1]])
    assert code == 0, code
    cli_faces = json.loads(out.getvalue())["faces"]
    rec = Recognizer()
    faces = rec.predict(sys.argv[1])
    import numpy as np
    crops = np.random.default_rng(0).random((16, 48, 48), dtype=np.float32) * 0.5   # darker faces than FER2013's
    before = rec.predict_faces(crops)[0]["probs"]
    adapted = rec.adapt_faces(crops).predict_faces(crops)[0]["probs"]   # BatchNorm statistics, on onnxruntime
    assert rec.adaptation["faces"] == 16 and adapted != before, (before, adapted)
    rec.reset()
    import ferlab.serving.cli, ferlab.inference.video, ferlab.inference.demo, ferlab.inference.predict  # noqa: E401
    attempts = getattr(sys, "torch_attempts", [])
    print(json.dumps({"cli": [f["label"] for f in cli_faces], "api": [f["label"] for f in faces],
                      "confidence": faces[0]["confidence"], "backend": rec.backend,
                      "torch_loaded": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")),
                      "attempts": attempts}))
""")

NEEDS_TORCH = [["train", "--help"], ["evaluate", "default"], ["export", "default", "--onnx", "x.onnx"], ["models"],
               ["tune", "--help"], ["reproduce", "--help"], ["bundle", "--help"], ["predict", "--backend", "torch", "PHOTO"],
               ["predict", "--model", "ferplus", "PHOTO"]]


@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory):
    data = pytest.importorskip("skimage.data")
    path = tmp_path_factory.mktemp("lean") / "astronaut.png"
    cv2.imwrite(str(path), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    return path


def _python(python, script: str, *args, env=None, cwd=None):
    return subprocess.run([python, "-c", script, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env=env, cwd=cwd)


def _check_recognition(result):
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["cli"] == got["api"] == ["happy"] and got["confidence"] > 0.5, got
    assert got["backend"] == "onnx" and got["torch_loaded"] == [] and got["attempts"] == [], got


# The HTTP service end to end (needs the serve and test extras, as this suite has).
SERVE = textwrap.dedent("""
    from fastapi.testclient import TestClient
    from ferlab.serving.app import create_app
    with TestClient(create_app()) as client:
        health = client.get("/healthz").json()
        r = client.post("/v1/predict", files={"image": ("a.png", open(sys.argv[1], "rb").read(), "image/png")})
    assert r.status_code == 200 and [f["label"] for f in r.json()["faces"]] == ["happy"], r.text
    assert health["backend"] == "onnx", health
    assert getattr(sys, "torch_attempts", []) == [] and "torch" not in sys.modules, sys.torch_attempts
""")


def test_recognition_never_imports_torch(astronaut_png):
    """predict, Recognizer(), serve, video: not one attempt to import torch (with torch blocked)."""
    _check_recognition(_python(sys.executable, BLOCK_TORCH + RECOGNISE, astronaut_png))
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    served = _python(sys.executable, BLOCK_TORCH + RECOGNISE + SERVE, astronaut_png)
    assert served.returncode == 0, served.stderr[-2000:]


def test_commands_that_need_torch_say_so_on_one_line(astronaut_png, tmp_path):
    script = BLOCK_TORCH + textwrap.dedent("""
        import sys
        from ferlab.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    for args in NEEDS_TORCH:
        args = [str(astronaut_png) if a == "PHOTO" else a for a in args]
        result = _python(sys.executable, script, *args, cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (args, result.stderr[-2000:])
        assert lines[0].startswith(f"ferlab {args[0]}: error: ") and 'pip install "ferlab[train]"' in lines[0], (args, lines)
        if "ferplus" in args:
            assert lines[0].endswith("(or model ferplus-int8, its int8 export, which runs without it)"), lines
    assert not (tmp_path / "x.onnx").exists()


def test_bundled_default_runs_its_fp32_onnx_twin(astronaut):
    """Recognizer() runs default-fp32.onnx, which `pip install ferlab` can, with the PyTorch weights'
    card and, to ~1e-6, its probabilities (any tta): the same answers with or without torch."""
    card = json.loads((WEIGHTS_DIR / "default.json").read_text())
    twin = json.loads((WEIGHTS_DIR / "default-fp32.json").read_text())
    assert twin["quantization"] == "none" and twin["fp32_parity"]["max_abs_diff"] < 1e-6
    weights = hashlib.sha256((WEIGHTS_DIR / "default.safetensors").read_bytes()).hexdigest()
    assert twin["card"]["weights_sha256"] == weights, "default-fp32.onnx is stale: `ferlab bundle` rewrites it"
    assert twin["card"]["metrics"] == card["metrics"]
    assert twin["onnx_sha256"] == hashlib.sha256((WEIGHTS_DIR / "default-fp32.onnx").read_bytes()).hexdigest()
    x = np.random.default_rng(0).random((12, 48, 48), dtype=np.float32)
    for tta in ("none", "flip", "tencrop"):
        onnx = Recognizer(detector="none", tta=tta, batch_size=5)
        assert onnx.backend == "onnx" and onnx.card["weights_path"].endswith("default-fp32.onnx")
        assert onnx.card["model"] == card["model"] and list(onnx.classes) == card["classes"]
        ref = Recognizer(detector="none", tta=tta, backend="torch").probabilities(x)
        assert np.abs(onnx.probabilities(x) - ref).max() < 1e-5, tta
    with Recognizer() as rec, Recognizer(backend="torch") as ref:
        got, want = rec.predict(astronaut), ref.predict(astronaut)
    assert [f["label"] for f in got] == ["happy"] and got[0]["box"] == want[0]["box"]
    assert max(abs(got[0]["probs"][c] - want[0]["probs"][c]) for c in card["classes"]) < 1e-5


@pytest.mark.parametrize("tta", ["none", "flip", "tencrop"])
def test_numpy_loop_is_the_torch_loop(tta):
    """ferlab.inference.numpyloop (ONNX members) computes what ferlab.inference.torchloop computes (evaluate, torch)."""
    w = np.random.default_rng(1).normal(size=(48 * 48, 5)).astype(np.float32)
    faces = np.random.default_rng(2).integers(0, 256, (9, 48, 48), dtype=np.uint8)

    def forward(x):  # a linear "model" that sees every pixel, so a wrong view would show
        return x.reshape(len(x), -1) @ (w if isinstance(x, np.ndarray) else torch.from_numpy(w))
    got = np_batched_probs(forward, faces, tta, batch_size=4)
    want = batched_probs(forward, faces, tta, batch_size=4)
    assert got.shape == want.shape == (9, 5) and np.abs(got - want).max() < 1e-5


def test_clean_install_without_torch(astronaut_png, tmp_path):
    """`make test-lean`: a venv with `pip install .` (no extras, no system site-packages) recognises
    the astronaut as happy without torch, and the training commands name the extra."""
    python = os.environ.get("FERLAB_LEAN_PYTHON")
    if not python:
        pytest.skip("run by `make test-lean` (FERLAB_LEAN_PYTHON names the torch-free venv's python)")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    missing = _python(python, "import torch", env=env, cwd=tmp_path)
    assert missing.returncode != 0 and "No module named 'torch'" in missing.stderr, "the lean venv has torch"
    where = _python(python, "import ferlab; print(ferlab.__file__)", env=env, cwd=tmp_path)
    assert where.returncode == 0 and "site-packages" in where.stdout, where.stdout + where.stderr
    _check_recognition(_python(python, RECOGNISE, astronaut_png, env=env, cwd=tmp_path))
    train = subprocess.run([os.path.join(os.path.dirname(python), "ferlab"), "train", "--help"], capture_output=True,
                           text=True, env=env, cwd=tmp_path, timeout=120)
    assert train.returncode == 2 and train.stderr.strip().splitlines() == [
        'ferlab train: error: this command needs torch, which is not installed: pip install "ferlab[train]"']
