"""FaceDataset: the one in-memory form of every data set ferlab reads.

Loaders return it; training, evaluation and the CLI consume it. All per-row arrays stay aligned
through `subset`, so a split or a fold is just a row selection.
"""

from dataclasses import dataclass, field

import numpy as np

from ferlab.errors import FerlabError
from ferlab.labels import FER2013_CLASSES


@dataclass
class FaceDataset:
    images: np.ndarray            # uint8 (N, 48, 48)
    labels: np.ndarray            # int64 (N,), index into `classes`
    splits: np.ndarray            # str (N,), e.g. "Training" / "PublicTest" / "PrivateTest" or "train"/"val"/"test"
    classes: tuple = FER2013_CLASSES
    source: str = ""
    soft_labels: np.ndarray | None = None   # float32 (N, C) label distributions (FER+ votes), optional
    groups: np.ndarray | None = None        # subject ids (N,) for subject-independent splits, optional
    extra: dict = field(default_factory=dict)   # data-set-level facts (e.g. rows dropped), not per row
    origins: np.ndarray | None = None       # str (N,): which source a row came from (FERGIT), optional

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> "FaceDataset":
        """Rows selected by a boolean mask or an index array, all fields kept aligned."""
        def pick(a):
            return None if a is None else a[index]
        return FaceDataset(
            images=self.images[index], labels=self.labels[index], splits=self.splits[index],
            classes=self.classes, source=self.source, soft_labels=pick(self.soft_labels),
            groups=pick(self.groups), extra=dict(self.extra), origins=pick(self.origins),
        )

    def split_names(self) -> list[str]:
        """Split names in order of first appearance."""
        _, first = np.unique(self.splits, return_index=True)
        return [str(self.splits[i]) for i in sorted(first)]

    def select(self, names) -> "FaceDataset":
        """Rows whose split is one of `names` (a name, a comma-separated string or a list)."""
        if isinstance(names, str):
            names = [n for n in names.split(",") if n]
        missing = [n for n in names if n not in set(self.split_names())]
        if missing:
            raise FerlabError(f"{self.source}: no split named {', '.join(missing)} (have: {', '.join(self.split_names())})")
        return self.subset(np.isin(self.splits, names))

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.classes))
