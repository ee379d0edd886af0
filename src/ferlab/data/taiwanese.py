"""taiwanese_tpe: posed faces of 29 East Asian performers (Chen, Cho & Tseng 2013), as a FaceDataset.

Why a loader of its own: its images are 256x256 colour head-and-shoulders photos, not 48x48 face
crops, so each face is found by the bundled detector and cut out with the framing `Recognizer`
uses at inference (the faces a model trains on look like the faces it is later shown). Its file
names carry the performer (`PPTVeSS`: PP performer, T how it was performed, e the expression), so
a mix splits it by performer, never putting one person's faces on both sides.

Labels: the folder is the expression the performer *intended*. `labels.csv` adds what ~100
observers rated strongest; they agree for happy 226/226 but for fear only 23/151 (mostly read as
surprise). `tpe:DIR` keeps the performed labels (what a posed test set is labelled by);
`tpe-agreed:DIR` keeps only the faces observers agree with (and every neutral face, which has no
observer category).
"""

import csv
import os
import sys
from pathlib import Path

import numpy as np

from ferlab.data import cache
from ferlab.data.dataset import FaceDataset
from ferlab.errors import FerlabError
from ferlab.labels import FER2013_CLASSES, class_index

LABEL_POLICIES = ("performed", "agreed")
_LOADER_VERSION = "taiwanese-1"
_COLUMNS = ("file", "performer_id", "label_performed", "observer_maxIntCategory")


def read_labels(root: Path) -> list[dict]:
    """The rows of `root/labels.csv`, checked for the columns the loader needs."""
    path = root / "labels.csv"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise FerlabError(f"{path}: no such file (taiwanese_tpe keeps its performers and ratings there)") from None
    missing = [c for c in _COLUMNS if rows and c not in rows[0]]
    if not rows or missing:
        raise FerlabError(f"{path}: expected the columns {', '.join(_COLUMNS)}" + (f" (missing {', '.join(missing)})" if missing else ""))
    return rows


def detect_face_crops(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(crops uint8 (N, 48, 48), found bool (N,)): each photo's highest-scoring face, cut out as at
    inference; a photo without a face gets an empty crop and found=False."""
    from tqdm import tqdm

    from ferlab.inference.faces import create_detector, crop_faces_for
    from ferlab.inference.images import load_image

    detector = create_detector("auto")
    crops = np.zeros((len(paths), 48, 48), np.uint8)
    found = np.zeros(len(paths), bool)
    for i, path in enumerate(tqdm(paths, desc="finding faces", unit="photo", leave=False, disable=len(paths) < 50)):
        rgb, _ = load_image(path)
        faces = detector.detect(rgb)
        if faces:
            best = max(faces, key=lambda f: f.score)
            crops[i] = crop_faces_for(detector, rgb, [best])[0]
            found[i] = True
    return crops, found


def load_taiwanese(root, labels: str = "performed", cache_enabled: bool = True) -> FaceDataset:
    """The faces of `root` (taiwanese_tpe's layout: <emotion>/<PPTVeSS>.jpg and labels.csv), in
    FER2013's 7 classes, one split "all", `groups` = performer ids (see the module docstring)."""
    root = Path(root)
    if labels not in LABEL_POLICIES:
        raise FerlabError(f"{root}: unknown label policy {labels!r} (known: {', '.join(LABEL_POLICIES)})")
    if not root.is_dir():
        raise FerlabError(f"{root}: no such directory")
    rows = read_labels(root)
    paths = [str(root / r["file"]) for r in rows]
    absent = [p for p in paths if not os.path.isfile(p)]
    if absent:
        raise FerlabError(f"{absent[0]}: listed in {root / 'labels.csv'} but missing ({len(absent)} files in all)")
    performed = np.array([class_index(r["label_performed"], FER2013_CLASSES) for r in rows], dtype=object)
    unknown = sorted({r["label_performed"] for r, c in zip(rows, performed) if c is None})
    if unknown:
        raise FerlabError(f"{root / 'labels.csv'}: label_performed has classes FER2013 lacks: {', '.join(unknown)}")

    crops, found = _crops_cached(root, paths, cache_enabled)
    keep = found.copy()
    if labels == "agreed":
        agreed = [r["label_performed"] == "neutral" or r["observer_maxIntCategory"] == r["label_performed"] for r in rows]
        keep &= np.array(agreed)
    if (~found).any():
        print(f"ferlab: warning: {root}: no face found in {int((~found).sum())} of {len(rows)} photos; they are left out",
              file=sys.stderr)
    return FaceDataset(
        images=crops[keep], labels=performed[keep].astype(np.int64), splits=np.full(int(keep.sum()), "all"),
        classes=FER2013_CLASSES, source=str(root), groups=np.array([r["performer_id"] for r in rows])[keep],
        extra={"labels": labels, "no_face": int((~found).sum())},
    )


def _crops_cached(root: Path, paths: list[str], cache_enabled: bool) -> tuple[np.ndarray, np.ndarray]:
    entry = cache.file_set_path("taiwanese", _LOADER_VERSION, root, paths)
    arrays = cache.load(entry) if cache_enabled else None
    if arrays is not None and arrays["images"].shape == (len(paths), 48, 48):
        return arrays["images"], arrays["found"]
    crops, found = detect_face_crops(paths)
    if cache_enabled:
        cache.save(entry, {"images": crops, "found": found})
    return crops, found
