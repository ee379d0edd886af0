"""One epoch of training and one pass of evaluation, in torchvision-reference style: what `fit`
calls every epoch. Everything an epoch trains with that stays the same for the whole run is one
EpochSetup, built once by `fit`."""

import math
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from ferlab.training.augment import apply_augment, get_augment, mix_batch, sample_params
from ferlab.device import autocast_dtype, to_input
from ferlab.inference.torchloop import batched_logits, model_forward
from ferlab.training.config import TrainConfig
from ferlab.training.distributed import Dist, all_reduce_sum
from ferlab.training.transfer import distillation_loss


@dataclass
class EpochSetup:
    """The fixed pieces of every epoch of a run.

    sample_weights (N,): draw len(images) faces with replacement, each with chance proportional to
    its weight (--source-weights), instead of a permutation. logit_offset (C,): added to the logits
    the loss sees (--logit-adjust), not to those accuracy counts."""
    cfg: TrainConfig
    images: torch.Tensor                     # (N, 48, 48) uint8 training faces
    targets: torch.Tensor                    # (N,) labels, or (N, C) vote distributions (--targets soft)
    device: torch.device
    gen: torch.Generator                     # data order, augmentation and mixing
    scheduler: object = None
    step_scheduler: bool = False             # True: the scheduler steps every batch
    class_weights: torch.Tensor | None = None
    ema: AveragedModel | None = None
    teachers: list = field(default_factory=list)
    dist: Dist = field(default_factory=Dist)
    sample_weights: torch.Tensor | None = None
    logit_offset: torch.Tensor | None = None
    batch_sources: torch.Tensor | None = None    # (N,) source index of each face: --source-batches


def source_batches(order: torch.Tensor, sources: torch.Tensor, batch_size: int, gen: torch.Generator,
                   world: int = 1) -> list[torch.Tensor]:
    """`order` cut into batches that each hold faces of one source (in order's order), the batches
    shuffled; a source's last batch of one face per process is left out (it breaks BatchNorm)."""
    batches = [b for s in sources.unique() for b in order[sources[order] == s].split(batch_size) if len(b) > world]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def batch_count(n_faces: int, batch_size: int, sources: torch.Tensor | None = None) -> int:
    """How many batches an epoch of train_one_epoch takes in one process (its learning-rate schedule's steps)."""
    if sources is None:
        return math.ceil(n_faces / batch_size)
    counts = torch.bincount(sources).tolist()
    return sum(math.ceil(n / batch_size) - (n % batch_size == 1) for n in counts if n > 1)


def train_one_epoch(model, optimizer, setup: EpochSetup, desc: str = "train") -> dict:
    """One pass over the training faces in a seeded random order; returns mean loss and accuracy."""
    cfg, device, gen, dist = setup.cfg, setup.device, setup.gen, setup.dist
    model.train()
    augment = get_augment(cfg.augment)
    dtype = autocast_dtype(cfg.amp, device)
    if setup.sample_weights is None:
        order = torch.randperm(len(setup.images), generator=gen)
    else:
        order = torch.multinomial(setup.sample_weights, len(setup.images), replacement=True, generator=gen)
    if setup.batch_sources is not None:
        batches = source_batches(order, setup.batch_sources, cfg.batch_size, gen, dist.world)
    else:
        if 0 < len(order) % cfg.batch_size <= dist.world < len(order):
            order = order[:-(len(order) % cfg.batch_size)]  # a last batch of one face per process breaks BatchNorm
        batches = list(order.split(cfg.batch_size))
    weight = None if setup.class_weights is None else setup.class_weights.to(device)
    offset = 0.0 if setup.logit_offset is None else setup.logit_offset.to(device)
    loss_sum = correct = seen = 0.0
    bar = tqdm(batches, desc=desc, leave=False, disable=not dist.main, mininterval=1 if sys.stderr.isatty() else 30)
    for b, batch in enumerate(bar):
        params = sample_params(augment, len(batch), gen)  # drawn for the global batch on every rank
        local = slice(dist.rank, None, dist.world)
        batch = batch[local]
        x = apply_augment(augment, to_input(setup.images[batch], device, cfg.channels_last), {k: v[local] for k, v in params.items()})
        y = setup.targets[batch].to(device)
        lam = 1.0
        if cfg.mixup or cfg.cutmix:
            x, lam = mix_batch(x, cfg.mixup, cfg.cutmix, gen)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x)
            distill = distillation_loss(logits.float(), x, setup.teachers, cfg) if setup.teachers else None
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
        if setup.ema is not None:
            setup.ema.update_parameters(model)
        if setup.step_scheduler:
            setup.scheduler.step()
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
