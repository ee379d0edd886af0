"""The `ferlab reproduce` command (see ferlab.reproduce)."""

import argparse
import time
from pathlib import Path

from ferlab.errors import FerlabError
from ferlab.reproduce import PAPERS
from ferlab.reproduce.core import PATH_ENV, Reproduction, default_paths


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paper", metavar="PAPER", help=", ".join(PAPERS))
    p.add_argument("--budget", help="full (the paper's protocol; the default with a GPU) | cpu (a few hours on a "
                   "2-core CPU; the default without a GPU) | smoke (for tests: tiny models, 1-2 epochs)")
    p.add_argument("--data", help=f"FER2013 CSV (default: ${PATH_ENV['data']})")
    p.add_argument("--fergit", help=f"FERGIT spec fergit:FER2013_CSV,IMAGE_DIR (default: ${PATH_ENV['fergit']})")
    p.add_argument("--ckplus", help=f"CK+ folder tree (default: ${PATH_ENV['ckplus']})")
    p.add_argument("--out", type=Path, help="report and run directory (default ./reproduce-PAPER-BUDGET)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")


def resolve_paths(args) -> dict:
    """The data paths: the options given, else the environment variables (PATH_ENV); each must exist."""
    paths = default_paths()
    paths.update({key: getattr(args, key) for key in PATH_ENV if getattr(args, key)})
    for key in ("data", "ckplus"):
        if key in paths and not Path(paths[key]).exists():
            source = f"--{key}" if getattr(args, key) else f"${PATH_ENV[key]}:"
            raise FerlabError(f"{source} {paths[key]}: no such file or directory")
    if "fergit" in paths and not paths["fergit"].startswith("fergit:"):
        raise FerlabError(f"--fergit {paths['fergit']}: expected fergit:FER2013_CSV,IMAGE_DIR")
    return paths


def pick_budget(budget: str | None) -> str:
    """--budget as given, else full with a CUDA GPU and cpu without one (full takes days on a CPU)."""
    if budget is not None:
        return budget
    import torch
    return "full" if torch.cuda.is_available() else "cpu"


def run(args) -> int:
    if args.budget is None:
        args.budget = pick_budget(None)
        print(f"ferlab reproduce: --budget {args.budget} ({'a CUDA GPU is' if args.budget == 'full' else 'no CUDA GPU'} "
              "available; pass --budget to choose)")
    if args.paper not in PAPERS:
        raise FerlabError(f"unknown paper {args.paper!r} (known: {', '.join(PAPERS)})")
    if args.budget not in ("full", "cpu", "smoke"):
        raise FerlabError(f"--budget must be full, cpu or smoke, not {args.budget!r}")
    paper = PAPERS[args.paper]
    out = args.out or Path(f"reproduce-{args.paper}-{args.budget}")
    out.mkdir(parents=True, exist_ok=True)
    r = Reproduction(args.paper, paper.TITLE, args.budget, paper.BUDGETS[args.budget], out, resolve_paths(args),
                     args.seed, args.device)
    t0 = time.time()
    paper.run(r)
    command = " ".join(["ferlab reproduce", args.paper, "--budget", args.budget]
                       + [f"--{k} {getattr(args, k)}" for k in ("data", "fergit", "ckplus") if getattr(args, k)]
                       + [f"--out {out}"] + ([f"--seed {args.seed}"] if args.seed else []))
    report = r.write(command, time.time() - t0)
    print(f"wrote {report}, {out / 'report.json'} and figures")
    return 0
