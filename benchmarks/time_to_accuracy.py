"""PrivateTest accuracy against wall-clock minutes for a training recipe on this machine.

Runs (or resumes) `ferlab train --recipe RECIPE` with PrivateTest logged every epoch (never used
for model selection), then prints, from the run's metrics.csv, the cumulative minutes at which
the run first reached each accuracy threshold, and one JSON line per epoch:

    python benchmarks/time_to_accuracy.py --data ../shared/data/fer2013/fer2013.csv.gz --out ~/ferlab-runs/tta
    python benchmarks/time_to_accuracy.py --out ~/ferlab-runs/fernet_s-r1 --report-only
"""

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ferlab.metrics import first_reached  # noqa: E402
from ferlab.errors import run_script  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="fernet")
    p.add_argument("--data", help="FER2013 CSV")
    p.add_argument("--out", type=Path, required=True, help="run directory (resumed if it exists)")
    p.add_argument("--report-only", action="store_true", help="only summarise an existing run directory")
    p.add_argument("--thresholds", default="0.60,0.65,0.68,0.70,0.71,0.72,0.73")
    a, extra = p.parse_known_args()
    if not a.report_only:
        cmd = [sys.executable, "-m", "ferlab", "train", "--out", str(a.out)]
        cmd += ["--resume"] if (a.out / "last.pt").exists() else ["--recipe", a.recipe, "--data", a.data, "--test-splits", "PrivateTest", *extra]
        subprocess.run(cmd, check=True)
    with open(a.out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    thresholds = [float(t) for t in a.thresholds.split(",")]
    minutes = 0.0
    for r in rows:
        minutes += float(r["time_s"]) / 60
        acc = float(r["test_acc"]) if r.get("test_acc") else float("nan")
        print(json.dumps({"epoch": int(r["epoch"]), "minutes": round(minutes, 1), "val_acc": float(r["val_acc"]), "privatetest_acc": acc}))
    reached = first_reached(rows, thresholds)
    print(f"{'PrivateTest acc':>16} {'epoch':>6} {'minutes':>8}")
    for t in thresholds:
        epoch, mins = reached.get(t, ("-", float("nan")))
        print(f"{t:>16.0%} {epoch:>6} {mins:>8.1f}")


if __name__ == "__main__":
    raise SystemExit(run_script(main))
