"""Expressions in videos and live from a webcam: `ferlab video` and `ferlab webcam`.

`ferlab video IN` reads every frame, recognises faces on every N-th (--every), and writes a CSV
timeline (one row per face per processed frame: frame, time_s, face (index in the frame),
face_id, box, label, confidence, probabilities; stdout unless --csv) and/or an annotated mp4
(--out; every frame, boxes from the latest processed frame). face_id follows each face from
frame to frame (`Tracker`: nearest face of the previous processed frames, centre distance
under one box side). At the end one line per face id goes to stderr (frames seen, first-last
time, dominant expression), and --summary FILE writes that per-face table as CSV (face_id,
frames, first/last frame and time, dominant, mean probabilities). --smooth K adds a smoothed
label: the face's probabilities averaged over its track's last K processed frames. Outputs
are written atomically, and never over the input or each other (refused in one line).
--adapt first adapts the model to the faces of up to ADAPT_FRAMES frames spread over the video
(`Recognizer.adapt`: one more, partial, pass over the file).

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
from typing import Iterator

import cv2
import numpy as np

from ferlab.atomic import atomic_write, refuse_overwrite
from ferlab.errors import FerlabError
from ferlab.inference.images import check_writable_file, draw_faces, rounded
from ferlab.inference.adapt import adaptation_line
from ferlab.inference.recognizer import add_model_arguments, recognizer_from_args

ADAPT_FRAMES = 300  # --adapt reads the faces of this many frames, spread over the video


class Tracker:
    """Follows faces from processed frame to processed frame and gives each one an id.

    A face is linked to the nearest live track whose last centre lies within one box side (the
    larger of the face's width and height); pairs are taken closest first, so two faces never
    share a track. A face with no track near it starts a new one (ids count up from 0). A track
    not seen for more than `patience` processed frames ends, so a face that leaves and comes back
    later gets a new id; a face missed by the detector for a frame or two keeps its id.
    `update` adds "id" to each face dict and, when smooth > 1, smoothed_label / smoothed_confidence /
    smoothed_probs: the mean of the track's last `smooth` probability vectors. `summary()` lists
    every track: frames seen, first and last frame and time, dominant expression (the argmax of
    its mean probabilities) and those mean probabilities.
    """

    def __init__(self, classes, smooth: int = 1, patience: int = 5):
        self.classes, self.smooth, self.patience = tuple(classes), smooth, patience
        self.live: list[dict] = []  # tracks still matched against new faces
        self.tracks: list[dict] = []  # every track, in id order
        self.step = 0  # processed frames so far

    def update(self, faces: list[dict], frame: int = 0, time_s: float = 0.0) -> list[dict]:
        centres = [np.array([x + w / 2, y + h / 2]) for x, y, w, h in (f["box"] for f in faces)]
        pairs = sorted((float(np.linalg.norm(c - t["centre"])), i, j)
                       for i, c in enumerate(centres) for j, t in enumerate(self.live))
        match, used = {}, set()
        for dist, i, j in pairs:
            if i not in match and j not in used and dist < max(faces[i]["box"][2:]):
                match[i] = j
                used.add(j)
        for i, face in enumerate(faces):
            if i in match:
                track = self.live[match[i]]
            else:
                track = {"id": len(self.tracks), "recent": deque(maxlen=self.smooth), "sum": np.zeros(len(self.classes)),
                         "frames": 0, "first": (frame, time_s)}
                self.tracks.append(track)
                self.live.append(track)
            probs = np.array([face["probs"][c] for c in self.classes])
            track.update(centre=centres[i], seen=self.step, last=(frame, time_s))
            track["recent"].append(probs)
            track["sum"] += probs
            track["frames"] += 1
            face["id"] = track["id"]
            if self.smooth > 1:
                mean = np.mean(track["recent"], axis=0)
                k = int(mean.argmax())
                face["smoothed_label"], face["smoothed_confidence"] = self.classes[k], float(mean[k])
                face["smoothed_probs"] = {c: float(v) for c, v in zip(self.classes, mean)}
        self.live = [t for t in self.live if self.step - t["seen"] < self.patience]
        self.step += 1
        return faces

    def summary(self) -> list[dict]:
        out = []
        for t in self.tracks:
            mean = t["sum"] / t["frames"]
            k = int(mean.argmax())
            out.append({"id": t["id"], "frames": t["frames"], "first_frame": t["first"][0], "last_frame": t["last"][0],
                        "first_s": round(t["first"][1], 3), "last_s": round(t["last"][1], 3),
                        "dominant": self.classes[k], "mean_probs": {c: round(float(v), 4) for c, v in zip(self.classes, mean)}})
        return out


class Smoother(Tracker):
    """Tracker(classes, smooth=k): the moving average of each face's probabilities over its last k frames."""

    def __init__(self, k: int, classes):
        super().__init__(classes, smooth=k)


def open_video(path) -> cv2.VideoCapture:
    path = Path(path)
    if not path.is_file():
        raise FerlabError(f"{path}: no such video file")
    if is_still_image(path):  # OpenCV would open it as a one-frame "video"
        raise FerlabError(f"{path}: a still image, no frames could be read as video (for photos use `ferlab predict`); "
                          "nothing written")
    with quiet_opencv():
        cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise FerlabError(f"{path}: cannot open as a video (not a video, or a codec OpenCV cannot read)")
    ok, frame = cap.read()
    cap.release()
    if not ok or frame is None:
        raise FerlabError(f"{path}: cannot read any frame from this video")
    with quiet_opencv():  # a fresh capture: seeking back to frame 0 loses a one-frame video's only frame
        return cv2.VideoCapture(str(path))


def is_still_image(path) -> bool:
    """Whether Pillow recognises the file as an image (it reads only the header)."""
    from PIL import Image

    try:
        with Image.open(path):
            return True
    except Exception:  # noqa: BLE001 - anything Pillow cannot open is not a photo
        return False


@contextlib.contextmanager
def quiet_opencv():
    """Silence OpenCV's own log lines (e.g. "can't open camera by index"): ferlab says it in one."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)   # OpenCV 5 keeps it only here
    set_level = getattr(cv2, "setLogLevel", None) or getattr(logging, "setLogLevel", None)
    old = set_level(0) if set_level else None
    try:
        yield
    finally:
        if old is not None:
            set_level(old)


def timeline_header(classes, smooth: bool) -> list[str]:
    cols = ["frame", "time_s", "face", "face_id", "x", "y", "w", "h", "score", "label", "confidence"]
    cols += [f"prob_{c}" for c in classes]
    return cols + (["smoothed_label", "smoothed_confidence"] if smooth else [])


def timeline_rows(frame: int, time_s: float, faces: list[dict], classes, smooth: bool) -> list[list]:
    rows = []
    for i, f in enumerate(rounded(faces)):
        row = [frame, round(time_s, 3), i, f.get("id", ""), *f["box"], f["score"], f["label"], f["confidence"]]
        row += [f["probs"][c] for c in classes]
        rows.append(row + ([f["smoothed_label"], f["smoothed_confidence"]] if smooth else []))
    return rows


def summary_header(classes) -> list[str]:
    return ["face_id", "frames", "first_frame", "last_frame", "first_s", "last_s", "dominant"] + [f"mean_prob_{c}" for c in classes]


def summary_rows(summary: list[dict], classes) -> list[list]:
    return [[t["id"], t["frames"], t["first_frame"], t["last_frame"], t["first_s"], t["last_s"], t["dominant"]]
            + [t["mean_probs"][c] for c in classes] for t in summary]


def print_summary(summary: list[dict], file=None, limit: int = 20) -> None:
    """One line per tracked face (to stderr): id, frames seen, first-last time, dominant expression and its mean probability."""
    file = file or sys.stderr
    for t in summary[:limit]:
        print(f"  face {t['id']}: {t['frames']} frames, {t['first_s']:.2f}-{t['last_s']:.2f} s, "
              f"mostly {t['dominant']} ({t['mean_probs'][t['dominant']]:.2f})", file=file)
    if len(summary) > limit:
        print(f"  ... and {len(summary) - limit} more (--summary FILE lists them all)", file=file)


def process_video(rec, path, out_path=None, csv_file=None, every: int = 1, smooth: int = 1, progress: bool = True) -> dict:
    """Run the recognizer over a video; write the annotated mp4 (to out_path) and CSV rows (to the
    open text file csv_file). Returns counts and "summary", the per-face list of Tracker.summary(), plus
    "announced", the header's frame count, when fewer frames could be read (a truncated file).
    FerlabError when no frame can be read: out_path is then left as it was."""
    from tqdm import tqdm

    if every < 1 or smooth < 1:
        raise FerlabError("--every and --smooth must be at least 1")
    cap = open_video(path)
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    fps = fps if 0 < fps < 1000 else 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer = tmp_out = None
    tracker = Tracker(rec.classes, smooth=smooth)
    smoothed = smooth > 1
    csv_writer = csv.writer(csv_file) if csv_file is not None else None
    if csv_writer:
        csv_writer.writerow(timeline_header(rec.classes, smoothed))
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
                faces = tracker.update(rec.predict(frame, color="bgr"), index, index / fps)
                counts["processed"] += 1
                counts["faces"] += len(faces)
                if csv_writer:
                    csv_writer.writerows(timeline_rows(index, index / fps, faces, rec.classes, smoothed))
            if out_path is not None:
                if writer is None:
                    h, w = frame.shape[:2]
                    tmp_out = _temp_name(out_path)
                    writer = cv2.VideoWriter(str(tmp_out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                    if not writer.isOpened():
                        raise FerlabError(f"{out_path}: OpenCV cannot write an mp4v video here")
                writer.write(draw_faces(frame, faces, label_key="smoothed_label" if smoothed else "label"))
            index += 1
            bar.update(1)
        bar.close()
        if index == 0:  # open_video read one, but this capture none (the file changed meanwhile?)
            raise FerlabError(f"{path}: no frames could be read as video; nothing written")
        counts["frames"] = index
        if total and index < total:
            counts["announced"] = total
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
    counts["summary"] = tracker.summary()
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
    parser.add_argument("--summary", metavar="FILE", help="write one CSV row per tracked face (id, frames, first/last time, "
                        "dominant expression, mean probabilities)")
    parser.add_argument("--adapt", action="store_true", help="first adapt the model to the faces of up to "
                        f"{ADAPT_FRAMES} frames spread over the video, without labels (Recognizer.adapt)")
    add_model_arguments(parser)


def sampled_frames(path, count: int = ADAPT_FRAMES) -> Iterator[np.ndarray]:
    """Up to `count` BGR frames spread evenly over a video (every k-th frame read in order)."""
    cap = open_video(path)
    try:
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or count
        step, index = max(1, total // count), 0
        while index < step * count:
            ok, frame = cap.read()
            if not ok:
                break
            if index % step == 0:
                yield frame
            index += 1
    finally:
        cap.release()


def run_video(args) -> int:
    summary_path = getattr(args, "summary", None)
    outputs = [(option, target) for option, target in (("--out", args.out), ("--csv", args.csv), ("--summary", summary_path))
               if target and target != "-"]
    refuse_overwrite(outputs, [args.input])
    for _, target in outputs:
        check_writable_file(target)
    open_video(args.input).release()  # fail fast, before loading the model
    rec = recognizer_from_args(args)
    if getattr(args, "adapt", False):
        rec.adapt(sampled_frames(args.input, ADAPT_FRAMES), color="bgr")
        print(f"ferlab video: {adaptation_line(rec.adaptation)}", file=sys.stderr)
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
    if summary_path:
        def write_summary(tmp):
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(summary_header(rec.classes))
                w.writerows(summary_rows(counts["summary"], rec.classes))
        try:
            atomic_write(summary_path, write_summary)
        except OSError as e:
            raise FerlabError(f"{summary_path}: cannot write ({e.strerror or e})") from None
    wrote = ", ".join(p for p in (args.out, args.csv if args.csv != "-" else None, summary_path) if p)
    if counts.get("announced"):
        print(f"ferlab video: warning: {args.input}: read {counts['frames']} of the {counts['announced']} frames its "
              "header announces (truncated or damaged file); the outputs cover those", file=sys.stderr)
    print(f"ferlab video: {counts['frames']} frames, {counts['processed']} recognised, {counts['faces']} faces, "
          f"{len(counts['summary'])} face ids" + (f" -> {wrote}" if wrote else ""), file=sys.stderr)
    print_summary(counts["summary"])
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
