"""The taiwanese_tpe loader (ferlab.data.taiwanese): faces found in photos, performers as groups."""

import csv

import cv2
import numpy as np
import pytest

from ferlab.data import load_dataset
from ferlab.data.mix import mix_splits
from ferlab.errors import FerlabError
from ferlab.labels import FER2013_CLASSES

# (file, performer, performed, observers' category): performer 01 has a fear face observers read as surprise
ROWS = [("happy/0111b01.jpg", "01", "happy", "happy"), ("fear/0111f01.jpg", "01", "fear", "surprise"),
        ("neutral/0101a02.jpg", "01", "neutral", "happy"), ("sad/0211c01.jpg", "02", "sad", "sad"),
        ("angry/0211d01.jpg", "02", "angry", "angry"), ("surprise/0311g01.jpg", "03", "surprise", "surprise"),
        ("disgust/0311e01.jpg", "03", "disgust", "angry")]


@pytest.fixture(scope="module")
def tpe_folder(tmp_path_factory, astronaut):
    root = tmp_path_factory.mktemp("taiwanese_tpe")
    photo = cv2.cvtColor(cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2BGR)
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "orig_path", "performer_id", "performance_type", "label_performed",
                         "observer_maxIntCategory", "observer_maxInt", "observer_count"])
        for i, (name, performer, performed, observed) in enumerate(ROWS):
            (root / name).parent.mkdir(exist_ok=True)
            cv2.imwrite(str(root / name), cv2.convertScaleAbs(photo, alpha=1.0, beta=3 * i))
            writer.writerow([name, name, performer, "theatric", performed, observed, "3.0", "100"])
    return root


def test_loads_every_photo_as_a_face_crop_with_its_performed_label_and_performer(tpe_folder):
    data = load_dataset(f"tpe:{tpe_folder}", cache=False)
    assert data.images.shape == (len(ROWS), 48, 48) and data.images.dtype == np.uint8
    assert [FER2013_CLASSES[i] for i in data.labels] == [r[2] for r in ROWS]
    assert list(data.groups) == [r[1] for r in ROWS]
    assert data.images.std() > 10   # a face, not the empty crop of a photo without one


def test_agreed_keeps_the_faces_observers_rate_as_performed_and_every_neutral_one(tpe_folder):
    data = load_dataset(f"tpe-agreed:{tpe_folder}", cache=False)
    assert sorted(FER2013_CLASSES[i] for i in data.labels) == ["angry", "happy", "neutral", "sad", "surprise"]


def test_a_mix_splits_it_by_performer(tpe_folder):
    data = load_dataset(f"tpe:{tpe_folder}", cache=False)
    splits = mix_splits(data, seed=0)
    for performer in set(data.groups):
        assert len(set(splits[data.groups == performer])) == 1


def test_a_folder_without_labels_csv_fails_in_one_line(tmp_path):
    with pytest.raises(FerlabError, match="labels.csv: no such file"):
        load_dataset(f"tpe:{tmp_path}", cache=False)


def test_a_listed_photo_that_is_missing_is_named(tpe_folder, tmp_path):
    (tmp_path / "labels.csv").write_text((tpe_folder / "labels.csv").read_text())
    with pytest.raises(FerlabError, match="happy/0111b01.jpg: listed in .*labels.csv but missing"):
        load_dataset(f"tpe:{tmp_path}", cache=False)
