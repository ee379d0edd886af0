"""How long an epoch of a config takes on this machine, measured on random faces: the estimates
tune and reproduce print before they start."""

import math
import time

import torch
import torch.nn.functional as F

from ferlab.device import autocast_dtype, resolve_device, to_input
from ferlab.models import create_model
from ferlab.training.config import TrainConfig
from ferlab.training.optim import build_optimizer


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
