"""Face detection and cropping: find faces in an RGB photo and cut them out as FER2013 does.

`create_detector(name)` returns a detector whose `detect(image_rgb)` lists `Face`s (box in image
pixels, score, eye landmarks when the backend gives them):

- "blazeface" (= "auto", the default): MediaPipe's BlazeFace full-range model, bundled in
  weights/detectors/ as ONNX (Apache-2.0; NOTICE.txt there) and run by onnxruntime, or by
  OpenCV's DNN module without it (blazeface.py), with tiles for small faces in large photos
  and the short-range model on a padded copy for close-ups. Eye keypoints for alignment. No mediapipe, nothing downloaded.
  "mediapipe" (the old default: the same model family through the mediapipe package) is
  accepted as another name for it. Numbers: benchmarks/detectors.py.
- "haar": OpenCV's bundled frontal-face Haar cascade (opencv-python-headless 4.x ships it; in
  5.x it moved to opencv-contrib-python-headless); ~20x slower, and it misses and invents faces.
- "none" / "full": the whole image is one face, for photos that are already face crops.

Photos larger than a detector's `max_side` are detected on a downscaled copy and the boxes
mapped back. Images smaller than MIN_SIDE pixels on either side hold no face: every detector
returns [] for them.

`crop_faces(image_rgb, faces)` turns faces into (N, 48, 48) uint8 grayscale crops. The crop is a
square around the box centre whose side is `crop_scale` x the box side, shifted by `crop_shift`
box sides. The framing is the model's (its card's input, ferlab.spec: 1.15x a BlazeFace box,
centred 3% higher); each detector says how its boxes map onto BlazeFace's (`Detector.framing`).
Those numbers were measured, not guessed: we ran each detector on 800 FER2013
Training faces (upscaled, padded with their border) and took the median frame-to-box ratio.
BlazeFace's box is tight (the FER2013 frame is 1.14x its side, centred 3% of the box higher;
measured with mediapipe's BlazeFace, whose boxes the bundled one reproduces to ~2 px on the
astronaut); Haar's measured 1.01x on those upscaled faces, but on real photos its boxes are ~5%
smaller than BlazeFace's 1.15x crops, so it gets 1.10x. The margin is thus ~7% of the box on
each side, not the 20-25% often used: the classifier sees faces framed like its training data.
With eye landmarks the crop is rotated about the face centre so the eye line is horizontal.
Pixels outside the image repeat the border.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import cv2
import numpy as np

from ferlab.inference.blazeface import BlazeFace
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
    # This detector's boxes against BlazeFace's, on which models' framing is written (ferlab.spec):
    box_scale = 1.0  # BlazeFace box side / this box's side
    box_shift = 0.0  # BlazeFace box centre - this box's centre, in this box's heights (negative = up)

    def framing(self, crop_scale: float = CROP_SCALE, crop_shift: float = CROP_SHIFT) -> tuple[float, float]:
        """A model's framing (crop side / box side, centre shift in box heights, on BlazeFace boxes:
        its card's input) as (crop_scale, crop_shift) for this detector's boxes."""
        return crop_scale * self.box_scale, self.box_shift + crop_shift * self.box_scale

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


class BlazeFaceDetector(Detector):
    """MediaPipe's BlazeFace models, bundled (see blazeface.py; run by onnxruntime, or by OpenCV
    without it): the full-range model on the whole photo, plus two looks that the plain model lacks:

    - Small faces in large photos: when the photo's longest side exceeds `tile_above` px, it is
      also cut into tiles of `tile` px overlapping by >= 1/6 (8 tiles at 1920x1080); a face
      found in a tile is kept if it scores at least `tile_min_score` (more looks, more chances
      to invent a face), does not touch a tile edge inside the photo (a neighbouring tile or the
      whole-photo pass sees it whole) and does not lie on a face already found. 640x480 photos
      get no tiles, to stay inside the latency budget (faces under ~50 px there are often missed).
    - Close-ups: when nothing is found, the short-range model (trained on faces near the camera)
      looks at the photo centred on a black canvas `pad` times its size, at the stricter score
      `closeup_min_score`: a face filling the photo, forehead and chin cut, is then found.
      pad=0 turns this off. Only photos without a (full-range) face pay for it, ~2 ms.

    Settings were picked on benchmarks/detectors.py, on the same photos it reports (a rough
    setting): close-ups found vs faces invented in 19 no-face photos (0.7 is above the best
    no-face score the close-up look gave, 0.62; 0.65 above the best a tile gave, 0.60). The
    boxes have the framing of mediapipe's (the same model), so the crop geometry is unchanged.
    """

    name = "blazeface"
    max_side = 1920  # larger photos are detected on a copy downscaled to this

    def __init__(self, min_score: float = 0.5, tile: int = 640, tile_above: int = 960, pad: float = 1.5,
                 closeup_min_score: float = 0.7, tile_min_score: float = 0.65, runtime: str = "auto"):
        self.model = BlazeFace("full", min_score=min_score, runtime=runtime)
        self.near = BlazeFace("short", min_score=closeup_min_score, runtime=runtime) if pad > 1 else None
        self.min_score, self.tile, self.tile_above = min_score, tile, tile_above
        self.pad, self.closeup_min_score, self.tile_min_score = pad, closeup_min_score, tile_min_score

    def _detect(self, image):
        rgb = _rgb(image)
        h, w = rgb.shape[:2]
        boxes, scores, kps = self.model.detect(rgb)
        if max(h, w) > self.tile_above:
            boxes, scores, kps = self._add_tiles(rgb, boxes, scores, kps)
        if len(boxes) == 0 and self.near is not None:
            boxes, scores, kps = self._closeup(rgb)
        for box, score, k in zip(boxes, scores, kps):
            # keypoint 0 is the subject's right eye (image left), 1 the left eye
            marks = {"right_eye": (float(k[0, 0]), float(k[0, 1])), "left_eye": (float(k[1, 0]), float(k[1, 1]))}
            yield tuple(float(v) for v in box), float(score), marks

    def _add_tiles(self, rgb, boxes, scores, kps):
        h, w = rgb.shape[:2]
        xs, ys = _tile_starts(w, self.tile), _tile_starts(h, self.tile)
        origins = [(x, y) for y in ys for x in xs]
        sizes = [(min(self.tile, w - x), min(self.tile, h - y)) for x, y in origins]
        keep_b, keep_s, keep_k = [boxes], [scores], [kps]
        for (x, y), (tw, th) in zip(origins, sizes):
            b, s, k = self.model.detect(rgb[y:y + th, x:x + tw])
            for box, score, kp in zip(b, s, k):
                if score < self.tile_min_score:
                    continue
                bx, by, bw, bh = box
                inner = ((x > 0 and bx < 2) or (y > 0 and by < 2) or (x + tw < w and bx + bw > tw - 2)
                         or (y + th < h and by + bh > th - 2))
                if inner:
                    continue
                keep_b.append(np.array([[bx + x, by + y, bw, bh]], np.float32))
                keep_s.append(np.array([score], np.float32))
                keep_k.append(kp[None] + np.array([x, y], np.float32))
        boxes, scores, kps = (np.concatenate(v) for v in (keep_b, keep_s, keep_k))
        return _merge(boxes, scores, kps)

    def _closeup(self, rgb):
        h, w = rgb.shape[:2]
        side = int(round(self.pad * max(h, w)))
        x0, y0 = (side - w) // 2, (side - h) // 2
        canvas = cv2.copyMakeBorder(rgb, y0, side - h - y0, x0, side - w - x0, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        boxes, scores, kps = self.near.detect(canvas)
        boxes[:, :2] -= (x0, y0)
        return boxes, scores, kps - np.array([x0, y0], np.float32)

    def __repr__(self):
        return (f"BlazeFaceDetector(min_score={self.min_score}, tile={self.tile}, tile_above={self.tile_above}, "
                f"pad={self.pad}, closeup_min_score={self.closeup_min_score}, tile_min_score={self.tile_min_score}, "
                f"runtime={self.model.runtime!r})")


def _tile_starts(length: int, tile: int, overlap: float = 1 / 6) -> list[int]:
    """Start offsets of tiles of `tile` px covering [0, length) with at least `overlap` of a tile shared."""
    if length <= tile:
        return [0]
    n = math.ceil((length - tile * overlap) / (tile * (1 - overlap)))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def _merge(boxes, scores, kps):
    """Keep the best of boxes that cover each other: a box is dropped when more than half of it (or
    of the better box) lies inside a better-scored one."""
    order = np.argsort(-scores)
    kept = []
    for i in order:
        x, y, w, h = boxes[i]
        dup = False
        for j in kept:
            X, Y, W, H = boxes[j]
            iw = max(0.0, min(x + w, X + W) - max(x, X))
            ih = max(0.0, min(y + h, Y + H) - max(y, Y))
            if iw * ih > 0.5 * min(w * h, W * H):
                dup = True
                break
        if not dup:
            kept.append(i)
    kept = np.array(kept, int)
    return boxes[kept], scores[kept], kps[kept]


HAAR_CASCADE = "haarcascade_frontalface_default.xml"


def haar_available() -> bool:
    """Whether this OpenCV has the Haar cascade detector and its frontal-face model: 4.x does; 5.x
    moved both to opencv-contrib (cv2.CascadeClassifier is gone from opencv-python-headless 5)."""
    folder = getattr(getattr(cv2, "data", None), "haarcascades", "")
    return hasattr(cv2, "CascadeClassifier") and os.path.isfile(os.path.join(folder, HAAR_CASCADE))


class HaarDetector(Detector):
    """OpenCV's frontal-face Haar cascade. Score: 1 - exp(-w/5) of the cascade's last-stage
    weight w, monotone but not a probability."""

    name = "haar"
    max_side = 800  # Haar's cost grows with pixels; faces under ~20 px at this size are missed
    box_scale = 1.10 / CROP_SCALE  # measured: the bundled models' framing is 1.10x a Haar box, centred
    box_shift = -CROP_SHIFT * box_scale

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5):
        if not haar_available():
            raise FerlabError(f"--detector haar: this OpenCV ({cv2.__version__}) has no Haar cascade detector (5.x "
                              f"moved it to opencv-contrib-python-headless); use the default detector, blazeface, "
                              f"or install opencv-python-headless<5")
        path = os.path.join(cv2.data.haarcascades, HAAR_CASCADE)
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise FerlabError(f"{path}: OpenCV could not load this Haar cascade")
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

    def framing(self, crop_scale: float = CROP_SCALE, crop_shift: float = CROP_SHIFT) -> tuple[float, float]:
        return 1.0, 0.0  # the image is the face, framed as the model takes it

    def detect(self, image_rgb):
        image = _check_image(image_rgb)
        h, w = image.shape[:2]
        return [] if min(h, w) < MIN_SIDE else [Face((0, 0, w, h), 1.0, None)]


DETECTORS = {"blazeface": BlazeFaceDetector, "haar": HaarDetector, "full": FullImageDetector, "none": FullImageDetector}
DETECTOR_NAMES = ("auto", *DETECTORS)  # what --detector accepts


def create_detector(name: str = "auto", **kwargs) -> Detector:
    """'auto' or 'blazeface' (the bundled BlazeFace: the default), 'haar', or 'none'/'full'.

    'mediapipe' (ferlab <= 0.1's default, the same BlazeFace model through the mediapipe package)
    is accepted as another name for 'blazeface'."""
    name = name.lower()
    if name in ("auto", "mediapipe"):
        name = "blazeface"
    if name not in DETECTORS:
        raise FerlabError(f"unknown face detector {name!r} (known: {', '.join(DETECTOR_NAMES)})")
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


def crop_faces_for(detector: Detector, image_rgb: np.ndarray, faces: list[Face], align: bool = True,
                   framing: tuple[float, float] = (CROP_SCALE, CROP_SHIFT)) -> np.ndarray:
    """crop_faces with a model's framing (its card's crop_scale and crop_shift, on BlazeFace boxes;
    default: ferlab.spec's) mapped onto `detector`'s boxes."""
    return crop_faces(image_rgb, faces, *detector.framing(*framing), align)


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
