"""The data layer on tiny synthetic files: FER2013 CSV (+gz), FER+ votes, image folders, FERGIT,
splits, the cache, every malformed-input error, and `ferlab data summary`. No real data needed."""

import gzip

import cv2
import numpy as np
import pytest

import ferlab.data.fer2013 as fer2013_module
import ferlab.data.folders as folders_module
from ferlab.cli import main as ferlab_main
from ferlab.data import (FaceDataset, apply_random_split, apply_subject_fold, load_dataset, load_image_folders, load_run_data,
                         stratified_split, subject_kfold)
from ferlab.errors import FerlabError
from ferlab.labels import CKPLUS_CLASSES, FER2013_CLASSES, FERPLUS8_CLASSES
from ferlab.training.config import TrainConfig
from synthetic import write_csv as write_split_csv

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("FERLAB_CACHE", str(tmp_path / "cache"))


# ------------------------------------------------------------------------------------ helpers

def make_rows(labels, usages):
    images = RNG.integers(0, 256, size=(len(labels), 48, 48), dtype=np.uint8)
    return images, [f"{e},{' '.join(map(str, im.ravel()))},{u}" for e, im, u in zip(labels, images, usages)]


def write_csv(path, lines, header="emotion,pixels,Usage"):
    text = "\n".join([header, *lines]) + "\n"
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def small_csv(path, n_per_split=(6, 3, 3)):
    usages = ["Training"] * n_per_split[0] + ["PublicTest"] * n_per_split[1] + ["PrivateTest"] * n_per_split[2]
    labels = [i % 7 for i in range(len(usages))]
    images, lines = make_rows(labels, usages)
    write_csv(path, lines)
    return images, labels, usages


def write_image(path, size=48, value=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = RNG.integers(0, 256, size=(size, size), dtype=np.uint8) if value is None else np.full((size, size), value, np.uint8)
    assert cv2.imwrite(str(path), image)
    return image


def make_tree(root, counts, prefix="img"):
    """root/<class>/<prefix>_<i>.png for class -> count."""
    for name, n in counts.items():
        for i in range(n):
            write_image(root / name / f"{prefix}_{i}.png")
    return root


# ----------------------------------------------------------------------------------- FER2013 CSV

@pytest.mark.parametrize("name", ["fer.csv", "fer.csv.gz"])
def test_csv_loads_images_labels_and_official_splits(tmp_path, name):
    images, labels, usages = small_csv(tmp_path / name)
    ds = load_dataset(str(tmp_path / name))
    assert len(ds) == 12 and ds.images.shape == (12, 48, 48) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == labels
    assert np.array_equal(ds.images, images)
    assert ds.splits.tolist() == usages
    assert ds.split_names() == ["Training", "PublicTest", "PrivateTest"]
    assert ds.classes == FER2013_CLASSES and ds.soft_labels is None and ds.groups is None
    assert len(ds.select("PrivateTest")) == 3 and len(ds.select("Training,PublicTest")) == 9


def test_csv_with_crlf_and_blank_lines(tmp_path):
    images, lines = make_rows([3, 4], ["Training", "PrivateTest"])
    (tmp_path / "f.csv").write_bytes(("emotion,pixels,Usage\r\n" + lines[0] + "\r\n\r\n" + lines[1] + "\r\n\n").encode())
    ds = load_dataset(str(tmp_path / "f.csv"))
    assert ds.labels.tolist() == [3, 4] and ds.splits.tolist() == ["Training", "PrivateTest"]
    assert np.array_equal(ds.images, images)


def test_csv_without_usage_column_is_one_split(tmp_path):
    images, lines = make_rows([0, 6], ["x", "x"])
    write_csv(tmp_path / "train.csv", [ln.rsplit(",", 1)[0] for ln in lines], header="emotion,pixels")
    ds = load_dataset(str(tmp_path / "train.csv"))
    assert ds.split_names() == ["all"] and ds.labels.tolist() == [0, 6]


def test_csv_cache_hit_does_not_reparse(tmp_path, monkeypatch):
    small_csv(tmp_path / "fer.csv.gz")
    first = load_dataset(str(tmp_path / "fer.csv.gz"))
    assert first.extra["cached"] is False
    assert len(list((tmp_path / "cache").glob("fer2013-*.npz"))) == 1

    def no_parse(path):
        raise AssertionError("parsed again despite the cache")
    monkeypatch.setattr(fer2013_module, "parse_fer2013_csv", no_parse)
    second = load_dataset(str(tmp_path / "fer.csv.gz"))
    assert second.extra["cached"] is True
    for field in ("images", "labels", "splits"):
        assert np.array_equal(getattr(first, field), getattr(second, field))
    assert second.labels.dtype == np.int64 and second.images.dtype == np.uint8


def test_csv_cache_is_invalidated_by_a_changed_file_and_survives_corruption(tmp_path):
    small_csv(tmp_path / "fer.csv")
    load_dataset(str(tmp_path / "fer.csv"))
    images, labels, _ = small_csv(tmp_path / "fer.csv", n_per_split=(2, 1, 1))   # new size and mtime
    ds = load_dataset(str(tmp_path / "fer.csv"))
    assert len(ds) == 4 and not ds.extra["cached"] and np.array_equal(ds.images, images)
    for entry in (tmp_path / "cache").glob("*.npz"):
        entry.write_bytes(b"not an npz")
    assert len(load_dataset(str(tmp_path / "fer.csv"))) == 4


def good_line():
    return make_rows([1], ["Training"])[1][0]


BAD_CSV_CASES = {
    # name: (file lines after the header, expected fragment of the message)
    "too few pixels": ([good_line(), "2," + " ".join(["1"] * 2303) + ",Training"], "line 3: expected 2304 pixel values, found 2303"),
    "too many pixels": ([good_line(), "2," + " ".join(["1"] * 2305) + ",Training"], "line 3: expected 2304 pixel values, found 2305"),
    "non-numeric pixel": ([good_line(), "2," + " ".join(["1"] * 100 + ["x7"] + ["1"] * 2203) + ",Training"], "line 3: pixel value 'x7'"),
    "negative pixel": (["2," + " ".join(["-1"] + ["1"] * 2303) + ",Training"], "line 2: pixel value '-1'"),
    "pixel over 255": ([good_line(), good_line(), "2," + " ".join(["256"] + ["1"] * 2303) + ",Training"], "line 4: pixel value 256 is out of range"),
    "pixel too long": (["2," + " ".join(["1"] * 5 + ["1000"] + ["1"] * 2298) + ",Training"], "line 2: pixel value '1000' is out of range"),
    "empty pixels": (["2,,Training"], "line 2: expected 2304 pixel values, found 0"),
    "missing field": ([good_line(), "2," + " ".join(["1"] * 2304)], "line 3: expected 3 comma-separated fields"),
    "label 7": (["7," + " ".join(["1"] * 2304) + ",Training"], "line 2: emotion '7' is not a label 0..6"),
    "label not a number": (["happy," + " ".join(["1"] * 2304) + ",Training"], "line 2: emotion 'happy'"),
    "unknown usage": ([good_line(), "2," + " ".join(["1"] * 2304) + ",Validation"], "line 3: Usage 'Validation'"),
    "no rows": ([], "no data rows"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSV_CASES))
def test_bad_csv_rows_raise_with_file_and_line(tmp_path, case):
    lines, fragment = BAD_CSV_CASES[case]
    path = write_csv(tmp_path / "bad_rows.csv.gz", lines)
    with pytest.raises(FerlabError) as err:
        load_dataset(str(path))
    message = str(err.value)
    assert "bad_rows.csv.gz" in message and fragment in message and "\n" not in message


def test_bad_csv_header_and_missing_file(tmp_path):
    path = write_csv(tmp_path / "wrong_header.csv", [good_line()], header="label,pixels,Usage")
    with pytest.raises(FerlabError, match=r"wrong_header\.csv: line 1: expected the header emotion,pixels,Usage"):
        load_dataset(str(path))
    with pytest.raises(FerlabError, match=r"missing\.csv: no such file"):
        load_dataset(str(tmp_path / "missing.csv"))
    (tmp_path / "broken.csv.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(FerlabError, match=r"broken\.csv\.gz: cannot read"):
        load_dataset(str(tmp_path / "broken.csv.gz"))


# ----------------------------------------------------------------------------------------- FER+

FERPLUS_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
# votes in FER+ column order: neutral happiness surprise sadness anger disgust fear contempt unknown NF
FERPLUS_ROWS = [
    ("Training", [0, 8, 1, 0, 0, 0, 0, 0, 1, 0]),   # happiness -> happy (3)
    ("Training", [1, 0, 0, 0, 0, 0, 0, 7, 2, 0]),   # contempt -> 7
    ("Training", [2, 0, 0, 0, 0, 0, 0, 0, 8, 0]),   # unknown majority -> dropped
    ("PublicTest", [0, 0, 0, 0, 0, 0, 0, 0, 1, 9]),   # not a face -> dropped
    ("PublicTest", [4, 4, 0, 0, 0, 0, 0, 0, 2, 0]),   # tie neutral/happiness -> dropped
    ("PrivateTest", [3, 0, 0, 0, 5, 2, 0, 0, 0, 0]),  # anger -> angry (0); soft 0.3 neutral, 0.5 angry, 0.2 disgust
    ("PrivateTest", [0, 0, 0, 2, 0, 0, 6, 0, 2, 0]),  # fear (2); unknown votes excluded from soft labels
]


def write_ferplus(path, rows, header=FERPLUS_HEADER):
    path.write_text("\n".join([header, *[f"{u},fer{i:07d}.png," + ",".join(map(str, v)) for i, (u, v) in enumerate(rows)]]) + "\n")
    return path


def ferplus_pair(tmp_path):
    usages = [u for u, _ in FERPLUS_ROWS]
    images, lines = make_rows([6] * len(usages), usages)
    return write_csv(tmp_path / "fer.csv", lines), write_ferplus(tmp_path / "fer2013new.csv", FERPLUS_ROWS), images


def test_ferplus_majority_labels_soft_labels_and_drops(tmp_path):
    csv, votes, images = ferplus_pair(tmp_path)
    ds = load_dataset(str(csv), ferplus=str(votes))
    assert ds.classes == FERPLUS8_CLASSES
    assert ds.labels.tolist() == [3, 7, 0, 2]
    assert ds.splits.tolist() == ["Training", "Training", "PrivateTest", "PrivateTest"]
    assert np.array_equal(ds.images, images[[0, 1, 5, 6]])
    assert ds.extra["ferplus_dropped"] == {"unknown": 1, "not_face": 1, "tie": 1}
    assert ds.soft_labels.shape == (4, 8) and ds.soft_labels.dtype == np.float32
    np.testing.assert_allclose(ds.soft_labels.sum(1), 1, rtol=1e-6)
    np.testing.assert_allclose(ds.soft_labels[2], [0.5, 0.2, 0, 0, 0, 0, 0.3, 0], rtol=1e-6)
    np.testing.assert_allclose(ds.soft_labels[3], [0, 0, 0.75, 0, 0.25, 0, 0, 0], rtol=1e-6)
    assert (ds.soft_labels.argmax(1) == ds.labels).all()
    assert len(ds.subset(ds.labels == 7).soft_labels) == 1


@pytest.mark.parametrize("problem, fragment", [
    ("fewer rows", "6 FER+ rows but the FER2013 CSV has 7"),
    ("wrong columns", "line 1: expected the FER+ header"),
    ("bad vote", "line 3: vote counts must be integers >= 0"),
    ("negative vote", "line 3: vote counts must be integers >= 0"),
    ("missing field", "line 4: expected 12 fields, found 11"),
    ("usage mismatch", "line 2: Usage 'PublicTest' but row 1"),
])
def test_bad_ferplus_files(tmp_path, problem, fragment):
    csv, votes, _ = ferplus_pair(tmp_path)
    lines = votes.read_text().splitlines()
    if problem == "fewer rows":
        lines = lines[:-1]
    elif problem == "wrong columns":
        lines[0] = lines[0].replace(",NF", "")
    elif problem == "bad vote":
        lines[2] = lines[2].replace(",7,", ",seven,")
    elif problem == "negative vote":
        lines[2] = lines[2].replace(",7,", ",-7,")
    elif problem == "missing field":
        lines[3] = lines[3].rsplit(",", 1)[0]
    elif problem == "usage mismatch":
        lines[1] = lines[1].replace("Training", "PublicTest")
    votes.write_text("\n".join(lines) + "\n")
    with pytest.raises(FerlabError) as err:
        load_dataset(str(csv), ferplus=str(votes))
    assert "fer2013new.csv" in str(err.value) and fragment in str(err.value)


# -------------------------------------------------------------------------------- image folders

def test_image_folders_map_classes_resize_and_skip_contempt(tmp_path, capsys):
    root = make_tree(tmp_path / "faces", {"Anger": 3, "happy": 2, "contempt": 2, "unknown": 1})
    big = write_image(root / "sadness" / "big.JPG", size=96, value=200)   # upper-case extension, resized
    ds = load_dataset(str(root))
    assert len(ds) == 6 and ds.images.shape == (6, 48, 48) and ds.images.dtype == np.uint8
    assert ds.classes == FER2013_CLASSES and ds.split_names() == ["all"]
    assert sorted(ds.labels.tolist()) == [0, 0, 0, 3, 3, 4]
    assert ds.labels.dtype == np.int64 and ds.groups is None
    assert np.abs(ds.images[ds.labels == 4].astype(int) - int(big[0, 0])).max() <= 2   # JPEG + INTER_AREA of a flat image
    warning = capsys.readouterr().err
    assert "contempt (2 images)" in warning and "unknown (1 images)" in warning and warning.count("\n") == 1


def test_ckplus_label_space_keeps_contempt_and_parses_subjects(tmp_path, capsys):
    root = tmp_path / "CK+48"
    for cls, subject in [("anger", 10), ("anger", 11), ("contempt", 10), ("happy", 12), ("surprise", 11)]:
        for frame in (1, 2, 3):
            write_image(root / cls / f"S{subject:03d}_004_{frame:08d}.png")
    for spec, kwargs in [(f"ckplus:{root}", {}), (str(root), {"classes": "ckplus"})]:
        ds = load_dataset(spec, **kwargs)
        assert ds.classes == CKPLUS_CLASSES
        assert ds.class_counts().tolist() == [6, 3, 0, 0, 3, 0, 3]
        assert sorted(set(ds.groups.tolist())) == ["S010", "S011", "S012"]
    assert capsys.readouterr().err == ""
    fer = load_dataset(str(root))
    assert fer.class_counts().tolist() == [6, 0, 0, 3, 0, 3, 0]
    assert "ckplus:DIR" in capsys.readouterr().err


def test_kaggle_image_layout_gives_train_and_test_splits(tmp_path):
    root = tmp_path / "fer2013img"
    make_tree(root / "train", {"angry": 2, "neutral": 3})
    make_tree(root / "test", {"angry": 1, "neutral": 1})
    ds = load_dataset(str(root))
    assert ds.split_names() == ["test", "train"]
    assert ds.select("train").class_counts().tolist() == [2, 0, 0, 0, 0, 0, 3]
    assert ds.select("test").class_counts().tolist() == [1, 0, 0, 0, 0, 0, 1]


def test_image_folder_cache_hit_does_not_decode(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "faces", {"happy": 3, "sad": 2})
    decode = folders_module.read_image
    first = load_image_folders(root)
    assert first.extra["cached"] is False

    def no_decode(path):
        raise AssertionError("decoded again despite the cache")
    monkeypatch.setattr(folders_module, "read_image", no_decode)
    second = load_image_folders(root)
    assert second.extra["cached"] is True and np.array_equal(first.images, second.images)
    assert np.array_equal(first.labels, second.labels)
    monkeypatch.setattr(folders_module, "read_image", decode)
    write_image(root / "happy" / "new.png")   # a new file changes the key
    assert len(load_image_folders(root)) == 6


def test_image_folder_errors_name_the_file(tmp_path):
    root = make_tree(tmp_path / "faces", {"happy": 2})
    (root / "sad").mkdir()
    with pytest.raises(FerlabError, match=r"faces/sad: class folder has no images"):
        load_dataset(str(root))
    (root / "sad" / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(FerlabError, match=r"broken\.png: empty or unreadable image"):
        load_dataset(str(root))
    (root / "sad" / "broken.png").write_bytes(b"")
    with pytest.raises(FerlabError, match=r"broken\.png: empty or unreadable image"):
        load_dataset(str(root))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FerlabError, match=r"empty: no class folders with images"):
        load_dataset(str(empty))
    with pytest.raises(FerlabError, match=r"nowhere: no such file or directory"):
        load_dataset(str(tmp_path / "nowhere"))


# ---------------------------------------------------------------------------------------- specs

def test_spec_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FerlabError, match=r"notes\.txt: not a FER2013 CSV"):
        load_dataset(str(tmp_path / "notes.txt"))
    with pytest.raises(FerlabError, match="expected fergit:FER2013_CSV,IMAGE_DIR"):
        load_dataset("fergit:only_one_part.csv")
    root = make_tree(tmp_path / "faces", {"happy": 1})
    with pytest.raises(FerlabError, match="--ferplus applies to a FER2013 CSV"):
        load_dataset(str(root), ferplus="x.csv")
    small_csv(tmp_path / "fer.csv")
    with pytest.raises(FerlabError, match="fer2013 classes"):
        load_dataset(str(tmp_path / "fer.csv"), classes="ckplus")
    with pytest.raises(FerlabError, match="unknown label space"):
        load_dataset(str(root), classes="affectnet")


# --------------------------------------------------------------------------------------- FERGIT

def test_fergit_composition_and_seeded_split(tmp_path):
    usages = ["Training"] * 120 + ["PublicTest"] * 40 + ["PrivateTest"] * 40
    labels = [i % 7 for i in range(200)]
    _, lines = make_rows(labels, usages)
    csv = write_csv(tmp_path / "fer.csv", lines)
    mux = make_tree(tmp_path / "muxspace48", {"neutral": 30, "happy": 20, "contempt": 3})
    spec = f"fergit:{csv},{mux}"
    ds = load_dataset(spec, seed=1)
    assert len(ds) == 250 and ds.classes == FER2013_CLASSES
    assert set(ds.split_names()) == {"train", "val", "test"}
    assert (ds.origins == "fer2013").sum() == 200 and (ds.origins == "muxspace48").sum() == 50
    assert ds.class_counts().tolist() == [29, 29, 29, 49, 28, 28, 58]
    sizes = {s: int((ds.splits == s).sum()) for s in ("train", "val", "test")}
    assert sizes["train"] == pytest.approx(225, abs=6) and sizes["val"] == pytest.approx(12.5, abs=4)
    for origin in ("fer2013", "muxspace48"):   # both sources in every split
        assert all(((ds.origins == origin) & (ds.splits == s)).any() for s in sizes)
    again = load_dataset(spec, seed=1)
    assert np.array_equal(ds.splits, again.splits)
    assert not np.array_equal(ds.splits, load_dataset(spec, seed=2).splits)


def train_val_test_folder(root):
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        make_tree(root / split, {"happy": n, "sad": n}, prefix=split)
    return root


@pytest.mark.parametrize("recipe, data, options, said", [
    # bah2022 names FERGIT's splits; a FER2013 CSV has Training/PublicTest/PrivateTest instead
    ("bah2022", lambda tmp, csv: csv(70, 21, 21), ["--model-kwargs", '{"widths": [4, 4, 8, 8, 8, 8]}'],
     "--recipe bah2022 names FERGIT's splits; this data has FER2013's, so it trains on Training, "
     "validates on PublicTest and tests on PrivateTest"),
    # fernet_m names FER2013's; a folder of train/, val/ and test/ has FERGIT's names
    ("fernet_m", lambda tmp, csv: train_val_test_folder(tmp / "faces"), ["--batch-size", "4"],
     "--recipe fernet_m names FER2013's splits; this data has train/val/test, so it trains on train, "
     "validates on val and tests on test"),
])
def test_a_recipe_trains_on_the_splits_in_the_same_roles_when_the_data_names_them_otherwise(
        recipe, data, options, said, make_toy_csv, tmp_path, capsys, one_thread):
    run = tmp_path / "run"
    assert ferlab_main(["train", "--recipe", recipe, "--data", str(data(tmp_path, make_toy_csv)), "--epochs", "1",
                        "--device", "cpu", *options, "--out", str(run)]) == 0
    err = capsys.readouterr().err
    assert said in err, err
    assert "test_acc" in (run / "metrics.csv").read_text().splitlines()[0]


# --------------------------------------------------------------------------------------- splits

def test_stratified_split_proportions_and_determinism():
    labels = np.repeat(np.arange(4), [1000, 200, 40, 21])
    splits = stratified_split(labels, (0.9, 0.05, 0.05), seed=3)
    assert np.array_equal(splits, stratified_split(labels, (0.9, 0.05, 0.05), seed=3))
    assert not np.array_equal(splits, stratified_split(labels, (0.9, 0.05, 0.05), seed=4))
    for c, n in enumerate([1000, 200, 40, 21]):
        rows = splits[labels == c]
        assert abs((rows == "val").sum() - 0.05 * n) <= 1 and abs((rows == "test").sum() - 0.05 * n) <= 1
        assert len(rows) == n
    two = stratified_split(labels, (0.9, 0.1), seed=0, names=("train", "test"))
    assert set(two.tolist()) == {"train", "test"} and abs((two == "test").sum() - 126) <= 4
    with pytest.raises(FerlabError, match="sum to 1"):
        stratified_split(labels, (0.9, 0.2, 0.05))


def test_subject_kfold_keeps_subjects_apart_and_balances():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"S{i:03d}" for i in range(40)], rng.integers(3, 15, size=40))
    labels = rng.integers(0, 7, size=len(groups))
    folds = subject_kfold(groups, labels, k=10, seed=0)
    assert len(folds) == 10
    tests = np.concatenate([test for _, test in folds])
    assert np.array_equal(np.sort(tests), np.arange(len(groups)))   # every row tested exactly once
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert len(train) + len(test) == len(groups)
    sizes = [len(test) for _, test in folds]
    assert max(sizes) - min(sizes) <= 15
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, subject_kfold(groups, labels, k=10, seed=0)))
    with pytest.raises(FerlabError, match="number of subjects"):
        subject_kfold(groups[:20], labels[:20], k=10)


def test_apply_subject_fold_tests_one_fold_and_validates_the_next():
    rng = np.random.default_rng(1)
    groups = np.repeat([f"S{i:03d}" for i in range(12)], rng.integers(2, 9, size=12))
    labels = rng.integers(0, 7, size=len(groups))
    ds = FaceDataset(images=np.zeros((len(groups), 48, 48), np.uint8), labels=labels,
                     splits=np.array(["all"] * len(groups)), source="toy", groups=groups)
    folds = subject_kfold(groups, labels, k=4, seed=0)
    tested = []
    for i in range(4):
        split = apply_subject_fold(ds, 4, i, seed=0)
        assert np.array_equal(np.flatnonzero(split.splits == "test"), folds[i][1])
        assert np.array_equal(np.flatnonzero(split.splits == "val"), folds[(i + 1) % 4][1])
        parts = [set(groups[split.splits == name]) for name in ("train", "val", "test")]
        assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert sorted(split.split_names()) == ["test", "train", "val"] and np.array_equal(split.labels, labels)
        tested.append(np.flatnonzero(split.splits == "test"))
    assert np.array_equal(np.sort(np.concatenate(tested)), np.arange(len(groups)))   # every face tested once
    assert ds.split_names() == ["all"]   # a copy: the input keeps its splits
    with pytest.raises(FerlabError, match="toy: subject folds need subject ids"):
        apply_subject_fold(FaceDataset(ds.images, ds.labels, ds.splits, source="toy"), 4, 0)
    for k, fold in ((2, 0), (4, 4), (4, -1)):
        with pytest.raises(FerlabError, match="--folds >= 3"):
            apply_subject_fold(ds, k, fold)


def test_apply_random_split_needs_one_split():
    ds = FaceDataset(images=np.zeros((100, 48, 48), np.uint8), labels=np.arange(100) % 2,
                     splits=np.array(["all"] * 100), source="toy")
    split = apply_random_split(ds, (0.8, 0.2), seed=0, names=("train", "test"))
    assert (split.splits == "test").sum() == 20 and (ds.splits == "all").all()
    with pytest.raises(FerlabError, match="already split"):
        apply_random_split(split)


# ------------------------------------------------------------------------------------------ CLI

def test_cli_summary_in_process(tmp_path, capsys):
    small_csv(tmp_path / "fer.csv")
    assert ferlab_main(["data", "summary", str(tmp_path / "fer.csv")]) == 0
    out = capsys.readouterr().out
    assert "12 faces" in out and "Training" in out and "loaded in" in out
    total_line = next(line for line in out.splitlines() if line.startswith("total"))
    assert total_line.split()[1:5] == ["6", "3", "3", "12"]

    usages = ["Training"] * 30
    _, lines = make_rows([i % 7 for i in range(30)], usages)
    csv = write_csv(tmp_path / "f2.csv", lines)
    mux = make_tree(tmp_path / "mux", {"happy": 10})
    assert ferlab_main(["data", "summary", f"fergit:{csv},{mux}"]) == 0
    out = capsys.readouterr().out
    assert "source" in out and "fer2013" in out and "mux" in out


def test_cli_summary_subprocess_ok_and_bad_file(ferlab, tmp_path):
    small_csv(tmp_path / "fer.csv.gz")
    ok = ferlab("data", "summary", str(tmp_path / "fer.csv.gz"), env={"FERLAB_CACHE": str(tmp_path / "cache")}, check=False, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "12 faces" in ok.stdout and "PrivateTest" in ok.stdout
    assert next(ln for ln in ok.stdout.splitlines() if ln.startswith("happy")).split()[1:5] == ["1", "0", "1", "2"]

    write_csv(tmp_path / "bad.csv", [good_line(), "9," + " ".join(["1"] * 2304) + ",Training"])
    bad = ferlab("data", "summary", str(tmp_path / "bad.csv"), env={"FERLAB_CACHE": str(tmp_path / "cache")}, check=False, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1
    assert "bad.csv: line 3" in bad.stderr


def test_csv_with_quoted_fields(tmp_path):
    images, lines = make_rows([5], ["PublicTest"])
    e, px, u = lines[0].split(",")
    write_csv(tmp_path / "q.csv", [f'"{e}","{px}","{u}"'], header='"emotion","pixels","Usage"')
    ds = load_dataset(str(tmp_path / "q.csv"))
    assert ds.labels.tolist() == [5] and ds.splits.tolist() == ["PublicTest"] and np.array_equal(ds.images, images)


def test_symlink_loops_in_an_image_folder_are_skipped_with_a_warning(tmp_path, capsys):
    """A looping symlink (an image or a class folder) is not silently dropped."""
    root = make_tree(tmp_path / "faces", {"happy": 2, "sad": 1})
    (root / "happy" / "loop.png").symlink_to(root / "happy" / "loop.png")
    (root / "angry").symlink_to(root / "angry")
    ds = load_dataset(str(root))
    assert len(ds) == 3
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and "warning" in warning and "symlink" in warning
    assert "happy/loop.png" in warning and "faces/angry" in warning


@pytest.mark.parametrize("opencv_reads_gif", [True, False])
def test_animated_gif_in_an_image_folder_loads_its_first_frame(tmp_path, capsys, monkeypatch, opencv_reads_gif):
    """An animated GIF was skipped without a word; it loads as its first frame, by
    Pillow when this OpenCV has no GIF decoder."""
    from PIL import Image

    if not opencv_reads_gif:
        imdecode = cv2.imdecode
        monkeypatch.setattr(folders_module.cv2, "imdecode", lambda data, flags: None if data[:3].tobytes() == b"GIF"
                            else imdecode(data, flags))
    root = make_tree(tmp_path / "faces", {"happy": 2})
    frames = [Image.fromarray(np.full((64, 64), value, np.uint8)) for value in (40, 200, 120)]
    frames[0].save(root / "happy" / "moving.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    ds = load_image_folders(root, cache_enabled=False)
    assert len(ds) == 3 and capsys.readouterr().err == ""
    gif = ds.images[[i for i in range(3) if abs(int(ds.images[i].mean()) - 40) <= 3]]
    assert len(gif) == 1 and np.abs(gif.astype(int) - 40).max() <= 3  # the first frame, not the others


def test_a_csv_with_only_a_training_split_gets_a_seeded_validation_split(tmp_path, capsys):
    csv = write_split_csv(tmp_path / "train-only.csv", 300, 0, 0)
    cfg = TrainConfig(data=str(csv), seed=3)
    data, train, val, test = load_run_data(cfg)
    assert len(train) + len(val) == 300 and 20 <= len(val) <= 40 and test is None
    assert "warning" in capsys.readouterr().err
    again = load_run_data(cfg)[2]
    assert np.array_equal(val.images, again.images)   # seeded: the same faces every time (and on resume)
    assert not np.array_equal(val.images, load_run_data(TrainConfig(data=str(csv), seed=4))[2].images)
