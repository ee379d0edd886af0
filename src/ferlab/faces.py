"""Face detection and cropping: find faces in an RGB photo and cut them out as FER2013 does.

`create_detector(name)` returns a detector whose `detect(image_rgb)` lists `Face`s (box in image
pixels, score, eye landmarks when the backend gives them):

- "mediapipe": MediaPipe's BlazeFace full-range model (the legacy `solutions.face_detection`
  of mediapipe 0.10.21, whose tflite models ship in the wheel, Apache-2.0), with the
  short-range model as a second look when it finds nothing (close-ups). Best face counts in
  benchmarks/detectors.py, ~5-15 ms a photo, eye keypoints for alignment. The default.
- "haar": OpenCV's bundled frontal-face Haar cascade; no extra dependency, but ~20x slower,
  and it misses and invents faces. The fallback when mediapipe is not installed.
- "none" / "full": the whole image is one face, for photos that are already face crops.

Photos larger than a detector's `max_side` are detected on a downscaled copy and the boxes
mapped back. Images smaller than MIN_SIDE pixels on either side hold no face: every detector
returns [] for them.

`crop_faces(image_rgb, faces)` turns faces into (N, 48, 48) uint8 grayscale crops. The crop is a
square around the box centre whose side is `crop_scale` x the box side, shifted by `crop_shift`
box sides. Those numbers were measured, not guessed: we ran each detector on 800 FER2013
Training faces (upscaled, padded with their border) and took the median frame-to-box ratio.
MediaPipe's box is tight (the FER2013 frame is 1.14x its side, centred 3% of the box higher);
Haar's measured 1.01x on those upscaled faces, but on real photos its boxes are ~5% smaller
than MediaPipe's 1.15x crops, so it gets 1.10x. The margin is thus ~7% of the box on each
side, not the 20-25% often used: the classifier sees faces framed like its training data. With eye landmarks the crop is rotated about the face
centre so the eye line is horizontal. Pixels outside the image repeat the border.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import dataclass

import cv2
import numpy as np

from ferlab.errors import FerlabError
from ferlab.spec import CROP_SCALE, CROP_SHIFT, INPUT_SIZE

MIN_SIDE = 8  # images smaller than this (either side) contain no face


@dataclass(frozen=True)
class Face:
    """One detected face. box = (x, y, w, h) in image pixels; landmarks: the subject's eyes."""

    box: tuple[int, int, int, int]
    score: float
    landmarks: dict | None = None  # {"left_eye": (x, y), "right_eye": (x, y)} or None


class Detector:
    """Base class: subclasses implement `_detect` on an image no larger than `max_side`.

    `detect` takes uint8 RGB (H, W, 3) or gray (H, W) arrays, strided views too (e.g. BGR->RGB
    via image[..., ::-1]); at most a 2 x max_side copy is made, whatever the image size.
    """

    name = "base"
    max_side = 1280  # detect on a copy downscaled to this longest side
    crop_scale = 1.15  # crop side / box side (see module docstring)
    crop_shift = 0.0  # vertical shift of the crop centre, in box heights (negative = up)

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        image = _check_image(image_rgb)
        h, w = image.shape[:2]
        if min(h, w) < MIN_SIDE:
            return []
        small, (sx, sy) = downscale(image, self.max_side)
        faces = []
        for (x, y, bw, bh), score, marks in self._detect(small):
            # map back to the full-size image and clip to it
            x0, y0 = max(0.0, x * sx), max(0.0, y * sy)
            x1, y1 = min(float(w), (x + bw) * sx), min(float(h), (y + bh) * sy)
            if x1 - x0 < 1 or y1 - y0 < 1:
                continue
            box = (int(round(x0)), int(round(y0)), max(1, int(round(x1 - x0))), max(1, int(round(y1 - y0))))
            if marks is not None:
                marks = {k: (float(px * sx), float(py * sy)) for k, (px, py) in marks.items()}
            faces.append(Face(box, float(score), marks))
        return sorted(faces, key=lambda f: (f.box[0], f.box[1]))  # left to right: stable face indices

    def _detect(self, image: np.ndarray):
        """Yield ((x, y, w, h) floats, score, landmarks or None) in `image` pixels."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MediaPipeDetector(Detector):
    """BlazeFace via mediapipe 0.10.21's legacy solution.

    model_selection 1 = full range (faces up to ~5 m; the default), 0 = short range (~2 m).
    The full-range model misses faces that fill most of the frame (3 of 9 close-ups in
    benchmarks/detectors.py), so when it finds nothing the short-range model gets a second
    look, at a stricter min score (0.65: the close-ups scored >= 0.71, the one non-face it
    found among 19 no-face photos 0.58; picked on those same photos, so a rough setting).
    close_range_fallback=False turns that off.
    """

    name = "mediapipe"
    max_side = 960  # BlazeFace sees 192x192 (128 short-range): more pixels only cost resize time
    crop_scale = 1.15
    crop_shift = -0.03
    fallback_min_score = 0.65

    def __init__(self, model_selection: int = 1, min_score: float = 0.5, close_range_fallback: bool = True):
        try:
            from mediapipe.python.solutions import face_detection
        except ImportError as e:
            raise FerlabError(f"the mediapipe detector needs mediapipe==0.10.21 (pip install 'ferlab[detect]'): {e}") from None
        self.model_selection, self.min_score = model_selection, min_score
        self.close_range_fallback = close_range_fallback and model_selection == 1
        # The first inference prints TFLite/absl banners on fd 2; load and warm up quietly.
        with _quiet_stderr():
            self._fd = face_detection.FaceDetection(model_selection=model_selection, min_detection_confidence=min_score)
            self._fd.process(np.zeros((64, 64, 3), np.uint8))
            self._near = None
            if self.close_range_fallback:
                self._near = face_detection.FaceDetection(
                    model_selection=0, min_detection_confidence=max(min_score, self.fallback_min_score))
                self._near.process(np.zeros((64, 64, 3), np.uint8))

    def _detect(self, image):
        rgb = _rgb(image)
        detections, min_score = self._fd.process(rgb).detections, self.min_score
        if not detections and self._near is not None:
            detections, min_score = self._near.process(rgb).detections, max(self.min_score, self.fallback_min_score)
        h, w = image.shape[:2]
        for d in detections or []:
            if d.score[0] < min_score:  # mediapipe applies its threshold before weighted NMS
                continue
            b = d.location_data.relative_bounding_box
            k = d.location_data.relative_keypoints  # 0: subject's right eye, 1: subject's left eye
            marks = {"right_eye": (k[0].x * w, k[0].y * h), "left_eye": (k[1].x * w, k[1].y * h)} if len(k) >= 2 else None
            yield (b.xmin * w, b.ymin * h, b.width * w, b.height * h), d.score[0], marks

    def close(self):
        self._fd.close()
        if self._near is not None:
            self._near.close()

    def __repr__(self):
        return (f"MediaPipeDetector(model_selection={self.model_selection}, min_score={self.min_score}, "
                f"close_range_fallback={self.close_range_fallback})")


class HaarDetector(Detector):
    """OpenCV's frontal-face Haar cascade. Score: 1 - exp(-w/5) of the cascade's last-stage
    weight w, monotone but not a probability."""

    name = "haar"
    max_side = 800  # Haar's cost grows with pixels; faces under ~20 px at this size are missed
    crop_scale = 1.10
    crop_shift = 0.0

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5):
        folder = getattr(getattr(cv2, "data", None), "haarcascades", "")
        path = os.path.join(folder, "haarcascade_frontalface_default.xml")
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise FerlabError(f"OpenCV's Haar cascade was not found at {path} (opencv 5 ships none: install opencv<5)")
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors

    def _detect(self, image):
        gray = cv2.equalizeHist(image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        min_size = max(20, min(gray.shape) // 40)
        boxes, _, weights = self._cascade.detectMultiScale3(
            gray, self.scale_factor, self.min_neighbors, minSize=(min_size, min_size), outputRejectLevels=True)
        for (x, y, w, h), wt in zip(boxes, np.ravel(weights) if len(boxes) else []):
            yield (float(x), float(y), float(w), float(h)), 1.0 - math.exp(-max(float(wt), 0.0) / 5.0), None


class FullImageDetector(Detector):
    """The whole image is one face (input already cropped to a face)."""

    name = "full"
    crop_scale = 1.0

    def detect(self, image_rgb):
        image = _check_image(image_rgb)
        h, w = image.shape[:2]
        return [] if min(h, w) < MIN_SIDE else [Face((0, 0, w, h), 1.0, None)]


DETECTORS = {"mediapipe": MediaPipeDetector, "haar": HaarDetector, "full": FullImageDetector, "none": FullImageDetector}


def create_detector(name: str = "auto", **kwargs) -> Detector:
    """'auto' (mediapipe when importable, else haar), 'mediapipe', 'haar', or 'none'/'full'."""
    name = name.lower()
    if name == "auto":
        try:
            return MediaPipeDetector(**kwargs)
        except (FerlabError, RuntimeError, OSError):  # not installed, or its graph failed to load
            return HaarDetector()
    if name not in DETECTORS:
        raise FerlabError(f"unknown face detector {name!r} (known: auto, {', '.join(DETECTORS)})")
    return DETECTORS[name](**kwargs)


def downscale(image: np.ndarray, max_side: int) -> tuple[np.ndarray, tuple[float, float]]:
    """A copy whose longest side is at most max_side, and the (x, y) factors mapping its pixels back.

    Very large images are first subsampled by striding (no full-size temporary), then
    area-averaged, so a 20000x20000 array costs a few MB here.
    """
    h, w = image.shape[:2]
    longest = max(h, w)
    if longest <= max_side:
        return image, (1.0, 1.0)
    step = longest // (2 * max_side)  # keep >= 2x the target before area averaging
    if step > 1:
        image = image[::step, ::step]
    sh, sw = image.shape[:2]
    f = max_side / max(sh, sw)
    size = (max(1, round(sw * f)), max(1, round(sh * f)))
    small = cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_AREA)
    return small, (w / size[0], h / size[1])


def crop_faces(image_rgb: np.ndarray, faces: list[Face], crop_scale: float = CROP_SCALE, crop_shift: float = CROP_SHIFT,
               align: bool = True, size: int = INPUT_SIZE) -> np.ndarray:
    """Cut each face out as a size x size grayscale uint8 crop: (N, size, size).

    Each crop is a square of side crop_scale x max(box w, h) around the box centre (moved by
    crop_shift box heights), rotated so the eyes are level when the face has eye landmarks,
    converted to gray and area-resampled. The defaults are the framing for MediaPipe boxes;
    `crop_faces_for(detector, ...)` uses the detector's own. Only the pixels around each face
    are read, so a huge image costs no full-size copy.
    """
    image = _check_image(image_rgb)
    out = np.empty((len(faces), size, size), np.uint8)
    for i, face in enumerate(faces):
        out[i] = _crop_one(image, face, crop_scale, crop_shift, align, size)
    return out


def crop_faces_for(detector: Detector, image_rgb: np.ndarray, faces: list[Face], align: bool = True) -> np.ndarray:
    """crop_faces with the framing measured for `detector`'s boxes."""
    return crop_faces(image_rgb, faces, detector.crop_scale, detector.crop_shift, align)


def to_float(crops: np.ndarray) -> np.ndarray:
    """uint8 crops -> float32 pixels in [0, 1], the models' input scale."""
    return crops.astype(np.float32) / 255.0


def _crop_one(image, face, crop_scale, crop_shift, align, size):
    x, y, w, h = face.box
    side = crop_scale * max(w, h)
    cx, cy = x + w / 2.0, y + h / 2.0 + crop_shift * h
    angle = 0.0
    if align and face.landmarks and "left_eye" in face.landmarks and "right_eye" in face.landmarks:
        (rx, ry), (lx, ly) = face.landmarks["right_eye"], face.landmarks["left_eye"]
        angle = math.degrees(math.atan2(ly - ry, lx - rx))  # image-left eye -> image-right eye
        if abs(angle) > 60:  # implausible for eye keypoints of an upright detector: skip
            angle = 0.0
    # Read only the axis-aligned region that holds the rotated square (plus a pixel).
    half = side / 2.0 * (abs(math.cos(math.radians(angle))) + abs(math.sin(math.radians(angle)))) + 1
    x0, y0 = int(math.floor(cx - half)), int(math.floor(cy - half))
    x1, y1 = int(math.ceil(cx + half)), int(math.ceil(cy + half))
    H, W = image.shape[:2]
    region = image[max(0, y0):min(H, y1), max(0, x0):min(W, x1)]
    if region.size == 0:
        return np.zeros((size, size), np.uint8)
    gray = region if region.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(region), cv2.COLOR_RGB2GRAY)
    # Shrink big faces with area averaging first, so the rotation works at <= 4x output size.
    f = min(1.0, 4 * size / side)
    if f < 1.0:
        gh, gw = gray.shape
        gray = cv2.resize(gray, (max(1, round(gw * f)), max(1, round(gh * f))), interpolation=cv2.INTER_AREA)
        fx, fy = gray.shape[1] / gw, gray.shape[0] / gh
    else:
        fx = fy = 1.0
    # Centre in region coordinates, then rotate about it into an (s x s) square.
    rcx, rcy = (cx - max(0, x0)) * fx, (cy - max(0, y0)) * fy
    s = max(1, int(round(side * (fx + fy) / 2)))
    m = cv2.getRotationMatrix2D((rcx, rcy), angle, 1.0)
    m[0, 2] += s / 2.0 - rcx
    m[1, 2] += s / 2.0 - rcy
    square = cv2.warpAffine(gray, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    interp = cv2.INTER_AREA if s >= size else cv2.INTER_CUBIC
    return cv2.resize(square, (size, size), interpolation=interp)


def _check_image(image) -> np.ndarray:
    ok = isinstance(image, np.ndarray) and image.dtype == np.uint8 and (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3))
    if not ok:
        got = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise FerlabError(f"expected a uint8 RGB (H, W, 3) or gray (H, W) image, got {got}")
    return image


def _rgb(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else np.ascontiguousarray(image)


@contextlib.contextmanager
def _quiet_stderr():
    """Silence fd 2 (C++ log banners) for the duration."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreters)
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, 2)
        os.close(saved)
