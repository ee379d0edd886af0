"""Seeded, reproducible ways to cut a data set into train/val/test or into cross-validation folds.

- `stratified_split`: random split with the same class proportions in every part (FERGIT's
  90/5/5, bah2022's CK+ 90/10).
- `subject_kfold`: k folds in which no subject appears in two folds (the CK+ protocol: frames of
  one sequence are near-identical, so a random split leaks).
- `apply_random_split`: give a one-split data set ("all") train/val/test split names.
- `apply_subject_fold`: give a data set with subject ids the train/val/test split of one fold of
  a subject-independent k-fold cross-validation (`ferlab train --folds K --fold I`).

Everything depends only on the inputs and the seed (numpy's PCG64 `default_rng`).
"""

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from ferlab.data.dataset import FaceDataset
from ferlab.errors import FerlabError

DEFAULT_NAMES = ("train", "val", "test")


def _check_fractions(fractions: Sequence[float], names: Sequence[str]) -> np.ndarray:
    fractions = np.asarray(fractions, dtype=np.float64)
    if len(fractions) != len(names):
        raise FerlabError(f"split fractions {tuple(fractions)} and names {tuple(names)} differ in length")
    if (fractions < 0).any() or abs(fractions.sum() - 1.0) > 1e-6:
        raise FerlabError(f"split fractions must be >= 0 and sum to 1, got {tuple(float(f) for f in fractions)}")
    return fractions


def stratified_split(labels: np.ndarray, fractions: Sequence[float] = (0.9, 0.05, 0.05), seed: int = 0,
                     names: Sequence[str] = DEFAULT_NAMES) -> np.ndarray:
    """Split name for each row: a seeded random split, stratified per label value.

    Within each class the rows are shuffled and cut at floor(cumsum(fractions) * n_class + u), with
    u a random offset in [0, 1) per class: every part holds its share of the class rounded up or
    down (never off by more than one row), and the rounding is unbiased, so the totals stay close
    to the fractions even with many small classes. `labels` can be any integer key (e.g.
    class + n_classes * source to stratify by source too).
    """
    labels = np.asarray(labels)
    fractions = _check_fractions(fractions, names)
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), dtype=f"<U{max(len(n) for n in names)}")
    for value in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == value))
        bounds = np.floor(np.cumsum(fractions) * len(rows) + rng.random()).astype(int)
        bounds[-1] = len(rows)
        for name, lo, hi in zip(names, np.concatenate(([0], bounds[:-1])), bounds):
            out[rows[lo:hi]] = name
    return out


def subject_kfold(groups: np.ndarray, labels: np.ndarray, k: int = 10, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train_idx, test_idx) pairs; each subject (group) is in exactly one test fold.

    Subjects are taken largest first (ties in seeded random order) and each goes to the fold with
    the fewest rows (greedy "largest first" balancing: fold sizes end within one subject of each
    other); among equally small folds, the one holding fewest rows of the subject's classes
    (relative to each class's total), which keeps class proportions close. Index arrays are
    sorted int64.
    """
    groups, labels = np.asarray(groups), np.asarray(labels)
    if len(groups) != len(labels):
        raise FerlabError(f"subject_kfold: {len(groups)} groups for {len(labels)} labels")
    subjects, subject_of_row = np.unique(groups, return_inverse=True)
    if not 2 <= k <= len(subjects):
        raise FerlabError(f"subject_kfold: k={k} folds need 2 <= k <= number of subjects ({len(subjects)})")
    _, label_of_row = np.unique(labels, return_inverse=True)
    # per_subject[s, c] = rows of subject s with class c
    per_subject = np.zeros((len(subjects), label_of_row.max() + 1), dtype=np.int64)
    np.add.at(per_subject, (subject_of_row, label_of_row), 1)
    weight = 1.0 / np.maximum(per_subject.sum(0), 1)

    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(subjects))
    order = shuffled[np.argsort(-per_subject[shuffled].sum(1), kind="stable")]
    fold_counts = np.zeros((k, per_subject.shape[1]), dtype=np.int64)
    fold_of_subject = np.empty(len(subjects), dtype=np.int64)
    for s in order:
        sizes = fold_counts.sum(1)
        class_load = (fold_counts * weight)[:, per_subject[s] > 0].sum(1)
        fold = int(np.lexsort((class_load, sizes))[0])   # smallest fold; ties: least of these classes
        fold_of_subject[s] = fold
        fold_counts[fold] += per_subject[s]

    fold_of_row = fold_of_subject[subject_of_row]
    return [(np.flatnonzero(fold_of_row != f), np.flatnonzero(fold_of_row == f)) for f in range(k)]


def apply_random_split(dataset: FaceDataset, fractions: Sequence[float] = (0.9, 0.05, 0.05), seed: int = 0,
                       names: Sequence[str] = DEFAULT_NAMES) -> FaceDataset:
    """A copy of a one-split data set (e.g. an image folder's "all") with a stratified random split."""
    if len(dataset.split_names()) != 1:
        raise FerlabError(f"{dataset.source}: already split into {', '.join(dataset.split_names())}; "
                          "a random split applies to a data set with one split")
    return replace(dataset, splits=stratified_split(dataset.labels, fractions, seed, names), extra=dict(dataset.extra))


def check_fold(k: int, fold: int) -> None:
    """FerlabError unless fold `fold` of k can be split train/val/test."""
    if k < 3 or not 0 <= fold < k:
        raise FerlabError(f"subject folds need --folds >= 3 (one tests, one validates, the rest train) and "
                          f"0 <= --fold < --folds, got --folds {k} --fold {fold}")


def subject_fold_splits(groups: np.ndarray, labels: np.ndarray, k: int, fold: int, seed: int = 0,
                        names: Sequence[str] = DEFAULT_NAMES) -> np.ndarray:
    """Split names (N,) for fold `fold` of `subject_kfold(groups, labels, k, seed)`: that fold tests,
    the next one (fold + 1 mod k) validates, the other k - 2 train; no subject is in two parts."""
    check_fold(k, fold)
    folds = subject_kfold(groups, labels, k, seed)
    splits = np.full(len(labels), names[0], dtype=f"<U{max(map(len, names))}")
    splits[folds[(fold + 1) % k][1]] = names[1]
    splits[folds[fold][1]] = names[2]
    return splits


def apply_subject_fold(dataset: FaceDataset, k: int, fold: int, seed: int = 0) -> FaceDataset:
    """A copy of a data set with subject ids (e.g. CK+) split train/val/test as fold `fold` of k
    (see subject_fold_splits); any split it had is replaced."""
    if dataset.groups is None:
        raise FerlabError(f"{dataset.source}: subject folds need subject ids, and this data has none "
                          "(CK+ folders with file names S<subject>_<sequence>_<frame>, e.g. ckplus:CK+48)")
    return replace(dataset, splits=subject_fold_splits(dataset.groups, dataset.labels, k, fold, seed), extra=dict(dataset.extra))


def default_splits(split_names: list[str]) -> tuple[str, str, str]:
    """The (train, val, test) split names a data set's own splits imply; "" where there is none."""
    if "Training" in split_names:
        return "Training", "PublicTest", "PrivateTest"
    if "train" in split_names:
        val = "val" if "val" in split_names else "test"
        return "train", val, "test" if "test" in split_names and val != "test" else ""
    return "", "", ""


def fraction_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """--train-fraction: which faces a seeded, class-stratified `fraction` of the train split keeps."""
    return stratified_split(labels, (fraction, 1 - fraction), seed, names=("keep", "drop")) == "keep"


def grouped_split(groups: np.ndarray, fractions: Sequence[float] = (0.9, 0.05, 0.05), seed: int = 0,
                  names: Sequence[str] = DEFAULT_NAMES) -> np.ndarray:
    """Split name for each row such that all rows of a group (subject) share one part.

    Subjects are shuffled with `seed`; the smaller parts, smallest first, take subjects in that
    order until they hold their fraction of the rows (at least one subject each when their fraction
    is above 0), and the largest part takes the rest. Parts are whole subjects.
    """
    groups = np.asarray(groups)
    fractions = _check_fractions(fractions, names)
    subjects, subject_of_row = np.unique(groups, return_inverse=True)
    sizes = np.bincount(subject_of_row)
    order = list(np.random.default_rng(seed).permutation(len(subjects)))
    by_size = np.argsort(fractions, kind="stable")
    part_of_subject = np.full(len(subjects), by_size[-1])
    for part in by_size[:-1]:
        target, taken = fractions[part] * len(groups), 0
        while order and fractions[part] > 0 and (taken == 0 or taken < target):
            s = order.pop(0)
            part_of_subject[s] = part
            taken += sizes[s]
    return np.array(names)[part_of_subject[subject_of_row]]
