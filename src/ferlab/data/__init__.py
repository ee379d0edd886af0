"""ferlab's data layer: every loader returns a FaceDataset of uint8 48x48 faces, labels and split names.

`load_dataset(spec)` is the one entry point the CLI, training and evaluation use; it picks the
loader from the path (a FER2013 CSV, an image-folder tree, or a FERGIT composition).
"""

from dataclasses import dataclass, field

import numpy as np

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
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> "FaceDataset":
        """Rows selected by a boolean mask or an index array, all fields kept aligned."""
        return FaceDataset(
            images=self.images[index], labels=self.labels[index], splits=self.splits[index],
            classes=self.classes, source=self.source,
            soft_labels=None if self.soft_labels is None else self.soft_labels[index],
            groups=None if self.groups is None else self.groups[index], extra=dict(self.extra),
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
            from ferlab.errors import FerlabError
            raise FerlabError(f"{self.source}: no split named {', '.join(missing)} (have: {', '.join(self.split_names())})")
        return self.subset(np.isin(self.splits, names))

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.classes))
