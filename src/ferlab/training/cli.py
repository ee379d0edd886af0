"""The `ferlab train` command: its flags (one per TrainConfig field, --recipe first), how the given
flags, a recipe and a resumed run's config.json combine into one TrainConfig, and extending a
finished run with more --epochs, all under the run directory's lock (ferlab.training.runlock)."""

import argparse
import json
import os
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch

from ferlab.atomic import atomic_write_text, check_writable
from ferlab.checkpoint import load_state
from ferlab.errors import FerlabError
from ferlab.training.recipes import get_recipe
from ferlab.training.config import (CHOICES, TrainConfig, absolute_data, absolute_spec, config_from_file, normalized_config,
                                    run_config, saved_config, shown_setting)
from ferlab.training.distributed import is_main_process
from ferlab.training.run import check_state, fit, open_run
from ferlab.training.runlock import run_lock


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
        explicit["data"] = absolute_data(explicit["data"])
    if explicit.get("ferplus"):
        explicit["ferplus"] = absolute_spec(explicit["ferplus"])
    out = args.out
    if args.resume:
        if out is None:
            raise FerlabError("--resume needs --out RUNDIR")
        saved_path = out / "config.json"
        if not saved_path.is_file():
            raise FerlabError(f"{out}: nothing to resume (no config.json)")
        saved = saved_config(out)
        if args.recipe and args.recipe != saved.get("recipe"):
            explicit["recipe"] = args.recipe
        stored = normalized_config(saved)   # a config.json of before absolute paths compares by its absolute paths
        changed = {k: v for k, v in explicit.items() if stored.get(k) != v}
        epochs = changed.pop("epochs", None)   # more epochs: the run is extended (see run below)
        if epochs is not None and not changed:
            if epochs < stored["epochs"]:
                raise FerlabError(f"{out}: --epochs {epochs} is fewer than the run's {stored['epochs']}; a run can only be extended")
            if stored.get("average_from"):
                raise FerlabError(f"{out}: a run with --average-from cannot be extended (its averaging window depends on --epochs)")
            return config_from_file({**saved, "epochs": epochs}, saved_path), out
        if changed:
            raise FerlabError(f"{out}: holds a run with different settings ({', '.join(f'{k}: {shown_setting(k, stored.get(k))} -> {shown_setting(k, v)}' for k, v in changed.items())}); "
                              "resume it with the same options or start a new --out")
        return config_from_file(saved, saved_path), out
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
    # other ranks start after rank 0 may have written
    if is_main_process() and ((out / "config.json").exists() or (out / "last.pt").exists()):
        raise FerlabError(f"{out}: already holds a run; pass --resume to continue it or choose another --out")
    return cfg, out


def run(args) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise FerlabError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    main = is_main_process()
    if args.out is None or not args.out.is_dir():   # a new run directory: its options are checked before it is made
        args.out = config_from_args(args)[1]
    if main:
        check_writable(args.out)
    with run_lock(args.out, main):   # from before config.json is read, so two trainings of one run cannot both start
        return train_locked(args, main)


def train_locked(args, main: bool) -> int:
    """`ferlab train` in a run directory this process holds the lock of."""
    cfg, out = config_from_args(args)
    resume = args.resume
    if resume and not (out / "last.pt").is_file():   # killed in its first epoch: nothing is lost by starting over
        if main:
            print(f"{out}: no epoch finished before the run stopped (no last.pt); starting afresh")
        resume = False
    if resume and (planned := run_config(out).epochs) != cfg.epochs:
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
