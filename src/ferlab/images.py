"""Images in and out: decoding files, converting arrays and face crops, walking folders, drawing
boxes and labels, writing images and results.

Decoding: paths and PIL images are turned upright by their EXIF orientation; RGBA is composited
onto white. Files above Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS, 89 MP by
default) are refused with a one-line error, except JPEGs: a JPEG of 5120 px or longer is decoded
by the JPEG decoder itself at the smallest of 1/2, 1/4, 1/8 scale that keeps its longest side
>= 2560 px (2x the detector's working size), so a 20000x20000 JPEG costs 75 MB and a 24 MP photo
decodes ~3x faster; `load_image` returns the scale that maps boxes back to full-size pixels.

Shared by the Recognizer, `ferlab predict`, `ferlab video`, the HTTP service and the demo.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin

from ferlab.atomic import atomic_write
from ferlab.errors import FerlabError
from ferlab.spec import INPUT_SIZE

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm"}
JPEG_MIN_SIDE = 2560  # JPEGs decode at the smallest DCT scale keeping the longest side >= this


# ---- input conversion ---------------------------------------------------------------------

def load_image(path) -> tuple[np.ndarray, float]:
    """Decode an image file, upright by its EXIF orientation: (RGB uint8 (H, W, 3), scale), where
    scale maps the decoded pixels to the file's full-size pixels (1.0 unless JPEG-downscaled)."""
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
            im, (full_w, full_h) = open_drafted(path, is_jpeg)
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


def open_drafted(source, is_jpeg: bool):
    """(the image with only its header read, its full (width, height)): a JPEG whose longest side is
    2 * JPEG_MIN_SIDE or more set to decode at the smallest DCT scale (1/2, 1/4, 1/8) keeping it >=
    JPEG_MIN_SIDE, even one above Pillow's decompression-bomb limit. source: a path or the file's bytes.
    Raises Image.DecompressionBombError for any other image above that limit."""
    def fp():
        return io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        im = Image.open(fp())
    except Image.DecompressionBombError:
        if not is_jpeg:
            raise
        im = JpegImagePlugin.JpegImageFile(fp())  # header only: maybe it drafts small enough
    full_w, full_h = im.size
    if is_jpeg and im.format in ("JPEG", "MPO") and max(full_w, full_h) >= 2 * JPEG_MIN_SIDE:
        s = JPEG_MIN_SIDE / max(full_w, full_h)  # draft picks the smallest scale at least this big
        im.draft("RGB", (int(full_w * s), int(full_h * s)))
    return im, (full_w, full_h)


def pil_to_rgb(im) -> np.ndarray:
    """A PIL image -> RGB uint8 (H, W, 3): alpha composited onto white, 16-bit gray rescaled."""
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
        if isinstance(image, Image.Image):
            return pil_to_rgb(ImageOps.exif_transpose(image))
        if _is_tensor(image):
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


def _is_tensor(x) -> bool:
    """A torch tensor, recognised without importing torch."""
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


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
    if _is_tensor(crops):
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


def safe_load(path):
    """load_image, with a FerlabError returned rather than raised (for `prefetch`)."""
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


# ---- results --------------------------------------------------------------------------------

def rounded(faces: list[dict], digits: int = 4) -> list[dict]:
    """A copy of the face dicts with floats rounded for output."""
    def r(v):
        if isinstance(v, float):
            return round(v, digits)
        if isinstance(v, dict):
            return {k: r(x) for k, x in v.items()}
        return v
    return [{k: r(v) for k, v in f.items()} for f in faces]


