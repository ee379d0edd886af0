"""Cold start: `ferlab predict one.jpg` end to end, wall time of a fresh process, with and without torch.

    python benchmarks/cold_start.py [--image one.jpg] [--runs 5] [--lean-python .venv-lean/bin/python]

Each configuration runs --runs times (after one untimed run that warms the page cache); the median
and the minimum are printed, one JSON line per configuration, then a Markdown table:

- `torch installed`: this interpreter, torch importable; the default model still runs without it
  (its bundled fp32 ONNX export), so this is what a full install pays;
- `torch blocked`: the same with `import torch` made to fail (a sys.meta_path finder), as in an
  install without the train extra;
- `lean venv` (with --lean-python): a real `pip install .` venv without torch (`make test-lean`
  builds one at .venv-lean);
- `--backend torch`: the PyTorch path (import torch, load the safetensors weights), which every
  `ferlab predict` took before the lean install: the cost the others avoid;
- `python -c pass`: the interpreter alone.

The image defaults to scikit-image's astronaut (one face) written as a JPEG. Target:
<= 1.0 s on 2 cores. Times drift with machine load: the load average is printed with the numbers.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _NoTorch())
from ferlab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.machine())
    except OSError:
        return platform.processor() or platform.machine()


def timed_runs(cmd, env, runs: int) -> list[float]:
    def once() -> float:
        t = time.perf_counter()
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - t
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
        return elapsed
    once()  # page cache, .pyc files
    return [once() for _ in range(runs)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image", help="photo to recognise (default: the astronaut, as JPEG)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--lean-python", help="python of a venv with `pip install .` and no torch (e.g. .venv-lean/bin/python)")
    args = p.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="ferlab-cold-")
    image = args.image
    if image is None:
        import cv2
        from skimage import data

        image = os.path.join(tmp.name, "one.jpg")
        cv2.imwrite(image, cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    configs = [
        ("torch installed", [sys.executable, "-m", "ferlab", "predict", image], env),
        ("torch blocked", [sys.executable, "-c", BLOCK_TORCH, "predict", image], env),
    ]
    if args.lean_python:
        configs.append(("lean venv", [args.lean_python, "-m", "ferlab", "predict", image], clean))
    configs += [
        ("--backend torch", [sys.executable, "-m", "ferlab", "predict", "--backend", "torch", image], env),
        ("python -c pass", [sys.executable, "-c", "pass"], env),
    ]
    machine = f"{cpu_model()}, {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    print(f"# {machine}; {args.runs} runs each after one warm-up", flush=True)
    rows = []
    for name, cmd, cmd_env in configs:
        times = timed_runs(cmd, cmd_env, args.runs)
        row = {"config": name, "median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
               "runs_s": [round(t, 3) for t in times]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| ferlab predict one.jpg | median s | min s |\n|---|---:|---:|")
    for row in rows:
        print(f"| {row['config']} | {row['median_s']:.2f} | {row['min_s']:.2f} |")


if __name__ == "__main__":
    main()
