"""Images in and out: decoding files, converting arrays and face crops, walking folders, drawing
boxes and labels, writing images and results.

Decoding: `load_image` is the one way in for image files and uploaded bytes (ferlab predict and
ferlab serve decode alike: same limits, pixels, scale and errors). Paths, bytes and PIL images are
turned upright by their EXIF orientation; RGBA is composited onto white. Images above the pixel
limit (Pillow's Image.MAX_IMAGE_PIXELS, 89 MP by default; --max-megapixels for the server) are
refused from their header with a one-line error, except JPEGs that fit once drafted: a JPEG of
5120 px or longer is decoded by the JPEG decoder itself at the smallest of 1/2, 1/4, 1/8 scale
that keeps its longest side >= 2560 px, so a 20000x20000 JPEG costs 75 MB and a 24 MP photo
decodes ~3x faster; other formats are reduced to at most 2560 px right after decoding.
`load_image` returns the scale that maps boxes back to full-size pixels.

Shared by the Recognizer, `ferlab predict`, `ferlab video`, the HTTP service and the demo.
"""

from __future__ import annotations

import contextlib
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
from ferlab.spec import INPUT_SIZE, to_model_input

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm"}
JPEG_MIN_SIDE = 2560  # JPEGs decode at the smallest DCT scale keeping the longest side >= this
REDUCED_SIDE = 2560  # other images are reduced right after decoding to at most this longest side
LARGE_PIXELS = 4e6  # with a large_lock, images decoding to more pixels than this take turns


# ---- decoding -----------------------------------------------------------------------------

class ImageError(FerlabError):
    """An image that cannot be decoded, in one line; status: the HTTP status `ferlab serve` answers
    with (400 empty, truncated or corrupt, 413 above the pixel limit, 415 not an image)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def load_image(source, max_pixels: float | None = None, limit: str | None = None,
               large_lock=None) -> tuple[np.ndarray, float]:
    """Decode an image file (a path) or its bytes (an upload), upright by its EXIF orientation:
    (RGB uint8 (H, W, 3), scale), where scale maps the decoded pixels to the image's full-size
    pixels (boxes are multiplied by it). Files and uploads take this one path: same limits, same
    pixels, same scale, same errors (ImageError, prefixed with the path for a file).

    - The header is read first: an image that would decode to more than max_pixels (default:
      Pillow's Image.MAX_IMAGE_PIXELS, 89 MP; `ferlab serve` passes --max-megapixels) is refused
      before any pixel is decoded; `limit` names that limit in the message (default "the 89 MP
      decoding limit (PIL.Image.MAX_IMAGE_PIXELS)").
    - A JPEG counts after draft decoding: one with a longest side of 2 * JPEG_MIN_SIDE or more
      decodes at the smallest DCT scale (1/2, 1/4, 1/8) keeping it >= JPEG_MIN_SIDE
      (open_drafted), so a huge JPEG is accepted when 1/8 of it fits, even above Pillow's
      decompression-bomb limit.
    - Any other format decodes at full size (Pillow decodes none of the common ones at reduced
      scale), then is reduced at once by an integer factor to a longest side of at most
      REDUCED_SIDE, before the colour conversions: the detector works at 1920 at most. Its peak
      is the decoded image plus one copy (reduce() premultiplies alpha): at most 8 bytes a pixel.
    - With large_lock, images above LARGE_PIXELS decode one at a time (the others wait), so the
      peak of a server is one such decode, not one per thread.
    - Alpha is composited onto white; bytes are decoded from memory, never written to disk.
    """
    prefix = ""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = bytes(source)
        is_jpeg = source[:3] == b"\xff\xd8\xff"
        if not source:
            raise ImageError("the file is empty", 400)
    else:
        source = Path(source)
        prefix = f"{source}: "
        if source.is_dir():
            raise FerlabError(f"{source}: is a directory, not an image")
        try:
            with open(source, "rb") as f:
                head = f.read(3)
        except FileNotFoundError:
            raise FerlabError(f"{source}: no such file") from None
        except OSError as e:
            raise FerlabError(f"{source}: cannot read ({e.strerror or e})") from None
        is_jpeg = head == b"\xff\xd8\xff"
        if not head:
            raise ImageError(f"{prefix}the file is empty", 400)
    if max_pixels is None:
        max_pixels = Image.MAX_IMAGE_PIXELS or float("inf")
        limit = limit or f"the {max_pixels / 1e6:.0f} MP decoding limit (PIL.Image.MAX_IMAGE_PIXELS)"
    limit = limit or f"the {max_pixels / 1e6:g} MP limit"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                im, (full_w, full_h) = open_drafted(source, is_jpeg)
            except Image.DecompressionBombError as e:  # above 2x Pillow's MAX_IMAGE_PIXELS, not a JPEG
                size = re.search(r"\((\d+) pixels\)", str(e))
                mp = f" ({int(size.group(1)) / 1e6:.3g} MP)" if size else ""
                over = limit if size and int(size.group(1)) > max_pixels else "Pillow's decoding limit (PIL.Image.MAX_IMAGE_PIXELS)"
                raise ImageError(f"{prefix}image{mp} is above {over} and is not a JPEG; downscale it first", 413) from None
            w, h = im.size  # what will be decoded
            if w * h > max_pixels:
                drafted = f", {w}x{h} at the smallest JPEG scale" if (w, h) != (full_w, full_h) else ""
                raise ImageError(f"{prefix}image is {full_w}x{full_h} ({full_w * full_h / 1e6:.3g} MP{drafted}), "
                                 f"above {limit}; downscale it first", 413)
            big = large_lock is not None and w * h > LARGE_PIXELS  # one at a time: the peak is its decode
            with large_lock if big else contextlib.nullcontext():
                im.load()
                if im.format not in ("JPEG", "MPO") and max(w, h) > REDUCED_SIDE:
                    if im.mode in ("1", "P", "PA", "I;16", "I;16B", "I;16L"):  # modes reduce() cannot average
                        im = im.convert({"1": "L", "I;16": "I", "I;16B": "I", "I;16L": "I"}.get(im.mode, "RGBA"))
                    im = im.reduce(-(-max(w, h) // REDUCED_SIDE))  # keeps info (EXIF)
                    w, h = im.size
                pixels = pil_to_rgb(ImageOps.exif_transpose(im))
                if big:
                    del im
                    release_freed_memory()
    except (FerlabError, MemoryError):
        raise
    except Image.UnidentifiedImageError:
        raise ImageError(f"{prefix}not an image (or a format Pillow cannot read)", 415) from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is bad input
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ImageError(f"{prefix}truncated or corrupt image ({msg})", 400) from None
    return pixels, (full_w / w + full_h / h) / 2


def release_freed_memory() -> None:
    """Give the memory freed after a large decode back to the OS (glibc's malloc_trim; a no-op
    elsewhere). Without it each worker thread's malloc arena keeps its own freed copy of a large
    image, and the peaks of successive large decodes add up instead of taking turns."""
    global _malloc_trim
    if _malloc_trim is None:
        import ctypes
        import ctypes.util

        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


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


# ---- input conversion ---------------------------------------------------------------------

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
                return to_model_input(a)
            if np.issubdtype(a.dtype, np.floating):
                a = a.astype(np.float32)
                return to_model_input(a) if a.size and float(a.max()) > 1.0 else a
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
    return to_model_input(a)


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


