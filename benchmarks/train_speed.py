"""Training and inference throughput of ferlab's engine for one model, in images/s.

Times `ferlab.training.loop.train_one_epoch` itself (uint8 faces in memory, batched augmentation,
forward, backward, optimizer step) on synthetic faces, for several precision/layout variants,
so the before/after of each speed measure is one command:

    python benchmarks/train_speed.py --model triwijoyo2021 --batch-size 64 --steps 20
    python benchmarks/train_speed.py --model fernet_m --batch-size 128 --steps 200 --device cuda

Prints one JSON line per variant (faces/s; on CUDA, timed after synchronising the GPU). Compare with the papers' stack side by side:
    python ../shared/bench/keras_reference.py --batch-size 64 --steps 20   (in a tensorflow-cpu venv)
"""

import argparse
import json
import time

import numpy as np
import torch

from ferlab.models import count_parameters, create_model
from ferlab.device import autocast_dtype, describe_machine, resolve_device
from ferlab.inference.torchloop import batched_logits, model_forward
from ferlab.training.config import TrainConfig
from ferlab.training.loop import EpochSetup, train_one_epoch
from ferlab.errors import run_script

VARIANTS = {
    "fp32": dict(amp="fp32", channels_last=False),          # plain PyTorch eager
    "fp32-cl": dict(amp="fp32", channels_last=True),
    "bf16-cl": dict(amp="bf16", channels_last=True),        # the engine's default on AVX-512 BF16 / AMX CPUs
    "fp32-cl-compile": dict(amp="fp32", channels_last=True, compile=True),   # torch.compile (inductor): no faster to train on 2 AVX2 cores, so not in the engine
}


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work, so that the clock times it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model_name: str, variant: str, batch_size: int, steps: int, augment: str, optimizer: str,
            device: torch.device) -> dict:
    torch.manual_seed(0)
    opts = dict(VARIANTS[variant])
    compile_model = opts.pop("compile", False)
    cfg = TrainConfig(model=model_name, batch_size=batch_size, optimizer=optimizer, augment=augment, **opts)
    model = create_model(model_name).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3) if optimizer == "adam" else torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    if compile_model:
        model = torch.compile(model)   # the optimizer holds the same parameters; the warm-up below compiles
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (batch_size * steps, 48, 48), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, 7, batch_size * steps))
    gen = torch.Generator().manual_seed(0)
    warm = 2 * batch_size
    train_one_epoch(model, opt, EpochSetup(cfg, images[:warm], labels[:warm], device, gen))  # warm-up
    synchronize(device)
    t = time.perf_counter()
    train_one_epoch(model, opt, EpochSetup(cfg, images, labels, device, gen))
    synchronize(device)
    train_fps = len(images) / (time.perf_counter() - t)
    forward = model_forward(model, device, cfg.amp)
    batched_logits(forward, images[:256], device=device, channels_last=cfg.channels_last)
    t = time.perf_counter()
    batched_logits(forward, images, device=device, channels_last=cfg.channels_last, batch_size=256)
    infer_fps = len(images) / (time.perf_counter() - t)   # batched_logits returns CPU tensors: synchronised
    return {"framework": f"torch {torch.__version__}", "model": model_name, "params": count_parameters(model, keras_style=True),
            "variant": variant, "batch_size": batch_size, "augment": augment, "device": str(device),
            "machine": describe_machine(device),
            "train_faces_per_s": round(train_fps, 1), "infer_faces_per_s": round(infer_fps, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="triwijoyo2021", help="a registered model, or 'all'")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated: {', '.join(VARIANTS)}")
    p.add_argument("--augment", default="none")
    p.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    p.add_argument("--device", default="auto", help="auto (cuda when a GPU is visible, else cpu), cpu, cuda or cuda:N")
    a = p.parse_args()
    device = resolve_device(a.device)
    from ferlab.models import list_models
    names = list_models() if a.model == "all" else a.model.split(",")
    for name in names:
        for variant in a.variants.split(","):
            if VARIANTS[variant]["amp"] == "bf16" and autocast_dtype("auto", device) is None:
                why = "this CPU has no native bf16 (AVX-512 BF16 / AMX)" if device.type == "cpu" else f"no native bf16 on {device}"
                print(json.dumps({"model": name, "variant": variant, "skipped": why}), flush=True)
                continue
            print(json.dumps(measure(name, variant, a.batch_size, a.steps, a.augment, a.optimizer, device)), flush=True)


if __name__ == "__main__":
    raise SystemExit(run_script(main))
