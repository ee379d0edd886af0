"""What a first-time user hit (issue 29, friction): `ferlab --version`, `--threads`, a CSV with only
a Training split, integer epoch ticks, results as a pandas DataFrame."""

import json
import os
import re

import numpy as np
import pytest

import ferlab
import ferlab.metrics
from ferlab.cli import main
from ferlab.data import load_run_data
from ferlab.training.config import TrainConfig
from synthetic import write_csv

TINY = ["--model", "fernet_s", "--model-kwargs", '{"widths": [8, 16, 16, 16], "depths": [1, 1, 1, 1]}']


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out.strip() == f"ferlab {ferlab.__version__}"


def test_curves_have_integer_epoch_ticks(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(ferlab.metrics, "_savefig", lambda fig, path: figures.append(fig))
    rows = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1 / e, "train_acc": e / 4, "val_acc": e / 5} for e in (1, 2, 3)]
    ferlab.metrics.plot_curves(rows, tmp_path / "curves.png")
    for ax in figures[0].axes:
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_a_csv_with_only_a_training_split_gets_a_seeded_validation_split(tmp_path, capsys):
    csv = write_csv(tmp_path / "train-only.csv", 300, 0, 0)
    cfg = TrainConfig(data=str(csv), seed=3)
    data, train, val, test = load_run_data(cfg)
    assert len(train) + len(val) == 300 and 20 <= len(val) <= 40 and test is None
    assert "warning" in capsys.readouterr().err
    again = load_run_data(cfg)[2]
    assert np.array_equal(val.images, again.images)   # seeded: the same faces every time (and on resume)
    assert not np.array_equal(val.images, load_run_data(TrainConfig(data=str(csv), seed=4))[2].images)


@pytest.mark.slow
def test_train_threads_sets_torch_threads(ferlab, toy_csv, tmp_path):
    proc = ferlab("train", *TINY, "--data", toy_csv, "--epochs", 1, "--threads", 2, "--device", "cpu",
                  "--out", tmp_path / "run",
                  env={"OMP_NUM_THREADS": "1"})
    assert re.search(r"\b2 threads\b", proc.stdout), proc.stdout
    assert "threads" not in json.loads((tmp_path / "run" / "config.json").read_text())
    bad = ferlab("train", *TINY, "--data", toy_csv, "--threads", 0, "--out", tmp_path / "bad", check=False)
    assert bad.returncode == 2 and "--threads" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_predict_frame_without_pandas_says_so_in_one_line(recognizer, astronaut, monkeypatch):
    import sys
    from ferlab.errors import FerlabError
    monkeypatch.setitem(sys.modules, "pandas", None)   # import pandas -> ImportError
    with pytest.raises(FerlabError, match="needs pandas: pip install pandas"):
        recognizer.predict_frame(astronaut)


def test_predict_frame_is_one_row_per_face(recognizer, astronaut, cat):
    pandas = pytest.importorskip("pandas")
    frame = recognizer.predict_frame([astronaut, cat])
    assert isinstance(frame, pandas.DataFrame) and len(frame) == 1 and frame["image"].tolist() == [0]
    assert list(frame.columns[:9]) == ["image", "face", "x", "y", "w", "h", "score", "label", "confidence"]
    assert list(frame.columns[9:]) == list(recognizer.classes)
    assert frame.loc[0, "label"] == recognizer.predict(astronaut)[0]["label"]


def test_predict_frame_rows_without_pandas_installed(recognizer, astronaut, cat, monkeypatch):
    """The rows predict_frame hands to pandas.DataFrame, checked with a stand-in when pandas is missing."""
    import sys
    import types
    fake = types.SimpleNamespace(DataFrame=lambda rows, columns: (rows, columns))
    monkeypatch.setitem(sys.modules, "pandas", fake)
    rows, columns = recognizer.predict_frame([astronaut, cat])
    assert columns == ["image", "face", "x", "y", "w", "h", "score", "label", "confidence", *recognizer.classes]
    assert len(rows) == 1 and rows[0]["image"] == 0 and rows[0]["face"] == 0
    face = recognizer.predict(astronaut)[0]
    assert [rows[0][k] for k in "xywh"] == face["box"] and rows[0]["label"] == face["label"]
    assert all(rows[0][c] == face["probs"][c] for c in recognizer.classes)
    rows, _ = recognizer.predict_frame(astronaut)   # one image
    assert len(rows) == 1


def test_readme_says_arrays_are_rgb_and_shows_bgr_in_the_first_example():
    from pathlib import Path
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    first_example = readme.split("```python", 1)[1].split("```", 1)[0]
    assert 'color="bgr"' in first_example and "RGB" in readme
    assert len(readme.splitlines()) <= 200
