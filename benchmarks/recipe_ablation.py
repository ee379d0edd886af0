"""Which parts of a training recipe pay off: short runs of the recipe with one change each.

    python benchmarks/recipe_ablation.py --data ../shared/data/fer2013/fer2013.csv.gz --out ~/ferlab-runs/ablation \
        [--recipe fernet] [--epochs 10] [--train-fraction 0.25] [--variants base,no-erasing,...]

Each variant is a `ferlab train` run directory under --out (resumed if it exists, so a killed
ablation continues), trained on a seeded, class-stratified fraction of Training and selected on
PublicTest; PrivateTest is logged for reference. Prints one JSON line per variant and a Markdown
table sorted by PublicTest accuracy. Short runs rank regularisers that work early; ones that pay
off only in long schedules (EMA, mixup) are understated: read the table with that in mind.
"""

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ferlab.training.config import TrainConfig  # noqa: E402
from ferlab.training.run import BestWeights  # noqa: E402
from ferlab.errors import run_script  # noqa: E402

# One change each from the recipe, as `ferlab train` options.
VARIANTS = {
    "base": [],
    "no-erasing": ["--augment", "sarmah2023"],           # flip, rotation, shift, zoom; no erasing
    "flip-only": ["--augment", "flip"],
    "no-label-smoothing": ["--label-smoothing", "0"],
    "no-ema": ["--ema", "0"],
    "average-0.7": ["--average-from", "0.7"],            # SWA: a uniform average of the last 30% of the epochs
    "mixup-0.2": ["--mixup", "0.2"],
    "cutmix-1.0": ["--cutmix", "1.0"],
    "adamw-cosine": ["--optimizer", "adamw", "--lr", "0.002", "--weight-decay", "0.05", "--schedule", "cosine",
                     "--warmup-epochs", "1"],
}


def run_variant(name: str, a) -> dict:
    out = a.out / name
    cmd = [sys.executable, "-m", "ferlab", "train", "--out", str(out)]
    if (out / "last.pt").exists():
        cmd.append("--resume")
    else:
        cmd += ["--recipe", a.recipe, "--data", a.data, "--epochs", str(a.epochs), "--train-fraction", str(a.train_fraction),
                "--test-splits", "PrivateTest", "--seed", str(a.seed), *VARIANTS[name]]
    subprocess.run(cmd, check=True)
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    best = BestWeights.of_run(out)   # what best.safetensors holds: an epoch's weights or a running average's
    row = next(r for r in rows if int(r["epoch"]) == best.epoch)
    averaged = best.averaged_epochs
    best_epoch = f"average of {averaged[0]}-{averaged[1]}" if averaged else best.epoch
    test_acc = float(row["avg_test_acc" if averaged else "test_acc"])
    cfg = TrainConfig(**json.loads((out / "config.json").read_text()))
    return {"variant": name, "options": " ".join(VARIANTS[name]) or "(recipe)", "epochs": len(rows),
            "best_epoch": best_epoch, "publictest_acc": round(best.val_acc, 4), "privatetest_acc": round(test_acc, 4),
            "minutes": round(sum(float(r["time_s"]) for r in rows) / 60, 1), "train_faces_fraction": cfg.train_fraction}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="FER2013 CSV")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--recipe", default="fernet")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train-fraction", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated: {', '.join(VARIANTS)}")
    a = p.parse_args()
    results = []
    for name in a.variants.split(","):
        if name not in VARIANTS:
            sys.exit(f"unknown variant {name!r} (known: {', '.join(VARIANTS)})")
        results.append(run_variant(name, a))
        print(json.dumps(results[-1]), flush=True)
    base = next((r["publictest_acc"] for r in results if r["variant"] == "base"), None)
    print(f"\n{a.recipe}, {a.epochs} epochs on {a.train_fraction:.0%} of Training, seed {a.seed}\n")
    print("| variant | options | PublicTest (best) | vs base | PrivateTest | minutes |\n|---|---|---|---|---|---|")
    for r in sorted(results, key=lambda r: -r["publictest_acc"]):
        delta = f"{100 * (r['publictest_acc'] - base):+.2f}" if base is not None else ""
        print(f"| {r['variant']} | `{r['options']}` | {r['publictest_acc']:.2%} | {delta} | {r['privatetest_acc']:.2%} | {r['minutes']} |")


if __name__ == "__main__":
    raise SystemExit(run_script(main))
