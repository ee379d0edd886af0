"""The training engine on a tiny synthetic FER2013-layout CSV: it learns, stops early, lowers the LR
on a plateau, weights classes, resumes a killed run to the same end, writes atomically, and
refuses bad input with one line."""

import csv
import json
import math
import os
import re
import shlex
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ferlab.atomic import atomic_write_text
from ferlab.checkpoint import load_model, load_state, load_weights, save_weights
from ferlab.errors import FerlabError
from ferlab.evaluate import batchnorm_check, predict_probs
from ferlab.training.recipes import get_recipe
from ferlab.cli import build_parser
from ferlab.data import load_run_data, load_with_splits
from ferlab.device import describe_machine
from ferlab.training.cli import config_from_args
from ferlab.training.config import TrainConfig, train_command
from ferlab.training.losses import balanced_class_weights
from ferlab.training.run import BestWeights, fit, open_run
from synthetic import kill_training_after, synthetic_faces

TINY = ["--model", "fernet_s", "--model-kwargs", '{"widths": [8, 16, 16, 16], "depths": [1, 1, 1, 1]}']


# One torch thread per process: tiny models gain nothing from two, and two spin-waiting threads
# crawl when the other core is busy.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def read_metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def tiny_config(data, **overrides) -> TrainConfig:
    base = dict(model="fernet_s", model_kwargs={"widths": [8, 16, 16, 16], "depths": [1, 1, 1, 1]}, data=str(data),
                epochs=6, batch_size=32, optimizer="adam", lr=3e-3, seed=0)
    return TrainConfig(**{**base, **overrides})


def test_training_learns_a_separable_problem(toy_csv, tmp_path):
    history = fit(tiny_config(toy_csv, epochs=6), tmp_path / "run", device="cpu", log=lambda *a: None).history
    assert history[-1]["val_acc"] > 0.9
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    for name in ("best.safetensors", "last.pt", "metrics.csv", "curves.png"):
        assert (tmp_path / "run" / name).is_file()
    rows = read_metrics(tmp_path / "run")
    assert [int(r["epoch"]) for r in rows] == list(range(1, 7))
    assert {"lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "time_s"} <= set(rows[0])
    _, meta = load_weights(tmp_path / "run" / "best.safetensors")   # wall times mean little without the machine
    assert meta["trained_on"] == describe_machine() and "CPUs" in meta["trained_on"] and "torch" in meta["trained_on"]


# The papers' models at widths that fit the toy problem within 8 epochs through their dropout (the
# smoke budget's reproduce.TINY widths are 4x narrower: too narrow to learn, fine for a report path).
PAPER_MODELS_LEARNABLE = {
    "triwijoyo2021": {"widths": [8, 32, 32], "dense": 64},
    "triwijoyo2021_nobn": {"widths": [8, 32, 32], "dense": 64},
    "sarmah2023_base": {"stages": [[16], [32], [32], [32]], "dense": [64, 64]},
    "sarmah2023_5conv": {"first_filters": 16, "max_filters": 32, "dense": [64]},
    "sarmah2023_8conv": {"first_filters": 16, "max_filters": 32, "dense": [64]},
    "bah2022_resnet": {"widths": [8, 16, 32, 32, 32, 32]},
    "bah2022_basic": {"widths": [8, 16, 32, 32, 32, 32]},
    "li2023": {"widths": [16, 32], "dense": 64},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PAPER_MODELS_LEARNABLE))
def test_each_paper_model_learns_a_separable_problem(name, toy_csv, tmp_path):
    cfg = TrainConfig(model=name, model_kwargs=PAPER_MODELS_LEARNABLE[name], data=str(toy_csv), epochs=8, batch_size=32,
                      optimizer="adam", lr=1e-3, seed=0, amp="fp32")   # fp32: scored as batchnorm_check scores
    history = fit(cfg, tmp_path / "run", log=lambda *a: None).history
    assert history[-1]["train_acc"] > 0.8
    check = batchnorm_check(tmp_path / "run", cfg)
    if check is None:   # no BN: eval mode scores what train mode learned
        assert history[-1]["val_acc"] > 0.9
    else:   # Keras-style BN after dropout: eval mode needs statistics recomputed without dropout
        assert check["as_trained"] == pytest.approx(history[-1]["test_acc"])
        assert check["recalibrated"] > 0.9 and check["split"] == "PrivateTest"


def test_recalibrated_batchnorm_during_training_selects_and_saves_what_eval_mode_scores(toy_csv, tmp_path):
    name = "sarmah2023_5conv"
    cfg = TrainConfig(model=name, model_kwargs=PAPER_MODELS_LEARNABLE[name], data=str(toy_csv), epochs=8, batch_size=32,
                      optimizer="adam", lr=1e-3, seed=0, recalibrate_bn=256, amp="fp32")
    history = fit(cfg, tmp_path / "run", log=lambda *a: None).history
    assert history[-1]["val_acc"] > 0.9   # without recalibration this run's eval mode predicts one class
    model, _ = load_model(str(tmp_path / "run"))
    data = load_with_splits(str(toy_csv)).select("PublicTest")
    best = max(h["val_acc"] for h in history)
    assert (predict_probs(model, data.images).argmax(1) == data.labels).mean() == pytest.approx(best)


def test_train_fraction_keeps_a_seeded_stratified_share():
    from ferlab.data import fraction_mask

    counts = [40, 4, 30, 80, 50, 20, 60]
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(7), counts))
    keep = fraction_mask(labels, 0.3, seed=0)
    assert np.array_equal(keep, fraction_mask(labels, 0.3, seed=0))
    assert not np.array_equal(keep, fraction_mask(labels, 0.3, seed=1))
    for c, n in enumerate(counts):
        assert abs(keep[labels == c].sum() - 0.3 * n) <= 1, c


def test_training_learns_with_mixup_and_cutmix(toy_csv, tmp_path):
    history = fit(tiny_config(toy_csv, epochs=8, mixup=0.4, cutmix=1.0), tmp_path / "run", log=lambda *a: None).history
    assert history[-1]["val_acc"] > 0.9


def test_distillation_learns_from_the_teacher_not_the_labels(toy_csv, tmp_path):
    # Training labels shuffled: alone, a student learns nothing; distilled (weight 1: labels unused)
    # from a teacher trained on the true labels, it learns the task (PublicTest keeps true labels).
    with open(toy_csv) as f:
        rows = list(csv.reader(f))
    train = [i for i, r in enumerate(rows) if r[2] == "Training"]
    shuffled = np.random.default_rng(0).permutation([rows[i][0] for i in train])
    for i, y in zip(train, shuffled):
        rows[i][0] = y
    noisy = tmp_path / "noisy.csv"
    with open(noisy, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    quiet = dict(log=lambda *a: None)
    assert fit(tiny_config(toy_csv, epochs=6), tmp_path / "teacher", **quiet).history[-1]["val_acc"] > 0.9
    alone = fit(tiny_config(noisy, epochs=6), tmp_path / "alone", **quiet).history
    # the toy teacher is right but unsure (mean top probability ~0.5): T < 1 sharpens its targets
    distilled = fit(tiny_config(noisy, epochs=6, teacher=str(tmp_path / "teacher"), distill_weight=1.0,
                                distill_temperature=0.25), tmp_path / "student", **quiet).history
    assert max(r["val_acc"] for r in alone) < 0.5
    assert distilled[-1]["val_acc"] > 0.9

    # a teacher with other classes, or a bad weight, fails in one line before training
    with pytest.raises(FerlabError, match="teacher"):
        TrainConfig(data=str(noisy), teacher="default", distill_weight=1.5)
    ckplus_like = tmp_path / "teacher8"
    ckplus_like.mkdir()
    _, meta = load_weights(tmp_path / "teacher" / "best.safetensors")
    model, _ = load_model(str(tmp_path / "teacher"))
    save_weights(ckplus_like / "best.safetensors", model, {**meta, "classes": [f"c{i}" for i in range(7)]})
    with pytest.raises(FerlabError, match="its classes"):
        fit(tiny_config(noisy, epochs=1, teacher=str(ckplus_like)), tmp_path / "bad", **quiet)

    # the teacher's ONNX export teaches as well (`--teacher default-int8` runs the teacher in onnxruntime)
    pytest.importorskip("onnxruntime")
    from ferlab.posttrain.export import export_model

    export_model(str(tmp_path / "teacher"), tmp_path / "teacher.onnx", log=lambda *a: None)
    via_onnx = fit(tiny_config(noisy, epochs=6, teacher=str(tmp_path / "teacher.onnx"), distill_weight=1.0,
                               distill_temperature=0.25), tmp_path / "student-onnx", **quiet).history
    assert via_onnx[-1]["val_acc"] > 0.9


def test_init_fine_tunes_from_a_trained_model(toy_csv, tmp_path):
    from ferlab.models import create_model
    from ferlab.training.transfer import load_init_weights

    quiet = dict(log=lambda *a: None)
    assert fit(tiny_config(toy_csv, epochs=6), tmp_path / "source", **quiet).history[-1]["val_acc"] > 0.9
    # at a learning rate too small to learn anything in one epoch, only the copied weights can score
    still = dict(epochs=1, lr=1e-7)
    assert fit(tiny_config(toy_csv, **still), tmp_path / "scratch", **quiet).history[-1]["val_acc"] < 0.5
    assert fit(tiny_config(toy_csv, init=str(tmp_path / "source"), **still), tmp_path / "tuned", **quiet).history[-1]["val_acc"] > 0.9

    # other classes (CK+'s): every layer but the classifier comes from the source; the classifier keeps
    # the rows of the classes both name (anger = angry, sadness = sad) and starts contempt afresh
    source, card = load_model(str(tmp_path / "source"))
    cfg = tiny_config(toy_csv, init=str(tmp_path / "source"))
    target = create_model(cfg.model, **cfg.model_kwargs, num_classes=7)
    fresh = target.head[-1].weight.clone()
    ckplus = ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]
    load_init_weights(target, cfg, ckplus, log=lambda m: None)
    assert torch.equal(target.features[0][0].weight, source.features[0][0].weight)
    fer2013 = list(card["classes"])
    for row, name in zip(target.head[-1].weight, ckplus):
        i = {"anger": "angry", "sadness": "sad"}.get(name, name)
        assert torch.equal(row, fresh[1] if name == "contempt" else source.head[-1].weight[fer2013.index(i)]), name

    with pytest.raises(FerlabError, match="not the li2023"):
        fit(TrainConfig(model="li2023", data=str(toy_csv), epochs=1, init=str(tmp_path / "source")), tmp_path / "bad", **quiet)
    with pytest.raises(FerlabError, match="do not fit"):
        fit(tiny_config(toy_csv, epochs=1, init=str(tmp_path / "source"), model_kwargs={"widths": [8, 16, 16, 32], "depths": [1, 1, 1, 1]}),
            tmp_path / "bad2", **quiet)


def test_ema_warms_up_then_decays_at_the_configured_rate():
    from torch.optim.swa_utils import AveragedModel
    from ferlab.training.optim import average_update_fn

    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = AveragedModel(model, multi_avg_fn=average_update_fn(0.998), use_buffers=True)
    ema.update_parameters(model)  # the first update copies
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(50):
        ema.update_parameters(model)
    assert ema.module.weight.item() > 0.9   # a plain 0.998 EMA would still be at 1 - 0.998**50 = 0.10
    for _ in range(5000):
        ema.update_parameters(model)
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.update_parameters(model)
    assert ema.module.weight.item() == pytest.approx(1.002, abs=1e-5)   # late on: the configured decay


def test_uniform_average_is_the_mean_of_all_updates():
    from torch.optim.swa_utils import AveragedModel
    from ferlab.training.optim import average_update_fn

    model = torch.nn.BatchNorm1d(1)
    average = AveragedModel(model, multi_avg_fn=average_update_fn(None), use_buffers=True)
    for value, batches in ((1.0, 5), (2.0, 6), (6.0, 9)):
        with torch.no_grad():
            model.weight.fill_(value)
        model.num_batches_tracked.fill_(batches)
        average.update_parameters(model)
    assert average.module.weight.item() == pytest.approx(3.0)
    assert average.module.num_batches_tracked.item() == 9   # integer buffers follow the model


def test_weight_average_of_the_last_epochs(toy_csv, tmp_path):
    from ferlab.checkpoint import load_model
    from ferlab.evaluate import predict_probs
    from ferlab.data import load_run_data

    cfg = tiny_config(toy_csv, epochs=4, average_from=0.5, select="last", ema=0.9, amp="fp32")
    result = fit(cfg, tmp_path / "run", log=lambda *a: None)
    history = result.history
    assert [("avg_val_acc" in r) for r in history] == [False, False, True, True]   # epochs 3 and 4
    assert result.best == BestWeights(4, history[-1]["avg_val_acc"], (3, 4)) == BestWeights.of_run(tmp_path / "run")
    assert str(result.best) == "the average of epochs 3-4"
    assert fit(cfg, tmp_path / "run", resume=True, log=lambda *a: None).best == result.best   # last.pt records it
    model, meta = load_model(str(tmp_path / "run" / "best.safetensors"))
    assert meta["averaged_epochs"] == [3, 4] and meta["val_acc"] == history[-1]["avg_val_acc"]
    val = load_run_data(cfg)[2]
    assert float((predict_probs(model, val.images).argmax(1) == val.labels).mean()) == pytest.approx(meta["val_acc"])
    with pytest.raises(FerlabError, match="--average-from"):
        tiny_config(toy_csv, average_from=1.0)


def test_early_stopping_ends_a_run_and_plateau_lowers_the_lr(toy_csv, tmp_path):
    # A learning rate too small to move the weights of a model without BatchNorm (whose running
    # statistics would move anyway): validation accuracy never improves after epoch 1.
    cfg = tiny_config(toy_csv, model="li2023", model_kwargs={}, epochs=20, lr=1e-7, schedule="plateau",
                      plateau_patience=1, plateau_factor=0.5, early_stop_patience=3, amp="fp32")
    history = fit(cfg, tmp_path / "run", log=lambda *a: None).history
    # Replay Keras' EarlyStopping rule on the logged accuracies (a borderline face may still flip).
    best, bad, expected_stop = -1.0, 0, None
    for row in history:
        best, bad = (row["val_acc"], 0) if row["val_acc"] > best else (best, bad + 1)
        if bad >= 3:
            expected_stop = row["epoch"]
            break
    assert expected_stop is not None and len(history) == expected_stop < 20
    assert history[-1]["stopped"] and not any(r["stopped"] for r in history[:-1])
    lrs = [r["lr"] for r in history]
    assert lrs[0] == pytest.approx(1e-7) and lrs[-1] <= 5e-8 + 1e-20  # cut after 2 epochs without improvement
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_select_last_keeps_the_last_epoch_whatever_validation_says(toy_csv, tmp_path):
    # A step too small to change any float32 weight: validation accuracy never rises above epoch 1's,
    # so --select val_acc keeps epoch 1 (and a validation split trained on, as here, makes it meaningless).
    cfg = tiny_config(toy_csv, model="li2023", model_kwargs={}, epochs=3, lr=1e-12, amp="fp32",
                      train_splits="Training,PublicTest", val_splits="PublicTest")
    by_val = fit(cfg, tmp_path / "by_val", log=lambda *a: None)
    last_run = fit(TrainConfig(**{**asdict(cfg), "select": "last"}), tmp_path / "last", log=lambda *a: None)
    assert by_val.best.epoch == 1 and last_run.best.epoch == 3 and str(last_run.best) == "epoch 3"
    assert load_weights(tmp_path / "by_val" / "best.safetensors")[1]["epoch"] == 1
    state, meta = load_weights(tmp_path / "last" / "best.safetensors")
    assert meta["epoch"] == 3
    last = load_state(tmp_path / "last" / "last.pt")["model"]
    assert all(torch.equal(state[k], last[k]) for k in last)


def test_balanced_class_weights_are_inverse_to_class_frequency():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    w = balanced_class_weights(labels, 4)
    assert torch.allclose(w[:3], torch.tensor([100 / 180, 100 / 90, 100 / 30]))
    assert w[3] == 0  # absent class


def write_imbalanced_csv(path: Path, minority: int, n_minority: int) -> Path:
    """Toy faces whose training split holds 400 faces of six classes and only `n_minority` of class
    `minority`; validation and test faces keep all seven classes in their natural shares."""
    images, labels = synthetic_faces(1400, seed=1)
    rest, rare = np.flatnonzero(labels[:1000] != minority), np.flatnonzero(labels[:1000] == minority)
    parts = ((np.concatenate([rest[:400], rare[:n_minority]]), "Training"), (range(1000, 1200), "PublicTest"),
             (range(1200, 1400), "PrivateTest"))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        w.writerows([int(labels[i]), " ".join(map(str, images[i].ravel())), usage] for rows, usage in parts for i in rows)
    return path


def test_balanced_class_weights_make_a_rare_class_recognised(tmp_path):
    data = write_imbalanced_csv(tmp_path / "imbalanced.csv", minority=1, n_minority=12)
    test = load_with_splits(str(data)).select("PrivateTest")
    rare = test.labels == 1
    recall, predicted = {}, {}
    for weights in ("none", "balanced"):
        cfg = tiny_config(data, epochs=4, amp="fp32", class_weights=weights, select="last")
        fit(cfg, tmp_path / weights, log=lambda *a: None)
        pred = predict_probs(load_model(str(tmp_path / weights))[0], test.images).argmax(1)
        recall[weights], predicted[weights] = (pred[rare] == 1).mean(), (pred == 1).sum()
    # 12 of 412 training faces: unweighted, the rare class is never predicted; balanced, it is found
    assert recall["none"] < 0.2 and recall["balanced"] > 0.8, recall
    assert predicted["balanced"] > predicted["none"], predicted


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_end(ferlab, toy_csv, tmp_path):
    args = ["train", *TINY, "--data", toy_csv, "--epochs", 8, "--batch-size", 32, "--optimizer", "sgd", "--lr", 0.05,
            "--schedule", "onecycle", "--augment", "fernet", "--ema", 0.9, "--label-smoothing", 0.1, "--average-from", 0.25,
            "--device", "cpu"]   # exact on a CPU; test_cuda.py resumes on a GPU
    ferlab(*args, "--out", tmp_path / "straight")

    killed = tmp_path / "killed"
    kill_training_after(args, killed, epochs=2, env=ONE_THREAD)
    done = load_state(killed / "last.pt")["epoch"]
    assert 2 <= done < 8, "the run should have been killed part-way"

    ferlab("train", "--resume", "--out", killed, "--device", "cpu")
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(killed)
    assert len(resumed) == 8
    for s, r in zip(straight, resumed):
        for key in ("lr", "train_loss", "train_acc", "val_loss", "val_acc", "avg_val_acc"):
            if key == "avg_val_acc" and int(s["epoch"]) < 3:   # averaging starts after 25% of 8 epochs
                assert s[key] == r[key] == ""
                continue
            assert float(s[key]) == pytest.approx(float(r[key]), rel=1e-6, abs=1e-7), (s["epoch"], key)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "metrics.csv"
    atomic_write_text(target, "old")
    from ferlab.atomic import atomic_write

    def failing(tmp):
        Path(tmp).write_text("half")
        raise OSError("disk full")
    with pytest.raises(OSError):
        atomic_write(target, failing)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]


@pytest.mark.parametrize("extra, message", [
    (["--model", "nosuchnet"], "unknown model"),
    (["--recipe", "nosuchpaper"], "unknown recipe"),
    (["--optimizer", "adagrad"], "--optimizer must be one of"),
    (["--augment", "wild"], "--augment must be one of"),
    (["--mixup", "-1"], "--mixup and --cutmix are Beta alphas"),
])
def test_bad_options_fail_in_one_line(ferlab, toy_csv, tmp_path, extra, message):
    proc = ferlab("train", *TINY, "--data", toy_csv, "--epochs", 1, "--out", tmp_path / "r", *extra, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_missing_data_file_fails_in_one_line(ferlab, tmp_path):
    proc = ferlab("train", *TINY, "--data", tmp_path / "missing.csv", "--out", tmp_path / "r", check=False)
    assert proc.returncode == 2 and "missing.csv" in proc.stderr and "Traceback" not in proc.stderr


def test_run_directory_is_never_overwritten(ferlab, toy_csv, tmp_path):
    run = tmp_path / "run"
    ferlab("train", *TINY, "--data", toy_csv, "--epochs", 1, "--out", run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    again = ferlab("train", *TINY, "--data", toy_csv, "--epochs", 2, "--out", run, check=False)
    assert again.returncode == 2 and "already holds a run" in again.stderr
    changed = ferlab("train", "--resume", "--out", run, "--lr", "0.5", check=False)
    assert changed.returncode == 2 and "different settings" in changed.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_resuming_from_a_corrupt_checkpoint_fails_in_one_line(ferlab, toy_csv, tmp_path):
    run = tmp_path / "run"
    ferlab("train", *TINY, "--data", toy_csv, "--epochs", 1, "--out", run)
    (run / "last.pt").write_bytes(b"not a checkpoint")
    proc = ferlab("train", "--resume", "--out", run, check=False)
    assert proc.returncode == 2 and "last.pt" in proc.stderr and "Traceback" not in proc.stderr


def test_resume_rejects_the_checkpoint_of_another_model(ferlab, toy_csv, tmp_path):
    run = tmp_path / "run"
    ferlab("train", *TINY, "--data", toy_csv, "--epochs", 1, "--out", run)
    config = json.loads((run / "config.json").read_text())
    config["model_kwargs"] = {"widths": [8, 8, 8, 8], "depths": [1, 1, 1, 1]}
    (run / "config.json").write_text(json.dumps(config))
    proc = ferlab("train", "--resume", "--out", run, check=False)
    assert proc.returncode == 2 and "does not match" in proc.stderr


def test_a_recipe_fills_the_options_not_given(ferlab, toy_csv, tmp_path):
    proc = ferlab("recipes")
    for name in ("triwijoyo2021", "sarmah2023", "bah2022", "li2023", "fernet"):
        assert name in proc.stdout
    # A recipe's options are overridden by explicit ones.
    run = tmp_path / "run"
    ferlab("train", "--recipe", "li2023", *TINY, "--data", toy_csv, "--epochs", 1, "--batch-size", 64, "--out", run)
    config = json.loads((run / "config.json").read_text())
    assert config["recipe"] == "li2023" and config["optimizer"] == "adam" and config["augment"] == "li2023"
    assert config["epochs"] == 1 and config["batch_size"] == 64 and config["model"] == "fernet_s"


@pytest.mark.parametrize("recipe", [None, "fernet_m"])
def test_train_command_recreates_the_config(tmp_path, recipe):
    """A model card's command, parsed by ferlab's own parser, gives back the run's config."""
    base = {"recipe": recipe, **get_recipe(recipe)} if recipe else {}
    config = asdict(TrainConfig(**{**base, "data": "/data/fer2013.csv.gz", "ferplus": "/data/fer2013new.csv", "epochs": 90,
                                   "mixup": 0.2, "channels_last": False, "model_kwargs": {"dropout": 0.3}}))
    command = train_command(config)
    assert command.startswith("ferlab train") and ("--recipe fernet_m" in command) == bool(recipe)
    args = build_parser("train").parse_args(shlex.split(command)[1:] + ["--out", str(tmp_path / "run")])
    parsed, _ = config_from_args(args)
    # data files by name, found in the working folder (and stored by absolute path)
    assert asdict(parsed) == {**config, "data": os.path.abspath("fer2013.csv.gz"), "ferplus": os.path.abspath("fer2013new.csv")}


def test_soft_weight_blends_the_votes_with_each_rows_own_label():
    """--soft-weight w: target = w * votes + (1 - w) * one-hot(own label); 1 is the votes alone, 0
    the labels; outside [0, 1] is refused in one line."""
    from types import SimpleNamespace

    from ferlab.training.run import training_targets

    votes = np.array([[0.2, 0.8, 0.0], [0.5, 0.0, 0.5]], np.float32)
    train = SimpleNamespace(labels=np.array([0, 2]), soft_labels=votes)
    blend = training_targets(TrainConfig(data="x.csv", targets="soft", soft_weight=0.25), train).numpy()
    assert np.allclose(blend, [[0.8, 0.2, 0.0], [0.125, 0.0, 0.875]]) and np.allclose(blend.sum(1), 1)
    assert np.array_equal(training_targets(TrainConfig(data="x.csv", targets="soft"), train).numpy(), votes)
    assert training_targets(TrainConfig(data="x.csv", targets="soft", soft_weight=0.0), train).argmax(1).tolist() == [0, 2]
    with pytest.raises(FerlabError, match="--soft-weight"):
        TrainConfig(data="x.csv", targets="soft", soft_weight=1.5)


def test_ferplus_soft_targets_train_an_8_class_model(ferlab, toy_csv, tmp_path):
    """--ferplus --targets soft: FER+ vote distributions as targets, contempt as an eighth class,
    and `ferlab evaluate RUN` scores it against the FER+ majority labels."""
    with open(toy_csv) as f:
        rows = list(csv.DictReader(f))
    # FER+ vote columns: neutral happiness surprise sadness anger disgust fear contempt unknown NF
    ferplus_column = {0: 4, 1: 7, 2: 6, 3: 1, 4: 3, 5: 2, 6: 0}   # disgust's faces are voted contempt
    lines = ["Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"]
    for i, row in enumerate(rows):
        votes = [0] * 10
        votes[0] += 2   # two of ten annotators say neutral: soft targets, majority unchanged
        votes[ferplus_column[int(row["emotion"])]] += 8
        lines.append(f"{row['Usage']},fer{i:07d}.png," + ",".join(map(str, votes)))
    votes_file = tmp_path / "fer2013new.csv"
    votes_file.write_text("\n".join(lines) + "\n")

    train = [*TINY, "--data", toy_csv, "--targets", "soft", "--epochs", 10, "--batch-size", 32, "--optimizer", "adam", "--lr", 3e-3]
    no_votes = ferlab("train", *train, "--out", tmp_path / "no-votes", check=False)
    assert no_votes.returncode == 2 and "--targets soft needs vote distributions (pass --ferplus)" in no_votes.stderr
    assert len(no_votes.stderr.strip().splitlines()) == 1
    run = tmp_path / "run"
    ferlab("train", *train, "--ferplus", votes_file, "--out", run)
    assert float(read_metrics(run)[-1]["val_acc"]) > 0.9
    model, meta = load_model(str(run / "best.safetensors"))
    assert meta["classes"][-1] == "contempt" and model(torch.zeros(1, 1, 48, 48)).shape == (1, 8)
    ferlab("evaluate", run, "--split", "PrivateTest", "--out", tmp_path / "eval")
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["per_class"]["contempt"]["support"] > 0 and report["per_class"]["disgust"]["support"] == 0
    assert report["accuracy"] > 0.9 and report["ferplus"] == str(votes_file)
    assert "with FER+ labels (fer2013new.csv)" in (tmp_path / "eval" / "report.md").read_text().splitlines()[0]


@pytest.mark.slow
def test_evaluate_writes_a_report(ferlab, toy_csv, tmp_path):
    run = tmp_path / "run"
    ferlab("train", *TINY, "--data", toy_csv, "--epochs", 4, "--lr", 3e-3, "--out", run)
    out = tmp_path / "eval"
    proc = ferlab("evaluate", run, "--data", toy_csv, "--split", "PrivateTest", "--tta", "flip", "--out", out)
    report = json.loads((out / "report.json").read_text())
    assert report["num_samples"] == 140 and report["tta"] == "flip"
    assert set(report["per_class"]) == {"angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"}
    assert np.array(report["confusion_matrix"]).sum() == 140
    assert (out / "confusion.png").stat().st_size > 1000 and (out / "curves.png").is_file()
    assert "| class | precision | recall | F1-score | support |" in (out / "report.md").read_text()
    assert "accuracy" in proc.stdout
    ferlab("evaluate", run, "--data", toy_csv, "--split", "PrivateTest", "--recalibrate-bn", "Training")
    recalibrated = json.loads((run / "eval-PrivateTest-none-bn" / "report.json").read_text())
    assert recalibrated["recalibrate_bn"] == "Training" and recalibrated["num_samples"] == 140
    bad = ferlab("evaluate", run, "--data", toy_csv, "--recalibrate-bn", "Nope", check=False)
    assert bad.returncode != 0 and "no split named Nope" in bad.stderr and "Traceback" not in bad.stderr
    ferlab("evaluate", run, "--tta", "flip", "--out", tmp_path / "eval-implicit")   # --data and --split from the run
    assert json.loads((tmp_path / "eval-implicit" / "report.json").read_text())["confusion_matrix"] == report["confusion_matrix"]
    weights_only = ferlab("evaluate", run / "best.safetensors", check=False)
    assert weights_only.returncode == 2 and "not a run directory, so --data is needed" in weights_only.stderr
    missing = ferlab("evaluate", tmp_path / "nosuchrun", check=False)
    assert missing.returncode == 2 and "nosuchrun: not a weights file, run directory or bundled model" in missing.stderr


@pytest.mark.slow
def test_subject_folds_train_and_evaluate_on_the_same_split(ferlab, tmp_path):
    """--folds K --fold I: fold I tests, fold I+1 validates, no subject on two sides, and evaluate
    given the same options scores exactly that fold's faces."""
    images, labels = synthetic_faces(90, seed=3)
    root = tmp_path / "CK+48"
    classes = ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]
    for j, (image, label) in enumerate(zip(images, labels)):
        path = root / classes[label] / f"S{j % 9:03d}_001_{j:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image)
    spec = f"ckplus:{root}"
    _, train, val, test = load_run_data(TrainConfig(data=spec, folds=3, fold=1))
    sides = [set(part.groups) for part in (train, val, test)]
    assert all(sides) and not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    assert len(train) + len(val) + len(test) == 90
    run = tmp_path / "run"
    ferlab("train", *TINY, "--data", spec, "--folds", 3, "--fold", 1, "--epochs", 1, "--out", run)
    assert json.loads((run / "config.json").read_text())["folds"] == 3
    ferlab("evaluate", run, "--data", spec, "--folds", 3, "--fold", 1, "--split", "test", "--out", tmp_path / "eval")
    explicit = json.loads((tmp_path / "eval" / "report.json").read_text())
    ferlab("evaluate", run)   # data, folds, fold and seed from the run's config; the test split by default
    implicit = json.loads((run / "eval-test-none" / "report.json").read_text())
    assert explicit["num_samples"] == implicit["num_samples"] == len(test)
    assert explicit["confusion_matrix"] == implicit["confusion_matrix"]
    bad = ferlab("train", *TINY, "--data", spec, "--folds", 2, "--out", tmp_path / "r2", check=False)
    assert bad.returncode == 2 and "--folds >= 3" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_data_parallel_training_matches_one_process(ferlab, toy_csv, tmp_path):
    """torchrun with 2 CPU processes (gloo) vs one process with the same global batch."""
    common = ["train", *TINY, "--data", toy_csv, "--epochs", 3, "--batch-size", 32, "--amp", "fp32", "--lr", 3e-3,
              "--device", "cpu"]
    ferlab(*common, "--out", tmp_path / "single")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
                "-m", "ferlab", *map(str, common), "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(torchrun, capture_output=True, text=True, timeout=300, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-2000:]
    single, ddp = read_metrics(tmp_path / "single"), read_metrics(tmp_path / "ddp")
    assert len(single) == len(ddp) == 3
    for s, d in zip(single, ddp):
        # BatchNorm statistics are per process (16 vs 32 faces), so equal only within tolerance.
        assert float(d["train_loss"]) == pytest.approx(float(s["train_loss"]), rel=0.1)
        assert float(d["val_acc"]) == pytest.approx(float(s["val_acc"]), abs=0.1)


def test_run_killed_before_its_first_checkpoint_resumes_afresh(cli, toy_csv, tmp_path):
    """Config.json is written before the first last.pt: a run killed in its
    first epoch holds only config.json, and --resume starts it afresh, saying so."""
    run = tmp_path / "run"
    run.mkdir()
    config = asdict(tiny_config(toy_csv, epochs=1))
    (run / "config.json").write_text(json.dumps(config, indent=2))
    code, out, err = cli("train", "--resume", "--out", run)
    assert code == 0, err
    assert "no epoch finished" in out and "starting afresh" in out
    assert (run / "last.pt").is_file() and len(read_metrics(run)) == 1
    assert json.loads((run / "config.json").read_text()) == config


@pytest.fixture(scope="module")
def finished_run(toy_csv, tmp_path_factory):
    """A 1-epoch tiny run, trained once per module; tests copy it before damaging it."""
    run, cfg = tmp_path_factory.mktemp("finished") / "run", tiny_config(toy_csv, epochs=1)
    fit(cfg, run, resume=open_run(run, cfg, False), log=lambda *a: None)
    return run


def copy_run(run: Path, to: Path) -> Path:
    import shutil
    shutil.copytree(run, to)
    return to


@pytest.mark.parametrize("damage", ["empty", "tensor", "no_history", "string_epoch", "truncated"])
def test_damaged_last_pt_fails_in_one_line(cli, finished_run, tmp_path, damage):
    """A damaged last.pt: one line naming the file, no torch hint, no traceback."""
    run = copy_run(finished_run, tmp_path / "run")
    state = load_state(run / "last.pt")
    if damage == "empty":
        (run / "last.pt").write_bytes(b"")
    elif damage == "tensor":
        torch.save(torch.zeros(3), run / "last.pt")
    elif damage == "no_history":
        torch.save({k: v for k, v in state.items() if k != "history"}, run / "last.pt")
    elif damage == "string_epoch":
        torch.save({**state, "epoch": "one"}, run / "last.pt")
    else:
        data = (run / "last.pt").read_bytes()
        (run / "last.pt").write_bytes(data[:len(data) // 2])
    code, out, err = cli("train", "--resume", "--out", run)
    assert code == 2 and "last.pt" in err, err
    assert len(err.strip().splitlines()) == 1 and "weights_only" not in err


@pytest.mark.parametrize("meta", ["[1, 2]", '{"model": "fernet_s", "model_kwargs": {"num_classes": -1}}',
                                  '{"model": "fernet_s", "model_kwargs": [1]}', '"text"'])
def test_damaged_weights_metadata_fails_in_one_line(cli, finished_run, tmp_path, meta):
    """A .safetensors whose ferlab metadata is not a usable dict."""
    from safetensors.torch import load_file, save_file
    path = tmp_path / "bad.safetensors"
    save_file(load_file(str(finished_run / "best.safetensors")), str(path), metadata={"ferlab": meta})
    with pytest.raises(FerlabError, match="bad.safetensors"):
        load_model(str(path))
    code, out, err = cli("evaluate", path, "--data", finished_run.parent / "nothing.csv")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_unwritable_out_fails_before_any_work(cli, finished_run, toy_csv, tmp_path, monkeypatch):
    """Train and evaluate check --out first: one line, before training/evaluating.
    (The tests run as root, whom permissions do not stop: a path under a regular file stands in.)"""
    import ferlab.evaluate
    import ferlab.training.cli
    blocker = tmp_path / "a-file"
    blocker.write_text("")

    def never(*args, **kwargs):
        raise AssertionError("ran before checking --out")
    monkeypatch.setattr(ferlab.training.cli, "fit", never)
    monkeypatch.setattr(ferlab.evaluate, "evaluate_models", never)
    code, out, err = cli("train", *TINY, "--data", toy_csv, "--epochs", 1, "--out", blocker / "run")
    assert code == 2 and "a-file/run" in err and "cannot write" in err and len(err.strip().splitlines()) == 1, err
    code, out, err = cli("evaluate", finished_run, "--data", toy_csv, "--out", blocker / "eval")
    assert code == 2 and "a-file/eval" in err and "cannot write" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("damage", ["missing", "stale"])
def test_resume_of_a_finished_run_redraws_its_curves(cli, finished_run, tmp_path, damage):
    """A kill between metrics.csv and curves.png: resume redraws the plot."""
    run = copy_run(finished_run, tmp_path / "run")
    curves, metrics = run / "curves.png", run / "metrics.csv"
    if damage == "missing":
        curves.unlink()
    else:
        curves.write_bytes(b"stale")
        os.utime(curves, (metrics.stat().st_mtime - 60,) * 2)
    code, out, err = cli("train", "--resume", "--out", run)
    assert code == 0, err
    assert curves.is_file() and curves.read_bytes()[:4] == b"\x89PNG"
    assert curves.stat().st_mtime >= metrics.stat().st_mtime


def test_leftovers_of_a_killed_run_are_cleaned_on_resume(cli, finished_run, tmp_path):
    """A kill mid-write leaves atomic_write's temporary files: the next
    start or resume removes them, and only them."""
    run = copy_run(finished_run, tmp_path / "run")
    leftovers = [run / ".last.pt.k2j4x9.tmp", run / ".best.safetensors.a1b2c3.tmp", run / ".curves.png.zz9.tmp"]
    for path in leftovers:
        path.write_bytes(b"half")
    (run / "notes.txt").write_text("mine")
    code, out, err = cli("train", "--resume", "--out", run)
    assert code == 0, err
    assert not any(p.exists() for p in leftovers) and (run / "notes.txt").read_text() == "mine"


def test_data_paths_are_stored_absolute(cli, toy_csv, tmp_path, monkeypatch):
    """Config.json holds absolute data paths (the path part of ckplus:/fergit:
    specs, each of a mix), so `ferlab evaluate RUN` works from another folder; an old config.json
    with relative paths still resumes from where it was made."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "toy.csv").write_bytes(Path(toy_csv).read_bytes())
    monkeypatch.chdir(work)
    code, out, err = cli("train", *TINY, "--data", "toy.csv", "--epochs", 1, "--out", "run")
    assert code == 0, err
    assert json.loads((work / "run" / "config.json").read_text())["data"] == str(work / "toy.csv")
    code, out, err = cli("train", "--resume", "--out", "run", "--data", "toy.csv")   # the same data, as given before
    assert code == 0, err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = cli("evaluate", work / "run")
    assert code == 0, err

    cfg = tiny_config("x", ferplus="votes.csv")
    cfg = TrainConfig(**{**asdict(cfg), "data": ["ckplus:faces/CK+48", "fergit:a.csv,b", "c.csv"]})
    assert cfg.data == [f"ckplus:{elsewhere}/faces/CK+48", f"fergit:{elsewhere}/a.csv,{elsewhere}/b", f"{elsewhere}/c.csv"]
    assert cfg.ferplus == f"{elsewhere}/votes.csv"

    monkeypatch.chdir(work)   # a run made before: relative paths in config.json
    config = json.loads((work / "run" / "config.json").read_text())
    (work / "run" / "config.json").write_text(json.dumps({**config, "data": "toy.csv", "epochs": 2}))
    code, out, err = cli("train", "--resume", "--out", "run")
    assert code == 0, err
    assert len(read_metrics(work / "run")) == 2


def test_extending_a_finished_run_replans_the_schedule(cli, toy_csv, tmp_path):
    """`--resume --epochs N` past a run's end trains on, the schedule re-planned
    over N epochs, and says so; fewer epochs, or other settings, are still refused."""
    run = tmp_path / "run"
    code, out, err = cli("train", *TINY, "--data", toy_csv, "--epochs", 2, "--batch-size", 64, "--schedule", "onecycle",
                         "--lr", 0.01, "--out", run)
    assert code == 0, err
    code, out, err = cli("train", "--resume", "--out", run, "--epochs", 1)
    assert code == 2 and "--epochs" in err and len(err.strip().splitlines()) == 1, err
    code, out, err = cli("train", "--resume", "--out", run, "--epochs", 3)
    assert code == 0, err
    assert "extending" in out and "from 2 to 3 epochs" in out and "onecycle" in out
    rows = read_metrics(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert json.loads((run / "config.json").read_text())["epochs"] == 3
    assert load_state(run / "last.pt")["scheduler"]["total_steps"] == 3 * math.ceil(420 / 64)
    code, out, err = cli("train", "--resume", "--out", run)   # a plain resume of the extended run: done
    assert code == 0 and len(read_metrics(run)) == 3


def test_an_early_stopped_run_is_not_extended(cli, toy_csv, tmp_path):
    run = tmp_path / "run"
    code, out, err = cli("train", *TINY, "--data", toy_csv, "--epochs", 3, "--early-stop-patience", 1, "--lr", 1e-9,
                         "--early-stop-monitor", "val_loss", "--out", run)
    assert code == 0, err
    if len(read_metrics(run)) == 3:
        pytest.skip("validation loss kept falling at lr 1e-9: no early stop to test")
    code, out, err = cli("train", "--resume", "--out", run, "--epochs", 5)
    assert code == 2 and "stopped early" in err and json.loads((run / "config.json").read_text())["epochs"] == 3


@pytest.mark.slow
def test_train_threads_sets_torch_threads(ferlab, toy_csv, tmp_path):
    proc = ferlab("train", *TINY, "--data", toy_csv, "--epochs", 1, "--threads", 2, "--device", "cpu",
                  "--out", tmp_path / "run",
                  env={"OMP_NUM_THREADS": "1"})
    assert re.search(r"\b2 threads\b", proc.stdout), proc.stdout
    assert "threads" not in json.loads((tmp_path / "run" / "config.json").read_text())
    bad = ferlab("train", *TINY, "--data", toy_csv, "--threads", 0, "--out", tmp_path / "bad", check=False)
    assert bad.returncode == 2 and "--threads" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
