"""Several data sets as one (`ferlab train --data A --data B ...`): more kinds of faces than FER2013 alone.

`load_mix(specs)` (in data/load.py, which dispatches every spec) joins data sets into one FaceDataset in FER2013's 7 classes:
- labels are mapped by class name (CK+'s "sadness" is "sad"); rows of classes FER2013 lacks
  (contempt) are dropped;
- every source keeps a train/val/test split of its own, named "train" / "val" / "test": FER2013's
  official Training / PublicTest / PrivateTest; a folder's own train/test (val carved from train);
  otherwise a seeded 90/5/5 split, stratified by class, or subject-disjoint when file names carry
  subject ids (CK+: frames of one sequence are near-identical, so a random split would leak);
- `origins` names each row's source ("fer2013", or the folder's name, e.g. "muxspace48", "CK+48"),
  so training can weight the sources and report each one.

With `ferplus` (FER+'s fer2013new.csv), the FER2013 rows get `soft_labels`: their votes for the 7
FER2013 classes, normalised (contempt, unknown and not-a-face votes left out; a row with no such
vote gets its one-hot label); the other sources' rows get their one-hot labels. Labels stay FER2013's.
"""

from pathlib import Path

import numpy as np

from ferlab.data.dataset import FaceDataset
from ferlab.data.fer2013 import read_ferplus_votes
from ferlab.data.specs import parse_spec
from ferlab.data.splits import grouped_split, stratified_split
from ferlab.errors import FerlabError
from ferlab.labels import FER2013_CLASSES, FERPLUS_CLASSES, class_index

MIX_FRACTIONS = (0.9, 0.05, 0.05)
OFFICIAL_ROLES = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}


def source_name(spec: str) -> str:
    """The name a source goes by in a mix: "fer2013" for a FER2013 CSV, else its folder's name."""
    path = parse_spec(spec).rest
    if str(path).lower().endswith((".csv", ".csv.gz")):
        return "fer2013"
    return Path(path).resolve().name


def to_fer2013_classes(data: FaceDataset) -> FaceDataset:
    """The rows whose class FER2013 has, labelled in FER2013_CLASSES."""
    index = np.array([-1 if (i := class_index(c, FER2013_CLASSES)) is None else i for c in data.classes])
    mapped = index[data.labels]
    out = data.subset(mapped >= 0)
    out.labels, out.classes, out.soft_labels = mapped[mapped >= 0].astype(np.int64), FER2013_CLASSES, None
    return out


def mix_splits(data: FaceDataset, seed: int) -> np.ndarray:
    """train / val / test for each row of one source (see the module docstring)."""
    names = set(data.split_names())
    if names <= set(OFFICIAL_ROLES) and "Training" in names:
        return np.array([OFFICIAL_ROLES[s] for s in data.splits])
    if names <= {"train", "val", "test"} and "train" in names:
        splits = data.splits.astype("<U5")
        if "val" not in names:   # carve a validation part from train, as large as MIX_FRACTIONS' val share
            train = np.flatnonzero(splits == "train")
            share = MIX_FRACTIONS[1] / (MIX_FRACTIONS[0] + MIX_FRACTIONS[1])
            splits[train] = stratified_split(data.labels[train], (1 - share, share), seed, names=("train", "val"))
        return splits
    if names != {"all"}:
        raise FerlabError(f"{data.source}: cannot tell its train/val/test parts from its splits ({', '.join(sorted(names))})")
    if data.groups is not None:
        return grouped_split(data.groups, MIX_FRACTIONS, seed)
    return stratified_split(data.labels, MIX_FRACTIONS, seed)


def ferplus7_soft_labels(data: FaceDataset, ferplus) -> np.ndarray:
    """(N, 7) FER+ vote distributions over FER2013's classes for a FER2013 CSV's rows (see module doc)."""
    votes, _ = read_ferplus_votes(ferplus, n_rows=len(data))
    columns = [class_index(name, FERPLUS_CLASSES) for name in FER2013_CLASSES]   # vote columns start with FERPLUS_CLASSES
    seven = votes[:, columns].astype(np.float32)
    total = seven.sum(1, keepdims=True)
    one_hot = np.eye(len(FER2013_CLASSES), dtype=np.float32)[data.labels]
    return np.where(total > 0, seven / np.maximum(total, 1), one_hot)
