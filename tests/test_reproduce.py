"""`ferlab reproduce PAPER --budget smoke` on synthetic data: every paper's full report path (runs,
claims table with the paper's numbers, report.json, figures) in seconds; finished runs are
skipped and unfinished ones resumed; other settings in the same directory, an unknown paper and
missing data are refused in one line."""

import json
import re

import cv2
import pytest

from ferlab.cli import main
from ferlab.labels import CKPLUS_CLASSES, FER2013_CLASSES
from synthetic import synthetic_faces, write_csv

# Numbers each paper reports; the report must show every one of them next to ours.
PAPER_NUMBERS = {
    "triwijoyo2021": ["98%", "62%", "> 90%", "< 0.20", "> 0.30"],
    "sarmah2023": ["65%", "92%", "62%", "61.9%", "69.55%", "68.21%", "70.58%", "5,228,487"],
    "bah2022": ["74%", "75%", "97% (99 faces)", "train 86%, validation 74%", "44 min", "48 min", "29 min",
                "| angry | 0.64 | 0.49 | 0.56 | 260 |", "| contempt | 1.00 | 0.60 | 0.75 | 5 |",
                "86% confidence"],
    "li2023": ["51.17%", "8.11%"],
}
FIGURES = {"triwijoyo2021": ["figure3.png"], "sarmah2023": ["final-curves.png"],
           "bah2022": ["curves.png", "confusion-fergit-resnet.png", "confusion-ckplus-folds.png", "photo-astronaut.jpg"],
           "li2023": ["curves.png"]}


def image_folders(root, classes, n, subjects=False, seed=1):
    """<root>/<class>/*.png of synthetic faces; CK+-style names S<subject>_<seq>_<frame> with subjects."""
    images, labels = synthetic_faces(n, seed)
    for i, (img, y) in enumerate(zip(images, labels % len(classes))):
        folder = root / classes[y]
        folder.mkdir(parents=True, exist_ok=True)
        name = f"S{i % 9:03d}_{i // 9:03d}_{i:08d}.png" if subjects else f"face{i:04d}.png"
        cv2.imwrite(str(folder / name), img)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    csv = write_csv(root / "toy.csv", n_train=140, n_val=42, n_test=42)
    mux = image_folders(root / "mux", FER2013_CLASSES, 56)
    ck = image_folders(root / "ck", CKPLUS_CLASSES, 70, subjects=True, seed=2)
    return {"csv": csv, "fergit": f"fergit:{csv},{mux}", "ckplus": ck}


def data_args(paper, data) -> list[str]:
    if paper == "bah2022":
        return ["--fergit", data["fergit"], "--ckplus", str(data["ckplus"])]
    return ["--data", str(data["csv"])]


@pytest.mark.parametrize("paper", list(PAPER_NUMBERS))
def test_smoke_report_of_each_paper(paper, data, tmp_path, one_thread, capsys):
    out = tmp_path / "repro"
    assert main(["reproduce", paper, "--budget", "smoke", *data_args(paper, data), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    payload = json.loads((out / "report.json").read_text())
    claims = payload["claims"]
    assert payload["paper"] == paper and payload["budget"] == "smoke" and len(claims) >= 4
    table = report.split("## Claims")[1].split("\n## ")[0]
    rows = [line for line in table.splitlines() if re.match(r"^\| \d+ \| ", line)]
    assert len(rows) == len(claims)                    # one table row per claim
    for row, c in zip(rows, claims):
        assert row.count(" | ") >= 4 and c["paper"] in row and c["ours"] in row
    for number in PAPER_NUMBERS[paper]:
        assert number in report, number
    for fig in FIGURES[paper]:
        assert (out / fig).stat().st_size > 1000, fig
    assert "| # | claim | paper | ours | protocol difference |" in report
    assert payload["reductions"], "the smoke budget must say what it reduced"
    checked = [name for name, res in payload["runs"].items() if res["bn_check"]]   # runs of models with BatchNorm
    if paper == "li2023":
        assert not checked and "BatchNorm statistics recomputed" not in report
    else:
        section = report.split("## BatchNorm statistics recomputed")[1]
        assert checked and all(f"| {name} | " in section for name in checked)


def test_rerun_skips_finished_runs_and_resumes_unfinished_ones(data, tmp_path, one_thread, capsys):
    out = tmp_path / "repro"
    args = ["reproduce", "li2023", "--budget", "smoke", "--data", str(data["csv"]), "--out", str(out)]
    assert main(args) == 0
    first = json.loads((out / "report.json").read_text())
    capsys.readouterr()

    assert main(args) == 0                                  # everything finished: nothing trains
    assert "training" not in capsys.readouterr().out
    assert json.loads((out / "report.json").read_text())["claims"] == first["claims"]

    # a reproduction killed after the first epoch of a run: the run continues from its checkpoint
    run = out / "runs" / "epochs-2"
    (run / "result.json").unlink()
    assert main(args) == 0
    log = capsys.readouterr().out
    assert "[epochs-2] resuming" in log
    assert json.loads((out / "report.json").read_text())["claims"] == first["claims"]


def test_li2023_full_protocol_trains_separate_runs(data, tmp_path, one_thread, monkeypatch):
    from ferlab import reproduce
    monkeypatch.setitem(reproduce.BUDGETS["li2023"], "smoke", {"epochs": [1, 2], "separate_runs": True})
    out = tmp_path / "repro"
    assert main(["reproduce", "li2023", "--budget", "smoke", "--data", str(data["csv"]), "--out", str(out)]) == 0
    runs = json.loads((out / "report.json").read_text())["runs"]
    assert {name: len(r["history"]) for name, r in runs.items()} == {"epochs-1": 1, "epochs-2": 2}
    assert runs["epochs-1"]["history"][0]["train_loss"] != runs["epochs-2"]["history"][0]["train_loss"]  # seeds differ


def test_other_settings_in_the_same_directory_are_refused(data, tmp_path, one_thread, capsys):
    out = tmp_path / "repro"
    assert main(["reproduce", "triwijoyo2021", "--budget", "smoke", "--data", str(data["csv"]), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["reproduce", "triwijoyo2021", "--budget", "smoke", "--data", str(data["csv"]), "--out", str(out), "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "other settings" in err and "seed" in err and len(err.splitlines()) == 1


def test_unknown_paper_and_missing_data_fail_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)   # no ../shared/data here, so no default data paths
    assert main(["reproduce", "smith2020", "--budget", "smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ferlab reproduce: error: unknown paper 'smith2020'") and len(err.splitlines()) == 1
    assert main(["reproduce", "bah2022", "--budget", "smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs --fergit" in err and len(err.splitlines()) == 1
    assert main(["reproduce", "li2023", "--budget", "smoke", "--data", "nothere.csv"]) == 2
    assert "nothere.csv" in capsys.readouterr().err
    assert main(["reproduce", "li2023", "--budget", "weekend"]) == 2
    assert "--budget" in capsys.readouterr().err
