"""ONNX export (`ferlab export`) and the Recognizer's onnxruntime backend."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import ferlab.posttrain.export as export  # noqa: E402
import ferlab.inference.onnxrt as onnxrt  # noqa: E402
from ferlab.checkpoint import load_model  # noqa: E402
from ferlab.errors import FerlabError  # noqa: E402
from ferlab.inference.torchloop import batched_probs  # noqa: E402
from ferlab.labels import FER2013_CLASSES  # noqa: E402
from ferlab.models import create_model, list_models  # noqa: E402
from ferlab import Recognizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def exported(fernet_weights, tmp_path_factory):
    """fernet_s (random weights) exported by the command, with its printed output."""
    out = tmp_path_factory.mktemp("onnx") / "fernet.onnx"
    lines = []
    export.export_model(str(fernet_weights), out, log=lines.append)
    return out, "\n".join(lines)


def session(path):
    return onnxrt.create_session(path, threads=1)


def test_export_passes_parity_and_prints_the_difference(exported):
    path, printed = exported
    assert path.is_file() and path.with_suffix(".json").is_file()
    assert "max |softmax diff| = " in printed
    diff = float(printed.split("max |softmax diff| = ")[1].split(",")[0])
    assert diff < 1e-4
    assert not list(path.parent.glob("*.tmp"))


@pytest.mark.parametrize("name", list_models())
def test_every_registry_model_exports_with_parity(name):
    """Export's parity check on every architecture in the registry (random weights, 2 faces: the
    check is about the graph, and the biggest models take seconds per export)."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    parity = export.compare(model, onnxrt.OnnxModel(export.to_onnx(model), threads=1), export.astronaut_faces(2))
    assert parity["faces"] == 2 and parity["max_abs_diff"] < export.PARITY_TOLERANCE, parity


def test_dynamic_batch_matches_pytorch(exported, fernet_weights):
    model, _ = load_model(str(fernet_weights))
    sess = session(exported[0])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.name == "faces" and inp.shape[1:] == [1, 48, 48] and isinstance(inp.shape[0], str)
    assert out.name == "logits" and out.shape[1] == 7
    faces = export.astronaut_faces(5)
    for n in (1, 5):
        x = faces[:n, None]
        logits = sess.run(None, {"faces": x})[0]
        assert logits.shape == (n, 7)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).softmax(1).numpy()
        assert np.abs(torch.from_numpy(logits).softmax(1).numpy() - ref).max() < 1e-4


def test_metadata_and_sidecar_card(exported):
    import onnx

    path, _ = exported
    proto = onnx.load(str(path))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    meta = onnxrt.read_metadata(path)
    assert meta["ferlab.model"] == "fernet_s" and meta["ferlab.opset"] == 17
    assert meta["ferlab.classes"] == list(FER2013_CLASSES)
    assert meta["ferlab.preprocessing"]["input"] == "faces" and "255" in meta["ferlab.preprocessing"]["pixels"]
    assert meta["ferlab.quantization"] == "none"
    assert "weights_path" not in meta["ferlab.card"] and len(meta["ferlab.card"]["weights_sha256"]) == 64
    # the model's input, whole and machine-readable, read back as the Recognizer reads it
    assert meta["ferlab.card"]["input"] == {"size": 48, "channels": 1, "scale": "pixels / 255", "pixel_divisor": 255.0,
                                           "crop_scale": 1.15, "crop_shift": -0.03, "crop_box": "blazeface"}
    assert Recognizer(str(path)).framing == (1.15, -0.03)
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["model"] == "fernet_s" and card["classes"] == list(FER2013_CLASSES) and card["opset"] == 17
    assert card["fp32_parity"]["max_abs_diff"] < 1e-4 and card["onnx_file"] == "fernet.onnx"


def test_int8_file_is_written_and_runs(cli, capsys, fernet_weights, exported, tmp_path):
    out = tmp_path / "fernet.int8.onnx"
    code, stdout, err = cli("export", fernet_weights, "--onnx", out, "--quantize", "int8", "--opset", "13")
    assert code == 0, err
    assert "int8 vs PyTorch fp32" in stdout
    assert out.stat().st_size < exported[0].stat().st_size / 2.5  # int8 weights
    meta = onnxrt.read_metadata(out)
    assert meta["ferlab.quantization"].startswith("int8") and meta["ferlab.opset"] == 13
    probs = batched_probs(onnxrt.OnnxModel(out, threads=1), export.astronaut_faces(3))
    assert probs.shape == (3, 7) and np.allclose(probs.sum(1), 1, atol=1e-5)
    card = json.loads(out.with_suffix(".json").read_text())
    assert 0 <= card["int8_vs_fp32"]["top1_agreement"] <= 1
    import onnx
    from onnx import numpy_helper
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert weights and all(np.abs(w.astype(int)).max() <= 64 for w in weights)   # 7-bit: no saturation without VNNI


def test_bad_model_is_a_one_line_error(cli, capsys, tmp_path):
    code, out, err = cli("export", "no-such-model", "--onnx", tmp_path / "m.onnx")
    assert code == 2 and err.count("\n") == 1 and err.startswith("ferlab export: error: no-such-model")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors")
    code, out, err = cli("export", junk, "--onnx", tmp_path / "m.onnx")
    assert code == 2 and err.count("\n") == 1 and "junk.safetensors" in err
    assert not (tmp_path / "m.onnx").exists()


def test_unwritable_output_is_a_clean_error(cli, capsys, fernet_weights, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    code, out, err = cli("export", fernet_weights, "--onnx", blocker / "m.onnx")
    assert code == 2 and err.count("\n") == 1 and "file.txt/m.onnx" in err
    code, out, err = cli("export", fernet_weights, "--onnx", tmp_path)
    assert code == 2 and "is a directory" in err
    card = tmp_path / "best.json"  # a run directory's model card must not be overwritten by the sidecar
    card.write_text('{"model": "fernet_s"}')
    code, out, err = cli("export", fernet_weights, "--onnx", tmp_path / "best.onnx")
    assert code == 2 and "not an ONNX card" in err and card.read_text() == '{"model": "fernet_s"}'


def test_parity_failure_writes_nothing(fernet_weights, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "PARITY_TOLERANCE", 0.0)
    with pytest.raises(FerlabError, match="differs from PyTorch"):
        export.export_model(str(fernet_weights), tmp_path / "m.onnx", log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


# ---- Recognizer(backend="onnx") -----------------------------------------------------------------

def test_onnx_backend_matches_torch(fernet_weights):
    x = np.random.default_rng(0).random((9, 48, 48), dtype=np.float32)
    ref = Recognizer(fernet_weights, detector="none").probabilities(x)
    rec = Recognizer(fernet_weights, detector="none", backend="onnx", batch_size=4)
    assert rec.backend == "onnx" and isinstance(rec.runners[0], onnxrt.OnnxModel)
    np.testing.assert_allclose(rec.probabilities(x), ref, atol=1e-5)
    flip_ref = Recognizer(fernet_weights, detector="none", tta="flip").probabilities(x)
    flip = Recognizer(fernet_weights, detector="none", tta="flip", backend="onnx").probabilities(x)
    np.testing.assert_allclose(flip, flip_ref, atol=1e-5)


def test_onnx_backend_on_a_photo(recognizer, fernet_weights, astronaut):
    ref = recognizer.predict(astronaut)
    with Recognizer(fernet_weights, detector="blazeface", backend="onnx") as rec:
        got = rec.predict(astronaut)
    assert len(got) == 1 and got[0]["box"] == ref[0]["box"]
    for c in FER2013_CLASSES:
        assert got[0]["probs"][c] == pytest.approx(ref[0]["probs"][c], abs=1e-5)


def test_backend_choice(fernet_weights, monkeypatch):
    monkeypatch.setattr("ferlab.inference.torchbackend.native_bf16", lambda device: True)   # bf16 as on an AMX CPU
    assert Recognizer(fernet_weights, detector="none", backend="auto").backend == "onnx"
    assert Recognizer(fernet_weights, detector="none", backend="auto", precision="bf16").backend == "torch"
    assert Recognizer(fernet_weights, detector="none").backend == "onnx"  # auto is the default
    assert Recognizer(fernet_weights, detector="none", backend="torch").backend == "torch"
    with pytest.raises(FerlabError, match="fp32 only"):
        Recognizer(fernet_weights, detector="none", backend="onnx", precision="bf16")
    with pytest.raises(FerlabError, match="unknown backend"):
        Recognizer(fernet_weights, detector="none", backend="tensorrt")


def test_auto_falls_back_to_torch_when_export_fails(fernet_weights, monkeypatch):
    def broken(*args, **kwargs):
        raise FerlabError("ONNX export failed (opset 17): unsupported operator")
    monkeypatch.setattr("ferlab.inference.torchbackend.to_onnx", broken)
    assert Recognizer(fernet_weights, detector="none", backend="auto").backend == "torch"
    with pytest.raises(FerlabError, match="export failed"):
        Recognizer(fernet_weights, detector="none", backend="onnx")


# ---- exported files as models: load_model, Recognizer, evaluate ---------------------------------

def test_exported_file_is_a_model_with_its_card(exported, fernet_weights, tmp_path, monkeypatch):
    from ferlab.evaluate import evaluate_models

    model, card = load_model(str(exported[0]))
    _, source_card = load_model(str(fernet_weights))
    assert isinstance(model, onnxrt.OnnxModel) and not list(model.parameters())
    assert card["model"] == source_card["model"] == "fernet_s" and card["classes"] == list(FER2013_CLASSES)
    assert card["quantization"] == "none" and card["weights_path"] == str(exported[0])
    x = np.random.default_rng(0).random((6, 48, 48), dtype=np.float32)
    ref = Recognizer(fernet_weights, detector="none", backend="torch", tta="flip").probabilities(x)
    for backend in ("torch", "onnx"):  # an .onnx member runs in onnxruntime whatever the backend
        rec = Recognizer(str(exported[0]), detector="none", backend=backend, tta="flip", batch_size=4)
        assert rec.runners[0] is rec.model
        np.testing.assert_allclose(rec.probabilities(x), ref, atol=1e-5)
    ensemble = Recognizer([str(exported[0]), fernet_weights], detector="none", backend="torch").probabilities(x)
    np.testing.assert_allclose(ensemble, Recognizer(fernet_weights, detector="none").probabilities(x), atol=1e-5)
    faces = (x * 255).astype(np.uint8)
    got, cards = evaluate_models([str(exported[0])], faces, tta="tencrop")
    want, _ = evaluate_models([str(fernet_weights)], faces, tta="tencrop")
    assert cards[0]["model"] == "fernet_s"
    np.testing.assert_allclose(got, want, atol=1e-5)
    bundled = tmp_path / "weights"  # a bundled .onnx answers to its name, as default-int8 does
    bundled.mkdir()
    (bundled / "mini-int8.onnx").write_bytes(exported[0].read_bytes())
    monkeypatch.setattr("ferlab.bundled.WEIGHTS_DIR", bundled)
    assert isinstance(load_model("mini-int8")[0], onnxrt.OnnxModel)


def test_bad_onnx_models_are_one_line_errors(cli, capsys, exported, tmp_path):
    import onnx

    from ferlab.training.config import TrainConfig
    from ferlab.training.transfer import load_init_weights

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not an onnx graph" * 10)
    with pytest.raises(FerlabError, match="junk.onnx: not a readable ONNX file"):
        load_model(str(junk))
    with pytest.raises(FerlabError, match="missing.onnx: no such ONNX file"):
        load_model(str(tmp_path / "missing.onnx"))
    proto = onnx.load(str(exported[0]))
    del proto.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(proto, str(foreign))
    with pytest.raises(FerlabError, match="foreign.onnx: an ONNX file without ferlab's metadata"):
        load_model(str(foreign))
    code, out, err = cli("export", exported[0], "--onnx", tmp_path / "again.onnx")
    assert code == 2 and err.count("\n") == 1 and "already an ONNX model" in err and not (tmp_path / "again.onnx").exists()
    from ferlab.evaluate import evaluate_models

    faces = np.zeros((4, 48, 48), np.uint8)
    with pytest.raises(FerlabError, match="fernet.onnx: --recalibrate-bn needs BatchNorm layers"):
        evaluate_models([str(exported[0])], faces, bn_images=faces)
    with pytest.raises(FerlabError, match="an ONNX model has no weights to train"):
        load_init_weights(create_model("fernet_s"), TrainConfig(model="fernet_s", data="x.csv", init=str(exported[0])), FER2013_CLASSES)


@pytest.mark.parametrize("name", ["default", "ferplus", "general"])
def test_bundled_int8_export_agrees_with_its_model(astronaut, name):
    """A shipped int8 export: same model and classes as its fp32 model, same reading of a real smile."""
    from ferlab.checkpoint import WEIGHTS_DIR

    if not (WEIGHTS_DIR / f"{name}-int8.onnx").is_file():
        pytest.fail(f"src/ferlab/weights/{name}-int8.onnx is missing (`ferlab bundle --int8` writes it)")
    model, card = load_model(f"{name}-int8")
    _, fp32_card = load_model(name)
    assert card["model"] == fp32_card["model"] and card["classes"] == fp32_card["classes"]
    assert card["quantization"].startswith("int8")
    faces = export.astronaut_faces(32)
    fp32 = Recognizer(name, detector="none", backend="torch").probabilities(faces)
    int8 = Recognizer(f"{name}-int8", detector="none").probabilities(faces)
    assert (fp32.argmax(1) == int8.argmax(1)).mean() >= 0.9 and np.abs(fp32 - int8).max() < 0.15
    assert card["classes"][int(int8[0].argmax())] == "happy"   # the plain crop of the astronaut's smile
