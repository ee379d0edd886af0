import csv
import io

import cv2
import numpy as np
import pytest

import ferlab.inference.video as video
from ferlab.errors import FerlabError
from ferlab.labels import FER2013_CLASSES

pytestmark = pytest.mark.usefixtures("one_thread")


def write_mp4(path, frames) -> str:
    """frames (BGR uint8 arrays of one size) -> a 10 fps mp4 at path."""
    frames = list(frames)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (w, h))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory, astronaut):
    """An 8-frame 10 fps mp4 of the astronaut drifting right (1 face per frame), 320x240."""
    face = cv2.cvtColor(cv2.resize(astronaut, (240, 240)), cv2.COLOR_RGB2BGR)

    def frame(i):
        out = np.full((240, 320, 3), 90, np.uint8)
        out[:, 5 * i:5 * i + 240] = face
        return out
    return write_mp4(tmp_path_factory.mktemp("video") / "astronaut.mp4", map(frame, range(8)))



def test_video_timeline_and_annotated_mp4(cli, capsys, clip, fernet_weights, tmp_path):
    out_mp4, out_csv = tmp_path / "ann.mp4", tmp_path / "timeline.csv"
    code, out, err = cli("video", clip, "--model", fernet_weights, "--out", out_mp4, "--csv", out_csv,
                             "--every", "2", "--smooth", "3")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert [r["frame"] for r in rows] == ["0", "2", "4", "6"]  # one face on every 2nd frame
    assert [float(r["time_s"]) for r in rows] == [0.0, 0.2, 0.4, 0.6]
    assert {r["face"] for r in rows} == {"0"} and {r["face_id"] for r in rows} == {"0"}  # one face, one id
    assert [k for k in rows[0] if k.startswith("prob_")] == [f"prob_{c}" for c in FER2013_CLASSES]
    assert rows[0]["smoothed_label"] in FER2013_CLASSES
    # frame 0's smoothed confidence is its own; later ones average the track so far
    assert float(rows[0]["smoothed_confidence"]) == pytest.approx(float(rows[0]["confidence"]), abs=1e-3)
    xs = [int(r["x"]) for r in rows]
    assert xs == sorted(xs) and xs[-1] - xs[0] >= 20  # the face moves right
    cap = cv2.VideoCapture(str(out_mp4))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 8
    ok, frame = cap.read()
    assert ok and frame.shape == (240, 320, 3)
    cap.release()
    assert "8 frames, 4 recognised, 4 faces" in err
    assert not list(tmp_path.glob(".*tmp*"))


def test_video_csv_to_stdout(cli, capsys, clip, fernet_weights):
    code, out, err = cli("video", clip, "--model", fernet_weights, "--every", "4")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["frame"] for r in rows] == ["0", "4"] and "smoothed_label" not in rows[0]


def test_smoother_follows_the_nearest_face():
    classes = ("a", "b")
    s = video.Smoother(3, classes)

    def face(x, pa):
        return {"box": [x, 0, 20, 20], "probs": {"a": pa, "b": 1 - pa}}

    s.update([face(0, 1.0), face(100, 0.0)])
    out = s.update([face(105, 0.2), face(3, 0.6)])  # order swapped, both moved a little
    assert out[0]["smoothed_probs"]["a"] == pytest.approx(0.1)  # (0.0 + 0.2) / 2
    assert out[1]["smoothed_probs"]["a"] == pytest.approx(0.8)  # (1.0 + 0.6) / 2
    out = s.update([face(300, 0.3)])  # far from both: a new track
    assert out[0]["smoothed_probs"]["a"] == pytest.approx(0.3)


def test_tracker_ids_survive_reordering_and_a_missed_frame():
    tracker = video.Tracker(("a", "b"), patience=2)

    def face(x, pa):
        return {"box": [x, 0, 20, 20], "probs": {"a": pa, "b": 1 - pa}}

    assert [f["id"] for f in tracker.update([face(0, 1.0), face(100, 0.0)], 0, 0.0)] == [0, 1]
    assert [f["id"] for f in tracker.update([face(105, 0.2), face(3, 0.6)], 1, 0.1)] == [1, 0]
    assert [f["id"] for f in tracker.update([face(108, 0.4)], 2, 0.2)] == [1]  # face 0 missed once
    assert [f["id"] for f in tracker.update([face(6, 0.8), face(110, 0.0)], 3, 0.3)] == [0, 1]  # and back
    assert [f["id"] for f in tracker.update([face(300, 0.3)], 4, 0.4)] == [2]  # far from both: new
    for step in range(5, 8):
        tracker.update([], step, step / 10)
    assert [f["id"] for f in tracker.update([face(6, 0.5)], 8, 0.8)] == [3]  # track 0 ended (patience)
    s0, s1, s2, s3 = tracker.summary()
    assert (s0["frames"], s0["first_frame"], s0["last_frame"], s0["last_s"]) == (3, 0, 3, 0.3)
    assert s0["dominant"] == "a" and s0["mean_probs"]["a"] == pytest.approx(0.8)  # (1.0 + 0.6 + 0.8) / 3
    assert (s1["frames"], s1["dominant"], s1["mean_probs"]["b"]) == (4, "b", pytest.approx(0.85))
    assert (s2["frames"], s3["frames"], s3["first_frame"]) == (1, 1, 8)


@pytest.fixture(scope="module")
def two_faces(tmp_path_factory, astronaut):
    """A 10-frame 10 fps 480x240 mp4 of two astronauts drifting towards each other; the right
    one is hidden on frame 4 (a blank patch) and is back on frame 5."""
    face = cv2.cvtColor(cv2.resize(astronaut, (200, 200)), cv2.COLOR_RGB2BGR)

    def frame(i):
        out = np.full((240, 480, 3), 90, np.uint8)
        out[20:220, 4 * i:4 * i + 200] = face
        if i != 4:
            out[20:220, 276 - 4 * i:476 - 4 * i] = face[:, ::-1]
        return out
    return write_mp4(tmp_path_factory.mktemp("video") / "two.mp4", map(frame, range(10)))


def test_video_face_ids_and_summary(cli, capsys, two_faces, fernet_weights, tmp_path):
    timeline, summary = tmp_path / "timeline.csv", tmp_path / "faces.csv"
    code, out, err = cli("video", two_faces, "--model", fernet_weights, "--csv", timeline, "--summary", summary)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(timeline.read_text())))
    by_frame = {}
    for r in rows:
        by_frame.setdefault(int(r["frame"]), []).append(r)
    assert sorted(by_frame) == list(range(10)) and [len(by_frame[i]) for i in range(10)] == [2] * 4 + [1] + [2] * 5
    for i, faces in by_frame.items():
        left = min(faces, key=lambda r: int(r["x"]))
        assert left["face_id"] == "0"  # the left face keeps id 0 from frame to frame
        if len(faces) == 2:
            assert max(faces, key=lambda r: int(r["x"]))["face_id"] == "1"  # and the right one id 1, after its gap too
    table = list(csv.DictReader(io.StringIO(summary.read_text())))
    assert [(t["face_id"], t["frames"], t["first_frame"], t["last_frame"]) for t in table] == [("0", "10", "0", "9"),
                                                                                                ("1", "9", "0", "9")]
    assert float(table[1]["first_s"]) == 0.0 and float(table[1]["last_s"]) == pytest.approx(0.9)
    for t in table:
        probs = [float(t[f"mean_prob_{c}"]) for c in FER2013_CLASSES]
        assert sum(probs) == pytest.approx(1, abs=1e-3) and t["dominant"] == FER2013_CLASSES[int(np.argmax(probs))]
    assert "19 faces, 2 face ids" in err
    assert "face 0: 10 frames, 0.00-0.90 s, mostly" in err and "face 1: 9 frames" in err


def test_video_that_cannot_be_opened(cli, capsys, fernet_weights, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    code, out, err = cli("video", bad, "--model", fernet_weights)
    assert code == 2 and err.strip().splitlines() == [f"ferlab video: error: {bad}: cannot open as a video "
                                                      "(not a video, or a codec OpenCV cannot read)"]
    code, out, err = cli("video", tmp_path / "missing.mp4", "--model", fernet_weights)
    assert code == 2 and "missing.mp4: no such video file" in err


def test_video_unwritable_output(cli, capsys, clip, fernet_weights, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code, out, err = cli("video", clip, "--model", fernet_weights, "--out", blocker / "a.mp4")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "file.txt/a.mp4" in err


def test_webcam_needs_a_display(monkeypatch):
    monkeypatch.setattr(video.sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(FerlabError, match="no display available"):
        video.check_display()
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(video.cv2, "getBuildInformation", lambda: "  GUI:                           NONE\n")
    with pytest.raises(FerlabError, match="no GUI support.*opencv-python"):
        video.check_display()


def test_webcam_without_a_camera(cli, capsys, monkeypatch, fernet_weights):
    monkeypatch.setattr(video, "check_display", lambda: None)
    code, out, err = cli("webcam", "--camera", "57", "--model", fernet_weights)
    assert code == 2 and err.strip().splitlines() == ["ferlab webcam: error: camera 57: cannot be opened (no such camera, or it is busy)"]


def test_video_of_a_still_photo_fails_and_keeps_the_outputs(cli, capsys, astronaut, fernet_weights, tmp_path):
    """OpenCV opens a JPEG as a 'video' it then reads no frame from: one-line
    error, exit 2, and the files --out / --csv name are left as they were."""
    photo, keep_mp4, keep_csv = tmp_path / "photo.jpg", tmp_path / "keep.mp4", tmp_path / "keep.csv"
    cv2.imwrite(str(photo), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    keep_mp4.write_bytes(b"my video")
    keep_csv.write_text("my,table\n")
    code, out, err = cli("video", photo, "--model", fernet_weights, "--out", keep_mp4, "--csv", keep_csv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "photo.jpg" in err and "no frames" in err, err
    assert keep_mp4.read_bytes() == b"my video" and keep_csv.read_text() == "my,table\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.csv", "keep.mp4", "photo.jpg"]


def test_truncated_video_says_how_many_frames_it_read(cli, capsys, fernet_weights, tmp_path):
    """A video cut short: the frames read are processed and the count is said."""
    whole, cut = tmp_path / "whole.avi", tmp_path / "cut.avi"
    writer = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    rng = np.random.default_rng(0)
    for _ in range(8):
        writer.write(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    writer.release()
    data = whole.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    code, out, err = cli("video", cut, "--model", fernet_weights, "--csv", tmp_path / "t.csv")
    assert code == 0, err
    import re
    found = re.search(r"read (\d+) of the 8 frames", err)
    assert found and 0 < int(found.group(1)) < 8, err
    assert f"{found.group(1)} frames" in err


def test_one_frame_video_is_a_video(cli, capsys, astronaut, fernet_weights, tmp_path):
    """A valid video of one frame is processed, not refused as 'no frames could be read'."""
    clip, timeline = tmp_path / "one.avi", tmp_path / "t.csv"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (320, 240))
    assert writer.isOpened()
    face = cv2.cvtColor(cv2.resize(astronaut, (240, 240)), cv2.COLOR_RGB2BGR)
    frame = np.full((240, 320, 3), 90, np.uint8)
    frame[:, 40:280] = face
    writer.write(frame)
    writer.release()
    code, out, err = cli("video", clip, "--model", fernet_weights, "--csv", timeline)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(timeline.read_text())))
    assert [r["frame"] for r in rows] == ["0"] and "1 frames, 1 recognised, 1 faces" in err


def test_video_outputs_never_overwrite_the_input_or_each_other(cli, capsys, clip, fernet_weights, tmp_path):
    """--out/--csv/--summary naming the input video overwrote it; two outputs naming one file lost one."""
    import shutil

    video_in = tmp_path / "clip.mp4"
    shutil.copy(clip, video_in)
    data = video_in.read_bytes()
    for option in ("--out", "--csv", "--summary"):
        code, out, err = cli("video", video_in, "--model", fernet_weights, option, tmp_path / "." / "clip.mp4")
        assert code == 2 and len(err.strip().splitlines()) == 1 and "clip.mp4" in err and "input" in err, err
        assert video_in.read_bytes() == data
    code, out, err = cli("video", video_in, "--model", fernet_weights, "--csv", tmp_path / "t.csv", "--summary",
                         tmp_path / "t.csv")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "t.csv" in err and "--csv" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]
