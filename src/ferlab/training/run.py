"""A training run: its directory and `fit`, which trains per a TrainConfig into it.

The run directory holds `config.json`, `metrics.csv`, `last.pt` (full training state, every epoch),
`best.safetensors` (best validation accuracy, or the last epoch with `--select last`) and
`curves.png`, all written atomically. `--resume` restores model, optimizer, schedule, RNG and
callback state from `last.pt`, so a killed run ends exactly where an uninterrupted one would.
Under torchrun only rank 0 writes files (ferlab.training.distributed); one process at a time
trains in a run directory (ferlab.training.runlock).
"""

import csv
import errno
import io
import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel

from ferlab.atomic import atomic_write_text, remove_leftovers
from ferlab.training.batchnorm import recalibrate_batchnorm
from ferlab.checkpoint import load_state, load_weights, save_state, save_weights
from ferlab.data import data_names, load_run_data
from ferlab.device import autocast_dtype, describe_machine, resolve_device
from ferlab.errors import FerlabError
from ferlab.metrics import plot_curves
from ferlab.models import create_model
from ferlab.spec import input_card
from ferlab.training.backend import deterministic_kernels, training_faces
from ferlab.training.config import TrainConfig, normalized_config, parse_source_weights, saved_config, shown_setting
from ferlab.training.distributed import Dist, for_data_parallel, init_distributed, is_main_process
from ferlab.training.losses import balanced_class_weights, logit_offset
from ferlab.training.loop import EpochSetup, batch_count, evaluate_split, train_one_epoch
from ferlab.training.optim import EarlyStopping, average_update_fn, build_optimizer, build_scheduler
from ferlab.training.runlock import run_lock
from ferlab.training.transfer import load_init_weights, load_teachers


METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "avg_val_acc", "avg_test_acc",
                  "time_s"]


@dataclass(frozen=True)
class BestWeights:
    """What a run's best.safetensors holds: the weights at the end of `epoch`, or with
    --average-from the uniform average of the weights at the end of epochs averaged_epochs[0]..[1]."""
    epoch: int
    val_acc: float
    averaged_epochs: tuple[int, int] | None = None

    @classmethod
    def of_run(cls, out: Path) -> "BestWeights":
        """Read from the run's best.safetensors (its metadata says what it holds)."""
        meta = load_weights(Path(out) / "best.safetensors")[1]
        averaged = meta.get("averaged_epochs")
        return cls(meta["epoch"], meta["val_acc"], tuple(averaged) if averaged else None)

    def __str__(self) -> str:
        if self.averaged_epochs:
            return f"the average of epochs {self.averaged_epochs[0]}-{self.averaged_epochs[1]}"
        return f"epoch {self.epoch}"


@dataclass
class FitResult:
    history: list[dict]             # one row of metrics.csv per epoch
    best: BestWeights | None        # what best.safetensors holds (None on ranks other than 0, which write no files)


def weights_meta(cfg: TrainConfig, classes, epoch: int, metrics: dict) -> dict:
    return {"model": cfg.model, "model_kwargs": {**cfg.model_kwargs, "num_classes": len(classes)},
            "classes": list(classes), "epoch": epoch, "val_acc": metrics["val_acc"], "recipe": cfg.recipe,
            "input": input_card()}


def write_metrics(out: Path, history: list[dict], cfg: TrainConfig) -> None:
    buf = io.StringIO()
    per_source = sorted({k for row in history for k in row if k.startswith(("val_acc_", "test_acc_"))})
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS + per_source, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(out / "metrics.csv", buf.getvalue())
    plot_curves(history, out / "curves.png", title=f"{cfg.recipe or cfg.model} on {data_names(cfg.data)}")


# What fit reads from last.pt besides the parts' state dicts, and the types it needs them in.
STATE_KEYS = {"model": dict, "epoch": int, "best_acc": (int, float), "history": list, "rng": dict}


def check_state(state, path: Path) -> None:
    """A last.pt fit can resume from, or FerlabError naming the file and what is wrong."""
    if not isinstance(state, dict):
        raise FerlabError(f"{path}: not a ferlab training checkpoint (it holds a {type(state).__name__}, not a dict)")
    for key, kind in STATE_KEYS.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            found = "no" if key not in state else f"a {type(state[key]).__name__} as its"
            raise FerlabError(f"{path}: damaged training checkpoint ({found} {key!r})")
    if not all(isinstance(state["rng"].get(k), torch.Tensor) for k in ("generator", "torch")):
        raise FerlabError(f"{path}: damaged training checkpoint (its 'rng' lacks the generator states)")


def files_outdated(out: Path) -> bool:
    """True when metrics.csv or curves.png is missing or older than what it is drawn from (last.pt, metrics.csv)."""
    state, metrics, curves = out / "last.pt", out / "metrics.csv", out / "curves.png"
    if not (metrics.is_file() and curves.is_file()):
        return True
    return metrics.stat().st_mtime < state.stat().st_mtime or curves.stat().st_mtime < metrics.stat().st_mtime




def open_run(out: Path, cfg: TrainConfig, resume: bool | None = None) -> bool:
    """Make `out` the run directory of cfg and return whether `fit` resumes it.

    resume None (tune, reproduce): resume when `out` holds this run's config.json and last.pt, start
    afresh when it holds no run, and refuse (FerlabError) a directory whose config.json holds other
    settings. resume True/False (`ferlab train`, whose options were checked by config_from_args):
    as given. A new run's config.json is written here, by rank 0 only.
    """
    out = Path(out)
    if resume is None:
        if (out / "config.json").is_file():
            saved, want = normalized_config(saved_config(out)), normalized_config(asdict(cfg))
            if saved != want:
                diff = ", ".join(f"{k}: {shown_setting(k, saved.get(k))} -> {shown_setting(k, v)}" for k, v in want.items() if saved.get(k) != v)
                raise FerlabError(f"{out}: holds a run with other settings ({diff}); remove it or use another --out")
        resume = (out / "config.json").is_file() and (out / "last.pt").is_file()
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        remove_leftovers(out)   # of a process killed mid-write
        if not resume:
            atomic_write_text(out / "config.json", json.dumps(asdict(cfg), indent=2))
    return resume




@dataclass
class Parts:
    """What a run trains and evaluates, built the same way for a new run and a resumed one."""
    model: nn.Module                 # the weights the optimizer moves
    train_model: nn.Module           # model, wrapped for data parallel when there are several processes
    eval_model: nn.Module            # what is evaluated and saved: the EMA's weights, if on, else model's
    optimizer: torch.optim.Optimizer
    average: AveragedModel | None    # --average-from: the uniform average of eval_model at epochs average_start..now
    average_start: int
    stopper: EarlyStopping
    setup: EpochSetup                # what train_one_epoch takes every epoch
    steps_per_epoch: int

    @property
    def stateful(self) -> dict:
        """What last.pt holds besides the progress counters, saved and restored by the same keys."""
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.setup.scheduler,
                "ema": self.setup.ema, "average": self.average, "early_stopping": self.stopper}


@dataclass
class Progress:
    """Where a run stands: one metrics row per finished epoch and what best.safetensors holds."""
    history: list[dict] = field(default_factory=list)
    best_acc: float = -1.0
    best: BestWeights | None = None
    epoch: int = 0                   # the last finished epoch

    @property
    def stopped(self) -> bool:
        return bool(self.history) and self.history[-1].get("stopped", False)


def training_targets(cfg: TrainConfig, train) -> torch.Tensor:
    """Labels, or with --targets soft the FER+ vote distributions (blended with the rows' own
    labels by --soft-weight: FER2013's labels in a mix, FER+'s majority with --ferplus alone)."""
    if cfg.targets != "soft":
        return torch.from_numpy(train.labels.astype(np.int64))
    if train.soft_labels is None:
        raise FerlabError(f"{data_names(cfg.data)}: --targets soft needs vote distributions (pass --ferplus)")
    votes = train.soft_labels.astype(np.float32)
    own = np.eye(votes.shape[1], dtype=np.float32)[train.labels]
    return torch.from_numpy(cfg.soft_weight * votes + (1 - cfg.soft_weight) * own)


def source_sample_weights(cfg: TrainConfig, train) -> torch.Tensor | None:
    """--source-weights: each training face's chance of being drawn, by its source."""
    if not cfg.source_weights:
        return None
    if train.origins is None:
        raise FerlabError("--source-weights weights the sources of a mix: give several --data")
    named = parse_source_weights(cfg.source_weights)
    unknown = set(named) - set(train.origins.tolist())
    if unknown:
        raise FerlabError(f"--source-weights names {', '.join(sorted(unknown))}, not a source of this mix "
                          f"({', '.join(dict.fromkeys(train.origins.tolist()))})")
    return torch.tensor([named.get(o, 1.0) for o in train.origins.tolist()], dtype=torch.float64)


def training_sources(train) -> torch.Tensor:
    """--source-batches: each training face's source, as an index."""
    if train.origins is None:
        raise FerlabError("--source-batches groups the faces of a mix by source: give several --data")
    return torch.from_numpy(np.unique(train.origins, return_inverse=True)[1].astype(np.int64).ravel())


def build_parts(cfg: TrainConfig, train, classes, device, d: Dist, init: bool, log) -> Parts:
    images = training_faces(train.images, device)   # on a GPU for the whole run, when they fit
    targets = training_targets(cfg, train).to(images.device)
    sample_weights = source_sample_weights(cfg, train)
    offset = logit_offset(cfg.logit_adjust, train.labels, len(classes)) if cfg.logit_adjust else None
    model = create_model(cfg.model, **{**cfg.model_kwargs, "num_classes": len(classes)}).to(device)
    if cfg.init and init:
        load_init_weights(model, cfg, classes, log=log)
    teachers = load_teachers(cfg, classes, device) if cfg.teacher else []   # after the student: same init as without
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = AveragedModel(model, multi_avg_fn=average_update_fn(cfg.ema), use_buffers=True) if cfg.ema else None
    train_model = for_data_parallel(model, d)
    if cfg.compile:
        train_model = torch.compile(train_model)   # model keeps its parameter names for the state dicts
    optimizer = build_optimizer(cfg, model)
    batch_sources = training_sources(train) if cfg.source_batches else None
    steps_per_epoch = batch_count(len(images), cfg.batch_size, batch_sources)
    scheduler, step_scheduler = build_scheduler(cfg, optimizer, steps_per_epoch)
    weights = balanced_class_weights(train.labels, len(classes)) if cfg.class_weights == "balanced" else None
    stopper = EarlyStopping(cfg.early_stop_monitor, cfg.early_stop_patience)
    gen = torch.Generator().manual_seed(cfg.seed)
    eval_model = ema.module if ema is not None else model
    average_start = int(round(cfg.average_from * cfg.epochs, 6)) + 1
    average = AveragedModel(eval_model, multi_avg_fn=average_update_fn(None), use_buffers=True) if cfg.average_from else None
    setup = EpochSetup(cfg, images, targets, device, gen, scheduler=scheduler, step_scheduler=step_scheduler,
                       class_weights=weights, ema=ema, teachers=teachers, dist=d, sample_weights=sample_weights,
                       logit_offset=offset, batch_sources=batch_sources)
    return Parts(model, train_model, eval_model, optimizer, average, average_start, stopper, setup, steps_per_epoch)


def restore(out: Path, cfg: TrainConfig, parts: Parts, d: Dist, log) -> Progress:
    """Load last.pt into the parts and return the progress it records."""
    state = load_state(out / "last.pt")
    check_state(state, out / "last.pt")
    scheduler = parts.setup.scheduler
    # onecycle's plan (total steps, phases) is part of its state: keep this config's, so that a run
    # extended with more --epochs (see ferlab.training.cli) re-plans the rest of its schedule.
    plan = {k: getattr(scheduler, k) for k in ("total_steps", "_schedule_phases")} if cfg.schedule == "onecycle" else {}
    try:
        for key, part in parts.stateful.items():
            if part is not None:
                part.load_state_dict(state[key])
    except (RuntimeError, ValueError, KeyError) as e:
        raise FerlabError(f"{out / 'last.pt'}: checkpoint does not match this model/optimizer ({str(e).splitlines()[0][:160]})") from None
    if plan:
        scheduler.__dict__.update(plan)
    parts.setup.gen.set_state(state["rng"]["generator"])
    torch.set_rng_state(state["rng"]["torch"])
    if isinstance(state["rng"].get("cuda"), torch.Tensor) and parts.setup.device.type == "cuda":   # dropout on the GPU
        torch.cuda.set_rng_state(state["rng"]["cuda"], parts.setup.device)
    progress = Progress(state["history"], state["best_acc"], None, state["epoch"])
    if d.main:   # a last.pt written before it recorded "best": best.safetensors says what it holds
        progress.best = BestWeights(**state["best"]) if state.get("best") else BestWeights.of_run(out)
        log(f"resumed {out} after epoch {progress.epoch}")
        if progress.history and files_outdated(out):   # killed between last.pt and metrics.csv / curves.png
            write_metrics(out, progress.history, cfg)
    return progress


def train_epoch(epoch: int, cfg: TrainConfig, parts: Parts, val, test, bn_faces, on_epoch_end) -> dict:
    """Train one epoch, evaluate, step the plateau schedule and early stopping; returns the metrics row."""
    t0, setup, device, d = time.time(), parts.setup, parts.setup.device, parts.setup.dist
    row = {"epoch": epoch, "lr": parts.optimizer.param_groups[0]["lr"]}
    row.update(train_one_epoch(parts.train_model, parts.optimizer, setup, desc=f"epoch {epoch}/{cfg.epochs}"))
    if bn_faces is not None:
        recalibrate_batchnorm(parts.eval_model, bn_faces, device=device)
    v = evaluate_split(parts.eval_model, val, device=device, cfg=cfg, class_weights=setup.class_weights, dist=d)
    row.update(val_loss=v.pop("loss"), **{f"val_{k}": value for k, value in v.items()})
    if test is not None:
        row.update({f"test_{k}": value for k, value in evaluate_split(parts.eval_model, test, device=device, cfg=cfg,
                                                                       dist=d).items() if k != "loss"})
    average = parts.average
    if average is not None and epoch >= parts.average_start:
        average.update_parameters(parts.eval_model)
        row["avg_val_acc"] = evaluate_split(average.module, val, device=device, cfg=cfg, dist=d)["acc"]
        if test is not None:
            row["avg_test_acc"] = evaluate_split(average.module, test, device=device, cfg=cfg, dist=d)["acc"]
    if setup.scheduler is not None and not setup.step_scheduler:
        setup.scheduler.step(row[cfg.plateau_monitor])
    stopped = parts.stopper.step(row)
    if on_epoch_end is not None and on_epoch_end(dict(row)):
        stopped = True
    row["time_s"] = time.time() - t0
    row["stopped"] = stopped
    return row


def checkpoint(out: Path, cfg: TrainConfig, classes, parts: Parts, progress: Progress, machine: str) -> None:
    """After an epoch (rank 0): best.safetensors if it is the best yet, last.pt, metrics.csv and curves.png."""
    row, epoch = progress.history[-1], progress.history[-1]["epoch"]
    # The candidates for best.safetensors: this epoch's weights and, once it runs, the average.
    candidates = [(row["val_acc"], parts.eval_model, {})]
    if "avg_val_acc" in row:
        candidates.append((row["avg_val_acc"], parts.average.module, {"averaged_epochs": [parts.average_start, epoch]}))
    acc, chosen, extra = candidates[-1] if cfg.select == "last" else max(candidates, key=lambda c: c[0])
    if cfg.select == "last" or acc > progress.best_acc:
        progress.best_acc = acc
        progress.best = BestWeights(epoch, acc, tuple(extra["averaged_epochs"]) if extra else None)
        meta = {**weights_meta(cfg, classes, epoch, {"val_acc": acc}), **extra, "trained_on": machine}
        with resumable_when_full(out, "best.safetensors"):
            save_weights(out / "best.safetensors", chosen, meta)
    best, gen, device = progress.best, parts.setup.gen, parts.setup.device
    rng = {"generator": gen.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    with resumable_when_full(out, "last.pt"):
        save_state(out / "last.pt", {
            **{key: part.state_dict() if part is not None else None for key, part in parts.stateful.items()},
            "epoch": epoch, "best_acc": progress.best_acc, "best": asdict(best) if best else None,
            "history": progress.history, "rng": rng, "config": asdict(cfg),
        })
    with resumable_when_full(out, "metrics.csv"):
        write_metrics(out, progress.history, cfg)


@contextmanager
def resumable_when_full(out: Path, name: str):
    """A full disk (or quota) while writing out/name: FerlabError saying so and how to go on. The
    write is atomic, so the file of the epoch before stays whole and --resume continues from it."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            raise
        raise FerlabError(f"{out / name}: no space left on device while writing it (the previous one is kept); "
                          f"free some space, then `ferlab train --resume --out {out}` continues the run") from None


def epoch_line(row: dict) -> str:
    test_part = "".join(f" {k} {row[k]:.4f}" for k in row if k.startswith(("val_acc_", "test_acc", "avg_")))
    return (f"epoch {row['epoch']}: lr {row['lr']:.3g} train_loss {row['train_loss']:.4f} train_acc {row['train_acc']:.4f} "
            f"val_loss {row['val_loss']:.4f} val_acc {row['val_acc']:.4f}{test_part} ({row['time_s']:.0f}s)"
            + (" - early stop" if row["stopped"] else ""))


def fit(cfg: TrainConfig, out: Path, resume: bool = False, device: str = "auto", log=print,
        on_epoch_end=None) -> FitResult:
    """Train per cfg into run directory `out` (see open_run); returns the per-epoch metrics history
    and what best.safetensors holds.

    on_epoch_end(row), if given, is called after each epoch's evaluation with its metrics (the same
    on every process); returning True ends the run after this epoch, as early stopping does (an
    Optuna pruner, a time budget).
    """
    with run_lock(out, is_main_process()), deterministic_kernels(cfg.deterministic):
        return _fit(cfg, Path(out), resume, resolve_device(device), log, on_epoch_end)


def _fit(cfg: TrainConfig, out: Path, resume: bool, device: torch.device, log, on_epoch_end) -> FitResult:
    d = init_distributed(device)
    device = d.device   # under torchrun on GPUs: this process's GPU
    torch.manual_seed(cfg.seed)
    data, train, val, test = load_run_data(cfg)
    parts = build_parts(cfg, train, data.classes, device, d, init=not resume, log=log if d.main else lambda m: None)
    progress = restore(out, cfg, parts, d, log) if resume else Progress()
    machine = describe_machine(device)
    if d.main:
        log(f"training {cfg.model} on {len(train)} faces ({train.split_names()}), validating on {len(val)} "
            f"({val.split_names()}); {parts.steps_per_epoch} steps/epoch on {device}, {d.world} process(es), "
            f"autocast {autocast_dtype(cfg.amp, device)}; {machine}")
    bn_faces = None
    if cfg.recalibrate_bn:   # the same faces every epoch (and on every rank)
        bn_faces = train.images[np.sort(np.random.default_rng(cfg.seed).permutation(len(train))[:cfg.recalibrate_bn])]
    for epoch in range(progress.epoch + 1, cfg.epochs + 1):
        if progress.stopped:
            break
        progress.history.append(train_epoch(epoch, cfg, parts, val, test, bn_faces, on_epoch_end))
        progress.epoch = epoch
        if d.main:
            checkpoint(out, cfg, data.classes, parts, progress, machine)
            log(epoch_line(progress.history[-1]))
    if d.world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return FitResult(progress.history, progress.best)
