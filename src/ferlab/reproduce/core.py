"""The reproduction framework every paper module uses: resumable runs, claims, figures, report.

A paper module (triwijoyo2021.py, ...) has a BUDGETS dict, a `run(r: Reproduction)` that trains and
writes sections and figures, and a pure `claims(results) -> list[Claim]` that turns the measured
results into the claims table, so the claims can be tested on made-up results without training.
"""

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ferlab.atomic import atomic_write_text
from ferlab.data import load_run_data, load_with_splits
from ferlab.device import describe_machine, resolve_device
from ferlab.errors import FerlabError
from ferlab.evaluate import batchnorm_check, evaluate_models
from ferlab.metrics import _savefig, classification_report
from ferlab.models import count_parameters, create_model
from ferlab.training.recipes import get_recipe
from ferlab.training.config import TrainConfig
from ferlab.training.run import fit, open_run
from ferlab.training.timing import duration, measure_epoch_seconds

# Where data paths come from when no option names them.
PATH_ENV = {"data": "FERLAB_DATA", "fergit": "FERLAB_FERGIT", "ckplus": "FERLAB_CKPLUS"}

# Tiny widths for the smoke budget: every paper model with a handful of channels.
TINY = {
    "triwijoyo2021": {"widths": [4, 8, 8], "dense": 16},
    "triwijoyo2021_nobn": {"widths": [4, 8, 8], "dense": 16},
    "sarmah2023_base": {"stages": [[4], [8], [8], [8]], "dense": [16, 16]},
    "sarmah2023_5conv": {"first_filters": 4, "max_filters": 8, "dense": [16]},
    "sarmah2023_8conv": {"first_filters": 4, "max_filters": 8, "dense": [16]},
    "bah2022_resnet": {"widths": [4, 4, 8, 8, 8, 8]},
    "bah2022_basic": {"widths": [4, 4, 8, 8, 8, 8]},
    "li2023": {"widths": [4, 8], "dense": 16},
}


@dataclass
class Claim:
    claim: str
    paper: str
    ours: str
    difference: str = ""


# ---------------------------------------------------------------------------------------------
# Formatting and reading histories

def pct(x) -> str:
    return "n/a" if x is None else f"{100 * float(x):.2f}%"


def minutes(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def n_epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def at_epoch(history: list[dict], epoch: int) -> dict | None:
    return next((r for r in history if r["epoch"] == epoch), None)


def best_row(result: dict) -> dict:
    """A run result's metrics row at the epoch its best.safetensors holds, with that checkpoint's
    val_acc (fit's record, which knows about --select last and --average-from). Runs recorded
    before fit returned it: the first epoch with the highest val_acc."""
    history, best = result["history"], result.get("best")
    if not best:
        return max(history, key=lambda r: r["val_acc"])
    return {**at_epoch(history, best["epoch"]), "val_acc": best["val_acc"]}


def max_test(history: list[dict]):
    values = [r["test_acc"] for r in history if r.get("test_acc") is not None]
    return max(values) if values else None


def recalibrated_note(runs: list[dict]) -> str:
    """'; with BN statistics recomputed: ...' from the runs' BatchNorm checks (the mean over several runs)."""
    checks = [run["bn_check"] for run in runs if run.get("bn_check")]
    if not checks:
        return ""
    accs = np.array([c["recalibrated"] for c in checks])
    value = pct(accs[0]) if len(accs) == 1 else f"{pct(accs.mean())} +- {100 * accs.std():.2f}"
    return f"; last-epoch weights with BN statistics recomputed (see below): {value}"


def budget_description(budget: str) -> str:
    return {"full": "the paper's protocol", "cpu": "reduced to finish on a 2-core CPU in a few hours",
            "smoke": "test budget: tiny models trained for 1 epoch (li2023: one run of 2 epochs, read at 1 and 2), "
                     "numbers meaningless"}[budget]


def accuracy_verdict(before: float, after: float, n: int) -> str:
    """Whether accuracy rose from `before` to `after` (both on n faces): "yes" / "no" only when the
    difference exceeds the noise, two standard errors of a difference of two accuracies on n faces
    (2 * sqrt(2 p (1 - p) / n), p their mean; at least one face), else "inconclusive"; with the numbers."""
    p = min(max((before + after) / 2, 0.0), 1.0)
    noise = max(2 * math.sqrt(2 * p * (1 - p) / max(n, 1)), 1 / max(n, 1))
    diff = after - before
    verdict = "yes" if diff > noise else "no" if diff < -noise else "inconclusive"
    return f"{verdict}: {100 * diff:+.2f} points, noise ±{100 * noise:.2f} (2 s.e. on {n:,} faces)"


# ---------------------------------------------------------------------------------------------
# Figures and tables

def plot_panels(panels: list[tuple], path, title: str = "", cols: int = 4) -> None:
    """A grid of panels; each panel is (title, ylabel, [(label, xs, ys, style), ...], vlines)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cols = min(len(panels), cols)
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, (panel_title, ylabel, curves, vlines) in zip(axes.flat, panels):
        for label, xs, ys, style in curves:
            ax.plot(xs, ys, style, label=label, markersize=3)
        for x in vlines:
            ax.axvline(x, color="grey", alpha=0.3, linewidth=1)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def curve(history, key, label, style="-o"):
    return (label, [r["epoch"] for r in history], [r.get(key) for r in history], style)


def per_class_table(ours: dict, paper: dict | None, classes, title: str) -> list[str]:
    """Precision/recall/F1/support per class, the paper's columns next to ours (as in bah2022's tables)."""
    head = "| class | paper P | paper R | paper F1 | paper n | ours P | ours R | ours F1 | ours n |"
    lines = [f"**{title}**", "", head, "|---" * 9 + "|"]
    for name in classes:
        p = (paper or {}).get(name)
        o = ours["per_class"][name]
        paper_cells = " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in p) if p else "- | - | - | -"
        lines.append(f"| {name} | {paper_cells} | {o['precision']:.2f} | {o['recall']:.2f} | {o['f1']:.2f} | "
                     f"{o['support']} |")
    acc = (paper or {}).get("accuracy")
    lines.append(f"| accuracy | | | {acc if acc is not None else '-'} | {(paper or {}).get('n', '-')} | | | "
                 f"{ours['accuracy']:.2f} | {ours['num_samples']} |")
    return lines + [""]


def confusion_table(report: dict) -> list[str]:
    classes = report["classes"]
    lines = ["| true \\ predicted | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    for name, row in zip(classes, report["confusion_matrix"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return lines + [""]


# ---------------------------------------------------------------------------------------------
# The runs of one reproduction, and its report

class Reproduction:
    """One paper under one budget in DIR: resumable runs, claims, report sections and figures."""

    def __init__(self, paper: str, title: str, budget_name: str, budget: dict, out: Path, paths: dict, seed: int,
                 device: str, log=print):
        self.paper, self.title, self.budget_name, self.budget = paper, title, budget_name, budget
        self.out, self.paths = Path(out), paths
        self.seed, self.device, self.log = seed, device, log
        self.claims: list[Claim] = []
        self.sections: list[str] = []
        self.reductions: list[str] = []
        self.results: dict[str, dict] = {}
        self.data_notes: list[str] = []
        self.other_seconds = 0.0   # training time outside self.results (the search trials)
        self._datasets: dict[str, object] = {}

    # -- data ---------------------------------------------------------------------------------
    def path(self, key: str, flag: str) -> str:
        value = self.paths.get(key)
        if not value:
            raise FerlabError(f"{self.paper} needs {flag} (or the {PATH_ENV[key]} environment variable)")
        return str(value)

    def dataset(self, spec: str):
        """The data set with its splits, loaded once per reproduction."""
        if spec not in self._datasets:
            self._datasets[spec] = load_with_splits(spec, seed=self.seed)
        return self._datasets[spec]

    def split_sizes(self, spec: str) -> dict[str, int]:
        data = self.dataset(spec)
        return {name: int((data.splits == name).sum()) for name in data.split_names()}

    # -- runs ---------------------------------------------------------------------------------
    def config(self, recipe: str | None = None, **overrides) -> TrainConfig:
        """A TrainConfig: the paper's recipe, then the overrides; tiny widths under the smoke budget."""
        base = {**get_recipe(recipe), "recipe": recipe} if recipe else {}
        cfg = {**base, "seed": self.seed, **overrides}
        if self.budget_name == "smoke":
            cfg["model_kwargs"] = {**cfg.get("model_kwargs", {}), **TINY.get(cfg["model"], {})}
        return TrainConfig(**cfg)

    def train(self, name: str, cfg: TrainConfig, evaluate: bool = True) -> dict:
        """Train (or resume, or skip if finished) run DIR/runs/NAME; returns its result (history, test report)."""
        run = self.out / "runs" / name
        done = run / "result.json"
        resume = open_run(run, cfg)   # refuses a directory holding other settings
        if done.is_file():
            result = json.loads(done.read_text())
            if "bn_check" not in result:   # a run finished before the check existed
                result["bn_check"] = self.bn_check(run, cfg)
                atomic_write_text(done, json.dumps(result, indent=1))
            self.results[name] = result
            return result
        _, train, val, _ = load_run_data(cfg)
        per_epoch = measure_epoch_seconds(cfg, len(train) / cfg.train_fraction, len(val), self.device)
        self.log(f"[{name}] {'resuming' if resume else 'training'} {cfg.model} for {cfg.epochs} epochs -> {run} "
                 f"(estimate: {cfg.epochs} epochs x {per_epoch:.1f} s/epoch measured here = {duration(cfg.epochs * per_epoch)})")
        fitted = fit(cfg, run, resume=resume, device=self.device, log=lambda m: self.log(f"  [{name}] {m}"))
        model = create_model(cfg.model, **cfg.model_kwargs)
        result = {"name": name, "run_dir": str(run), "model": cfg.model, "epochs": cfg.epochs,
                  "params_keras": count_parameters(model, keras_style=True),
                  "train_seconds": round(sum(r["time_s"] for r in fitted.history), 1),
                  "best": asdict(fitted.best), "history": fitted.history}
        if evaluate:
            result["test"] = self.evaluate(run, cfg)
        result["bn_check"] = self.bn_check(run, cfg)
        atomic_write_text(done, json.dumps(result, indent=1))
        self.results[name] = result
        return result

    def evaluate(self, run: Path, cfg: TrainConfig) -> dict:
        """Classification report of the run's best weights on its test split (its validation split if it has none)."""
        data, _, val, test = load_run_data(cfg)
        subset = test if test is not None else val
        probs, _ = evaluate_models([str(run)], subset.images, device=resolve_device(self.device))
        report = classification_report(subset.labels, probs.argmax(1), data.classes)
        report["split"] = ",".join(subset.split_names())
        return report

    def bn_check(self, run: Path, cfg: TrainConfig) -> dict | None:
        return batchnorm_check(run, cfg, seed=self.seed, device=resolve_device(self.device))

    # -- report -------------------------------------------------------------------------------
    def figure(self, name: str, draw) -> str:
        draw(self.out / name)
        return name

    def write(self, command: str, seconds: float) -> Path:
        lines = [f"# Reproducing {self.title}", "",
                 f"- command: `{command}`",
                 f"- budget: **{self.budget_name}** ({budget_description(self.budget_name)})"]
        if self.reductions:
            lines.append("- reduced from the paper's protocol: " + "; ".join(self.reductions))
        lines += [f"- data: {note}" for note in self.data_notes]
        train_s = sum(r["train_seconds"] for r in self.results.values()) + self.other_seconds
        lines += [f"- machine: {describe_machine(resolve_device(self.device))}; "
                  f"training time of the runs {minutes(train_s)}, this invocation {minutes(seconds)}",
                  f"- runs: `{self.out / 'runs'}` (each a `ferlab train` run directory; "
                  "`ferlab evaluate RUN --data ...` re-scores one)",
                  "", "## Claims", "",
                  "| # | claim | paper | ours | protocol difference |", "|---|---|---|---|---|"]
        for i, c in enumerate(self.claims, 1):
            lines.append(f"| {i} | {c.claim} | {c.paper} | {c.ours} | {c.difference or '-'} |")
        lines.append("")
        lines += self.sections + self.bn_section()
        text = "\n".join(lines).rstrip() + "\n"
        atomic_write_text(self.out / "report.md", text)
        payload = {"paper": self.paper, "title": self.title, "budget": self.budget_name,
                   "budget_settings": self.budget, "reductions": self.reductions, "data": self.data_notes,
                   "command": command, "claims": [asdict(c) for c in self.claims], "runs": self.results}
        atomic_write_text(self.out / "report.json", json.dumps(payload, indent=1))
        return self.out / "report.md"

    def bn_section(self) -> list[str]:
        checked = [(name, res) for name, res in self.results.items() if res.get("bn_check")]
        if not checked:
            return []
        lines = ["## BatchNorm statistics recomputed (a diagnosis, not the paper's protocol)", "",
                 "A BN layer gathers its running statistics in training mode: behind dropout they include dropout's "
                 "rescaled, higher-variance activations, which eval mode never sees, and Keras' momentum of 0.99 "
                 "lets them lag behind fast-changing early weights. Both can make a short run's eval-mode model "
                 "predict a single class while it fits its training faces in train mode. Below, each run's "
                 "last-epoch weights are scored as trained (the paper's protocol, as Keras would) and again after "
                 "recomputing every BN layer's statistics on its training faces with dropout off "
                 "(`ferlab evaluate RUN --recalibrate-bn SPLITS`; no weight changes). A large gap means the run's "
                 "eval-mode numbers above understate what the weights learned.", "",
                 "| run | model | epoch | last train acc (train mode) | split | as trained | BN recomputed |",
                 "|---|---|---|---|---|---|---|"]
        for name, res in checked:
            c = res["bn_check"]
            lines.append(f"| {name} | {res['model']} | {c['epoch']} | {pct(res['history'][-1]['train_acc'])} | "
                         f"{c['split']} | {pct(c['as_trained'])} | {pct(c['recalibrated'])} ({c['images']:,} faces) |")
        return lines + [""]


def default_paths() -> dict:
    """Data paths from the environment (PATH_ENV), for the options not given."""
    return {key: os.environ[env] for key, env in PATH_ENV.items() if os.environ.get(env)}
