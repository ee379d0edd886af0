"""Image-folder data sets: `<root>/<class>/*.png` (CK+48, muxspace48, your own) or, in Kaggle's
FER2013 image layout, `<root>/<split>/<class>/*.png` with split folders train/ and test/ (val/).

Images are decoded as grayscale with OpenCV in a thread pool (decoding releases the GIL) and
resized to 48x48 with INTER_AREA when needed (non-square images are squeezed, not cropped).
Class folder names are mapped through `labels.class_index` into a label space: "fer2013" (the
default), "ferplus8" (adds contempt) or "ckplus" (CK+'s 7 classes, with contempt, no neutral).
Folders whose class is not in the label space (e.g. contempt under "fer2013", or "unknown") are
skipped with one warning line on stderr. File names `S<subject>_<seq>_<frame>.<ext>` (CK+) give
`groups` (the subject id, e.g. "S010") for subject-independent folds. Symlinks that loop are
skipped with one warning line. An animated GIF loads as its first frame.

Decoded arrays are cached, keyed by the root's absolute path and a hash of the decoded files'
names, sizes and mtimes, so the second load skips decoding.
"""

import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from ferlab.data import cache
from ferlab.data.dataset import FaceDataset
from ferlab.errors import FerlabError
from ferlab.labels import canonical_name, class_index, label_space

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
SPLIT_FOLDERS = ("train", "val", "valid", "validation", "test")
_SUBJECT = re.compile(r"^(S\d+)_\d+_\d+$")
_LOADER_VERSION = "folders-1"


def _is(entry: os.DirEntry, kind: str, loops: list[str]) -> bool:
    """entry.is_dir() / is_file(); a symlink that loops is added to `loops` (reported by the caller)."""
    try:
        return entry.is_dir() if kind == "dir" else entry.is_file()
    except OSError:   # ELOOP: the symlink points (through others) back at itself
        loops.append(entry.path)
        return False


def _subdirs(path: Path, loops: list[str]) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        return sorted((e for e in it if not e.name.startswith(".") and _is(e, "dir", loops)), key=lambda e: e.name)


def _images(folder: str, loops: list[str]) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted((e for e in it if not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS)
                       and _is(e, "file", loops)), key=lambda e: e.name)


def _class_folders(root: Path, loops: list[str]) -> list[tuple[str, os.DirEntry]]:
    """(split name, class folder) pairs: split folders if root holds train/ (+ test/, val/), else "all"."""
    top = _subdirs(root, loops)
    names = [e.name.lower() for e in top]
    if top and "train" in names and all(n in SPLIT_FOLDERS for n in names):
        return [(split.name.lower(), folder) for split in top for folder in _subdirs(Path(split.path), loops)]
    return [("all", folder) for folder in top]


def read_image(path: str) -> np.ndarray:
    """One image file as uint8 grayscale 48x48; FerlabError naming the file if it cannot be decoded."""
    try:
        data = np.fromfile(path, dtype=np.uint8)   # fromfile + imdecode also handles non-ASCII paths on Windows
    except OSError as e:
        raise FerlabError(f"{path}: cannot read ({e.strerror})") from None
    image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    if image is None and data.size:  # e.g. a GIF and an OpenCV without its decoder (before 4.11)
        image = _pillow_gray(path)
    if image is None or image.size == 0:
        raise FerlabError(f"{path}: empty or unreadable image")
    if image.shape != (48, 48):
        image = cv2.resize(image, (48, 48), interpolation=cv2.INTER_AREA)
    return image


def _pillow_gray(path: str) -> np.ndarray | None:
    """The file (an animated GIF: its first frame) as uint8 grayscale by Pillow; None if Pillow cannot decode it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"))
    except Exception:  # noqa: BLE001 - the caller reports the file as unreadable
        return None


def load_image_folders(root, classes: str = "fer2013", cache_enabled: bool = True, workers: int | None = None) -> FaceDataset:
    """Load `<root>/<class>/*` or `<root>/<split>/<class>/*` into the label space named by `classes`."""
    root = Path(root)
    if not root.is_dir():
        raise FerlabError(f"{root}: no such directory")
    space = label_space(classes)
    files, labels, splits, skipped, loops = [], [], [], {}, []
    for split, folder in _class_folders(root, loops):
        images = _images(folder.path, loops)
        if not images:
            raise FerlabError(f"{folder.path}: class folder has no images ({', '.join(IMAGE_EXTENSIONS)})")
        label = class_index(folder.name, space)
        if label is None:
            skipped[folder.name] = skipped.get(folder.name, 0) + len(images)
            continue
        files += images
        labels += [label] * len(images)
        splits += [split] * len(images)
    if skipped:
        listed = ", ".join(f"{name} ({n} images)" for name, n in skipped.items())
        hint = " (ckplus:DIR or ferplus8:DIR keeps contempt)" if any(canonical_name(n) == "contempt" for n in skipped) else ""
        print(f"ferlab: warning: {root}: skipped class folders not in the {classes} label space: {listed}{hint}",
              file=sys.stderr)
    if loops:
        shown = ", ".join(loops[:5]) + (f" and {len(loops) - 5} more" if len(loops) > 5 else "")
        print(f"ferlab: warning: {root}: skipped {len(loops)} symlink(s) that loop back on themselves: {shown}", file=sys.stderr)
    if not files:
        raise FerlabError(f"{root}: no class folders with images of the {classes} classes "
                          f"(expected <root>/<class>/*.png or <root>/train/<class>/*.png; classes: {', '.join(space)})")

    images, cached = _decode_cached(root, files, cache_enabled, workers)
    stems = [Path(f.name).stem for f in files]
    subjects = [m.group(1) if (m := _SUBJECT.match(s)) else None for s in stems]
    groups = np.array(subjects) if all(subjects) else None
    return FaceDataset(images=images, labels=np.array(labels, dtype=np.int64), splits=np.array(splits),
                       classes=space, source=str(root), groups=groups, extra={"cached": cached})


def _decode_cached(root: Path, files: list[os.DirEntry], cache_enabled: bool, workers: int | None) -> tuple[np.ndarray, bool]:
    """(images, came from cache): decode the files in a thread pool, or read this file set's cache entry."""
    entry = cache.file_set_path("folders", _LOADER_VERSION, root, [f.path for f in files])
    arrays = cache.load(entry) if cache_enabled else None
    if arrays is not None and arrays["images"].shape == (len(files), 48, 48):
        return arrays["images"], True
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        images = np.stack(list(pool.map(read_image, [f.path for f in files])))
    if cache_enabled:
        cache.save(entry, {"images": images})
    return images, False
