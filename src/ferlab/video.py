"""Expressions in videos and live from a webcam: `ferlab video` and `ferlab webcam`.

`ferlab video IN` reads every frame, recognises faces on every N-th (--every), and writes a CSV
timeline (one row per face per processed frame: frame, time_s, face, box, label, confidence,
probabilities; stdout unless --csv) and/or an annotated mp4 (--out; every frame, boxes from
the latest processed frame). --smooth K adds a smoothed label: each face is linked to the
nearest face of the previous processed frame (centre distance under one box width) and its
probabilities are averaged over its last K processed frames. Outputs are written atomically.

`ferlab webcam` shows the camera with boxes and labels in a window; q or Esc quits. It needs a
display and an OpenCV built with GUI support (opencv-python, not opencv-python-headless).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
from collections import deque
from pathlib import Path

import cv2
import numpy as np

from ferlab.atomic import atomic_write
from ferlab.errors import FerlabError
from ferlab.images import check_writable_file, draw_faces, rounded
from ferlab.recognizer import add_model_arguments, recognizer_from_args


class Smoother:
    """Moving average of each face's probabilities over its last k frames (nearest-centre tracking)."""

    def __init__(self, k: int, classes):
        self.k, self.classes = k, tuple(classes)
        self.tracks: list[tuple[np.ndarray, deque]] = []  # (centre, recent probability vectors)

    def update(self, faces: list[dict]) -> list[dict]:
        """Adds smoothed_label / smoothed_confidence / smoothed_probs to each face dict (in place)."""
        free = list(self.tracks)
        tracks = []
        for face in faces:
            x, y, w, h = face["box"]
            centre = np.array([x + w / 2, y + h / 2])
            history = None
            if free:
                dists = [np.linalg.norm(c - centre) for c, _ in free]
                j = int(np.argmin(dists))
                if dists[j] < max(w, h):
                    history = free.pop(j)[1]
            history = history if history is not None else deque(maxlen=self.k)
            history.append(np.array([face["probs"][c] for c in self.classes]))
            tracks.append((centre, history))
            mean = np.mean(history, axis=0)
            i = int(mean.argmax())
            face["smoothed_label"], face["smoothed_confidence"] = self.classes[i], float(mean[i])
            face["smoothed_probs"] = {c: float(v) for c, v in zip(self.classes, mean)}
        self.tracks = tracks
        return faces


def open_video(path) -> cv2.VideoCapture:
    path = Path(path)
    if not path.is_file():
        raise FerlabError(f"{path}: no such video file")
    with quiet_opencv():
        cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise FerlabError(f"{path}: cannot open as a video (not a video, or a codec OpenCV cannot read)")
    ok, frame = cap.read()
    if not ok or frame is None:
        cap.release()
        raise FerlabError(f"{path}: cannot read any frame from this video")
    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
    return cap


@contextlib.contextmanager
def quiet_opencv():
    """Silence OpenCV's own log lines (e.g. "can't open camera by index"): ferlab says it in one."""
    old = cv2.setLogLevel(0) if hasattr(cv2, "setLogLevel") else None
    try:
        yield
    finally:
        if old is not None:
            cv2.setLogLevel(old)


def timeline_header(classes, smooth: bool) -> list[str]:
    cols = ["frame", "time_s", "face", "x", "y", "w", "h", "score", "label", "confidence"] + [f"prob_{c}" for c in classes]
    return cols + (["smoothed_label", "smoothed_confidence"] if smooth else [])


def timeline_rows(frame: int, time_s: float, faces: list[dict], classes, smooth: bool) -> list[list]:
    rows = []
    for i, f in enumerate(rounded(faces)):
        row = [frame, round(time_s, 3), i, *f["box"], f["score"], f["label"], f["confidence"]] + [f["probs"][c] for c in classes]
        rows.append(row + ([f["smoothed_label"], f["smoothed_confidence"]] if smooth else []))
    return rows


def process_video(rec, path, out_path=None, csv_file=None, every: int = 1, smooth: int = 1, progress: bool = True) -> dict:
    """Run the recognizer over a video; write the annotated mp4 (to out_path) and CSV rows (to the
    open text file csv_file). Returns counts."""
    from tqdm import tqdm

    if every < 1 or smooth < 1:
        raise FerlabError("--every and --smooth must be at least 1")
    cap = open_video(path)
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    fps = fps if 0 < fps < 1000 else 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer = tmp_out = None
    smoother = Smoother(smooth, rec.classes) if smooth > 1 else None
    csv_writer = csv.writer(csv_file) if csv_file is not None else None
    if csv_writer:
        csv_writer.writerow(timeline_header(rec.classes, smoother is not None))
    counts = {"frames": 0, "processed": 0, "faces": 0}
    faces: list[dict] = []
    try:
        bar = tqdm(total=total, unit="frame", disable=not progress or None, file=sys.stderr)
        index = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if index % every == 0:
                faces = rec.predict(frame, color="bgr")
                if smoother:
                    smoother.update(faces)
                counts["processed"] += 1
                counts["faces"] += len(faces)
                if csv_writer:
                    csv_writer.writerows(timeline_rows(index, index / fps, faces, rec.classes, smoother is not None))
            if out_path is not None:
                if writer is None:
                    h, w = frame.shape[:2]
                    tmp_out = _temp_name(out_path)
                    writer = cv2.VideoWriter(str(tmp_out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                    if not writer.isOpened():
                        raise FerlabError(f"{out_path}: OpenCV cannot write an mp4v video here")
                writer.write(draw_faces(frame, faces, label_key="smoothed_label" if smoother else "label"))
            index += 1
            bar.update(1)
        bar.close()
        counts["frames"] = index
        if writer is not None:
            writer.release()
            writer = None
            os.replace(tmp_out, out_path)
            tmp_out = None
    finally:
        cap.release()
        if writer is not None:
            writer.release()
        if tmp_out is not None:
            Path(tmp_out).unlink(missing_ok=True)
    return counts


def _temp_name(path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix or '.mp4'}")


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", help="video file")
    parser.add_argument("--out", help="write an annotated video here (mp4)")
    parser.add_argument("--csv", help="write the per-frame, per-face timeline here (default: stdout when --out is not given)")
    parser.add_argument("--every", type=int, default=1, metavar="N", help="recognise on every N-th frame (default 1)")
    parser.add_argument("--smooth", type=int, default=1, metavar="K", help="also report labels averaged over K processed frames")
    add_model_arguments(parser)


def run_video(args) -> int:
    for target in (args.out, args.csv):
        if target and target != "-":
            check_writable_file(target)
    open_video(args.input).release()  # fail fast, before loading the model
    rec = recognizer_from_args(args)
    kwargs = dict(every=args.every, smooth=args.smooth)
    csv_to_stdout = args.csv == "-" or (args.csv is None and args.out is None)
    if args.csv and args.csv != "-":
        counts = {}

        def write(tmp):
            with open(tmp, "w", newline="") as f:
                counts.update(process_video(rec, args.input, args.out, f, **kwargs))
        try:
            atomic_write(args.csv, write)
        except OSError as e:
            raise FerlabError(f"{args.csv}: cannot write ({e.strerror or e})") from None
    else:
        counts = process_video(rec, args.input, args.out, sys.stdout if csv_to_stdout else None, **kwargs)
    rec.close()
    wrote = ", ".join(p for p in (args.out, args.csv if args.csv != "-" else None) if p)
    print(f"ferlab video: {counts['frames']} frames, {counts['processed']} recognised, {counts['faces']} faces"
          + (f" -> {wrote}" if wrote else ""), file=sys.stderr)
    return 0


# ---- webcam -----------------------------------------------------------------------------------

def check_display() -> None:
    """FerlabError unless a window can be shown: a display on Linux and an OpenCV with highgui."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise FerlabError("no display available (DISPLAY is not set): the webcam window needs a desktop session")
    if not gui_available():
        raise FerlabError("this OpenCV has no GUI support (opencv-python-headless); "
                          "pip install opencv-python to show the webcam window")


def gui_available() -> bool:
    """Whether OpenCV was built with a highgui backend (headless wheels report 'GUI: NONE')."""
    info = cv2.getBuildInformation()
    for line in info.splitlines():
        if line.strip().startswith("GUI:"):
            return line.split(":", 1)[1].strip().upper() not in ("", "NONE")
    return False


def open_camera(camera) -> cv2.VideoCapture:
    source = int(camera) if str(camera).isdigit() else str(camera)
    with quiet_opencv():
        cap = cv2.VideoCapture(source)
        ok = cap.isOpened() and cap.read()[0]
    if not ok:
        cap.release()
        raise FerlabError(f"camera {camera}: cannot be opened (no such camera, or it is busy)")
    return cap


def add_webcam_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--camera", default="0", help="camera index (default 0) or a stream URL")
    parser.add_argument("--every", type=int, default=1, metavar="N", help="recognise on every N-th frame")
    parser.add_argument("--smooth", type=int, default=5, metavar="K", help="average labels over K frames (default 5)")
    add_model_arguments(parser)


def run_webcam(args) -> int:
    check_display()
    cap = open_camera(args.camera)
    rec = recognizer_from_args(args)
    smoother = Smoother(args.smooth, rec.classes) if args.smooth > 1 else None
    title = "ferlab webcam (q to quit)"
    try:
        cv2.namedWindow(title, cv2.WINDOW_NORMAL)
    except cv2.error as e:
        cap.release()
        raise FerlabError(f"cannot open a window ({str(e).strip().splitlines()[-1]})") from None
    faces, index = [], 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                raise FerlabError(f"camera {args.camera}: stopped delivering frames")
            if index % max(1, args.every) == 0:
                faces = rec.predict(frame, color="bgr")
                if smoother:
                    smoother.update(faces)
            cv2.imshow(title, draw_faces(frame, faces, label_key="smoothed_label" if smoother else "label"))
            index += 1
            key = cv2.waitKey(1) & 0xFF
            if key in (ord("q"), 27) or cv2.getWindowProperty(title, cv2.WND_PROP_VISIBLE) < 1:
                break
    finally:
        cap.release()
        cv2.destroyAllWindows()
        rec.close()
    return 0
