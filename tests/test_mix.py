"""Training on several data sets at once: the mix loader's label mapping and per-source
splits, subject-disjoint splits, FER+ targets in a mix, source weights, logit adjustment, per-source
metrics, and the photometric augmentations. Tiny synthetic data only."""

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ferlab.training.augment import (AUGMENT_PRESETS, apply_augment, gaussian_blur, get_augment, jpeg_compress,
                            sample_params)
from ferlab.checkpoint import load_state
from ferlab.cli import main as ferlab_main
from ferlab.data import grouped_split, load_dataset, load_mix, load_run_data
from ferlab.errors import FerlabError
from ferlab.labels import FER2013_CLASSES
from ferlab.training.config import TrainConfig, train_command
from ferlab.training.run import fit, open_run
from synthetic import synthetic_faces, write_csv

FERPLUS_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def write_folder(root, faces, labels, classes, name=lambda i: f"img_{i}"):
    """root/<classes[label]>/<name(i)>.png for each face."""
    for i, (face, label) in enumerate(zip(faces, labels)):
        path = root / classes[label] / f"{name(i)}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), face)
    return root


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A FER2013 CSV (140 rows), a one-split folder in FER2013 spellings with a contempt folder (100
    faces) and a CK+-style folder of 12 subjects in CK+ spellings (72 faces), all separable toy faces."""
    root = tmp_path_factory.mktemp("mix")
    fer = write_csv(root / "fer.csv", n_train=84, n_val=28, n_test=28, seed=1)
    faces, labels = synthetic_faces(100, seed=2)
    folder_classes = ("Anger", "disgusted", "fear", "happiness", "sad", "surprised", "neutral")
    wild = write_folder(root / "wild", faces, labels, folder_classes)
    write_folder(wild, faces[:3], [0, 0, 0], ("contempt",), name=lambda i: f"c_{i}")
    faces, labels = synthetic_faces(72, seed=3)
    ck_classes = ("anger", "disgust", "fear", "happy", "sadness", "surprise", "contempt")
    labels = np.where(labels == 6, 0, labels)   # CK+ has no neutral
    ck = write_folder(root / "CK+48", faces, labels, ck_classes, name=lambda i: f"S{i % 12:03d}_001_{i:08d}")
    return {"fer": str(fer), "wild": str(wild), "ck": f"ckplus:{ck}"}


def test_mix_maps_labels_keeps_official_splits_and_names_sources(sources, capsys):
    data = load_mix([sources["fer"], sources["wild"], sources["ck"]], seed=0)
    assert data.classes == FER2013_CLASSES
    assert data.extra["sources"] == ["fer2013", "wild", "CK+48"]
    counts = {name: int((data.origins == name).sum()) for name in data.extra["sources"]}
    assert counts == {"fer2013": 140, "wild": 100, "CK+48": 72}   # wild's contempt folder dropped
    assert "contempt (3 images)" in capsys.readouterr().err
    fer = data.origins == "fer2013"   # FER2013's official splits, renamed
    assert [int(((data.splits == s) & fer).sum()) for s in ("train", "val", "test")] == [84, 28, 28]
    _, wild_labels = synthetic_faces(100, seed=2)
    assert sorted(data.labels[data.origins == "wild"].tolist()) == sorted(wild_labels.tolist())   # spelled otherwise
    ck_faces, ck_labels = synthetic_faces(72, seed=3)
    ck_rows = np.flatnonzero(data.origins == "CK+48")
    # CK+ "sadness" is FER2013 "sad" (4), "anger" is "angry" (0); every face keeps its own label
    by_face = {data.images[i].tobytes(): int(data.labels[i]) for i in ck_rows}
    expected = np.where(ck_labels == 6, 0, ck_labels)
    assert all(by_face[f.tobytes()] == y for f, y in zip(ck_faces, expected))
    for name in ("wild", "CK+48"):   # every source has all three parts
        assert {str(s) for s in data.splits[data.origins == name]} == {"train", "val", "test"}


def test_a_source_with_subjects_is_split_subject_disjoint(sources):
    data = load_mix([sources["fer"], sources["ck"]], seed=0)
    ck = data.subset(data.origins == "CK+48")
    raw = load_dataset(sources["ck"])
    part_of_face = {raw.images[i].tobytes(): raw.groups[i] for i in range(len(raw))}
    subjects = {s: {part_of_face[f.tobytes()] for f in ck.images[ck.splits == s]} for s in ("train", "val", "test")}
    assert not (subjects["train"] & subjects["val"] or subjects["train"] & subjects["test"] or subjects["val"] & subjects["test"])
    assert len(subjects["train"]) + len(subjects["val"]) + len(subjects["test"]) == 12


def test_grouped_split_keeps_groups_whole_and_near_the_fractions():
    groups = np.repeat(np.arange(100), np.random.default_rng(0).integers(1, 20, 100))
    splits = grouped_split(groups, (0.8, 0.1, 0.1), seed=3)
    for g in np.unique(groups):
        assert len(set(splits[groups == g].tolist())) == 1
    share = {s: (splits == s).mean() for s in ("train", "val", "test")}
    assert share["train"] == pytest.approx(0.8, abs=0.05) and share["val"] == pytest.approx(0.1, abs=0.05)
    assert np.array_equal(splits, grouped_split(groups, (0.8, 0.1, 0.1), seed=3))
    assert not np.array_equal(splits, grouped_split(groups, (0.8, 0.1, 0.1), seed=4))


def test_mix_errors_are_one_clear_line(sources, tmp_path):
    with pytest.raises(FerlabError, match="names a source twice"):
        load_mix([sources["fer"], sources["fer"]])
    with pytest.raises(FerlabError, match="add the FER2013 CSV"):
        load_mix([sources["wild"], sources["ck"]], ferplus=str(tmp_path / "votes.csv"))
    with pytest.raises(FerlabError, match="FERGIT is already a mix"):
        load_mix([f"fergit:{sources['fer']},{sources['wild']}", sources["ck"]])
    with pytest.raises(FerlabError, match="--folds"):
        load_run_data(TrainConfig(data=[sources["fer"], sources["ck"]], folds=3, fold=0))


def test_ferplus_votes_become_seven_class_targets_for_the_fer2013_rows(sources, tmp_path):
    n = 140
    votes = np.zeros((n, 10), dtype=int)
    votes[:, 1] = 6          # happiness
    votes[:, 3] = 2          # sadness
    votes[:, 7] = 2          # contempt: left out of the 7-class distribution
    votes[0] = [0, 0, 0, 0, 0, 0, 0, 5, 5, 0]   # contempt and unknown only: one-hot of the FER2013 label
    usage = ["Training"] * 84 + ["PublicTest"] * 28 + ["PrivateTest"] * 28
    path = tmp_path / "fer2013new.csv"
    path.write_text("\n".join([FERPLUS_HEADER] + [f"{u},fer{i:07d}.png," + ",".join(map(str, v))
                                                  for i, (u, v) in enumerate(zip(usage, votes))]) + "\n")
    data = load_mix([sources["fer"], sources["wild"]], ferplus=str(path))
    fer = np.flatnonzero(data.origins == "fer2013")
    np.testing.assert_allclose(data.soft_labels[fer[1]], [0, 0, 0, 0.75, 0.25, 0, 0], rtol=1e-6)
    assert data.soft_labels[fer[0]].tolist() == np.eye(7)[data.labels[fer[0]]].tolist()
    wild = data.origins == "wild"
    assert (data.soft_labels[wild].argmax(1) == data.labels[wild]).all() and (data.soft_labels[wild].max(1) == 1).all()
    fer_csv_labels = load_mix([sources["fer"], sources["wild"]]).labels
    assert np.array_equal(data.labels, fer_csv_labels)   # labels stay FER2013's


def tiny(data, **overrides) -> TrainConfig:
    base = dict(model="fernet_s", model_kwargs={"widths": [8, 16, 16, 16], "depths": [1, 1, 1, 1]}, data=data,
                epochs=4, batch_size=32, optimizer="adam", lr=3e-3, seed=0)
    return TrainConfig(**{**base, **overrides})


def test_mix_trains_reports_each_source_and_recreates_its_command(sources, tmp_path):
    data = [sources["fer"], sources["wild"], sources["ck"]]
    cfg = tiny(data, epochs=8, source_weights="CK+48=3", logit_adjust=1.0, test_splits="PrivateTest")
    open_run(tmp_path / "run", cfg, resume=False)   # config.json, as `ferlab train` writes it
    history = fit(cfg, tmp_path / "run", log=lambda *a: None).history
    last = history[-1]
    assert last["val_acc"] > 0.8   # separable toy faces (flips would swap their classes: no augmentation here)
    for name in ("fer2013", "wild", "CK+48"):
        assert 0 <= last[f"val_acc_{name}"] <= 1 and f"test_acc_{name}" in last
    state = load_state(tmp_path / "run" / "last.pt")   # loads with weights_only: per-source numbers are plain floats
    assert state["history"][-1]["val_acc_CK+48"] == last["val_acc_CK+48"]
    with open(tmp_path / "run" / "metrics.csv") as f:
        header = next(csv.reader(f))
    assert {"val_acc_fer2013", "val_acc_CK+48", "test_acc_wild"} <= set(header)
    assert ferlab_main(["evaluate", str(tmp_path / "run"), "--out", str(tmp_path / "eval")]) == 0   # the mix's test parts
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["split"] == "test" and report["num_samples"] == int((load_mix(data).splits == "test").sum())
    command = train_command({**tiny(data).__dict__, "source_weights": "CK+48=3"})
    assert command.count("--data") == 3 and "ckplus:CK+48" in command and "--source-weights CK+48=3" in command


def test_source_weights_change_what_an_epoch_draws(sources):
    from ferlab.training.config import parse_source_weights
    assert parse_source_weights("fer2013=1,CK+48=2.5") == {"fer2013": 1.0, "CK+48": 2.5}
    for bad in ("CK+48", "CK+48=x", "=2", "CK+48=-1"):
        with pytest.raises(FerlabError, match="--source-weights"):
            TrainConfig(data="x.csv", source_weights=bad)
    _, train, _, _ = load_run_data(tiny([sources["fer"], sources["ck"]]))
    weights = torch.tensor([10.0 if o == "CK+48" else 1.0 for o in train.origins.tolist()], dtype=torch.float64)
    drawn = torch.multinomial(weights, 20000, replacement=True, generator=torch.Generator().manual_seed(0))
    share = (train.origins[drawn.numpy()] == "CK+48").mean()
    ck = (train.origins == "CK+48").sum()
    expected = 10 * ck / (10 * ck + (len(train) - ck))
    assert share == pytest.approx(expected, abs=0.02)
    with pytest.raises(FerlabError, match="not a source of this mix"):
        fit(tiny([sources["fer"], sources["ck"]], source_weights="nowhere=2", epochs=1), sources_dir(sources) / "bad")
    with pytest.raises(FerlabError, match="several --data"):
        fit(tiny(sources["fer"], source_weights="fer2013=2", epochs=1), sources_dir(sources) / "bad2")


def test_source_batches_hold_one_source_each_and_draw_every_face_once(sources, tmp_path, monkeypatch):
    from ferlab.training import loop
    from ferlab.training.run import training_sources
    _, train, _, _ = load_run_data(tiny([sources["fer"], sources["wild"], sources["ck"]]))
    origin = training_sources(train)
    gen = torch.Generator().manual_seed(0)
    batches = loop.source_batches(torch.randperm(len(train), generator=gen), origin, 32, gen)
    assert len(batches) == loop.batch_count(len(train), 32, origin)
    assert all(len(origin[b].unique()) == 1 and 1 < len(b) <= 32 for b in batches)
    drawn = torch.cat(batches)
    assert len(drawn.unique()) == len(drawn) >= len(train) - 3   # at most one left-out face per source
    assert len({origin[b[0]].item() for b in batches[:6]}) > 1   # the sources' batches are shuffled together
    seen, real = [], loop.source_batches
    monkeypatch.setattr(loop, "source_batches", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    fit(tiny([sources["fer"], sources["ck"]], epochs=1, source_batches=True), tmp_path / "run", log=lambda *a: None)
    assert len(seen) == 1 and len(seen[0]) > 1   # the epoch drew its batches by source
    with pytest.raises(FerlabError, match="--source-batches"):
        TrainConfig(data=[sources["fer"], sources["ck"]], source_batches=True, source_weights="CK+48=2")
    with pytest.raises(FerlabError, match="several --data"):
        fit(tiny(sources["fer"], source_batches=True, epochs=1), sources_dir(sources) / "bad3")


def sources_dir(sources):
    return Path(sources["fer"]).parent


# ------------------------------------------------------------------------------ augmentations

def test_jpeg_compress_matches_opencv_jpeg():
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (48, 48), dtype=np.uint8), (3, 3), 1)
    x = torch.from_numpy(image).float().div(255).view(1, 1, 48, 48)
    for quality in (15, 40, 75):
        ours = np.round(jpeg_compress(x, torch.tensor([float(quality)]))[0, 0].numpy() * 255) / 255
        _, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        theirs = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE) / 255
        changed = np.abs(theirs - image / 255).mean()
        assert changed > 0.01 and np.abs(ours - theirs).mean() < 0.2 * changed


def test_blur_is_per_image_and_keeps_flat_images():
    x = torch.rand(2, 1, 48, 48)
    blurred = gaussian_blur(x, torch.tensor([0.3, 1.5]))
    assert (blurred[0] - x[0]).abs().mean() < 0.01 < (blurred[1] - x[1]).abs().mean()
    flat = torch.full((1, 1, 48, 48), 0.4)
    torch.testing.assert_close(gaussian_blur(flat, torch.tensor([1.2])), flat)


def test_robust_augment_is_reproducible_in_range_and_old_presets_draw_as_before():
    cfg = get_augment("robust")
    x = torch.rand(16, 1, 48, 48)
    a = apply_augment(cfg, x, sample_params(cfg, 16, torch.Generator().manual_seed(1)))
    b = apply_augment(cfg, x, sample_params(cfg, 16, torch.Generator().manual_seed(1)))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1 and not torch.equal(a, x)
    # presets without photometric options draw the same numbers as before (resumed and old runs unchanged)
    for name, preset in AUGMENT_PRESETS.items():
        if name == "robust":
            continue
        gen = torch.Generator().manual_seed(0)
        sample_params(preset, 8, gen)
        assert set(sample_params(preset, 8, torch.Generator().manual_seed(0))) == {
            "flip", "angle", "scale", "tx", "ty", "bright", "erase", "erase_area", "erase_logratio", "erase_cx", "erase_cy"}
        reference = torch.Generator().manual_seed(0)
        for _ in range(11):
            torch.rand(8, generator=reference)
        assert torch.equal(torch.rand(4, generator=gen), torch.rand(4, generator=reference))
