"""`ferlab tune` on a tiny synthetic FER2013 CSV: it runs a study into SQLite and writes best.json,
extends and resumes a study (also after a worker is killed mid-trial), shares one study between
two worker processes without losing or duplicating trials, and refuses other settings."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from ferlab.cli import main  # noqa: E402
from synthetic import wait_until  # noqa: E402

TINY_SPACE = '{"first_filters": [4, 8, 4], "max_filters": [8, 16, 8]}'
ENV = {"OMP_NUM_THREADS": "1"}  # the machine is shared: one thread per worker


@pytest.fixture(scope="module")
def toy_csv(make_toy_csv):
    return make_toy_csv(140, 42, 42)   # a third of the default: every trial trains on it


def tune_args(data, tmp: Path, trials: int, *extra) -> list[str]:
    return ["tune", "--data", str(data), "--trials", str(trials), "--epochs", "1", "--space", TINY_SPACE,
            "--storage", f"sqlite:///{tmp}/tune.db", "--out", str(tmp / "runs"), *map(str, extra)]


def ferlab_process(args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ferlab", *args], env={**os.environ, **ENV}, text=True, **kwargs)


def load_study(tmp: Path):
    return optuna.load_study(study_name="sarmah2023-8conv", storage=f"sqlite:///{tmp}/tune.db")


def states(study) -> dict:
    out = {}
    for t in study.get_trials():
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def test_a_study_runs_and_writes_best_json(toy_csv, tmp_path, one_thread, capsys):
    assert main(tune_args(toy_csv, tmp_path, 3)) == 0
    study = load_study(tmp_path)
    assert states(study) == {"COMPLETE": 3}
    best = json.loads((tmp_path / "runs" / "best.json").read_text())
    assert best["value"] == pytest.approx(max(t.value for t in study.trials))
    assert best["model"] == "sarmah2023_8conv" and set(best["params"]) == {"first_filters", "max_filters", "conv_dropout", "dense_dropout"}
    assert best["model_kwargs"]["first_filters"] in (4, 8)
    for t in study.trials:   # every trial is a ferlab train run directory
        run = tmp_path / "runs" / t.user_attrs["run_dir"]
        assert (run / "metrics.csv").is_file() and (run / "best.safetensors").is_file()
    out = capsys.readouterr().out
    assert "| rank | trial | val acc |" in out and "best: trial" in out
    assert re.search(r"estimate: 3 trials x 1 epochs x [\d.]+ s/epoch .* = \d+ min", out), out

    # the study remembers its settings: resuming with others is refused in one line
    assert main(tune_args(toy_csv, tmp_path, 4, "--lr", "0.01")) == 2
    err = capsys.readouterr().err.strip()
    assert "other settings" in err and "lr" in err and len(err.splitlines()) == 1
    assert len(load_study(tmp_path).trials) == 3


def test_rerun_extends_the_study(toy_csv, tmp_path, one_thread):
    assert main(tune_args(toy_csv, tmp_path, 2)) == 0
    assert main(tune_args(toy_csv, tmp_path, 2)) == 0          # already done: no new trial
    assert len(load_study(tmp_path).trials) == 2
    # a higher target continues the same study (here with TPE and the median pruner)
    assert main(tune_args(toy_csv, tmp_path, 4, "--sampler", "tpe", "--pruner", "median")) == 0
    study = load_study(tmp_path)
    assert states(study) == {"COMPLETE": 4}
    assert [t.number for t in study.trials] == [0, 1, 2, 3]


def test_killed_worker_is_retried_from_its_last_epoch(toy_csv, tmp_path, one_thread, capsys):
    args = tune_args(toy_csv, tmp_path, 2, "--heartbeat", 1)
    args[args.index("--epochs") + 1] = "3"
    proc = ferlab_process(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "runs" / "trial-0001" / "metrics.csv"
    wait_until(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = metrics.read_text().splitlines()
    assert 2 <= len(before) <= 3, "the worker should have been killed during trial 1"
    assert states(load_study(tmp_path)) == {"COMPLETE": 1, "RUNNING": 1}

    # The same command again: trial 1 goes stale (no heartbeat for 2 s), fails, and is retried with
    # its parameters in its run directory, from the last epoch the dead worker finished.
    assert main(args) == 0
    study = load_study(tmp_path)
    assert states(study) == {"COMPLETE": 2, "FAIL": 1}
    retry = study.trials[2]
    assert retry.state.name == "COMPLETE" and retry.user_attrs["run_dir"] == "trial-0001"
    assert retry.params == study.trials[1].params
    after = metrics.read_text().splitlines()
    assert len(after) == 4 and after[:len(before)] == before  # the epochs done before the kill are kept
    assert "(resuming)" in capsys.readouterr().out


@pytest.mark.slow
def test_two_workers_share_one_study(toy_csv, tmp_path, one_thread, capsys):
    args = tune_args(toy_csv, tmp_path, 6)
    other = ferlab_process(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Start this worker the moment the other one opens the new database (its lock file appears
    # then), so that both create its tables at once and both are ready before trials run out;
    # waiting for a blind start let the other worker's slow import miss every trial on CI.
    lock_file = tmp_path / "tune.db.lock"
    wait_until(lambda: lock_file.exists() or other.poll() is not None, interval=0.01)
    assert lock_file.exists(), "the other worker never opened the study"
    assert main(args) == 0
    out, err = other.communicate(timeout=300)
    assert other.returncode == 0, err[-2000:]
    study = load_study(tmp_path)
    assert states(study) == {"COMPLETE": 6}
    assert sorted(t.number for t in study.trials) == list(range(6))
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(params)) == 6, "workers must not draw the same parameters"
    assert len({t.user_attrs["run_dir"] for t in study.trials}) == 6
    ran = [sum(line.startswith("trial ") for line in text.splitlines()) for text in (out, capsys.readouterr().out)]
    assert sum(ran) == 6 and min(ran) >= 1, f"both workers should have run trials, ran {ran}"
    assert (tmp_path / "runs" / "best.json").is_file()


def test_epoch_callback_can_stop_a_run(toy_csv, tmp_path, one_thread):
    from ferlab.training.tune import read_history
    from ferlab.training.config import TrainConfig
    from ferlab.training.run import fit

    cfg = TrainConfig(model="sarmah2023_8conv", model_kwargs={"first_filters": 4, "max_filters": 8}, data=str(toy_csv),
                      epochs=3, batch_size=32, test_splits="")
    seen = []
    fit(cfg, tmp_path / "run", device="cpu", log=lambda m: None, on_epoch_end=lambda row: seen.append(row["epoch"]) or True)
    assert seen == [1] and [r["epoch"] for r in read_history(tmp_path / "run")] == [1]


def test_bad_options_fail_in_one_line(toy_csv, tmp_path, capsys):
    assert main(tune_args(toy_csv, tmp_path, 1) + ["--space", '{"kernels": [1, 2, 1]}']) == 2
    assert main(tune_args(tmp_path / "missing.csv", tmp_path, 1)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "unknown parameter" in err[0] and "missing.csv" in err[1]


def test_train_fraction_shrinks_every_trial(toy_csv, tmp_path, one_thread, capsys):
    assert main(tune_args(toy_csv, tmp_path, 1, "--train-fraction", 0.5)) == 0
    faces = int(re.search(r"training sarmah2023_8conv on (\d+) faces", capsys.readouterr().out).group(1))
    assert abs(faces - 70) <= 4   # half of the 140 Training faces, stratified per class


@pytest.mark.parametrize("where", ["read-only folder", "a file in the way"])
def test_unwritable_storage_folder_fails_in_one_line(toy_csv, tmp_path, capsys, where):
    """--storage sqlite:///DIR/tune.db with DIR read-only was a traceback."""
    folder = tmp_path / "db"
    if where == "read-only folder":
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        folder.mkdir()
        folder.chmod(0o555)
    else:
        folder.write_text("a file, not a folder")
    args = tune_args(toy_csv, tmp_path, 1)
    args[args.index("--storage") + 1] = f"sqlite:///{folder}/tune.db"
    try:
        assert main(args) == 2
    finally:
        folder.chmod(0o755)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(folder) in err[0] and "cannot write" in err[0], err
