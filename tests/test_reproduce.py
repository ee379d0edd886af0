"""`ferlab reproduce PAPER --budget smoke` on synthetic data: every paper's full report path (runs,
claims table with the paper's numbers, report.json, figures) in seconds; finished runs are
skipped and unfinished ones resumed; other settings in the same directory, an unknown paper and
missing data are refused in one line."""

import json
import re

import cv2
import pytest
import torch

from ferlab.cli import main
from ferlab.labels import CKPLUS_CLASSES, FER2013_CLASSES
from synthetic import synthetic_faces

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
def data(tmp_path_factory, make_toy_csv):
    root = tmp_path_factory.mktemp("data")
    csv = make_toy_csv(140, 42, 42)
    mux = image_folders(root / "mux", FER2013_CLASSES, 56)
    ck = image_folders(root / "ck", CKPLUS_CLASSES, 70, subjects=True, seed=2)
    return {"csv": csv, "fergit": f"fergit:{csv},{mux}", "ckplus": ck}


def data_args(paper, data) -> list[str]:
    if paper == "bah2022":
        return ["--fergit", data["fergit"], "--ckplus", str(data["ckplus"])]
    return ["--data", str(data["csv"])]


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("paper", list(PAPER_NUMBERS))
def test_smoke_report_of_each_paper(paper, device, data, tmp_path, one_thread, capsys):
    out = tmp_path / "repro"
    assert main(["reproduce", paper, "--budget", "smoke", *data_args(paper, data), "--out", str(out),
                 "--device", device]) == 0
    assert re.search(r"estimate: [12] epochs x [\d.]+ s/epoch measured here = \d+ min", capsys.readouterr().out)
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
    machine = next(line for line in report.splitlines() if line.startswith("- machine: "))
    assert ("CPUs" in machine) == (device == "cpu"), machine   # on CUDA it names the GPU the runs trained on
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
    monkeypatch.chdir(tmp_path)   # the default --out goes here
    for env in ("FERLAB_DATA", "FERLAB_FERGIT", "FERLAB_CKPLUS"):   # no data paths but the options
        monkeypatch.delenv(env, raising=False)
    assert main(["reproduce", "smith2020", "--budget", "smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ferlab reproduce: error: unknown paper 'smith2020'") and len(err.splitlines()) == 1
    assert main(["reproduce", "bah2022", "--budget", "smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs --fergit" in err and len(err.splitlines()) == 1
    assert main(["reproduce", "li2023", "--budget", "smoke", "--data", "nothere.csv"]) == 2
    assert "nothere.csv" in capsys.readouterr().err
    monkeypatch.setenv("FERLAB_DATA", str(tmp_path / "gone.csv"))   # a default from the environment is checked too
    assert main(["reproduce", "li2023", "--budget", "smoke"]) == 2
    assert "$FERLAB_DATA: " in capsys.readouterr().err
    assert main(["reproduce", "li2023", "--budget", "weekend"]) == 2
    assert "--budget" in capsys.readouterr().err


# ---- claims(results) on made-up results: no training ----------------------------------------------

def made_up_history(epochs: int, **columns) -> list[dict]:
    """Metrics rows 1..epochs; each column is a list of per-epoch values or a function of the epoch."""
    base = {"train_acc": lambda e: 0.5 + 0.02 * e, "val_acc": lambda e: 0.4 + 0.01 * e, "train_loss": lambda e: 2 / e,
            "val_loss": lambda e: 1.5 - 0.01 * e, "test_acc": lambda e: 0.45 + 0.01 * e, "time_s": lambda e: 60.0}
    base.update(columns)
    return [{"epoch": e, **{k: (v(e) if callable(v) else v[e - 1]) for k, v in base.items()}}
            for e in range(1, epochs + 1)]


def made_up_run(history, best=None, test=None, params=1000, bn_check=None) -> dict:
    return {"history": history, "best": best, "test": test, "params_keras": params, "bn_check": bn_check,
            "train_seconds": sum(r["time_s"] for r in history), "model": "m", "run_dir": "runs/m"}


def made_up_report(accuracy: float, classes=FER2013_CLASSES) -> dict:
    n = len(classes)
    cm = [[10 if i == j else 1 for j in range(n)] for i in range(n)]
    per_class = {c: {"precision": 0.6, "recall": 0.5 + 0.01 * i, "f1": 0.55, "support": 10 + n - 1}
                 for i, c in enumerate(classes)}
    return {"accuracy": accuracy, "macro_f1": accuracy - 0.05, "num_samples": n * (10 + n - 1), "classes": list(classes),
            "confusion_matrix": cm, "per_class": per_class}


def test_best_row_is_what_fit_saved_not_the_best_epoch():
    from ferlab.reproduce.core import best_row

    h = made_up_history(4, val_acc=[0.5, 0.7, 0.6, 0.65])
    assert best_row(made_up_run(h))["epoch"] == 2                        # a run recorded before fit said
    averaged = best_row(made_up_run(h, best={"epoch": 4, "val_acc": 0.72, "averaged_epochs": [3, 4]}))
    assert averaged["epoch"] == 4 and averaged["val_acc"] == 0.72        # --average-from: the average's accuracy
    assert best_row(made_up_run(h, best={"epoch": 4, "val_acc": 0.65}))["epoch"] == 4   # --select last


def test_triwijoyo2021_claims():
    from ferlab.reproduce import triwijoyo2021

    bn = made_up_run(made_up_history(20, train_acc=lambda e: 0.5 + 0.024 * e), params=2_787_015,
                     best={"epoch": 12, "val_acc": 0.63}, bn_check={"recalibrated": 0.64})
    nobn = made_up_run(made_up_history(20, train_acc=lambda e: 0.4 + 0.02 * e, train_loss=lambda e: 0.5))
    claims = triwijoyo2021.claims({"epochs": 20, "n_train": 32298, "n_val": 3589, "bn": bn, "nobn": nobn})
    ours = {c.claim: c.ours for c in claims}
    assert len(claims) == 9
    assert ours["With BN: training accuracy after 20 epochs"] == "98.00%"
    assert "best 63.00% at epoch 12" in ours["With BN: validation accuracy after 20 epochs (overfitting)"]
    assert "BN statistics recomputed (see below): 64.00%" in ours["With BN: validation accuracy after 20 epochs (overfitting)"]
    assert ours["With BN: training accuracy above 90% by epoch 10"] == "74.00%"
    assert ours["Without BN: training loss still above 0.30 at epoch 20"] == "0.500"
    assert ours["Model size (Table 1)"] == "2,787,015"
    short = triwijoyo2021.claims({"epochs": 1, "n_train": 140, "n_val": 42, "bn": made_up_run(made_up_history(1)),
                                  "nobn": made_up_run(made_up_history(1))})
    assert {c.claim: c.ours for c in short}["With BN: training accuracy above 90% by epoch 10"] == "not reached (1 epoch run)"
    assert all("only 1 epoch run" in c.difference for c in short if "after 20 epochs" in c.claim)


def test_li2023_claims():
    from ferlab.reproduce import li2023

    h = made_up_history(100, train_acc=lambda e: 0.6 - 0.3 / e ** 0.5)
    fer2013 = {"train": 28709, "test": 3589}
    claims = li2023.claims({e: h[:e] for e in (20, 40, 60, 80, 100)}, fer2013)
    ours = {c.claim: c.ours for c in claims}
    assert ours["Training accuracy at the end of training (epochs not stated; read as the longest run, 100)"] == "57.00% (epoch 100)"
    assert ours["Improvement over the previous (shorter) training"].endswith("epoch 80 -> 100")
    assert ours["More epochs: accuracy rises and loss falls"].startswith("yes: ")
    assert ours["Gains shrink as training lengthens: the CNN converges"].startswith("yes: ")
    unseen = ours["More epochs improve accuracy on unseen data (generalisation)"]
    assert unseen.startswith("yes: ") and "PrivateTest after 20 / 40" in unseen
    falling = li2023.claims({1: made_up_history(1), 2: made_up_history(2, train_acc=[0.6, 0.5])}, fer2013)
    verdict = {c.claim: c.ours for c in falling}["More epochs: accuracy rises and loss falls"]
    assert verdict.startswith("no: ") and "not monotone" in verdict


def test_sarmah2023_claims():
    from ferlab.reproduce import sarmah2023

    search = {f: {"value": v, "number": 3, "params_keras": 5_000_000, "model_kwargs": {}}
              for f, v in (("5conv", 0.62), ("8conv", 0.26))}
    batch = {bs: made_up_run(made_up_history(2, val_acc=[0.3, acc])) for bs, acc in ((32, 0.5), (64, 0.45), (128, 0.4))}
    final = {name: made_up_run(made_up_history(3), test=made_up_report(acc), params=5_228_487)
             for name, acc in (("final-8conv-adam", 0.69), ("final-8conv-sgd", 0.68), ("final-5conv-adam", 0.7),
                               ("baseline", 0.65))}
    claims = sarmah2023.claims({"budget": sarmah2023.BUDGETS["cpu"], "search": search, "majority_rate": 0.25,
                                "batch": batch, "final": final})
    ours = {c.claim: c for c in claims}
    assert "picked by noise" in ours["Random search, 8-conv family: best validation accuracy after 20 epochs"].difference
    assert "noise" not in ours["Random search, 5-conv family: best validation accuracy after 20 epochs"].difference
    assert ours["Batch size 32 gives the best results of 32 / 64 / 128"].ours.endswith("-> 32 best (val acc)")
    assert ours["8-conv, Adam 1e-4, 150 epochs, augmentation: test accuracy"].ours.startswith("69.00% (best-val epoch 3 of 3")
    assert ours["Final 8-conv model size"].ours == "5,228,487 (Keras-style count)"


def test_bah2022_claims():
    from ferlab.reproduce import bah2022

    fer = {name: made_up_run(made_up_history(3), test=made_up_report(acc), params=9_773_111)
           for name, acc in (("basic", 0.74), ("resnet", 0.75))}
    ck = made_up_run(made_up_history(3), test=made_up_report(0.97, CKPLUS_CLASSES))
    folds = [made_up_run(made_up_history(1), test=made_up_report(acc, CKPLUS_CLASSES)) for acc in (0.9, 0.95, 1.0)]
    claims = bah2022.claims({"budget": bah2022.BUDGETS["smoke"], "fergit_sizes": {"train": 900, "val": 50, "test": 50},
                             "fergit": fer, "ckplus_faces": 981, "ckplus_random": ck, "ckplus_folds": folds,
                             "photos": [("astronaut", "smiling", "happy 86%", "photo-astronaut.jpg")], "cpus": 2})
    ours = {c.claim: c.ours for c in claims}
    assert ours["FERGIT composition and split"] == "1,000 faces, 900 / 50 / 50"
    assert ours["Residual blocks improve FERGIT test accuracy"] == "+1.00 points"
    assert ours["CK+, subject-independent 3-fold accuracy (not in the paper; the usual CK+ protocol)"].startswith(
        "95.00% +- 4.08")
    assert "astronaut: happy 86%" in ours["Personal photos: detect, crop, resize to 48x48, predict with confidence "
                                          "(Figures 9-10)"]


def test_more_epochs_claims_need_a_difference_beyond_the_noise():
    """Equal numbers are not a "yes": yes/no only past the stated noise."""
    from ferlab.reproduce import li2023

    def row(acc, test):
        return {"train_acc": acc, "train_loss": 1 - acc, "val_loss": 1 - acc, "val_acc": acc, "test_acc": test, "time_s": 1}

    def verdicts(a, b):
        claims = li2023.claims({1: [row(a, a)], 2: [row(a, a), row(b, b)]}, {"train": 140, "test": 42})
        return [c.ours.split(":")[0] for c in claims if c.claim.startswith("More epochs")]
    assert verdicts(0.5, 0.5) == ["inconclusive", "inconclusive"]
    assert verdicts(0.5, 0.52) == ["inconclusive", "inconclusive"]
    assert verdicts(0.2, 0.9) == ["yes", "yes"]
    assert verdicts(0.9, 0.2) == ["no", "no"]
    claims = li2023.claims({1: [row(0.5, 0.5)], 2: [row(0.5, 0.5)] * 2}, {"train": 140, "test": 42})
    assert all("noise" in c.ours for c in claims if c.claim.startswith("More epochs"))


def test_budget_defaults_to_cpu_without_a_gpu_and_smoke_says_what_it_runs(monkeypatch):
    from ferlab.reproduce import li2023
    from ferlab.reproduce.cli import pick_budget
    from ferlab.reproduce.core import budget_description
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert pick_budget(None) == "cpu" and pick_budget("full") == "full"
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert pick_budget(None) == "full"
    smoke = budget_description("smoke")
    longest = max(li2023.BUDGETS["smoke"]["epochs"])
    assert "1-epoch runs" not in smoke and f"{longest} epochs" in smoke
