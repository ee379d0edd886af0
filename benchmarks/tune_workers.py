"""Several `ferlab tune` workers on one SQLite study, on real data: is every trial run once, none lost?

Starts N worker processes (one thread each) on the same study, optionally kills one with SIGKILL
mid-trial and starts it again, waits for all of them, then reads the study and checks:
  - the study holds exactly --trials complete trials, numbered without gaps or repeats;
  - no two complete trials share parameters or a run directory;
  - every failed trial (a killed worker's) was retried with its parameters in its run directory,
    and the retry resumed from the epochs the dead worker had finished.

    python benchmarks/tune_workers.py --data ../shared/data/fer2013/fer2013.csv.gz --out ~/ferlab-runs/tune-workers \
        --workers 2 --trials 6 --epochs 2 --train-fraction 0.03 --kill-after 90

Prints a table of the trials (state, worker, parameters, minutes) and one PASS/FAIL line per check;
exits 1 if a check fails. The per-worker logs are in OUT/worker-K.log.
"""

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna


def worker_command(a, out: Path) -> list[str]:
    return [sys.executable, "-m", "ferlab", "tune", "--data", a.data, "--family", a.family, "--trials", str(a.trials),
            "--epochs", str(a.epochs), "--train-fraction", str(a.train_fraction), "--heartbeat", str(a.heartbeat),
            "--storage", f"sqlite:///{out}/tune.db", "--out", str(out / "runs")]


def start(a, out: Path, k: int, mode: str = "w") -> subprocess.Popen:
    log = open(out / f"worker-{k}.log", mode)
    return subprocess.Popen(worker_command(a, out), stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})


def running_trial(log: Path) -> bool:
    """True once the worker has started a trial and finished at least one of its epochs."""
    lines = log.read_text().splitlines() if log.is_file() else []
    return any(" epoch 1: " in line for line in lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", type=Path, required=True, help="a new directory (the study, the runs, the worker logs)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--family", default="5conv")
    p.add_argument("--train-fraction", type=float, default=0.03)
    p.add_argument("--heartbeat", type=int, default=5)
    p.add_argument("--kill-after", type=float, default=0, help="SIGKILL worker 0 once it is this many seconds into the run "
                   "and has finished an epoch of a trial, then start it again (0: no kill)")
    a = p.parse_args()
    out = a.out.expanduser().resolve()
    if (out / "tune.db").exists():
        sys.exit(f"{out}: holds a study already; use a new --out")
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    procs = {k: start(a, out, k) for k in range(a.workers)}
    killed_at = None
    if a.kill_after:
        while procs[0].poll() is None and not (time.time() - t0 >= a.kill_after and running_trial(out / "worker-0.log")):
            time.sleep(0.5)
        if procs[0].poll() is None:
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait()
            killed_at = time.time() - t0
            print(f"killed worker 0 after {killed_at:.0f} s; starting it again", flush=True)
            procs[0] = start(a, out, 0, mode="a")
    codes = {k: proc.wait() for k, proc in procs.items()}
    wall = time.time() - t0

    study = optuna.load_study(study_name=f"sarmah2023-{a.family}", storage=f"sqlite:///{out}/tune.db")
    trials = study.get_trials()
    worker_of = {}
    for k in range(a.workers):
        for line in (out / f"worker-{k}.log").read_text().splitlines():
            if line.startswith("trial ") and ": sarmah2023_" in line:
                worker_of[int(line.split()[1].rstrip(":"))] = k
    print(f"\n{a.workers} workers, {a.trials} trials x {a.epochs} epochs on {100 * a.train_fraction:g}% of Training, "
          f"wall {wall / 60:.1f} min, exit codes {list(codes.values())}\n")
    print("| trial | state | worker | run dir | " + " | ".join(study.trials[0].params) + " | minutes |")
    print("|---" * (len(study.trials[0].params) + 5) + "|")
    for t in trials:
        print(f"| {t.number} | {t.state.name} | {worker_of.get(t.number, '-')} | {t.user_attrs.get('run_dir', '-')} | "
              + " | ".join(f"{v:g}" for v in t.params.values()) + f" | {t.user_attrs.get('seconds', 0) / 60:.1f} |")

    complete = [t for t in trials if t.state.name == "COMPLETE"]
    failed = [t for t in trials if t.state.name == "FAIL"]
    checks = [
        ("every worker exited 0", all(c == 0 for c in codes.values())),
        (f"exactly {a.trials} complete trials", len(complete) == a.trials),
        ("trial numbers 0..n-1, no gap or repeat", sorted(t.number for t in trials) == list(range(len(trials)))),
        ("no two complete trials share parameters", len({tuple(sorted(t.params.items())) for t in complete}) == len(complete)),
        ("no two complete trials share a run directory", len({t.user_attrs["run_dir"] for t in complete}) == len(complete)),
        ("every worker ran a trial", len(set(worker_of.values())) == a.workers),
    ]
    for f in failed:
        retry = [t for t in complete if t.user_attrs.get("run_dir") == f.user_attrs.get("run_dir")]
        metrics = out / "runs" / f.user_attrs.get("run_dir", "?") / "metrics.csv"
        epochs = len(metrics.read_text().splitlines()) - 1 if metrics.is_file() else 0
        resumed = any("(resuming)" in line and f.user_attrs.get("run_dir", "?") in line
                      for k in range(a.workers) for line in (out / f"worker-{k}.log").read_text().splitlines())
        checks.append((f"failed trial {f.number} retried with its parameters in {f.user_attrs.get('run_dir')}, resumed, "
                       f"{epochs} epochs in all", len(retry) == 1 and retry[0].params == f.params and resumed and epochs == a.epochs))
    if killed_at is not None:
        checks.append(("the killed worker's trial failed and was retried", len(failed) >= 1))
    print()
    for name, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
