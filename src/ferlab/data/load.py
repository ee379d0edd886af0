"""`load_dataset(spec)`: the one entry point that turns a user's data argument into a FaceDataset.

Spec syntax (what `--data` accepts everywhere; `ferlab train` also takes several, a mix: see data/mix.py):

    PATH.csv | PATH.csv.gz    FER2013 CSV; splits Training / PublicTest / PrivateTest
                              (with ferplus=fer2013new.csv: FER+ labels, 8 classes, soft labels)
    DIR                       image folders DIR/<class>/*.png -> one split "all", or Kaggle's
                              DIR/train|test/<class>/*.png -> splits "train" / "test"
    ckplus:DIR                image folders in CK+'s 7 classes (with contempt, no neutral)
    ferplus8:DIR              image folders in the 8 FER+ classes (FER2013's 7 + contempt)
    fer2013:DIR               the default for folders, written out
    tpe:DIR | tpe-agreed:DIR  taiwanese_tpe (posed, 29 performers): faces detected and cropped as at
                              inference, performer ids as groups; -agreed keeps the faces observers
                              rate as performed (data/taiwanese.py)
    fergit:CSV,DIR            FERGIT (bah2022): FER2013 rows + an image-folder set (muxspace48) in
                              the 7 FER2013 classes, seeded stratified 90/5/5 split train/val/test
"""

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from ferlab.data.dataset import FaceDataset
from ferlab.data.fer2013 import apply_ferplus, load_fer2013_csv
from ferlab.data.folders import load_image_folders
from ferlab.data.mix import OFFICIAL_ROLES, ferplus7_soft_labels, mix_splits, source_name, to_fer2013_classes
from ferlab.data.taiwanese import load_taiwanese
from ferlab.data.specs import parse_spec
from ferlab.data.splits import apply_random_split, apply_subject_fold, default_splits, fraction_mask, stratified_split
from ferlab.errors import FerlabError
from ferlab.labels import FER2013_CLASSES, LABEL_SPACES

FERGIT_FRACTIONS = (0.9, 0.05, 0.05)


def load_dataset(spec: str, ferplus: str | None = None, seed: int = 0, classes: str | None = None,
                 cache: bool = True) -> FaceDataset:
    """Load a data set from a spec (see the module docstring for the syntax).

    ferplus: path of FER+'s fer2013new.csv, only with a FER2013 CSV: labels become FER+ majority
        labels in `labels.FERPLUS8_CLASSES` (rows whose plurality vote is unknown, not-a-face or a
        tie are dropped) and `soft_labels` the normalised 8-class vote distributions.
    seed: seed of FERGIT's random split (other specs have fixed splits).
    classes: label space of image folders, "fer2013" (default), "ferplus8" or "ckplus"; the same as
        the spec prefix `ckplus:DIR`.
    cache: read/write the decoded-array cache ($FERLAB_CACHE or ~/.cache/ferlab).
    """
    spec = str(spec)
    parsed = parse_spec(spec)
    if parsed.prefix == "fergit":
        parts = parsed.paths
        if len(parts) != 2 or not all(parts):
            raise FerlabError(f"{spec}: expected fergit:FER2013_CSV,IMAGE_DIR")
        if ferplus or classes not in (None, "fer2013"):
            raise FerlabError(f"{spec}: FERGIT uses the 7 FER2013 classes; --ferplus and other label spaces do not apply")
        return load_fergit(parts[0], parts[1], seed=seed, cache=cache)
    if parsed.prefix in ("tpe", "tpe-agreed"):
        if ferplus or classes not in (None, "fer2013"):
            raise FerlabError(f"{spec}: taiwanese_tpe has the 7 FER2013 classes; --ferplus and other label spaces do not apply")
        return load_taiwanese(parsed.rest, labels="agreed" if parsed.prefix == "tpe-agreed" else "performed", cache_enabled=cache)

    if parsed.prefix in LABEL_SPACES:
        if classes not in (None, parsed.prefix):
            raise FerlabError(f"{spec}: the spec says {parsed.prefix} classes but {classes} were asked for")
        spec, classes = parsed.rest, parsed.prefix

    path = Path(spec)
    if path.is_dir():
        if ferplus:
            raise FerlabError(f"{path}: --ferplus applies to a FER2013 CSV, not to an image folder")
        return load_image_folders(path, classes=classes or "fer2013", cache_enabled=cache)
    if not path.exists():
        raise FerlabError(f"{path}: no such file or directory")
    if not path.name.lower().endswith((".csv", ".csv.gz")):
        raise FerlabError(f"{path}: not a FER2013 CSV (.csv, .csv.gz), an image folder or fergit:CSV,DIR")
    if classes not in (None, "fer2013"):
        raise FerlabError(f"{path}: a FER2013 CSV has the fer2013 classes (use ferplus=fer2013new.csv for FER+'s 8)")
    dataset = load_fer2013_csv(path, cache_enabled=cache)
    return apply_ferplus(dataset, ferplus) if ferplus else dataset


def load_fergit(csv, image_dir, seed: int = 0, fractions=FERGIT_FRACTIONS, cache: bool = True) -> FaceDataset:
    """FERGIT as in bah2022: all FER2013 rows + image-folder faces (contempt dropped), split 90/5/5.

    The split is random with `seed`, stratified by class and source, so train/val/test each hold
    both sources and every class in the same proportions. `origins` says where each row came
    from ("fer2013" or the image folder's name, e.g. "muxspace48").
    """
    fer = load_fer2013_csv(csv, cache_enabled=cache)
    folders = load_image_folders(image_dir, classes="fer2013", cache_enabled=cache)
    folder_name = Path(image_dir).resolve().name
    origins = np.array(["fer2013"] * len(fer) + [folder_name] * len(folders))
    labels = np.concatenate([fer.labels, folders.labels])
    key = labels + len(FER2013_CLASSES) * (origins != "fer2013")   # stratify by class and source
    return FaceDataset(
        images=np.concatenate([fer.images, folders.images]), labels=labels,
        splits=stratified_split(key, fractions, seed), classes=FER2013_CLASSES,
        source=f"fergit:{csv},{image_dir}", origins=origins,
        extra={"cached": bool(fer.extra.get("cached") and folders.extra.get("cached")), "seed": seed},
    )


def load_mix(specs, ferplus=None, seed: int = 0, cache: bool = True) -> FaceDataset:
    """One FaceDataset from several data set specs in FER2013's 7 classes, each source split
    train/val/test on its own, `origins` naming each row's source (see data/mix.py)."""
    names = [source_name(s) for s in specs]
    if len(set(names)) != len(names):
        raise FerlabError(f"--data names a source twice ({', '.join(names)}); give each data set once")
    if ferplus and "fer2013" not in names:
        raise FerlabError("--ferplus gives votes for FER2013's rows: add the FER2013 CSV as one --data")
    parts = []
    for spec, name in zip(specs, names):
        if str(spec).startswith("fergit:"):
            raise FerlabError(f"{spec}: FERGIT is already a mix; give its parts as --data CSV --data DIR")
        data = load_dataset(spec, cache=cache)
        soft = ferplus7_soft_labels(data, ferplus) if name == "fer2013" and ferplus else None
        data = to_fer2013_classes(data)
        if ferplus:
            data.soft_labels = soft if soft is not None else np.eye(len(FER2013_CLASSES), dtype=np.float32)[data.labels]
        data.splits = mix_splits(data, seed)
        data.origins = np.full(len(data), name)
        parts.append(data)

    def join(field):
        return None if getattr(parts[0], field) is None else np.concatenate([getattr(p, field) for p in parts])
    return FaceDataset(images=join("images"), labels=join("labels"), splits=join("splits").astype("<U5"),
                       classes=FER2013_CLASSES, source=" + ".join(map(str, specs)), soft_labels=join("soft_labels"),
                       origins=join("origins"), extra={"sources": names, "seed": seed})


def load_with_splits(spec, ferplus: str | None = None, seed: int = 0, folds: int = 0, fold: int = 0) -> FaceDataset:
    """load_dataset, split as fold `fold` of a subject-independent `folds`-fold cross-validation when
    folds > 0, else with a seeded stratified 90/5/5 train/val/test split for data that has none.
    A list of several specs is a mix (load_mix)."""
    if not isinstance(spec, str) and len(spec) > 1:
        if folds:
            raise FerlabError("--folds splits one data set with subject ids; a mix of several splits each source on its own")
        return load_mix(spec, ferplus, seed)
    spec = spec if isinstance(spec, str) else spec[0]
    data = load_dataset(spec, ferplus=ferplus, seed=seed)
    if folds:
        return apply_subject_fold(data, folds, fold, seed)
    return apply_random_split(data, seed=seed) if data.split_names() == ["all"] else data


VALIDATION_SHARE = 0.1


def carve_validation(data: FaceDataset, seed: int) -> FaceDataset:
    """A data set whose only split is Training, with a seeded, class-stratified 10% of it as PublicTest
    (validation); says so in one warning line."""
    splits = stratified_split(data.labels, (1 - VALIDATION_SHARE, VALIDATION_SHARE), seed, names=("Training", "PublicTest"))
    carved = replace(data, splits=splits, extra=dict(data.extra))
    print(f"ferlab: warning: {data.source}: only a Training split; validating on a seeded {VALIDATION_SHARE:.0%} of it "
          f"({int((splits == 'PublicTest').sum())} faces, --seed {seed}), and no test split", file=sys.stderr)
    return carved


# bah2022's recipes name FERGIT's parts, the others FER2013's official ones: the same three roles.
FERGIT_TO_OFFICIAL = {v: k for k, v in OFFICIAL_ROLES.items()}


def recipe_splits(cfg, have: list[str], splits: tuple[str, str, str]) -> tuple[str, str, str]:
    """(train, val, test) split names for data whose splits are `have`: `splits` as resolved, except
    that a --recipe's split names of one family become the other's in the same roles when the data
    has the other family instead (bah2022's train/val/test on a FER2013 CSV: Training/PublicTest/
    PrivateTest; fernet_m's Training/... on a train/val/test folder: train/val/test); says so in one line."""
    if not cfg.recipe:
        return splits
    for names, theirs, ours in ((FERGIT_TO_OFFICIAL, "FERGIT's", "FER2013's"),
                                (OFFICIAL_ROLES, "FER2013's", "train/val/test")):
        if not set(names.values()) <= set(have):
            continue
        renamed = tuple(",".join(names[n] if n in names and n not in have else n for n in s.split(",")) if s else s
                        for s in splits)
        if renamed != splits:
            print(f"ferlab: --recipe {cfg.recipe} names {theirs} splits; this data has {ours}, so it trains on "
                  f"{renamed[0]}, validates on {renamed[1]}" + (f" and tests on {renamed[2]}" if renamed[2] else ""),
                  file=sys.stderr)
            return renamed
    return splits


def load_run_data(cfg):
    """(dataset, train, val, test-or-None) FaceDatasets for a training config (ferlab.training.config.TrainConfig:
    data, ferplus, seed, folds, fold, train/val/test_splits, train_fraction)."""
    data = load_with_splits(cfg.data, cfg.ferplus, cfg.seed, cfg.folds, cfg.fold)
    names = data.split_names()
    carved = cfg.val_splits == "auto" and names == ["Training"]   # a FER2013 CSV of training rows only
    if carved:
        data = carve_validation(data, cfg.seed)
        names = data.split_names()
    auto = default_splits(names)
    train_s = auto[0] if cfg.train_splits == "auto" else cfg.train_splits
    val_s = auto[1] if cfg.val_splits == "auto" else cfg.val_splits
    test_s = auto[2] if cfg.test_splits == "auto" else cfg.test_splits
    if carved and cfg.test_splits == "auto":
        test_s = ""
    if "sources" in data.extra:   # a mix splits every source train/val/test: FER2013's names say which part
        train_s, val_s, test_s = (",".join(dict.fromkeys(OFFICIAL_ROLES.get(n, n) for n in s.split(","))) if s else s
                                  for s in (train_s, val_s, test_s))
    else:
        train_s, val_s, test_s = recipe_splits(cfg, names, (train_s, val_s, test_s))
    if not train_s or not val_s:
        raise FerlabError(f"{cfg.data}: cannot tell which splits to train and validate on (have: {', '.join(names)}); "
                          "pass --train-splits and --val-splits")
    train = data.select(train_s)
    if cfg.train_fraction < 1:
        train = train.subset(fraction_mask(train.labels, cfg.train_fraction, cfg.seed))
    return data, train, data.select(val_s), data.select(test_s) if test_s else None


def data_names(data: str | list) -> str:
    """A run's data by file name (where the files live differs per machine); a mix joined by " + "."""
    specs = map(parse_spec, data if isinstance(data, list) else [data])
    return " + ".join(f"{s.prefix}:{Path(s.rest).name}" if s.prefix else Path(s.rest).name for s in specs)
