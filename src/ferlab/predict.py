"""Recognise facial expressions in photos and folders: the `Recognizer` and `ferlab predict`.

    rec = Recognizer()                      # bundled "default" model, bundled BlazeFace face detector
    rec.predict("photo.jpg")                # -> [{"box", "score", "label", "confidence", "probs"}]
    rec.predict_faces(crops)                # already-cropped faces -> [{"label", "confidence", "probs"}]
    Recognizer(backend="onnx")              # classifier run by onnxruntime (see Recognizer)
    Recognizer("default-int8")              # the default model's int8 export: ~2x the faces/s on AVX2 CPUs
    Recognizer("ferplus")                   # the bundled FER+ model: 8 classes, the 7 and contempt
    Recognizer(["default", "run2/"], tta="flip")   # ensemble of two models, each face and its mirror
    for path, faces in rec.predict_many(["folder/"]): ...   # faces is a list or a FerlabError

Test-time augmentation (tta="flip" or "tencrop") is ferlab.tta, the code `ferlab evaluate` uses,
and an ensemble averages its members' probabilities as `ferlab evaluate MODEL MODEL...` does: the
same faces get the same fp32 probabilities here as in the accuracy that evaluate reports.

Images: a path, a PIL image or a NumPy array (RGB HxWx3, or BGR with color="bgr", gray HxW,
RGBA HxWx4), any size. Paths and PIL images are turned upright by their EXIF orientation;
boxes are in the pixels of that upright image. RGBA is composited onto white. Images smaller
than 8 px on a side, and images without a face, give []. Decoding: files above Pillow's
decompression-bomb limit (Image.MAX_IMAGE_PIXELS, 89 MP by default) are refused with a one-line
error, except JPEGs: a JPEG of 5120 px or longer is decoded by the JPEG decoder itself at the
smallest of 1/2, 1/4, 1/8 scale that keeps its longest side >= 2560 px (2x the detector's
working size), so a 20000x20000 JPEG costs 75 MB and a 24 MP photo decodes ~3x faster;
boxes are mapped back to the file's full-size pixels.

`ferlab predict PATH...` writes JSON Lines (one object per image: {"path", "faces"}) or CSV (one
row per face; an image without faces gets one row with empty face columns) to stdout or
--output, and with --annotate a copy of each image with boxes and labels. Unreadable files are
reported on stderr, one line each, and skipped; the exit status is 0 when at least one image
was processed and 2 when none was.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np
import torch

from ferlab.checkpoint import atomic_write, check_same_classes, load_model
from ferlab.errors import FerlabError
from ferlab.faces import INPUT_SIZE, create_detector, crop_faces_for, to_float
from ferlab.labels import FER2013_CLASSES
from ferlab.tta import TTA_MODES, check_tta, tta_probs

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm"}
JPEG_MIN_SIDE = 2560  # JPEGs decode at the smallest DCT scale keeping the longest side >= this
PRECISIONS = ("fp32", "bf16")
BACKENDS = ("torch", "onnx", "auto")


class Recognizer:
    """Faces -> expression probabilities with one model (or an ensemble) and one face detector.

    model: "default" (bundled), "default-int8" (its bundled int8 ONNX export), "ferplus" (the bundled
    8-class FER+ model; "ferplus-int8"), a run directory, a .safetensors file, an .onnx file
    written by `ferlab export`, or an nn.Module (then pass classes); or a list of these: an
    ensemble whose probabilities are the mean of its members' (each with the same tta). Members
    must name the same classes, else a FerlabError names the first that does not. rec.models and
    rec.cards list the members; rec.model and rec.card are the first (the only one for a single
    model). detector: a name for `create_detector` or a Detector. device: "cpu", "cuda", "auto".
    tta: "none", "flip" (average the probabilities of each face and its mirror image) or
    "tencrop" (ten views: the corner and centre 44x44 crops, resized to 48, and their mirrors;
    10x the classifier work). See ferlab.tta.
    precision: "fp32" (default) or "bf16" autocast (2-3x the faces/s on CPUs with AMX or
    AVX512-BF16, see benchmarks/inference_speed.py; probabilities move by up to ~1e-2). Refused
    where the hardware has no native bf16: emulated, it ran 7.6x slower than fp32 on an AVX2 CPU.
    channels_last: NHWC memory layout (default on: 1.2-1.5x faster on CPU, same fp32 results
    up to summation order, ~1e-6).
    backend: "torch", "onnx" (the classifier exported to ONNX in memory when the
    Recognizer is created, ~0.3 s per model, and run by onnxruntime, one session per ensemble
    member: fp32 only, CPU only; probabilities within ~1e-6 of torch's) or "auto", the default
    (onnx when onnxruntime is importable, the device is the CPU, precision is fp32 and every
    model exports, else torch). Why: onnxruntime ran fernet_s ~3x faster than PyTorch fp32 eager
    at one face per call (a photo, a webcam frame: 364 vs 115 faces/s on one thread) and ~2.5x at
    batch 256 (425 vs 172), with the same probabilities to ~1e-6 (benchmarks/backends.py). The
    export happens once per Recognizer, in memory: no cache file to invalidate or race on; sessions
    use torch's thread count and are safe to call from several threads. Members loaded from .onnx
    files run in onnxruntime whatever the backend.
    """

    def __init__(self, model="default", detector="auto", device: str = "cpu", batch_size: int = 64, tta: str = "none",
                 precision: str = "fp32", channels_last: bool = True, classes=None, align: bool = True,
                 backend: str = "auto"):
        check_tta(tta)
        if precision not in PRECISIONS:
            raise FerlabError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
        if batch_size < 1:
            raise FerlabError(f"batch_size must be at least 1, got {batch_size}")
        if backend not in BACKENDS:
            raise FerlabError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        specs = list(model) if isinstance(model, (list, tuple)) else [model]
        if not specs:
            raise FerlabError("model: an empty list names no model")
        self.names = [_model_name(spec, i) for i, spec in enumerate(specs)]
        self.models, self.cards = [], []
        for spec in specs:
            if isinstance(spec, torch.nn.Module):
                m, card = spec.to(self.device).eval(), {}
            else:
                m, card = load_model(str(spec), self.device)
            self.models.append(m)
            self.cards.append(card)
        check_same_classes(self.names, self.cards)
        card_classes = next((card["classes"] for card in self.cards if card.get("classes")), None)
        self.classes = tuple(classes or card_classes or FER2013_CLASSES)
        self.detector = create_detector(detector) if isinstance(detector, str) else detector
        self.batch_size, self.tta, self.precision, self.align = batch_size, tta, precision, align
        self.backend = _pick_backend(backend, self.device, precision)
        from ferlab.train import native_bf16

        if precision == "bf16" and not native_bf16(self.device):
            raise FerlabError(f"precision 'bf16' needs native bf16 (AVX-512 BF16 or AMX CPUs, recent GPUs); this {self.device.type} "
                              "would emulate it, several times slower than fp32: use precision 'fp32'")
        self.runners = list(self.models)  # what computes each member's logits: the model, or its ONNX export
        if self.backend == "onnx":
            from ferlab.export import OnnxModel, to_onnx

            try:
                self.runners = [m if isinstance(m, OnnxModel) else OnnxModel(to_onnx(m.cpu().eval())) for m in self.models]
            except FerlabError:  # a model the exporter cannot handle: "auto" falls back to torch
                if backend == "onnx":
                    raise
                self.backend = "torch"
        self.channels_last = channels_last and self.backend == "torch"
        if self.channels_last:  # in place: the runners are these same modules
            for m in self.models:
                m.to(memory_format=torch.channels_last)
        self.model, self.card = self.models[0], self.cards[0]

    # ---- classification -------------------------------------------------------------------
    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(N, 48, 48) float32 pixels in [0, 1] -> (N, num_classes) float32 probabilities."""
        n = len(x)
        out = np.empty((n, len(self.classes)), np.float32)
        for lo in range(0, n, self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(x[lo:lo + self.batch_size], np.float32)).unsqueeze(1)
            out[lo:lo + len(batch)] = self._forward(batch)
        return out

    @torch.inference_mode()
    def _forward(self, batch: torch.Tensor) -> np.ndarray:
        batch = batch.to(self.device)
        probs = sum(tta_probs(partial(self._logits, i), batch, self.tta) for i in range(len(self.models)))
        return (probs / len(self.models)).cpu().numpy()

    def _logits(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Member i's logits for a float batch (N, 1, 48, 48) on the device."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            logits = self.runners[i](x)
        if logits.shape[1] != len(self.classes):
            raise FerlabError(f"{self.names[i]}: the model gives {logits.shape[1]} scores but {len(self.classes)} "
                              f"classes are named ({', '.join(self.classes)})")
        return logits

    def predict_faces(self, crops) -> list[dict]:
        """Already-cropped faces -> [{"label", "confidence", "probs"}], one per face.

        crops: an (N, H, W) or (N, H, W, 3) array (uint8 0-255, or float in [0, 1]; floats above
        1 are taken as 0-255), a single (H, W) face, or a list of arrays / PIL images of any
        size. Faces not 48x48 are resized (area averaging when shrinking); colour is made gray.
        """
        x = faces_to_input(crops)
        return [self._result(p) for p in self.probabilities(x)]

    # ---- whole images ---------------------------------------------------------------------
    def predict(self, image, color: str = "rgb") -> list[dict]:
        """One image (path, PIL image or array) -> [{"box", "score", "label", "confidence", "probs"}]."""
        if isinstance(image, (str, Path)):
            pixels, scale = load_image(image)
        else:
            pixels, scale = as_pixels(image, color), 1.0
        return self.predict_pixels(pixels, scale)

    def predict_pixels(self, pixels: np.ndarray, scale: float = 1.0) -> list[dict]:
        """predict() for a uint8 RGB (H, W, 3) or gray (H, W) array; boxes are multiplied by scale."""
        faces = self.detector.detect(pixels)
        if not faces:
            return []
        crops = crop_faces_for(self.detector, pixels, faces, align=self.align)
        probs = self.probabilities(to_float(crops))
        results = []
        for face, p in zip(faces, probs):
            box = [int(round(v * scale)) for v in face.box] if scale != 1.0 else list(face.box)
            results.append({"box": box, "score": round(face.score, 4), **self._result(p)})
        return results

    def predict_many(self, paths: Iterable, recursive: bool = True) -> Iterator[tuple[Path, list[dict] | FerlabError]]:
        """Files and folders -> (path, faces) for each image file, or (path, FerlabError) when it
        cannot be read. Folders are searched for image suffixes (recursively by default); the
        next image is decoded in a background thread while this one is processed."""
        for path, loaded in prefetch(expand_paths(paths, recursive), _safe_load):
            if isinstance(loaded, FerlabError):
                yield path, loaded
            else:
                yield path, self.predict_pixels(*loaded)

    def _result(self, p: np.ndarray) -> dict:
        i = int(p.argmax())
        return {"label": self.classes[i], "confidence": float(p[i]), "probs": {c: float(v) for c, v in zip(self.classes, p)}}

    def close(self) -> None:
        self.detector.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _model_name(spec, i: int) -> str:
    """How errors name an ensemble member: its path or bundled name, or its position and class."""
    return f"model #{i + 1} ({type(spec).__name__})" if isinstance(spec, torch.nn.Module) else str(spec)


def _pick_backend(backend: str, device: torch.device, precision: str) -> str:
    if backend == "torch":
        return "torch"
    problem = ("the onnx backend runs on the CPU only" if device.type != "cpu" else
               "the onnx backend runs fp32 only (bf16 is a torch autocast)" if precision != "fp32" else None)
    if problem is None:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            problem = "the onnx backend needs onnx and onnxruntime (pip install 'ferlab[onnx]')"
    if problem is None:
        return "onnx"
    if backend == "onnx":
        raise FerlabError(problem)
    return "torch"


# ---- input conversion ---------------------------------------------------------------------

def load_image(path) -> tuple[np.ndarray, float]:
    """Decode an image file, upright by its EXIF orientation: (RGB uint8 (H, W, 3), scale), where
    scale maps the decoded pixels to the file's full-size pixels (1.0 unless JPEG-downscaled)."""
    from PIL import Image, ImageOps, JpegImagePlugin

    path = Path(path)
    if path.is_dir():
        raise FerlabError(f"{path}: is a directory, not an image")
    try:
        with open(path, "rb") as f:
            is_jpeg = f.read(3) == b"\xff\xd8\xff"
    except FileNotFoundError:
        raise FerlabError(f"{path}: no such file") from None
    except OSError as e:
        raise FerlabError(f"{path}: cannot read ({e.strerror or e})") from None
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                im = Image.open(path)
            except Image.DecompressionBombError:
                if not is_jpeg:
                    raise
                im = JpegImagePlugin.JpegImageFile(path)  # header only; decoded below at reduced scale
            full_w, full_h = im.size
            if is_jpeg and im.format in ("JPEG", "MPO") and max(full_w, full_h) >= 2 * JPEG_MIN_SIDE:
                s = JPEG_MIN_SIDE / max(full_w, full_h)  # draft picks the smallest scale at least this big
                im.draft("RGB", (int(full_w * s), int(full_h * s)))
            if limit and im.size[0] * im.size[1] > limit:
                raise FerlabError(f"{path}: image is {full_w}x{full_h} ({full_w * full_h / 1e6:.0f} MP), above the "
                                  f"{limit / 1e6:.0f} MP decoding limit (PIL.Image.MAX_IMAGE_PIXELS); downscale it first")
            scale = (full_w / im.size[0] + full_h / im.size[1]) / 2
            im.load()
            im = ImageOps.exif_transpose(im)
            pixels = pil_to_rgb(im)
    except FerlabError:
        raise
    except Image.DecompressionBombError as e:
        size = re.search(r"\((\d+) pixels\)", str(e))
        mp = f" ({int(size.group(1)) / 1e6:.0f} MP)" if size else ""
        raise FerlabError(f"{path}: image{mp} is above the {(limit or 0) / 1e6:.0f} MP decoding limit "
                          f"(PIL.Image.MAX_IMAGE_PIXELS) and is not a JPEG; downscale it first") from None
    except Image.UnidentifiedImageError:
        raise FerlabError(f"{path}: not an image (or a format Pillow cannot read)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise FerlabError(f"{path}: truncated or corrupt image ({msg})") from None
    return pixels, scale


def pil_to_rgb(im) -> np.ndarray:
    """A PIL image -> RGB uint8 (H, W, 3): alpha composited onto white, 16-bit gray rescaled."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float32)
        hi = float(a.max()) if a.size else 0.0
        a = a / (hi / 255.0) if hi > 255 else a
        return np.repeat(np.clip(a, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)
    return np.asarray(im.convert("RGB"))


def as_pixels(image, color: str = "rgb") -> np.ndarray:
    """A PIL image or array -> uint8 RGB (H, W, 3) or gray (H, W), without copying when it can.

    color names the channel order of a 3/4-channel array: "rgb" (default) or "bgr" (OpenCV).
    Float arrays are taken as [0, 1] (or 0-255 when they exceed 1).
    """
    if color not in ("rgb", "bgr"):
        raise FerlabError(f"color must be 'rgb' or 'bgr', got {color!r}")
    if not isinstance(image, np.ndarray):
        try:
            from PIL import Image, ImageOps
        except ImportError:  # pragma: no cover
            Image = None
        if Image is not None and isinstance(image, Image.Image):
            return pil_to_rgb(ImageOps.exif_transpose(image))
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().numpy()
        else:
            raise FerlabError(f"expected a path, PIL image or NumPy array, got {type(image).__name__}")
    a = image
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or 0 in a.shape:
        raise FerlabError(f"expected an image array of shape (H, W), (H, W, 3) or (H, W, 4), got {a.shape}")
    a = _to_uint8(a)
    if a.ndim == 3:
        if color == "bgr":
            a = a[..., [2, 1, 0, 3][:a.shape[2]]] if a.shape[2] == 4 else a[..., ::-1]
        if a.shape[2] == 4:
            alpha = a[..., 3:]
            if alpha.min() == 255:
                a = a[..., :3]
            else:
                w = alpha.astype(np.float32) / 255.0
                a = (a[..., :3] * w + 255.0 * (1.0 - w) + 0.5).astype(np.uint8)
    return a


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        hi = float(np.nanmax(a)) if a.size else 0.0
        scale = 255.0 if hi <= 1.0 else 1.0
        return np.clip(np.nan_to_num(a) * scale + 0.5, 0, 255).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        hi = int(a.max()) if a.size else 0
        return (a >> 8).astype(np.uint8) if hi > 255 and a.dtype.itemsize >= 2 else np.clip(a, 0, 255).astype(np.uint8)
    raise FerlabError(f"unsupported image dtype {a.dtype}")


def faces_to_input(crops) -> np.ndarray:
    """Face crops in any of predict_faces' forms -> (N, 48, 48) float32 in [0, 1]."""
    if isinstance(crops, torch.Tensor):
        crops = crops.detach().cpu().numpy()
    if isinstance(crops, np.ndarray):
        a = crops
        if a.ndim == 4 and a.shape[1] == 1:  # (N, 1, H, W): the models' own layout
            a = a[:, 0]
        if a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4) and a.shape[0] > 4):
            a = a[None]  # a single face
        if a.ndim == 3 and a.shape[1:] == (INPUT_SIZE, INPUT_SIZE):
            if a.dtype == np.uint8:
                return a.astype(np.float32) / 255.0
            if np.issubdtype(a.dtype, np.floating):
                a = a.astype(np.float32)
                return a / 255.0 if a.size and float(a.max()) > 1.0 else a
        crops = list(a)
    elif not isinstance(crops, (list, tuple)):
        crops = [crops]
    return np.stack([_one_face(c) for c in crops]) if crops else np.zeros((0, INPUT_SIZE, INPUT_SIZE), np.float32)


def _one_face(face) -> np.ndarray:
    a = as_pixels(face)
    if a.ndim == 3:
        a = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY)
    if a.shape != (INPUT_SIZE, INPUT_SIZE):
        shrink = min(a.shape) >= INPUT_SIZE
        a = cv2.resize(np.ascontiguousarray(a), (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return a.astype(np.float32) / 255.0


# ---- folders --------------------------------------------------------------------------------

def expand_paths(paths: Iterable, recursive: bool = True) -> Iterator[Path]:
    """Files as given (whatever their suffix); folders -> their image files, sorted."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = p.rglob("*") if recursive else p.glob("*")
            yield from sorted(f for f in found if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() and not f.name.startswith("."))
        else:
            yield p


def prefetch(items: Iterable, fn, depth: int = 2) -> Iterator[tuple]:
    """(item, fn(item)) in order, computing up to `depth` ahead in one background thread."""
    items = iter(items)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = []
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) > depth:
                item0, fut = pending.pop(0)
                yield item0, fut.result()
        for item0, fut in pending:
            yield item0, fut.result()


def _safe_load(path):
    try:
        return load_image(path)
    except FerlabError as e:
        return e


# ---- drawing ------------------------------------------------------------------------------

def draw_faces(image_bgr: np.ndarray, faces: list[dict], scale: float = 1.0, label_key: str = "label") -> np.ndarray:
    """Draw each face's box and "label confidence" on a BGR image, in place; boxes divided by scale."""
    h, w = image_bgr.shape[:2]
    thick = max(1, round(max(h, w) / 400))
    font = max(0.4, max(h, w) / 1200)
    for face in faces:
        x, y, bw, bh = (int(round(v / scale)) for v in face["box"])
        cv2.rectangle(image_bgr, (x, y), (x + bw, y + bh), (0, 220, 0), thick)
        conf = face.get("smoothed_confidence", face["confidence"]) if label_key != "label" else face["confidence"]
        text = f"{face[label_key]} {conf:.0%}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, thick)
        ty = y - 4 if y - th - base - 4 >= 0 else min(h - 1, y + bh + th + 4)
        cv2.rectangle(image_bgr, (x, ty - th - base), (x + tw + 4, ty + base), (0, 220, 0), -1)
        cv2.putText(image_bgr, text, (x + 2, ty - 2), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), thick, cv2.LINE_AA)
    return image_bgr


def write_image(path, image_bgr: np.ndarray) -> None:
    """Encode by the path's suffix and write atomically."""
    path = Path(path)
    ok, buf = cv2.imencode(path.suffix.lower() or ".png", image_bgr)
    if not ok:
        raise FerlabError(f"{path}: OpenCV cannot encode an image with this suffix")
    try:
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.tobytes()))
    except OSError as e:
        raise FerlabError(f"{path}: cannot write ({e.strerror or e})") from None


def check_writable_dir(folder) -> Path:
    """Create folder if needed and prove a file can be written there; FerlabError otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".ferlab-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise FerlabError(f"{folder}: cannot write output here ({e.strerror or e})") from None
    return folder


def check_writable_file(path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise FerlabError(f"{path}: is a directory, expected an output file name")
    try:
        check_writable_dir(path.parent)
    except FerlabError as e:
        raise FerlabError(f"{path}: cannot write output file ({str(e).split(': ', 1)[-1]})") from None
    return path


# ---- records --------------------------------------------------------------------------------

def rounded(faces: list[dict], digits: int = 4) -> list[dict]:
    """A copy of the face dicts with floats rounded for output."""
    def r(v):
        if isinstance(v, float):
            return round(v, digits)
        if isinstance(v, dict):
            return {k: r(x) for k, x in v.items()}
        return v
    return [{k: r(v) for k, v in f.items()} for f in faces]


def csv_header(classes) -> list[str]:
    return ["path", "face", "x", "y", "w", "h", "score", "label", "confidence"] + [f"prob_{c}" for c in classes]


def csv_rows(path, faces: list[dict], classes) -> list[list]:
    if not faces:
        return [[str(path)] + [""] * (8 + len(classes))]
    rows = []
    for i, f in enumerate(rounded(faces)):
        rows.append([str(path), i, *f["box"], f["score"], f["label"], f["confidence"]] + [f["probs"][c] for c in classes])
    return rows


# ---- command line -------------------------------------------------------------------------

def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by predict, video, webcam and serve."""
    # Repeated rather than nargs="+": several values would swallow the positional paths that follow.
    parser.add_argument("--model", action="append", metavar="MODEL",
                        help="'default' (bundled; the default), 'default-int8' (its int8 export), 'ferplus' (8 classes), a run directory, "
                             "a .safetensors file or an .onnx file from `ferlab export`; "
                             "repeat (--model A --model B) for an ensemble that averages their probabilities")
    parser.add_argument("--detector", default="auto", choices=["auto", "blazeface", "haar", "none", "full"],
                        help="face detector: auto = blazeface (bundled); haar = OpenCV's cascade; none/full = image is one face")
    parser.add_argument("--tta", default="none", choices=TTA_MODES,
                        help="test-time augmentation: flip averages each face with its mirror, tencrop over 10 crops")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help="bf16 autocast: 2-3x faster on CPUs with AMX or AVX-512 BF16, refused on others")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="NHWC memory layout (default: on, faster on CPU)")
    parser.add_argument("--batch-size", type=int, default=64, help="faces per classifier batch")
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="classifier runtime: torch, onnx (onnxruntime, faster on CPU) or auto (onnx when usable)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: torch's choice; use 1 on a machine busy with other work)")


def model_specs(args) -> list[str]:
    """The --model values (["default"] when none was given)."""
    return args.model or ["default"]


def recognizer_from_args(args) -> Recognizer:
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    return Recognizer(model=model_specs(args), detector=args.detector, device=args.device, batch_size=args.batch_size,
                      tta=args.tta, precision=args.precision, channels_last=args.channels_last,
                      backend=getattr(args, "backend", "torch"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or folders")
    add_model_arguments(parser)
    parser.add_argument("--format", choices=["jsonl", "csv"], default="jsonl", help="jsonl: one object per image; csv: one row per face")
    parser.add_argument("--output", "-o", help="write results here (atomically) instead of stdout")
    parser.add_argument("--annotate", metavar="OUTDIR", help="write a copy of each image with boxes and labels to OUTDIR")
    parser.add_argument("--recursive", action=argparse.BooleanOptionalAction, default=True, help="search folders recursively (default: on)")
    parser.epilog = ("Unreadable files are reported on stderr and skipped; exit status 0 if at least one image was "
                     "processed, 2 if none.")


def run(args) -> int:
    if args.output and args.output != "-":
        check_writable_file(args.output)
    annotate_dir = check_writable_dir(args.annotate) if args.annotate else None
    rec = recognizer_from_args(args)
    files = list(expand_paths(args.paths, args.recursive))
    if not files:
        raise FerlabError(f"no image files found in {', '.join(args.paths)}")
    roots = [Path(p) for p in args.paths if Path(p).is_dir()]
    counts = {"ok": 0, "failed": 0, "faces": 0}

    def process(out) -> None:
        writer = csv.writer(out) if args.format == "csv" else None
        if writer:
            writer.writerow(csv_header(rec.classes))
        from tqdm import tqdm
        bar = tqdm(total=len(files), unit="img", disable=None if len(files) > 1 else True, file=sys.stderr)
        for path, loaded in prefetch(files, _safe_load):
            bar.update(1)
            try:
                if isinstance(loaded, FerlabError):
                    raise loaded
                pixels, scale = loaded
                faces = rec.predict_pixels(pixels, scale)
                if annotate_dir is not None:
                    write_image(annotated_path(annotate_dir, path, roots), draw_faces(_bgr_copy(pixels), faces, scale))
            except FerlabError as e:
                counts["failed"] += 1
                bar.write(f"ferlab predict: skipped {e}", file=sys.stderr)
                continue
            counts["ok"] += 1
            counts["faces"] += len(faces)
            if writer:
                writer.writerows(csv_rows(path, faces, rec.classes))
            else:
                out.write(json.dumps({"path": str(path), "faces": rounded(faces)}) + "\n")
            if out is sys.stdout:
                out.flush()
        bar.close()

    if args.output and args.output != "-":
        def write(tmp):
            with open(tmp, "w", newline="") as f:
                process(f)
        try:
            atomic_write(args.output, write)
        except OSError as e:
            raise FerlabError(f"{args.output}: cannot write ({e.strerror or e})") from None
    else:
        process(sys.stdout)
    rec.close()
    if counts["ok"] == 0:
        raise FerlabError(f"no image could be processed ({counts['failed']} failed)")
    if args.output and args.output != "-":
        print(f"ferlab predict: {counts['ok']} images, {counts['faces']} faces -> {args.output}", file=sys.stderr)
    return 0


def annotated_path(outdir: Path, path: Path, roots: list[Path]) -> Path:
    """OUTDIR/<path relative to the folder it came from>, with a suffix OpenCV can write."""
    rel = Path(path.name)
    for root in roots:
        try:
            rel = path.relative_to(root)
            break
        except ValueError:
            continue
    if rel.suffix.lower() not in (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"):
        rel = rel.with_name(rel.name + ".png")
    return outdir / rel


def _bgr_copy(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2BGR)
