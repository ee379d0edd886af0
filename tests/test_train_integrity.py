"""A run directory against what goes wrong around it (issues 37 and 38): two trainings of one run at
once, a full disk mid-checkpoint, a hand-edited config.json, a bad model card beside weights; and
the device side of a run a CPU can test: which GPU each torchrun process binds, --deterministic."""

import errno
import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import ferlab.checkpoint
import ferlab.training.distributed as distributed
from ferlab.checkpoint import load_model, load_state
from ferlab.errors import FerlabError
from ferlab.training.config import TrainConfig, run_config
from ferlab.training.run import fit, open_run
from synthetic import wait_until
from test_train import ONE_THREAD, TINY, copy_run, read_metrics, tiny_config


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def finished_run(toy_csv, tmp_path_factory):
    """A 1-epoch tiny run with --select last (every epoch writes best.safetensors); tests copy it."""
    run, cfg = tmp_path_factory.mktemp("finished") / "run", tiny_config(toy_csv, epochs=1, select="last")
    fit(cfg, run, resume=open_run(run, cfg, False), device="cpu", log=lambda *a: None)
    return run


def one_line(err: str) -> bool:
    """stderr is one line (and what a progress bar left before it, each of its updates ending in \\r)."""
    lines = [line.split("\r")[-1].strip() for line in err.split("\n")]
    return len([line for line in lines if line]) == 1 and "Traceback" not in err


# ---- one process trains in a run directory at a time ------------------------------------------

@pytest.mark.slow
def test_a_second_training_of_a_run_is_refused_naming_the_holder(cli, finished_run, tmp_path):
    """Two `ferlab train --resume --out RUN` at once: the second is refused in one line naming the run and
    the first's pid, whichever epochs it asks for; once the first is killed, its lock blocks nothing."""
    run = copy_run(finished_run, tmp_path / "run")
    first = subprocess.Popen([sys.executable, "-m", "ferlab", "train", "--resume", "--out", str(run), "--epochs", "24",
                              "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ONE_THREAD)
    try:
        assert wait_until(lambda: (run / "metrics.csv").read_text().count("\n") > 2 or first.poll() is not None, 120)
        assert first.poll() is None, first.stderr.read().decode()[-2000:]
        for epochs in (4, 20):   # fewer epochs than the first extends to, and more
            code, out, err = cli("train", "--resume", "--out", run, "--epochs", epochs, "--device", "cpu")
            assert code == 2 and one_line(err), err
            assert str(run) in err and f"pid {first.pid}" in err, err
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert json.loads((run / "config.json").read_text())["epochs"] == 24
    code, out, err = cli("train", "--resume", "--out", run, "--device", "cpu")   # the killed run's lock is gone
    assert code == 0, err
    assert [int(r["epoch"]) for r in read_metrics(run)] == list(range(1, 25))
    assert load_state(run / "last.pt")["epoch"] == 24


def test_the_run_lock_is_held_while_fit_trains_and_released_after(finished_run, tmp_path):
    """In one process: fit holds RUN/.lock (another open of it cannot lock it), and lets it go at the end."""
    fcntl = pytest.importorskip("fcntl")
    run = copy_run(finished_run, tmp_path / "run")
    cfg = TrainConfig(**{**asdict(run_config(run)), "epochs": 2})
    seen = []

    def try_lock(row):
        with open(run / ".lock", "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append("free")
            except OSError:
                seen.append((run / ".lock").read_text())
    fit(cfg, run, resume=True, device="cpu", log=lambda *a: None, on_epoch_end=try_lock)
    assert seen == [str(os.getpid())]
    with open(run / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


# ---- a full disk ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["last.pt", "best.safetensors"])
def test_a_full_disk_mid_checkpoint_is_one_line_and_keeps_the_last_checkpoint(cli, finished_run, tmp_path, monkeypatch, name):
    run = copy_run(finished_run, tmp_path / "run")
    before = (run / name).read_bytes()

    def full(obj, tmp, *args, **kwargs):
        Path(tmp).write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
    with monkeypatch.context() as patch:
        if name == "last.pt":
            patch.setattr(torch, "save", full)
        else:
            patch.setattr(ferlab.checkpoint, "save_file", full)
        code, out, err = cli("train", "--resume", "--out", run, "--epochs", 2, "--device", "cpu")
    assert code == 2 and one_line(err), err
    assert "no space left on device" in err.lower() and str(run / name) in err, err
    assert f"ferlab train --resume --out {run}" in err, err
    assert (run / name).read_bytes() == before
    assert not list(run.glob(".*.tmp"))
    code, out, err = cli("train", "--resume", "--out", run, "--device", "cpu")   # space freed: it goes on
    assert code == 0, err
    assert load_state(run / "last.pt")["epoch"] == 2


# ---- a hand-edited config.json ------------------------------------------------------------------

@pytest.mark.parametrize("edit, message", [
    (lambda text: text[:-3], "not valid JSON"),
    (lambda text: "[1, 2]", "a JSON list, not an object"),
    (lambda text: json.dumps({**json.loads(text), "epochs": "many"}), "epochs must be an integer, not 'many'"),
    (lambda text: json.dumps({**json.loads(text), "lr": True}), "lr must be a number, not True"),
    (lambda text: json.dumps({**json.loads(text), "data": ["a.csv", 3]}), "data must be"),
    (lambda text: json.dumps({**json.loads(text), "colour": "red"}), "unknown setting 'colour'"),
    (lambda text: json.dumps({**json.loads(text), "batch_size": 0}), "--batch-size must be >= 1"),
])
def test_a_hand_edited_config_json_is_one_line_naming_file_and_field(cli, finished_run, tmp_path, edit, message):
    run = copy_run(finished_run, tmp_path / "run")
    config = run / "config.json"
    config.write_text(edit(config.read_text()))
    for args in (["--resume", "--out", run], ["--resume", "--out", run, "--epochs", 3]):
        code, out, err = cli("train", *args, "--device", "cpu")
        assert code == 2 and one_line(err), err
        assert f"{config}: " in err and message in err, err
    with pytest.raises(FerlabError, match=message.replace("[", r"\[").replace("(", r"\(")):
        run_config(run)


def test_an_old_config_json_without_new_settings_resumes(cli, finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in ("deterministic", "compile")}))
    code, out, err = cli("train", "--resume", "--out", run, "--epochs", 2, "--device", "cpu")
    assert code == 0, err


@pytest.mark.parametrize("card, message", [("{not json", "not valid JSON"), ("[1]", "not an object"),
                                           ('{"classes": ["a", "b"]}', "lists 2 classes")])
def test_a_bad_model_card_beside_weights_is_one_line(cli, finished_run, tmp_path, toy_csv, card, message):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes((finished_run / "best.safetensors").read_bytes())
    (tmp_path / "model.json").write_text(card)
    with pytest.raises(FerlabError, match=message):
        load_model(str(weights))
    code, out, err = cli("evaluate", weights, "--data", toy_csv, "--device", "cpu", "--out", tmp_path / "eval")
    assert code == 2 and one_line(err) and "model.json" in err, err


# ---- devices: each torchrun process its own GPU; --deterministic ---------------------------------

def test_each_torchrun_process_binds_its_own_gpu(monkeypatch):
    """The CUDA path of init_distributed, on a CPU: rank LOCAL_RANK takes cuda:LOCAL_RANK over NCCL; sums
    are reduced on that GPU; on CPUs gloo and the CPU."""
    calls = {}
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.setdefault("set_device", device))
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend, **kw: calls.setdefault("backend", backend))
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 3)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 4)
    d = distributed.init_distributed(torch.device("cuda"))
    assert (d.rank, d.world, d.device) == (3, 4, torch.device("cuda", 1))
    assert calls == {"set_device": torch.device("cuda", 1), "backend": "nccl"}
    assert distributed.ddp_device_ids(d) == [1]

    monkeypatch.setenv("LOCAL_RANK", "2")   # a third process per machine with two GPUs
    with pytest.raises(FerlabError, match="2 GPU"):
        distributed.init_distributed(torch.device("cuda"))

    calls.clear()
    d = distributed.init_distributed(torch.device("cpu"))
    assert calls == {"backend": "gloo"} and d.device == torch.device("cpu") and distributed.ddp_device_ids(d) is None
    reduced = []
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t: reduced.append((t.device.type, t.dtype)))
    assert distributed.all_reduce_sum([1.0, 2.0], d) == [1.0, 2.0]
    assert reduced == [("cpu", torch.float64)]


def test_deterministic_is_stored_and_set_while_training_only(cli, toy_csv, tmp_path, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seen = []

    def settings(row):
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                     torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG")))
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    cfg = tiny_config(toy_csv, epochs=1, deterministic=True)
    fit(cfg, tmp_path / "run", device="cpu", log=lambda *a: None, on_epoch_end=settings)
    assert seen == [(True, True, False, ":4096:8")]
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark) == before

    code, out, err = cli("train", *TINY, "--data", toy_csv, "--epochs", 1, "--deterministic", "--device", "cpu",
                         "--out", tmp_path / "cli")
    assert code == 0, err
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["deterministic"] is True
    assert TrainConfig().deterministic is False
