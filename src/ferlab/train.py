"""The training engine: one loop that runs every paper's protocol and ferlab's own recipe.

Read top to bottom: the config, the pieces it builds (optimizer, schedule, loss, callbacks),
`train_one_epoch` / `evaluate` in torchvision-reference style, and `fit`, which owns the run
directory: `config.json`, `metrics.csv`, `last.pt` (full training state, every epoch),
`best.safetensors` (best validation accuracy, or the last epoch with `--select last`) and
`curves.png`, all written atomically.
`--resume` restores model, optimizer, schedule, RNG and callback state from `last.pt`, so a
killed run ends exactly where an uninterrupted one would.

Data parallel: under `torchrun --nproc-per-node N -m ferlab train ...` each process takes a
1/N slice of every global batch (gloo on CPU, NCCL on GPUs) and only rank 0 writes files.
"""

import argparse
import csv
import io
import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from ferlab.augment import AUGMENT_PRESETS, apply_augment, get_augment, mix_batch, sample_params
from ferlab.atomic import atomic_write_text, check_writable, remove_leftovers
from ferlab.batchnorm import recalibrate_batchnorm
from ferlab.checkpoint import load_model, load_state, load_weights, save_state, save_weights
from ferlab.data import data_names, load_run_data
from ferlab.data.splits import check_fold
from ferlab.device import autocast_dtype, describe_machine, resolve_device, to_input
from ferlab.errors import FerlabError
from ferlab.inference import batched_logits, model_forward
from ferlab.labels import canonical_name
from ferlab.metrics import plot_curves
from ferlab.models import create_model
from ferlab.onnxrt import OnnxModel
from ferlab.recipes import get_recipe
from ferlab.spec import input_card
from ferlab.tta import tta_probs


# The allowed values of the config's string options: checked in TrainConfig, listed by --help.
CHOICES = {"targets": ("hard", "soft"), "select": ("val_acc", "last"), "optimizer": ("adam", "sgd", "nadam", "adamw"),
           "schedule": ("constant", "plateau", "cosine", "onecycle"), "plateau_monitor": ("val_acc", "val_loss"),
           "early_stop_monitor": ("val_acc", "val_loss"), "class_weights": ("none", "balanced"),
           "augment": tuple(AUGMENT_PRESETS), "teacher_tta": ("none", "flip"), "amp": ("auto", "bf16", "fp32")}


def option(default, help: str):
    """A TrainConfig field whose help text `ferlab train --help` shows."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    model: str = option("fernet_s", "model name (see `ferlab models`)")
    data: str | list = option("", "data set: FER2013 CSV, image folder, ckplus:DIR or fergit:CSV,DIR; given several "
                                  "times, a mix of data sets in FER2013's 7 classes, each split on its own (data/mix.py)")
    ferplus: str | None = option(None, "FER+ votes file (fer2013new.csv): train on FER+ labels (in a mix: FER+ vote "
                                       "distributions over the 7 classes for the FER2013 rows, used with --targets soft)")
    targets: str = option("hard", "hard: majority labels; soft: FER+ vote distributions (needs --ferplus)")
    source_weights: str = option("", "in a mix: NAME=W,... multiplies the chance each face of source NAME is drawn "
                                     "(faces are then drawn with replacement); unnamed sources 1")
    logit_adjust: float = option(0.0, "tau of logit-adjusted loss (Menon et al. 2021): the loss sees logits + "
                                      "tau * log(class prior of the training faces); predictions do not; 0: off")
    model_kwargs: dict = field(default_factory=dict)
    train_splits: str = option("auto", "comma-separated split names; auto: Training / PublicTest / PrivateTest")
    val_splits: str = option("auto", "split(s) validated on every epoch; auto: see --train-splits")
    test_splits: str = option("auto", "split(s) evaluated every epoch for the log only, never for selection")
    select: str = option("val_acc", "the epoch best.safetensors holds: the highest val_acc, or the last (a fixed "
                                    "schedule, e.g. when the validation split is also trained on)")
    epochs: int = option(30, "passes over the training split")
    batch_size: int = option(64, "faces per optimizer step")
    optimizer: str = option("adam", "optimizer (sgd: with Nesterov momentum)")
    lr: float = option(1e-3, "learning rate (the peak of onecycle and cosine)")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(0.0, "weight decay")
    schedule: str = option("constant", "learning-rate schedule")
    warmup_epochs: float = option(0.0, "cosine only: linear warm-up epochs")
    plateau_monitor: str = option("val_acc", "plateau: the metric it watches")
    plateau_factor: float = option(0.1, "plateau: LR multiplier")
    plateau_patience: int = option(10, "plateau: epochs without improvement before the cut")
    min_lr: float = option(0.0, "plateau: the lowest LR")
    early_stop_monitor: str = option("val_acc", "early stopping: the metric it watches")
    early_stop_patience: int = option(0, "stop after this many epochs without improvement; 0: off")
    train_fraction: float = option(1.0, "train on a seeded, class-stratified fraction of the train split")
    folds: int = option(0, "subject-independent k-fold split, k >= 3 (needs subject ids, e.g. CK+); 0: off")
    fold: int = option(0, "with --folds: this fold tests, the next one validates, the others train")
    class_weights: str = option("none", "balanced: loss weights inverse to class frequency")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy")
    augment: str = option("none", "augmentation preset (ferlab.augment)")
    mixup: float = option(0.0, "Beta(a, a) alpha of mixup; 0: off")
    cutmix: float = option(0.0, "Beta(a, a) alpha of CutMix; 0: off (both on: one of them per batch)")
    ema: float = option(0.0, "decay of an exponential moving average of weights (evaluated and saved); 0: off")
    average_from: float = option(0.0, "from this fraction of the epochs on, also keep a uniform average of the "
                                      "evaluated weights (the EMA's, if on) of each epoch's end, a candidate for "
                                      "best.safetensors like every epoch (stochastic weight averaging); 0: off")
    recalibrate_bn: int = option(0, "before each evaluation, recompute BatchNorm statistics on this many training "
                                    "faces with dropout off (ferlab.evaluate.recalibrate_batchnorm); 0: off")
    init: str = option("", "fine-tuning: start from a trained model (run dir, weights, bundled name)")
    teacher: str = option("", "knowledge distillation: comma-separated models (run dirs, weights, bundled names, "
                              ".onnx) whose mean probabilities the student also learns")
    teacher_tta: str = option("none", "the teacher's view of each training batch (ferlab.tta)")
    distill_weight: float = option(0.5, "w in loss = (1 - w) * CE(labels) + w * T^2 * KL(teacher || student)")
    distill_temperature: float = option(4.0, "T: both distributions softened by logits / T")
    amp: str = option("auto", "precision; auto: bf16 where the device supports it, else fp32")
    channels_last: bool = option(True, "channels_last memory layout (faster on CPUs)")
    seed: int = option(0, "seed of initialisation, data order, augmentation and splits")
    recipe: str | None = option(None, "a paper's protocol (see `ferlab recipes`)")

    def __post_init__(self):
        if isinstance(self.data, (list, tuple)):
            self.data = list(self.data) if len(self.data) > 1 else (self.data[0] if self.data else "")
        # Data files by absolute path, so the run's config.json works from any folder (ferlab evaluate RUN).
        self.data = [absolute_spec(s) for s in self.data] if isinstance(self.data, list) else absolute_spec(self.data)
        self.ferplus = absolute_spec(self.ferplus) if self.ferplus else self.ferplus
        if self.source_weights:
            parse_source_weights(self.source_weights)
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise FerlabError(f"--{key.replace('_', '-')} must be one of {', '.join(allowed)}, not {getattr(self, key)!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or not 0 < self.train_fraction <= 1:
            raise FerlabError("--epochs and --batch-size must be >= 1, --lr > 0 and --train-fraction in (0, 1]")
        if self.folds or self.fold:
            check_fold(self.folds, self.fold)
        if self.recalibrate_bn < 0:
            raise FerlabError("--recalibrate-bn is a number of training faces: >= 0 (0: off)")
        if not 0 <= self.average_from < 1:
            raise FerlabError("--average-from is a fraction of the epochs: in [0, 1) (0: off)")
        if self.mixup < 0 or self.cutmix < 0:
            raise FerlabError("--mixup and --cutmix are Beta alphas: >= 0 (0: off)")
        if self.teacher and not (0 < self.distill_weight <= 1 and self.distill_temperature > 0):
            raise FerlabError("with --teacher: --distill-weight in (0, 1] and --distill-temperature > 0")


def absolute_spec(spec: str) -> str:
    """A data spec with its path part(s) made absolute: fer.csv, ckplus:DIR, fergit:CSV,DIR."""
    if not spec:
        return spec
    if ":" in spec and not Path(spec).exists():   # a prefix: ckplus:, ferplus8:, fergit:
        prefix, _, paths = spec.partition(":")
        return f"{prefix}:" + ",".join(os.path.abspath(p) if p else p for p in paths.split(","))
    return os.path.abspath(spec)


def shown_spec(spec: str) -> str:
    """A data spec as printed: its paths relative to the working folder when they lie inside it."""
    def rel(path: str) -> str:
        relative = os.path.relpath(path) if os.path.isabs(path) else path
        return path if relative.startswith("..") else relative
    if ":" in spec and not Path(spec).exists():
        prefix, _, paths = spec.partition(":")
        return f"{prefix}:" + ",".join(rel(p) if p else p for p in paths.split(","))
    return rel(spec)


def shown_setting(key: str, value) -> str:
    """A config value in a message: data files relative to the working folder (see shown_spec)."""
    if key in ("data", "ferplus") and value:
        value = [shown_spec(v) for v in value] if isinstance(value, list) else shown_spec(value)
    return repr(value)


def parse_source_weights(text: str) -> dict[str, float]:
    """--source-weights NAME=W,... -> {name: weight}."""
    weights = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.rpartition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            name = ""
        if not sep or not name or weights[name] < 0:
            raise FerlabError(f"--source-weights takes NAME=W,... with weights >= 0, not {item!r}")
    return weights


# ---------------------------------------------------------------------------------------------
# Processes

@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=torch.distributed.get_rank(), world=torch.distributed.get_world_size())


def all_reduce_sum(values: list[float], d: Dist) -> list[float]:
    if d.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return t.tolist()


# ---------------------------------------------------------------------------------------------
# Optimizer, schedule, loss, callbacks

def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    # No weight decay on BatchNorm and bias parameters (the usual practice for SGD/AdamW).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adam":
        # Keras' Adam epsilon is 1e-7; PyTorch's 1e-8. The difference is negligible in practice.
        return torch.optim.Adam(groups, lr=cfg.lr, eps=1e-7)
    if cfg.optimizer == "nadam":
        return torch.optim.NAdam(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-7)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)


def build_scheduler(cfg: TrainConfig, optimizer, steps_per_epoch: int):
    """Returns (scheduler or None, True if it steps every batch)."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, pct_start=0.25,
                                                   div_factor=25.0, final_div_factor=1e3), True
    if cfg.schedule == "cosine":
        warmup = int(cfg.warmup_epochs * steps_per_epoch)
        floor = cfg.min_lr / cfg.lr

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), True
    if cfg.schedule == "plateau":
        mode = "max" if cfg.plateau_monitor == "val_acc" else "min"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=cfg.plateau_factor,
                                                          patience=cfg.plateau_patience, min_lr=cfg.min_lr), False
    return None, False


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """n_samples / (n_present_classes * count_c): scikit-learn's 'balanced', what Keras users pass."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = len(labels) / ((counts > 0).sum() * np.maximum(counts, 1))
    weights[counts == 0] = 0.0
    return torch.tensor(weights, dtype=torch.float32)


def average_update_fn(decay: float | None):
    """Update for AveragedModel: an EMA with a warm-up (decay at update n: min(decay, (1 + n) / (10 + n)))
    or, with decay None, the uniform mean of all updates (weight 1 / (n + 1)).

    Without the warm-up the EMA keeps (decay ** n) of the random initial weights: 33% after 560 steps
    at 0.998, so short runs and early epochs evaluate a broken model (measured: PublicTest stuck at
    18% for 10 epochs of a 56-step-per-epoch run while the raw model trained normally).
    """
    @torch.no_grad()
    def update(averaged, params, num_averaged):
        n = float(num_averaged)
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, params, 1 / (n + 1) if decay is None else 1 - min(decay, (1 + n) / (10 + n)))
        else:  # integer buffers (BatchNorm's num_batches_tracked) follow the model
            for a, p in zip(averaged, params):
                a.copy_(p)
    return update


class EarlyStopping:
    """Stop when the monitored value has not improved for `patience` epochs (Keras semantics)."""

    def __init__(self, monitor: str, patience: int):
        self.monitor, self.patience = monitor, patience
        self.best, self.bad_epochs = None, 0

    def step(self, metrics: dict) -> bool:
        value = metrics[self.monitor]
        better = self.best is None or (value > self.best if self.monitor == "val_acc" else value < self.best)
        if better:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]


# ---------------------------------------------------------------------------------------------
# One epoch of training, one pass of evaluation

def load_teachers(cfg: TrainConfig, classes, device) -> list[nn.Module]:
    """The --teacher models in eval mode; each must name the data's classes in the same order."""
    teachers = []
    for spec in filter(None, (t.strip() for t in cfg.teacher.split(","))):
        model, card = load_model(spec, device)
        if list(card.get("classes", [])) != list(classes):
            raise FerlabError(f"--teacher {spec}: its classes {card.get('classes')} are not the data's {list(classes)}")
        teachers.append(model.to(memory_format=torch.channels_last) if cfg.channels_last else model)
    return teachers


def load_init_weights(model: nn.Module, cfg: TrainConfig, classes, log=print) -> None:
    """--init: copy a trained model's weights into `model` before training (fine-tuning). When its
    classes differ from the data's, the classifier (every registry model ends in one nn.Linear)
    keeps the rows of the classes both name (CK+'s "sadness" is FER2013's "sad") and starts the
    others afresh."""
    source, card = load_model(cfg.init)
    if isinstance(source, OnnxModel):
        raise FerlabError(f"--init {cfg.init}: an ONNX model has no weights to train; start from its .safetensors or run directory")
    if card["model"] != cfg.model:
        raise FerlabError(f"--init {cfg.init}: it is a {card['model']} model, not the {cfg.model} being trained")
    state = source.state_dict()
    same_classes = list(card.get("classes", [])) == list(classes)
    if not same_classes:
        classifier = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
        head = {k[len(classifier) + 1:]: state.pop(k) for k in list(state) if k.startswith(classifier + ".")}
    try:
        result = model.load_state_dict(state, strict=same_classes)
        if not same_classes and (result.unexpected_keys or any(not k.startswith(classifier + ".") for k in result.missing_keys)):
            raise RuntimeError(f"unmatched layers {(result.missing_keys + result.unexpected_keys)[:4]}")
    except RuntimeError as e:
        raise FerlabError(f"--init {cfg.init}: weights do not fit {cfg.model} with {cfg.model_kwargs or 'default'} "
                          f"settings ({str(e).splitlines()[-1].strip()[:160]})") from None
    if same_classes:
        log(f"initialised from {card['weights_path']}: all layers")
        return
    source_row = {canonical_name(c): i for i, c in enumerate(card.get("classes", [])) if canonical_name(c)}
    layer, kept = model.get_submodule(classifier), []
    with torch.no_grad():
        for row, name in enumerate(classes):
            i = source_row.get(canonical_name(name))
            if i is not None:
                layer.weight[row] = head["weight"][i]
                if layer.bias is not None and "bias" in head:
                    layer.bias[row] = head["bias"][i]
                kept.append(name)
    log(f"initialised from {card['weights_path']}: all layers but the classifier {classifier!r}, which keeps the "
        f"rows of {', '.join(kept) or 'no class'} and starts {', '.join(c for c in classes if c not in kept) or 'none'} afresh")


def distillation_loss(logits, x, teachers, cfg: TrainConfig) -> torch.Tensor:
    """T^2 * KL(teacher || student) at temperature T (Hinton et al. 2015); the teacher sees the same
    augmented (and mixed) batch, and an ensemble of teachers gives its mean probabilities."""
    t = cfg.distill_temperature
    with torch.no_grad():
        target = sum(tta_probs(lambda v, m=m: m(v) / t, x, cfg.teacher_tta) for m in teachers) / len(teachers)
    return F.kl_div(F.log_softmax(logits / t, 1), target.float(), reduction="batchmean") * t * t


def train_one_epoch(model, optimizer, images, targets, cfg: TrainConfig, *, device, gen, scheduler=None,
                    step_scheduler=False, class_weights=None, ema=None, teachers=(), dist=Dist(), desc="train",
                    sample_weights=None, logit_offset=None) -> dict:
    """One pass over the training set in a seeded random order; returns mean loss and accuracy.

    sample_weights (N,): draw len(images) faces with replacement, each with chance proportional to its
    weight (--source-weights), instead of a permutation. logit_offset (C,): added to the logits the
    loss sees (--logit-adjust), not to those accuracy counts."""
    model.train()
    augment = get_augment(cfg.augment)
    dtype = autocast_dtype(cfg.amp, device)
    if sample_weights is None:
        order = torch.randperm(len(images), generator=gen)
    else:
        order = torch.multinomial(sample_weights, len(images), replacement=True, generator=gen)
    if 0 < len(order) % cfg.batch_size <= dist.world < len(order):
        order = order[:-(len(order) % cfg.batch_size)]  # a last batch of one face per process breaks BatchNorm
    n_batches = math.ceil(len(order) / cfg.batch_size)
    weight = None if class_weights is None else class_weights.to(device)
    offset = 0.0 if logit_offset is None else logit_offset.to(device)
    loss_sum = correct = seen = 0.0
    bar = tqdm(range(n_batches), desc=desc, leave=False, disable=not dist.main, mininterval=1 if sys.stderr.isatty() else 30)
    for b in bar:
        batch = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        params = sample_params(augment, len(batch), gen)  # drawn for the global batch on every rank
        local = slice(dist.rank, None, dist.world)
        batch = batch[local]
        x = apply_augment(augment, to_input(images[batch], device, cfg.channels_last), {k: v[local] for k, v in params.items()})
        y = targets[batch].to(device)
        lam = 1.0
        if cfg.mixup or cfg.cutmix:
            x, lam = mix_batch(x, cfg.mixup, cfg.cutmix, gen)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x)
            distill = distillation_loss(logits.float(), x, teachers, cfg) if teachers else None
        logits = logits.float()
        loss = F.cross_entropy(logits + offset, y, weight=weight, label_smoothing=cfg.label_smoothing)
        if lam < 1.0:
            loss = lam * loss + (1 - lam) * F.cross_entropy(logits + offset, y.flip(0), weight=weight,
                                                            label_smoothing=cfg.label_smoothing)
        if distill is not None:
            loss = (1 - cfg.distill_weight) * loss + cfg.distill_weight * distill
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
        if step_scheduler:
            scheduler.step()
        hard = y if y.ndim == 1 else y.argmax(1)
        loss_sum += loss.item() * len(batch)
        correct += (logits.argmax(1) == hard).sum().item()
        seen += len(batch)
        if b % 20 == 0:
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)  # the bar's own interval
    loss_sum, correct, seen = all_reduce_sum([loss_sum, correct, seen], dist)
    return {"train_loss": loss_sum / seen, "train_acc": correct / seen}


def evaluate_split(model, split, *, device, cfg: TrainConfig, class_weights=None, dist=Dist()) -> dict:
    """evaluate() on a FaceDataset; for a mix of sources also each source's accuracy ("acc_<source>")."""
    origins = split.origins if split.origins is not None else np.full(len(split), "")
    sources = list(dict.fromkeys(origins.tolist()))
    pooled, per_source = {"loss": 0.0, "acc": 0.0}, {}
    for source in sources:
        rows = origins == source
        result = evaluate(model, torch.from_numpy(split.images[rows]), torch.from_numpy(split.labels[rows].astype(np.int64)),
                          device=device, cfg=cfg, class_weights=class_weights, dist=dist)
        for key in pooled:   # plain floats: the history goes into last.pt, which loads with weights_only
            pooled[key] += float(result[key]) * int(rows.sum()) / max(len(split), 1)
        if len(sources) > 1:
            per_source[f"acc_{source}"] = result["acc"]
    return {**pooled, **per_source}


def evaluate(model, images, labels, *, device, cfg: TrainConfig, class_weights=None, dist=Dist()) -> dict:
    """Loss and accuracy on a split; each rank takes a 1/N slice and the sums are combined."""
    images, labels = images[dist.rank::dist.world], labels[dist.rank::dist.world]
    logits = batched_logits(model_forward(model, device, cfg.amp), images, device=device, channels_last=cfg.channels_last)
    loss = F.cross_entropy(logits, labels, weight=class_weights, reduction="sum").item() if len(labels) else 0.0
    correct = (logits.argmax(1) == labels).sum().item() if len(labels) else 0
    loss, correct, n = all_reduce_sum([loss, correct, len(labels)], dist)
    return {"loss": loss / max(n, 1), "acc": correct / max(n, 1)}


# ---------------------------------------------------------------------------------------------
# The run

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


def normalized_config(saved: dict) -> dict:
    """A saved config.json as TrainConfig would write it today (fields added since take their defaults)."""
    try:
        return json.loads(json.dumps(asdict(TrainConfig(**saved))))
    except (TypeError, FerlabError):
        return saved


def run_config(run: Path) -> TrainConfig:
    """The TrainConfig a run directory was trained with (its config.json)."""
    path = Path(run) / "config.json"
    if not path.is_file():
        raise FerlabError(f"{run}: not a training run (no config.json)")
    return TrainConfig(**json.loads(path.read_text()))


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
            saved, want = normalized_config(json.loads((out / "config.json").read_text())), json.loads(json.dumps(asdict(cfg)))
            if saved != want:
                diff = ", ".join(f"{k}: {shown_setting(k, saved.get(k))} -> {shown_setting(k, v)}" for k, v in want.items() if saved.get(k) != v)
                raise FerlabError(f"{out}: holds a run with other settings ({diff}); remove it or use another --out")
        resume = (out / "config.json").is_file() and (out / "last.pt").is_file()
    if int(os.environ.get("RANK", "0")) == 0:
        out.mkdir(parents=True, exist_ok=True)
        remove_leftovers(out)   # of a process killed mid-write
        if not resume:
            atomic_write_text(out / "config.json", json.dumps(asdict(cfg), indent=2))
    return resume


def fit(cfg: TrainConfig, out: Path, resume: bool = False, device: str = "auto", log=print,
        on_epoch_end=None) -> FitResult:
    """Train per cfg into run directory `out` (see open_run); returns the per-epoch metrics history
    and what best.safetensors holds.

    on_epoch_end(row), if given, is called after each epoch's evaluation with its metrics (the same
    on every process); returning True ends the run after this epoch, as early stopping does (an
    Optuna pruner, a time budget).
    """
    device = resolve_device(device)
    d = init_distributed(device)
    torch.manual_seed(cfg.seed)
    data, train, val, test = load_run_data(cfg)
    classes = data.classes
    images = torch.from_numpy(train.images)
    if cfg.targets == "soft":
        if train.soft_labels is None:
            raise FerlabError(f"{data_names(cfg.data)}: --targets soft needs vote distributions (pass --ferplus)")
        targets = torch.from_numpy(train.soft_labels.astype(np.float32))
    else:
        targets = torch.from_numpy(train.labels.astype(np.int64))
    sample_weights = None
    if cfg.source_weights:
        if train.origins is None:
            raise FerlabError("--source-weights weights the sources of a mix: give several --data")
        named = parse_source_weights(cfg.source_weights)
        unknown = set(named) - set(train.origins.tolist())
        if unknown:
            raise FerlabError(f"--source-weights names {', '.join(sorted(unknown))}, not a source of this mix "
                              f"({', '.join(dict.fromkeys(train.origins.tolist()))})")
        sample_weights = torch.tensor([named.get(o, 1.0) for o in train.origins.tolist()], dtype=torch.float64)
    logit_offset = None
    if cfg.logit_adjust:
        prior = np.bincount(train.labels, minlength=len(classes)) / len(train)
        logit_offset = torch.tensor(cfg.logit_adjust * np.log(np.maximum(prior, 1e-12)), dtype=torch.float32)

    model = create_model(cfg.model, **{**cfg.model_kwargs, "num_classes": len(classes)}).to(device)
    if cfg.init and not resume:
        load_init_weights(model, cfg, classes, log=log if d.main else lambda m: None)
    teachers = load_teachers(cfg, classes, device) if cfg.teacher else []   # after the student: same init as without
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = AveragedModel(model, multi_avg_fn=average_update_fn(cfg.ema), use_buffers=True) if cfg.ema else None
    ddp_model = model
    if d.world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(cfg, model)
    steps_per_epoch = math.ceil(len(images) / cfg.batch_size)
    scheduler, step_scheduler = build_scheduler(cfg, optimizer, steps_per_epoch)
    weights = balanced_class_weights(train.labels, len(classes)) if cfg.class_weights == "balanced" else None
    stopper = EarlyStopping(cfg.early_stop_monitor, cfg.early_stop_patience)
    gen = torch.Generator().manual_seed(cfg.seed)
    eval_model = ema.module if ema is not None else model
    # --average-from: the uniform average of eval_model's weights at the end of epochs average_start..now.
    average_start = int(round(cfg.average_from * cfg.epochs, 6)) + 1
    average = AveragedModel(eval_model, multi_avg_fn=average_update_fn(None), use_buffers=True) if cfg.average_from else None
    history, best_acc, best, start_epoch = [], -1.0, None, 0
    # What last.pt holds besides the progress counters, saved and restored by the same keys.
    stateful = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "ema": ema, "average": average,
                "early_stopping": stopper}

    if resume:
        state = load_state(out / "last.pt")
        check_state(state, out / "last.pt")
        # onecycle's plan (total steps, phases) is part of its state: keep this config's, so that a run
        # extended with more --epochs (see run) re-plans the rest of its schedule.
        plan = {k: getattr(scheduler, k) for k in ("total_steps", "_schedule_phases")} if cfg.schedule == "onecycle" else {}
        try:
            for key, part in stateful.items():
                if part is not None:
                    part.load_state_dict(state[key])
        except (RuntimeError, ValueError, KeyError) as e:
            raise FerlabError(f"{out / 'last.pt'}: checkpoint does not match this model/optimizer ({str(e).splitlines()[0][:160]})") from None
        if plan:
            scheduler.__dict__.update(plan)
        gen.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        history, best_acc, start_epoch = state["history"], state["best_acc"], state["epoch"]
        if d.main:   # a last.pt written before it recorded "best": best.safetensors says what it holds
            best = BestWeights(**state["best"]) if state.get("best") else BestWeights.of_run(out)
        if d.main:
            log(f"resumed {out} after epoch {start_epoch}")
        if d.main and history and files_outdated(out):   # killed between last.pt and metrics.csv / curves.png
            write_metrics(out, history, cfg)

    machine = describe_machine(device)
    if d.main:
        log(f"training {cfg.model} on {len(images)} faces ({train.split_names()}), validating on {len(val)} "
            f"({val.split_names()}); {steps_per_epoch} steps/epoch on {device}, {d.world} process(es), "
            f"autocast {autocast_dtype(cfg.amp, device)}; {machine}")
    bn_faces = None
    if cfg.recalibrate_bn:   # the same faces every epoch (and on every rank)
        bn_faces = train.images[np.sort(np.random.default_rng(cfg.seed).permutation(len(train))[:cfg.recalibrate_bn])]
    stopped = bool(history) and history[-1].get("stopped", False)
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        if stopped:
            break
        t0 = time.time()
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
        row.update(train_one_epoch(ddp_model, optimizer, images, targets, cfg, device=device, gen=gen, scheduler=scheduler,
                                   step_scheduler=step_scheduler, class_weights=weights, ema=ema, teachers=teachers, dist=d,
                                   desc=f"epoch {epoch}/{cfg.epochs}", sample_weights=sample_weights,
                                   logit_offset=logit_offset))
        if ema is not None and d.world > 1:
            pass  # every rank holds identical weights after the DDP step, so its EMA is identical too
        if bn_faces is not None:
            recalibrate_batchnorm(eval_model, bn_faces, device=device)
        v = evaluate_split(eval_model, val, device=device, cfg=cfg, class_weights=weights, dist=d)
        row.update(val_loss=v.pop("loss"), **{f"val_{k}": value for k, value in v.items()})
        if test is not None:
            row.update({f"test_{k}": value for k, value in evaluate_split(eval_model, test, device=device, cfg=cfg,
                                                                           dist=d).items() if k != "loss"})
        if average is not None and epoch >= average_start:
            average.update_parameters(eval_model)
            row["avg_val_acc"] = evaluate_split(average.module, val, device=device, cfg=cfg, dist=d)["acc"]
            if test is not None:
                row["avg_test_acc"] = evaluate_split(average.module, test, device=device, cfg=cfg, dist=d)["acc"]
        if scheduler is not None and not step_scheduler:
            scheduler.step(row[cfg.plateau_monitor])
        stopped = stopper.step(row)
        if on_epoch_end is not None and on_epoch_end(dict(row)):
            stopped = True
        row["time_s"] = time.time() - t0
        row["stopped"] = stopped
        history.append(row)
        if d.main:
            # The candidates for best.safetensors: this epoch's weights and, once it runs, the average.
            candidates = [(row["val_acc"], eval_model, {})]
            if "avg_val_acc" in row:
                candidates.append((row["avg_val_acc"], average.module, {"averaged_epochs": [average_start, epoch]}))
            acc, chosen, extra = candidates[-1] if cfg.select == "last" else max(candidates, key=lambda c: c[0])
            if cfg.select == "last" or acc > best_acc:
                best_acc = acc
                best = BestWeights(epoch, acc, tuple(extra["averaged_epochs"]) if extra else None)
                meta = {**weights_meta(cfg, classes, epoch, {"val_acc": acc}), **extra, "trained_on": machine}
                save_weights(out / "best.safetensors", chosen, meta)
            save_state(out / "last.pt", {
                **{key: part.state_dict() if part is not None else None for key, part in stateful.items()},
                "epoch": epoch, "best_acc": best_acc, "best": asdict(best) if best else None, "history": history,
                "rng": {"generator": gen.get_state(), "torch": torch.get_rng_state()}, "config": asdict(cfg),
            })
            write_metrics(out, history, cfg)
            test_part = "".join(f" {k} {row[k]:.4f}" for k in row if k.startswith(("val_acc_", "test_acc", "avg_")))
            log(f"epoch {epoch}: lr {row['lr']:.3g} train_loss {row['train_loss']:.4f} train_acc {row['train_acc']:.4f} "
                f"val_loss {row['val_loss']:.4f} val_acc {row['val_acc']:.4f}{test_part} ({row['time_s']:.0f}s)"
                + (" - early stop" if stopped else ""))
    if d.world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return FitResult(history, best)


def measure_epoch_seconds(cfg: TrainConfig, n_train: int, n_val: int, device: str = "auto", steps: int = 3) -> float:
    """Seconds one epoch of cfg takes on this machine, measured: `steps` optimizer steps on random
    faces (after one warm-up step), times the epoch's steps, plus its validation pass (a forward
    pass counted as a third of a step). For the estimates tune and reproduce print before starting."""
    device = resolve_device(device)
    model = create_model(cfg.model, **cfg.model_kwargs).to(device).train()
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model)
    dtype = autocast_dtype(cfg.amp, device)
    gen = torch.Generator().manual_seed(0)
    faces = torch.randint(0, 256, (cfg.batch_size, 48, 48), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 7, (cfg.batch_size,), generator=gen).to(device)
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(model(to_input(faces, device, cfg.channels_last)).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    step = (time.perf_counter() - t0) / steps
    train_steps = math.ceil(n_train * cfg.train_fraction / cfg.batch_size)
    return step * (train_steps + math.ceil(n_val / cfg.batch_size) / 3)


def duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


# ---------------------------------------------------------------------------------------------
# Command line

def add_arguments(p: argparse.ArgumentParser) -> None:
    # Every option defaults to None so we can tell "given" from "not given": recipe < explicit.
    p.add_argument("--out", type=Path, help="run directory (default ~/ferlab-runs/<recipe-or-model>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1")
    p.add_argument("--threads", type=int, help="CPU threads torch uses (default: torch's, usually one per core)")
    p.add_argument("--model-kwargs", type=json.loads, help='JSON, e.g. \'{"dropout": 0.4}\'')
    for f in sorted(fields(TrainConfig), key=lambda f: f.name != "recipe"):   # --recipe first, then the config's order
        if f.name == "model_kwargs":
            continue
        if f.name == "data":   # several --data: a mix
            p.add_argument("--data", action="append", default=None, help=f.metadata["help"])
            continue
        flag, text = "--" + f.name.replace("_", "-"), f.metadata["help"]
        if f.default not in (None, ""):
            text += f" (default {f.default}, or the recipe's)"
        if f.type is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            metavar = "{" + ",".join(CHOICES[f.name]) + "}" if f.name in CHOICES else None
            p.add_argument(flag, type=f.type if f.type in (int, float) else str, default=None, help=text, metavar=metavar)


def config_from_args(args) -> tuple[TrainConfig, Path]:
    explicit = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                if getattr(args, f.name, None) is not None and f.name != "recipe"}
    if isinstance(explicit.get("data"), list) and len(explicit["data"]) == 1:
        explicit["data"] = explicit["data"][0]   # one --data is stored as before: a string
    if "data" in explicit:   # as TrainConfig stores them: absolute
        explicit["data"] = [absolute_spec(s) for s in explicit["data"]] if isinstance(explicit["data"], list) else absolute_spec(explicit["data"])
    if explicit.get("ferplus"):
        explicit["ferplus"] = absolute_spec(explicit["ferplus"])
    out = args.out
    if args.resume:
        if out is None:
            raise FerlabError("--resume needs --out RUNDIR")
        saved_path = out / "config.json"
        if not saved_path.is_file():
            raise FerlabError(f"{out}: nothing to resume (no config.json)")
        saved = json.loads(saved_path.read_text())
        if args.recipe and args.recipe != saved.get("recipe"):
            explicit["recipe"] = args.recipe
        stored = normalized_config(saved)   # a config.json of before absolute paths compares by its absolute paths
        changed = {k: v for k, v in explicit.items() if stored.get(k) != v}
        epochs = changed.pop("epochs", None)   # more epochs: the run is extended (see run)
        if epochs is not None and not changed:
            if epochs < stored["epochs"]:
                raise FerlabError(f"{out}: --epochs {epochs} is fewer than the run's {stored['epochs']}; a run can only be extended")
            if stored.get("average_from"):
                raise FerlabError(f"{out}: a run with --average-from cannot be extended (its averaging window depends on --epochs)")
            return TrainConfig(**{**saved, "epochs": epochs}), out
        if changed:
            raise FerlabError(f"{out}: holds a run with different settings ({', '.join(f'{k}: {shown_setting(k, stored.get(k))} -> {shown_setting(k, v)}' for k, v in changed.items())}); "
                              "resume it with the same options or start a new --out")
        return TrainConfig(**saved), out
    base = {}
    if args.recipe:
        base = get_recipe(args.recipe)
        base["recipe"] = args.recipe
    cfg = TrainConfig(**{**base, **explicit})
    if not cfg.data:
        raise FerlabError("--data is required")
    if out is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise FerlabError("data-parallel runs need an explicit --out (every process must agree on it)")
    if out is None:
        out = Path.home() / "ferlab-runs" / f"{cfg.recipe or cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    is_main = int(os.environ.get("RANK", "0")) == 0  # other ranks start after rank 0 may have written
    if is_main and ((out / "config.json").exists() or (out / "last.pt").exists()):
        raise FerlabError(f"{out}: already holds a run; pass --resume to continue it or choose another --out")
    return cfg, out


def train_command(config: dict) -> str:
    """The `ferlab train` command that recreates a run: its recipe plus every setting it overrode
    (data files by name)."""
    base = asdict(TrainConfig())
    words = ["ferlab", "train"]
    if config.get("recipe"):
        base.update(get_recipe(config["recipe"]))
        words += ["--recipe", config["recipe"]]
    for key, value in config.items():
        if key in ("data", "recipe") or key not in base or value == base[key]:
            continue
        flag = key.replace("_", "-")
        if key == "ferplus":   # data files by name, as --data: where they live differs per machine
            value = Path(value).name
        if isinstance(value, bool):
            words.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            words += [f"--{flag}", json.dumps(value) if isinstance(value, dict) else str(value)]
    data = config["data"] if isinstance(config["data"], list) else [config["data"]]
    return shlex.join(words + [word for spec in data for word in ("--data", data_names(spec))])


def run(args) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise FerlabError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    cfg, out = config_from_args(args)
    main = int(os.environ.get("RANK", "0")) == 0
    if main:
        check_writable(out)
    resume = args.resume
    if resume and not (out / "last.pt").is_file():   # killed in its first epoch: nothing is lost by starting over
        if main:
            print(f"{out}: no epoch finished before the run stopped (no last.pt); starting afresh")
        resume = False
    if resume and (planned := json.loads((out / "config.json").read_text())["epochs"]) != cfg.epochs:
        state = load_state(out / "last.pt")
        check_state(state, out / "last.pt")
        if state["history"] and state["history"][-1].get("stopped"):
            raise FerlabError(f"{out}: the run stopped early at epoch {state['epoch']}; more --epochs would not train it")
        replanned = {"constant": "no schedule to re-plan", "plateau": "the plateau schedule goes on as before"}.get(
            cfg.schedule, f"the {cfg.schedule} schedule is re-planned over {cfg.epochs} epochs from where it is")
        if main:
            print(f"{out}: extending the run from {planned} to {cfg.epochs} epochs; {replanned}")
            atomic_write_text(out / "config.json", json.dumps(asdict(cfg), indent=2))
    resume = open_run(out, cfg, resume)
    result = fit(cfg, out, resume=resume, device=args.device)
    if result.best is not None:
        print(f"done: best.safetensors holds {result.best} (val_acc {result.best.val_acc:.4f}, --select {cfg.select}); "
              f"run directory {out}")
    return 0
