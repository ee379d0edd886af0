import csv
import io
import json
import struct
import zlib

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from ferlab.checkpoint import load_model
from ferlab.errors import FerlabError
from ferlab.labels import FER2013_CLASSES, FERPLUS8_CLASSES
from ferlab.evaluate import predict_probs
from ferlab.inference.images import faces_to_input, load_image
from ferlab import Recognizer
from synthetic import synthetic_faces

pytestmark = pytest.mark.usefixtures("one_thread")

ASTRONAUT_BOX = [174, 68, 104, 104]


def close_box(box, ref, tol=6):
    return all(abs(a - b) <= tol for a, b in zip(box, ref))


def softmax_of(weights, x):
    model, _ = load_model(str(weights))
    with torch.no_grad():
        return model(torch.from_numpy(x).unsqueeze(1)).softmax(1).numpy()


# ---- the Recognizer API ---------------------------------------------------------------------

def test_predict_one_face(recognizer, astronaut):
    faces = recognizer.predict(astronaut)
    assert len(faces) == 1
    f = faces[0]
    assert set(f) == {"box", "score", "label", "confidence", "probs"}
    assert close_box(f["box"], ASTRONAUT_BOX) and all(type(v) is int for v in f["box"])
    assert list(f["probs"]) == list(FER2013_CLASSES)
    assert sum(f["probs"].values()) == pytest.approx(1, abs=1e-5)
    assert f["label"] == max(f["probs"], key=f["probs"].get) and f["confidence"] == f["probs"][f["label"]]
    json.dumps(faces)  # plain Python types only


def test_every_input_form_gives_the_same_face(recognizer, astronaut, tmp_path):
    ref = recognizer.predict(astronaut)[0]
    path = tmp_path / "a.png"
    Image.fromarray(astronaut).save(path)
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
    forms = [str(path), path, Image.open(path), np.ascontiguousarray(astronaut[..., ::-1]), rgba]
    colors = ["rgb", "rgb", "rgb", "bgr", "rgb"]
    for form, color in zip(forms, colors):
        got = recognizer.predict(form, color=color)[0]
        assert got["box"] == ref["box"]
        assert got["probs"]["happy"] == pytest.approx(ref["probs"]["happy"], abs=1e-6)
    gray = recognizer.predict(cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY))
    assert len(gray) == 1 and close_box(gray[0]["box"], ASTRONAUT_BOX)
    as_float = recognizer.predict(astronaut.astype(np.float32) / 255)
    assert as_float[0]["box"] == ref["box"]


def test_exif_orientation_is_honoured(recognizer, astronaut, tmp_path):
    """A photo stored sideways with EXIF orientation 6 ("rotate 90 CW to view") is read upright."""
    stored = np.ascontiguousarray(np.rot90(astronaut, 1))  # what the camera wrote (sideways)
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    im.save(path, quality=95, exif=exif.tobytes())
    pixels, scale = load_image(path)
    assert pixels.shape == astronaut.shape and scale == 1.0
    faces = recognizer.predict(path)
    assert len(faces) == 1 and close_box(faces[0]["box"], ASTRONAUT_BOX, 8)
    faces = recognizer.predict(Image.open(path))
    assert len(faces) == 1 and close_box(faces[0]["box"], ASTRONAUT_BOX, 8)


def test_no_face_and_tiny_images_give_empty_lists(recognizer, cat):
    assert recognizer.predict(cat) == []
    assert recognizer.predict(np.zeros((1, 1, 3), np.uint8)) == []
    assert recognizer.predict(np.zeros((1, 1), np.uint8)) == []


def test_bad_arrays_and_options(recognizer, fernet_weights):
    with pytest.raises(FerlabError, match="shape"):
        recognizer.predict(np.zeros((10, 10, 5), np.uint8))
    with pytest.raises(FerlabError, match="expected a path"):
        recognizer.predict(12)
    with pytest.raises(FerlabError, match=r"unknown tta 'rotate' \(known: auto, none, flip, tencrop\)"):
        Recognizer(fernet_weights, tta="rotate")
    with pytest.raises(FerlabError, match="detector"):
        Recognizer(fernet_weights, detector="yolo")
    with pytest.raises(FerlabError, match="no-such"):
        Recognizer("no-such.safetensors")


def test_predict_faces_matches_the_model_in_fp32(recognizer, fernet_weights):
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (20, 48, 48), dtype=np.uint8)
    x = crops.astype(np.float32) / 255
    expected = softmax_of(fernet_weights, x)
    rec = Recognizer(fernet_weights, detector="none", batch_size=8)  # 20 faces: 3 batches
    got = np.array([[f["probs"][c] for c in FER2013_CLASSES] for f in rec.predict_faces(crops)])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert np.allclose(rec.probabilities(x), recognizer.probabilities(x), atol=1e-6)  # batch size does not matter
    # float input and (N, 1, 48, 48) input are the same faces
    np.testing.assert_allclose(rec.probabilities(faces_to_input(x[:, None])), expected, atol=1e-6)
    assert "box" not in rec.predict_faces(crops[:1])[0]


def test_predict_faces_accepts_any_size_and_form(recognizer):
    rng = np.random.default_rng(1)
    face96 = rng.integers(0, 256, (96, 96), dtype=np.uint8)
    small = cv2.resize(face96, (48, 48), interpolation=cv2.INTER_AREA)
    ref = recognizer.predict_faces(small[None])[0]["probs"]
    for form in (face96, face96[None], [face96], [Image.fromarray(face96)], np.dstack([face96] * 3)[None]):
        out = recognizer.predict_faces(form)
        assert len(out) == 1 and out[0]["probs"]["sad"] == pytest.approx(ref["sad"], abs=1e-6)
    mixed = recognizer.predict_faces([face96, rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)])
    assert len(mixed) == 2
    assert recognizer.predict_faces(np.zeros((0, 48, 48), np.uint8)) == []


def test_flip_tta_averages_the_mirror(fernet_weights):
    x = np.random.default_rng(2).random((5, 48, 48), dtype=np.float32)
    expected = (softmax_of(fernet_weights, x) + softmax_of(fernet_weights, np.ascontiguousarray(x[:, :, ::-1]))) / 2
    rec = Recognizer(fernet_weights, detector="none", tta="flip", batch_size=2)
    np.testing.assert_allclose(rec.probabilities(x), expected, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_tencrop_tta_is_the_one_evaluate_uses(fernet_weights, backend):
    """Recognizer and `ferlab evaluate` share ferlab.inference.tta: same faces, same fp32 probabilities."""
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    faces, _ = synthetic_faces(6, seed=3)  # a bright square off-centre: crops and mirrors see different faces
    x = faces.astype(np.float32) / 255
    rec = Recognizer(fernet_weights, detector="none", tta="tencrop", backend=backend, batch_size=4)
    got = rec.probabilities(x)
    np.testing.assert_allclose(got.sum(1), 1, atol=1e-5)
    assert np.abs(got - Recognizer(fernet_weights, detector="none", backend=backend).probabilities(x)).max() > 1e-3
    model, _ = load_model(str(fernet_weights))
    np.testing.assert_allclose(got, predict_probs(model, faces, tta="tencrop", amp="fp32"), atol=1e-5)


@pytest.mark.parametrize("tta", ["flip", "tencrop"])
def test_flip_and_tencrop_do_not_see_a_mirrored_face(fernet_weights, tta):
    x = synthetic_faces(5, seed=4)[0].astype(np.float32) / 255
    rec = Recognizer(fernet_weights, detector="none", tta=tta, backend="torch")
    np.testing.assert_allclose(rec.probabilities(np.ascontiguousarray(x[:, :, ::-1])), rec.probabilities(x), atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_ensemble_is_the_mean_of_its_members(fernet_weights, other_weights, backend):
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    x = np.random.default_rng(5).random((7, 48, 48), dtype=np.float32)
    kw = dict(detector="none", tta="flip", backend=backend, batch_size=4)
    a = Recognizer(fernet_weights, **kw).probabilities(x)
    b = Recognizer(other_weights, **kw).probabilities(x)
    assert np.abs(a - b).max() > 1e-3  # two different models
    ens = Recognizer([fernet_weights, other_weights], **kw)
    assert ens.backend == backend and len(ens.models) == len(ens.cards) == 2 and ens.model is ens.models[0]
    if backend == "onnx":
        assert ens.runners[0] is not ens.runners[1] and ens.runners[0] is not ens.models[0]
    np.testing.assert_allclose(ens.probabilities(x), (a + b) / 2, atol=1e-5)
    module, _ = load_model(str(other_weights))  # a member may be an nn.Module too
    np.testing.assert_allclose(Recognizer((fernet_weights, module), **kw).probabilities(x), (a + b) / 2, atol=1e-5)


def test_ensemble_members_must_share_their_classes(fernet_weights, ferplus8_weights):
    with pytest.raises(FerlabError, match=r"fernet_s_ferplus8\.safetensors: an ensemble needs the same classes") as e:
        Recognizer([fernet_weights, ferplus8_weights], detector="none")
    assert "\n" not in str(e.value)
    module, _ = load_model(str(ferplus8_weights))  # no card: caught by its number of scores
    rec = Recognizer([fernet_weights, module], detector="none", backend="torch")
    with pytest.raises(FerlabError, match=r"model #2 \(FERNet\): the model gives 8 scores but 7 classes"):
        rec.probabilities(np.zeros((1, 48, 48), np.float32))
    with pytest.raises(FerlabError, match="empty list"):
        Recognizer([], detector="none")


def test_bf16_and_channels_last_options(fernet_weights, monkeypatch):
    x = np.random.default_rng(3).random((8, 48, 48), dtype=np.float32)
    ref = Recognizer(fernet_weights, detector="none", channels_last=False).probabilities(x)
    np.testing.assert_allclose(ref, softmax_of(fernet_weights, x), atol=1e-6)
    cl = Recognizer(fernet_weights, detector="none", channels_last=True).probabilities(x)
    np.testing.assert_allclose(cl, ref, atol=1e-5)
    # bf16 where the CPU has it natively (forced here: on other CPUs torch emulates it, slowly but right)
    monkeypatch.setattr("ferlab.inference.torchbackend.native_bf16", lambda device: True)
    bf16 = Recognizer(fernet_weights, detector="none", precision="bf16").probabilities(x)
    np.testing.assert_allclose(bf16, ref, atol=0.03)
    # and refused where it would be emulated, several times slower than fp32
    monkeypatch.setattr("ferlab.inference.torchbackend.native_bf16", lambda device: False)
    with pytest.raises(FerlabError, match="native bf16"):
        Recognizer(fernet_weights, detector="none", precision="bf16")


# ---- bad files --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory, astronaut, cat):
    """A folder of good and bad images, as a user's photo folder might be."""
    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(astronaut).save(d / "astronaut.jpg", quality=92)
    (d / "sub").mkdir()
    Image.fromarray(astronaut).save(d / "sub" / "astronaut2.png")
    Image.fromarray(cat).save(d / "cat.png")
    Image.new("RGB", (1, 1), (200, 100, 50)).save(d / "tiny.png")
    (d / "notes.jpg").write_text("this is not an image\n")
    data = (d / "astronaut.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (d / "readme.txt").write_text("ignored: not an image suffix\n")
    return d


def test_bad_files_give_one_line_errors_naming_the_file(bad_folder):
    with pytest.raises(FerlabError, match=r"notes\.jpg: not an image"):
        load_image(bad_folder / "notes.jpg")
    with pytest.raises(FerlabError, match=r"truncated\.jpg: truncated or corrupt"):
        load_image(bad_folder / "truncated.jpg")
    with pytest.raises(FerlabError, match=r"missing\.png: no such file"):
        load_image(bad_folder / "missing.png")
    with pytest.raises(FerlabError, match="is a directory"):
        load_image(bad_folder / "sub")
    for name in ("notes.jpg", "truncated.jpg"):
        try:
            load_image(bad_folder / name)
        except FerlabError as e:
            assert "\n" not in str(e)


def huge_png(path, side=20000):
    """A real 20000x20000 gray PNG (all black) written without 400 MB in memory."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    comp = zlib.compressobj(1)
    row = bytes(side + 1)  # filter byte + pixels
    idat = b"".join(comp.compress(row * 100) for _ in range(side // 100)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_20000px_png_is_refused_cleanly(tmp_path):
    path = huge_png(tmp_path / "huge.png")
    with pytest.raises(FerlabError, match=r"huge\.png: image \(400 MP\) is above the 89 MP decoding limit"):
        load_image(path)


def test_big_jpeg_is_decoded_at_reduced_scale(recognizer, astronaut, tmp_path, monkeypatch):
    """JPEGs longer than 4096 px are DCT-downscaled while decoding; boxes come back in full-size
    pixels. With the decompression-bomb limit lowered below the file's size (as a 20000x20000
    JPEG is against the default limit), it still decodes through the reduced-scale path."""
    big = cv2.resize(astronaut, (5120, 5120), interpolation=cv2.INTER_LINEAR)  # 10x
    path = tmp_path / "big.jpg"
    Image.fromarray(big).save(path, quality=85)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 8_000_000)  # 2x limit = 16 MP < 26 MP: open() would refuse
    pixels, scale = load_image(path)
    assert pixels.shape == (2560, 2560, 3) and scale == 2.0
    faces = recognizer.predict(path)
    assert len(faces) == 1 and close_box(faces[0]["box"], [v * 10 for v in ASTRONAUT_BOX], 60)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)  # even 1/2 scale is too big now
    with pytest.raises(FerlabError, match=r"big\.jpg: image is 5120x5120 \(26.2 MP, 2560x2560 at the smallest JPEG "
                                          r"scale\), above the 1 MP decoding limit"):
        load_image(path)


def test_predict_many_reports_and_skips_bad_files(recognizer, bad_folder):
    results = dict(recognizer.predict_many([bad_folder]))
    names = {p.name: r for p, r in results.items()}
    assert set(names) == {"astronaut.jpg", "astronaut2.png", "cat.png", "tiny.png", "notes.jpg", "truncated.jpg"}
    assert len(names["astronaut.jpg"]) == 1 and len(names["astronaut2.png"]) == 1
    assert names["cat.png"] == [] and names["tiny.png"] == []
    assert isinstance(names["notes.jpg"], FerlabError) and isinstance(names["truncated.jpg"], FerlabError)
    flat = dict(recognizer.predict_many([bad_folder], recursive=False))
    assert "astronaut2.png" not in {p.name for p in flat}


# ---- the command line -----------------------------------------------------------------------


def test_cli_folder_jsonl_with_bad_files(cli, capsys, fernet_weights, bad_folder, tmp_path):
    code, out, err = cli("predict", bad_folder, "--model", fernet_weights, "--annotate", tmp_path / "ann")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in records}
    assert set(by_name) == {"astronaut.jpg", "astronaut2.png", "cat.png", "tiny.png"}
    face = by_name["astronaut.jpg"]["faces"][0]
    assert close_box(face["box"], ASTRONAUT_BOX) and set(face["probs"]) == set(FER2013_CLASSES)
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("ferlab predict: skipped ") for line in lines)
    assert any("notes.jpg" in line for line in lines) and any("truncated.jpg" in line for line in lines)
    annotated = cv2.imread(str(tmp_path / "ann" / "astronaut.jpg"))
    assert annotated.shape == (512, 512, 3)
    assert (tmp_path / "ann" / "sub" / "astronaut2.png").is_file()
    assert not list((tmp_path / "ann").rglob("*.tmp"))


def test_cli_csv_to_file(cli, capsys, fernet_weights, bad_folder, tmp_path):
    out_file = tmp_path / "out" / "faces.csv"
    code, out, err = cli("predict", bad_folder / "astronaut.jpg", bad_folder / "cat.png", "--model", fernet_weights,
                             "--format", "csv", "--output", out_file, "--tta", "flip")
    assert code == 0 and out == ""
    rows = list(csv.DictReader(io.StringIO(out_file.read_text())))
    assert len(rows) == 2
    assert rows[0]["face"] == "0" and close_box([int(rows[0][k]) for k in "xywh"], ASTRONAUT_BOX)
    assert [k for k in rows[0] if k.startswith("prob_")] == [f"prob_{c}" for c in FER2013_CLASSES]
    assert sum(float(rows[0][f"prob_{c}"]) for c in FER2013_CLASSES) == pytest.approx(1, abs=1e-3)
    assert rows[1]["path"].endswith("cat.png") and rows[1]["face"] == "" and rows[1]["label"] == ""


def test_cli_ensemble_and_tta(cli, capsys, fernet_weights, other_weights, tmp_path):
    face = tmp_path / "face.png"
    Image.fromarray(synthetic_faces(1, seed=6)[0][0]).save(face)
    code, out, err = cli("predict", face, "--detector", "none", "--tta", "tencrop",
                             "--model", fernet_weights, "--model", other_weights)
    assert code == 0
    got = json.loads(out)["faces"][0]["probs"]
    expected = Recognizer([fernet_weights, other_weights], detector="none", tta="tencrop").predict(face)[0]["probs"]
    assert got == {c: round(v, 4) for c, v in expected.items()}
    with pytest.raises(SystemExit) as e:  # argparse's own error
        cli("predict", face, "--model", fernet_weights, "--tta", "rotate")
    assert e.value.code == 2 and "invalid choice: 'rotate'" in capsys.readouterr().err


def test_cli_exit_status_when_nothing_could_be_read(cli, capsys, fernet_weights, bad_folder, tmp_path):
    code, out, err = cli("predict", bad_folder / "notes.jpg", bad_folder / "truncated.jpg", "--model", fernet_weights)
    assert code == 2 and out == ""
    assert err.strip().splitlines()[-1] == "ferlab predict: error: no image could be processed (2 failed)"
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = cli("predict", empty, "--model", fernet_weights)
    assert code == 2 and "no image files found" in err


def test_cli_unwritable_output(cli, capsys, fernet_weights, bad_folder, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    code, out, err = cli("predict", bad_folder / "astronaut.jpg", "--model", fernet_weights,
                             "--output", blocker / "out.jsonl")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "file.txt/out.jsonl" in err
    code, out, err = cli("predict", bad_folder / "astronaut.jpg", "--model", fernet_weights,
                             "--annotate", blocker / "ann")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "file.txt/ann" in err
    code, out, err = cli("predict", bad_folder / "astronaut.jpg", "--model", fernet_weights, "--output", tmp_path)
    assert code == 2 and "is a directory" in err


def test_demo(cli, capsys, fernet_weights, tmp_path, monkeypatch):
    code, out, err = cli("demo", "--model", fernet_weights, "--out", tmp_path / "demo")
    assert code == 0
    assert (tmp_path / "demo" / "astronaut.png").is_file() and (tmp_path / "demo" / "astronaut_annotated.png").is_file()
    payload = json.loads(out[: out.rindex("}") + 1])
    assert len(payload["faces"]) == 1 and "annotated image:" in out
    import ferlab.inference.demo
    monkeypatch.setattr(ferlab.inference.demo, "WEIGHTS_DIR", tmp_path / "no-weights")
    code, out, err = cli("demo", "--out", tmp_path / "demo2")
    assert code == 2 and "bundled default model is missing" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name, classes, test_rows", [("default", FER2013_CLASSES, 3573), ("ferplus", FERPLUS8_CLASSES, 3375),
                                                       ("general", FER2013_CLASSES, 3573)])
def test_bundled_model_matches_its_card_and_reads_a_real_smile(astronaut, name, classes, test_rows):
    """The shipped weights: the card describes them, and the astronaut's smile reads as happy."""
    from ferlab.checkpoint import WEIGHTS_DIR
    from ferlab.models import count_parameters

    card = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())
    with Recognizer(name, detector="blazeface") as rec:
        assert rec.card["model"] == card["model"] and count_parameters(load_model(name)[0]) == card["parameters"]
        assert list(rec.classes) == card["classes"] == list(classes)
        faces = rec.predict(astronaut)
    assert len(faces) == 1 and faces[0]["label"] == "happy" and faces[0]["confidence"] > 0.5
    assert card["metrics"]["privatetest_tta_none"]["num_samples"] == test_rows
    if name == "general":   # trained on a mix: the card scores each source's test part
        assert set(card["metrics"]["source_test_parts_tta_none"]) == {"fer2013", "muxspace48", "CK+48", "taiwanese_tpe"}


def test_float16_weights_load_into_a_float32_model(tmp_path):
    from ferlab.checkpoint import save_weights
    from ferlab.models import create_model

    model = create_model("fernet_s", widths=[8, 8, 8, 8]).eval()
    save_weights(tmp_path / "m.safetensors", model, {"model": "fernet_s", "model_kwargs": {"widths": [8, 8, 8, 8]}},
                 float_dtype=torch.float16)
    loaded, _ = load_model(str(tmp_path / "m.safetensors"))
    for (name, want), got in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert got.dtype == want.dtype, name
        assert torch.equal(got, want.half().to(want.dtype)) if want.is_floating_point() else torch.equal(got, want)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps", "meta"])
def test_unavailable_device_fails_in_one_line(cli, fernet_weights, tmp_path, monkeypatch, device):
    """Predict, video, serve and Recognizer on a device this torch cannot use."""
    uvicorn = pytest.importorskip("uvicorn")
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("serve started on an unavailable device"))
    from ferlab import Recognizer
    with pytest.raises(FerlabError, match=f"--device {device}"):
        Recognizer(fernet_weights, detector="blazeface", device=device)
    photo, clip = tmp_path / "photo.png", tmp_path / "clip.avi"
    Image.new("RGB", (64, 64)).save(photo)
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 64))
    writer.write(np.zeros((64, 64, 3), np.uint8))
    writer.release()
    for args in (["predict", photo], ["video", clip], ["serve", "--port", "8765"]):
        code, out, err = cli(*args, "--model", fernet_weights, "--device", device)
        assert code == 2 and f"--device {device}" in err and len(err.strip().splitlines()) == 1, (args, err)


def test_animated_gif_is_read_by_its_first_frame(cli, capsys, fernet_weights, astronaut, tmp_path):
    """A multi-frame GIF given to predict is recognised on its first frame."""
    gif = tmp_path / "moving.gif"
    frames = [Image.fromarray(astronaut), Image.fromarray(np.zeros_like(astronaut))]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    code, out, err = cli("predict", gif, "--model", fernet_weights)
    assert code == 0, err
    assert close_box(json.loads(out)["faces"][0]["box"], ASTRONAUT_BOX)


@pytest.mark.parametrize("card, problem", [
    ("{not json", r"card\.json: model card is not valid JSON"),
    ('["classes"]', r"card\.json: model card is a JSON list, not an object"),
    (json.dumps({"classes": list(FER2013_CLASSES)}), r"card\.json: the model card lists 7 classes .* but .*card\.safetensors"
                                                     r" holds 8 "),
])
def test_model_card_beside_the_weights_is_checked(cli, capsys, ferplus8_weights, astronaut, tmp_path, card, problem):
    """A card NAME.json beside NAME.safetensors that is not JSON was a traceback; one whose classes
    disagree with the weights' (7 named, 8 outputs) was silently ignored. Both: one line naming the files."""
    import re
    import shutil

    weights = tmp_path / "card.safetensors"
    shutil.copy(ferplus8_weights, weights)
    (tmp_path / "card.json").write_text(card)
    with pytest.raises(FerlabError, match=problem):
        Recognizer(weights, detector="none")
    photo = tmp_path / "face.png"
    Image.fromarray(astronaut).save(photo)
    code, out, err = cli("predict", photo, "--model", weights)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and re.search(problem, err), err


def test_outputs_never_overwrite_the_inputs(cli, capsys, fernet_weights, astronaut, tmp_path):
    """--annotate onto the photos' own folder, and -o naming a photo, overwrote the user's photos:
    now one line, exit 2, and every photo is left as it was."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(astronaut).save(photos / "x.jpg")
    Image.fromarray(astronaut).save(photos / "y.png")
    before = {p: p.read_bytes() for p in photos.iterdir()}
    for args, name in [((photos, "--annotate", photos), "x.jpg"),
                       ((photos / "x.jpg", "--annotate", photos), "x.jpg"),
                       ((photos, "-o", photos / "y.png"), "y.png"),
                       ((photos / "x.jpg", "-o", tmp_path / "photos" / ".." / "photos" / "x.jpg"), "x.jpg")]:
        code, out, err = cli("predict", *args, "--model", fernet_weights)
        assert code == 2 and len(err.strip().splitlines()) == 1 and name in err and "input" in err, (args, err)
        assert {p: p.read_bytes() for p in photos.iterdir()} == before, args
    link = tmp_path / "link.jpg"  # another name for the same file
    link.hardlink_to(photos / "x.jpg")
    code, out, err = cli("predict", photos / "x.jpg", "-o", link, "--model", fernet_weights)
    assert code == 2 and "link.jpg" in err and {p: p.read_bytes() for p in photos.iterdir()} == before


def test_inputs_with_the_same_name_get_distinct_annotations(cli, capsys, fernet_weights, astronaut, tmp_path):
    """A/x.jpg b/x.jpg --annotate out/: one annotation was silently lost."""
    for folder, image in (("a", astronaut), ("b", astronaut[:, ::-1])):
        (tmp_path / folder).mkdir()
        Image.fromarray(image).save(tmp_path / folder / "x.jpg")
    out = tmp_path / "out"
    code, stdout, err = cli("predict", tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg", "--model", fernet_weights,
                            "--annotate", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["x-2.jpg", "x.jpg"]
    first, second = (cv2.imread(str(out / name)) for name in ("x.jpg", "x-2.jpg"))
    assert np.abs(first.astype(int) - second[:, ::-1]).mean() < 20  # b's (mirrored) photo went to x-2.jpg
    code, stdout, err = cli("predict", tmp_path / "a", tmp_path / "b", "--model", fernet_weights, "--annotate", out)
    assert code == 0 and sorted(p.name for p in out.iterdir()) == ["x-2.jpg", "x.jpg"], err


def test_the_face_framing_is_read_from_the_model_card(fernet_weights, astronaut, tmp_path):
    """The crop framing is the model's, from its card's input (as timm keeps the crop in each model's
    config), spec's defaults for a card without it; an ensemble must agree on it; a card naming an
    input ferlab does not make is one line."""
    from ferlab.checkpoint import save_weights
    from ferlab.inference.faces import create_detector, crop_faces
    from ferlab.spec import CROP_SCALE, CROP_SHIFT

    model, meta = load_model(str(fernet_weights))
    meta.pop("weights_path")

    def saved(name, **inp):
        save_weights(tmp_path / f"{name}.safetensors", model, {**meta, "input": inp})
        return str(tmp_path / f"{name}.safetensors")

    assert Recognizer(saved("old"), backend="onnx").framing == (CROP_SCALE, CROP_SHIFT)  # a card from before
    wide = Recognizer(saved("wide", crop_scale=1.6, crop_shift=0.05), backend="onnx")
    assert wide.framing == (1.6, 0.05)
    faces = create_detector("blazeface").detect(astronaut)
    want = wide.predict_faces(crop_faces(astronaut, faces, 1.6, 0.05))
    got = wide.predict(astronaut)
    assert [f["probs"] for f in got] == [f["probs"] for f in want]
    assert got[0]["probs"] != Recognizer(fernet_weights, backend="onnx").predict(astronaut)[0]["probs"]
    with pytest.raises(FerlabError, match="an ensemble's members must take the same face crops"):
        Recognizer([fernet_weights, saved("wide2", crop_scale=1.6)], backend="onnx")
    with pytest.raises(FerlabError, match=r"big\.safetensors: the model takes 64x64 faces"):
        Recognizer(saved("big", size=64), backend="onnx")


def test_predict_frame_without_pandas_says_so_in_one_line(recognizer, astronaut, monkeypatch):
    import sys
    from ferlab.errors import FerlabError
    monkeypatch.setitem(sys.modules, "pandas", None)   # import pandas -> ImportError
    with pytest.raises(FerlabError, match="needs pandas: pip install pandas"):
        recognizer.predict_frame(astronaut)


def test_predict_frame_is_one_row_per_face(recognizer, astronaut, cat):
    pandas = pytest.importorskip("pandas")
    frame = recognizer.predict_frame([astronaut, cat])
    assert isinstance(frame, pandas.DataFrame) and len(frame) == 1 and frame["image"].tolist() == [0]
    assert list(frame.columns[:9]) == ["image", "face", "x", "y", "w", "h", "score", "label", "confidence"]
    assert list(frame.columns[9:]) == list(recognizer.classes)
    assert frame.loc[0, "label"] == recognizer.predict(astronaut)[0]["label"]


def test_predict_frame_rows_without_pandas_installed(recognizer, astronaut, cat, monkeypatch):
    """The rows predict_frame hands to pandas.DataFrame, checked with a stand-in when pandas is missing."""
    import sys
    import types
    fake = types.SimpleNamespace(DataFrame=lambda rows, columns: (rows, columns))
    monkeypatch.setitem(sys.modules, "pandas", fake)
    rows, columns = recognizer.predict_frame([astronaut, cat])
    assert columns == ["image", "face", "x", "y", "w", "h", "score", "label", "confidence", *recognizer.classes]
    assert len(rows) == 1 and rows[0]["image"] == 0 and rows[0]["face"] == 0
    face = recognizer.predict(astronaut)[0]
    assert [rows[0][k] for k in "xywh"] == face["box"] and rows[0]["label"] == face["label"]
    assert all(rows[0][c] == face["probs"][c] for c in recognizer.classes)
    rows, _ = recognizer.predict_frame(astronaut)   # one image
    assert len(rows) == 1
