"""`ferlab reproduce PAPER`: rerun a paper's experiments and write DIR/report.md, a table of each
of the paper's claims next to our measured result and the protocol difference behind it, with
report.json and the figures.

    ferlab reproduce triwijoyo2021 --budget cpu --data ../shared/data/fer2013/fer2013.csv.gz --out repro-triwijoyo
    ferlab reproduce bah2022 --fergit fergit:FER2013_CSV,MUXSPACE_DIR --ckplus CK+48_DIR

PAPER: triwijoyo2021 (with vs without batch norm), sarmah2023 (random search, batch sizes, Adam vs
SGD-Nesterov, 5-conv vs 8-conv, final training), bah2022 (basic vs residual CNN on FERGIT and
CK+), li2023 (20..100 epochs).

Budgets (`BUDGETS` holds every number):
    full   the paper's protocol: its epochs, trials and splits (days to months on a CPU).
    cpu    a documented reduction that finishes on a 2-core CPU in a few hours; the report lists
           exactly what was reduced, and every claim says when its number is not comparable.
    smoke  for tests only: 1-epoch runs of tiny-width models, the whole report path in seconds.

Every training is a `ferlab train` run directory under DIR/runs/ (config.json, metrics.csv,
last.pt, best.safetensors, curves.png). Re-running the same command skips finished runs and
resumes unfinished ones from their last epoch, so a killed reproduction continues where it
stopped; the report is rebuilt from the runs at the end. A run directory that holds other
settings (another budget, other data) is refused: use another --out.
"""

import argparse
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ferlab.atomic import atomic_write_text
from ferlab.errors import FerlabError

SHARED = Path("../shared/data")
DEFAULT_PATHS = {"data": SHARED / "fer2013/fer2013.csv.gz", "muxspace": SHARED / "muxspace48", "ckplus": SHARED / "ckplus48/CK+48"}

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
TINY_SPACE = {"first_filters": [4, 8, 4], "max_filters": [8, 16, 8]}

# The cpu budget of each paper is sized to finish within one 3-hour session on the slower of the two
# 2-core CPUs ferlab has been measured on: an AMD EPYC with AVX2 only (fp32), which trains these models
# 2.5-3x slower than an AVX-512/AMX CPU with bf16 autocast. Times below: AVX2 fp32 (AMX bf16), training
# plus per-epoch evaluation, 2 threads, quiet machine; from images/s measured with
# benchmarks/train_speed.py (AVX2: triwijoyo2021 31, sarmah2023 8-conv 45 / 5-conv 89 / base 64,
# bah2022 resnet 74, li2023 1,130 train images/s) and, where stated, from the cpu runs themselves.
BUDGETS = {
    "triwijoyo2021": {
        "full": {"epochs": 20, "train_fraction": 1.0},      # ~12 h (4 h): 2 models x 20 epochs x 32,137 faces
        # ~2.3 h (50 min): both models for 10 epochs (the paper's epoch-10 statements) on a stratified
        # 30% of Training+PublicTest; validation on all of PrivateTest. Measured on a 2-core AVX2 EPYC:
        # 6.2-7.4 min per epoch alone at 2 threads, 2.8 h in all with some epochs beside other work
        "cpu": {"epochs": 10, "train_fraction": 0.3},
        "smoke": {"epochs": 1, "train_fraction": 1.0},
    },
    "sarmah2023": {
        # ~1,000 h: "a total of 100 trials" of 20 epochs, read as 50 per family, of models up to 9x the default's cost
        "full": {"search_trials": 50, "search_epochs": 20, "search_fraction": 1.0, "batch_epochs": 20, "batch_fraction": 1.0,
                 "adam_epochs": 150, "sgd_epochs": 150, "conv5_epochs": 300, "base_epochs": 50, "final_params": "search"},
        # ~2.4 h (50 min): search (4 trials x 2 epochs per family; a random trial costs 1.6-2x the default
        # layout on average, up to 8x) and batch sizes (2 epochs) on a stratified 10% / 20% of Training;
        # final runs on all of it for 2 / 2 / 4 / 2 epochs with the documented 5,228,487-parameter layout.
        # Measured on the AVX2 CPU: 4.2 h of training, the search and batch runs at 1 thread beside another
        # run (~2.9 h at 2 threads alone); at this budget no search trial learns beyond the majority class.
        "cpu": {"search_trials": 4, "search_epochs": 2, "search_fraction": 0.1, "batch_epochs": 2, "batch_fraction": 0.2,
                "adam_epochs": 2, "sgd_epochs": 2, "conv5_epochs": 4, "base_epochs": 2, "final_params": "default"},
        "smoke": {"search_trials": 2, "search_epochs": 1, "search_fraction": 1.0, "batch_epochs": 1, "batch_fraction": 1.0,
                  "adam_epochs": 1, "sgd_epochs": 1, "conv5_epochs": 1, "base_epochs": 1, "final_params": "search"},
    },
    "bah2022": {
        "full": {"fergit_epochs": 100, "ckplus_epochs": 100, "folds": 10, "fold_epochs": 100},   # ~35 h (13 h; less if early stopping ends runs)
        # ~1.5 h (35 min): 3 epochs of each model on FERGIT's 44,440 training faces; CK+ is small (~880 faces a run);
        # measured ~2.4 h on 1 AVX2 thread beside another run (FERGIT epochs 15-18 min)
        "cpu": {"fergit_epochs": 3, "ckplus_epochs": 15, "folds": 10, "fold_epochs": 8},
        "smoke": {"fergit_epochs": 1, "ckplus_epochs": 1, "folds": 3, "fold_epochs": 1},
    },
    "li2023": {
        "full": {"epochs": [20, 40, 60, 80, 100], "separate_runs": True},    # ~2.5 h (1 h): 300 epochs
        # ~50 min (25 min): one 100-epoch run read at 20..100; measured 1.6 h on 1 AVX2 thread beside another run
        "cpu": {"epochs": [20, 40, 60, 80, 100], "separate_runs": False},
        "smoke": {"epochs": [1, 2], "separate_runs": False},
    },
}

TITLES = {
    "triwijoyo2021": "Triwijoyo et al. 2021, \"Deep learning approach for facial expression recognition with batch normalization\"",
    "sarmah2023": "Sarmah et al. 2023, \"Emotion Recognition Through Facial Expressions Using CNN\" (random search)",
    "bah2022": "Bah & Xue 2022, \"Facial expression recognition using adapted residual based deep neural network\"",
    "li2023": "Li 2023, \"Facial Emotion Recognition and Impact Analysis of Iteration Based on Convolutional Neural Networks\"",
}


@dataclass
class Claim:
    claim: str
    paper: str
    ours: str
    difference: str = ""


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * float(x):.2f}%"


def at_epoch(history: list[dict], epoch: int) -> dict | None:
    return next((r for r in history if r["epoch"] == epoch), None)


def best_row(history: list[dict]) -> dict:
    """The epoch whose weights best.safetensors holds (first epoch with the highest val_acc)."""
    return max(history, key=lambda r: r["val_acc"])


def max_test(history: list[dict]):
    values = [r["test_acc"] for r in history if r.get("test_acc") is not None]
    return max(values) if values else None


def minutes(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def n_epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


# ---------------------------------------------------------------------------------------------
# The runs of one reproduction, and its report

class Reproduction:
    """One paper under one budget in DIR: resumable runs, claims, report sections and figures."""

    def __init__(self, paper: str, budget: str, out: Path, paths: dict, seed: int, device: str, log=print):
        self.paper, self.budget_name, self.out, self.paths = paper, budget, Path(out), paths
        self.budget = BUDGETS[paper][budget]
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
            raise FerlabError(f"{self.paper} needs {flag} (the default {DEFAULT_PATHS.get(key, '')} does not exist here)")
        return str(value)

    def dataset(self, spec: str):
        """The data set with its splits, loaded once per reproduction."""
        from ferlab.data import load_with_splits
        if spec not in self._datasets:
            self._datasets[spec] = load_with_splits(spec, seed=self.seed)
        return self._datasets[spec]

    def split_sizes(self, spec: str) -> dict[str, int]:
        data = self.dataset(spec)
        return {name: int((data.splits == name).sum()) for name in data.split_names()}

    # -- runs ---------------------------------------------------------------------------------
    def config(self, recipe: str | None = None, **overrides):
        """A TrainConfig: the paper's recipe, then the overrides; tiny widths under the smoke budget."""
        from ferlab.recipes import get_recipe
        from ferlab.train import TrainConfig

        base = {**get_recipe(recipe), "recipe": recipe} if recipe else {}
        cfg = {**base, "seed": self.seed, **overrides}
        if self.budget_name == "smoke":
            cfg["model_kwargs"] = {**cfg.get("model_kwargs", {}), **TINY.get(cfg["model"], {})}
        return TrainConfig(**cfg)

    def train(self, name: str, cfg, evaluate: bool = True) -> dict:
        """Train (or resume, or skip if finished) run DIR/runs/NAME; returns its result (history, test report)."""
        from ferlab.models import count_parameters, create_model
        from ferlab.train import fit

        run = self.out / "runs" / name
        want = json.loads(json.dumps(asdict(cfg)))
        done = run / "result.json"
        if (run / "config.json").is_file():
            saved = normalized_config(json.loads((run / "config.json").read_text()))
            if saved != want:
                diff = ", ".join(f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in want.items() if saved.get(k) != v)
                raise FerlabError(f"{run}: holds a run with other settings ({diff}); use another --out")
            if done.is_file():
                result = json.loads(done.read_text())
                if "bn_check" not in result:   # a run finished before the check existed
                    result["bn_check"] = self.bn_check(run, cfg)
                    atomic_write_text(done, json.dumps(result, indent=1))
                self.results[name] = result
                return result
        resume = (run / "config.json").is_file() and (run / "last.pt").is_file()
        if not resume:
            run.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run / "config.json", json.dumps(want, indent=2))
        self.log(f"[{name}] {'resuming' if resume else 'training'} {cfg.model} for {cfg.epochs} epochs -> {run}")
        history = fit(cfg, run, resume=resume, device=self.device, log=lambda m: self.log(f"  [{name}] {m}"))
        model = create_model(cfg.model, **cfg.model_kwargs)
        result = {"name": name, "run_dir": str(run), "model": cfg.model, "epochs": cfg.epochs,
                  "params_keras": count_parameters(model, keras_style=True),
                  "train_seconds": round(sum(r["time_s"] for r in history), 1),
                  "history": history}
        if evaluate:
            result["test"] = self.evaluate(run, cfg)
        result["bn_check"] = self.bn_check(run, cfg)
        atomic_write_text(done, json.dumps(result, indent=1))
        self.results[name] = result
        return result

    def evaluate(self, run: Path, cfg) -> dict:
        """Classification report of the run's best weights on its test split (its validation split if it has none)."""
        from ferlab.evaluate import evaluate_models
        from ferlab.metrics import classification_report
        from ferlab.data import load_run_data
        from ferlab.train import resolve_device

        data, _, val, test = load_run_data(cfg)
        subset = test if test is not None else val
        probs, _ = evaluate_models([str(run)], subset.images, device=resolve_device(self.device))
        report = classification_report(subset.labels, probs.argmax(1), data.classes)
        report["split"] = ",".join(subset.split_names())
        return report

    def bn_check(self, run: Path, cfg) -> dict | None:
        from ferlab.evaluate import batchnorm_check
        from ferlab.train import resolve_device
        return batchnorm_check(run, cfg, seed=self.seed, device=resolve_device(self.device))

    # -- report -------------------------------------------------------------------------------
    def claim(self, claim: str, paper: str, ours: str, difference: str = "") -> None:
        self.claims.append(Claim(claim, paper, ours, difference))

    def figure(self, name: str, draw) -> str:
        draw(self.out / name)
        return name

    def write(self, command: str, seconds: float) -> Path:
        from ferlab.train import describe_machine

        lines = [f"# Reproducing {TITLES[self.paper]}", "",
                 f"- command: `{command}`",
                 f"- budget: **{self.budget_name}** ({budget_description(self.budget_name)})"]
        if self.reductions:
            lines.append("- reduced from the paper's protocol: " + "; ".join(self.reductions))
        lines += [f"- data: {note}" for note in self.data_notes]
        train_s = sum(r["train_seconds"] for r in self.results.values()) + self.other_seconds
        lines += [f"- machine: {describe_machine()}; "
                  f"training time of the runs {minutes(train_s)}, this invocation {minutes(seconds)}",
                  f"- runs: `{self.out / 'runs'}` (each a `ferlab train` run directory; `ferlab evaluate RUN --data ...` re-scores one)",
                  "", "## Claims", "",
                  "| # | claim | paper | ours | protocol difference |", "|---|---|---|---|---|"]
        for i, c in enumerate(self.claims, 1):
            lines.append(f"| {i} | {c.claim} | {c.paper} | {c.ours} | {c.difference or '-'} |")
        lines.append("")
        lines += self.sections + self.bn_section()
        text = "\n".join(lines).rstrip() + "\n"
        atomic_write_text(self.out / "report.md", text)
        payload = {"paper": self.paper, "title": TITLES[self.paper], "budget": self.budget_name, "budget_settings": self.budget,
                   "reductions": self.reductions, "data": self.data_notes, "command": command,
                   "claims": [asdict(c) for c in self.claims], "runs": self.results}
        atomic_write_text(self.out / "report.json", json.dumps(payload, indent=1))
        return self.out / "report.md"

    def bn_section(self) -> list[str]:
        checked = [(name, res) for name, res in self.results.items() if res.get("bn_check")]
        if not checked:
            return []
        lines = ["## BatchNorm statistics recomputed (a diagnosis, not the paper's protocol)", "",
                 "A BN layer gathers its running statistics in training mode: behind dropout they include dropout's "
                 "rescaled, higher-variance activations, which eval mode never sees, and Keras' momentum of 0.99 lets "
                 "them lag behind fast-changing early weights. Both can make a short run's eval-mode model predict a single "
                 "class while it fits its training faces in train mode. Below, each run's last-epoch weights are scored "
                 "as trained (the paper's protocol, as Keras would) and again after recomputing every BN layer's statistics "
                 "on its training faces with dropout off (`ferlab evaluate RUN --recalibrate-bn SPLITS`; no weight changes). "
                 "A large gap means the run's eval-mode numbers above understate what the weights learned.", "",
                 "| run | model | epoch | last train acc (train mode) | split | as trained | BN recomputed |",
                 "|---|---|---|---|---|---|---|"]
        for name, res in checked:
            c = res["bn_check"]
            lines.append(f"| {name} | {res['model']} | {c['epoch']} | {pct(res['history'][-1]['train_acc'])} | {c['split']} | "
                         f"{pct(c['as_trained'])} | {pct(c['recalibrated'])} ({c['images']:,} faces) |")
        return lines + [""]


def normalized_config(saved: dict) -> dict:
    """A saved config.json as TrainConfig would write it today (fields added since take their defaults)."""
    from ferlab.train import TrainConfig
    try:
        return json.loads(json.dumps(asdict(TrainConfig(**saved))))
    except (TypeError, FerlabError):
        return saved


def budget_description(budget: str) -> str:
    return {"full": "the paper's protocol", "cpu": "reduced to finish on a 2-core CPU in a few hours",
            "smoke": "test budget: 1-epoch runs of tiny models, numbers meaningless"}[budget]


def plot_panels(panels: list[tuple], path, title: str = "", cols: int = 4) -> None:
    """A grid of panels; each panel is (title, ylabel, [(label, xs, ys, style), ...], vlines)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    from ferlab.metrics import _savefig

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
        lines.append(f"| {name} | {paper_cells} | {o['precision']:.2f} | {o['recall']:.2f} | {o['f1']:.2f} | {o['support']} |")
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
# triwijoyo2021: with vs without batch normalization

def triwijoyo2021(r: Reproduction) -> None:
    data = r.path("data", "--data FER2013_CSV")
    epochs, fraction = r.budget["epochs"], r.budget["train_fraction"]
    sizes = r.split_sizes(data)
    n_train, n_val = sizes.get("Training", 0) + sizes.get("PublicTest", 0), sizes.get("PrivateTest", 0)
    r.data_notes.append(f"{data}: train on Training+PublicTest ({n_train:,} faces; paper 32,298), "
                        f"validate on PrivateTest ({n_val:,}; paper 3,589)")
    if epochs < 20:
        r.reductions.append(f"{epochs} of the paper's 20 epochs for each model")
    if fraction < 1:
        from ferlab.data import fraction_mask

        n_train = int(fraction_mask(r.dataset(data).select("Training,PublicTest").labels, fraction, r.seed).sum())
        r.reductions.append(f"trained on a stratified {100 * fraction:.0f}% of Training+PublicTest ({n_train:,} faces): "
                            "fewer steps per epoch, and a smaller set is memorised sooner")
    bn_run = r.train("bn", r.config("triwijoyo2021", data=data, epochs=epochs, train_fraction=fraction))
    nobn = r.train("nobn", r.config("triwijoyo2021_nobn", data=data, epochs=epochs, train_fraction=fraction))["history"]
    bn = bn_run["history"]

    common = f"{n_train:,}/{n_val:,} faces vs 32,298/3,589; PyTorch port, bf16 autocast where the CPU has it"
    short = f"; only {n_epochs(epochs)} run" if epochs < 20 else ""
    last_bn, last_nobn = bn[-1], nobn[-1]

    def epoch_note(row, e):
        return f" (epoch {row['epoch']})" if row["epoch"] != e else ""
    r.claim("With BN: training accuracy after 20 epochs", "98%", pct(last_bn["train_acc"]) + epoch_note(last_bn, 20), common + short)
    r.claim("With BN: validation accuracy after 20 epochs (overfitting)", "62%",
            f"{pct(last_bn['val_acc'])}{epoch_note(last_bn, 20)}; best {pct(best_row(bn)['val_acc'])} at epoch {best_row(bn)['epoch']}"
            + recalibrated_note([bn_run]),
            common + short)
    e10 = at_epoch(bn, 10)
    r.claim("With BN: training accuracy above 90% by epoch 10", "> 90%",
            pct(e10["train_acc"]) if e10 else f"not reached ({n_epochs(epochs)} run)", common)
    r.claim("With BN: training loss below 0.20 by epoch 10", "< 0.20",
            f"{e10['train_loss']:.3f}" if e10 else f"not reached ({n_epochs(epochs)} run)", common + "; the paper's loss axis is read as cross-entropy")
    r.claim("Without BN: training loss still above 0.30 at epoch 20", "> 0.30", f"{last_nobn['train_loss']:.3f}" + epoch_note(last_nobn, 20), common + short)
    r.claim("Without BN: training accuracy still below 90% at epoch 20", "< 90%", pct(last_nobn["train_acc"]) + epoch_note(last_nobn, 20), common + short)
    r.claim("BN performs better than no BN (validation accuracy)", "BN better",
            f"BN {pct(last_bn['val_acc'])} vs no BN {pct(last_nobn['val_acc'])} at epoch {last_bn['epoch']}", common + short)
    pairs = [(at_epoch(bn, e), at_epoch(nobn, e)) for e in sorted({max(1, len(bn) // 2), len(bn)})]
    r.claim("BN trains faster: lower training loss, higher training accuracy (Figure 3)", "yes, 'especially in the model training process'",
            "; ".join(f"epoch {a['epoch']}: loss {a['train_loss']:.3f} vs {b['train_loss']:.3f}, acc {pct(a['train_acc'])} vs {pct(b['train_acc'])}"
                      for a, b in pairs if a and b) + " (BN vs no BN)", common + short)
    r.claim("Model size (Table 1)", "2,787,015 parameters", f"{bn_run['params_keras']:,}",
            "block 3 built with 3x3 convs: Table 1 says 5x5, but its parameter counts are those of 3x3")

    fig = r.figure("figure3.png", lambda p: plot_panels([
        ("(a) loss, with BN", "loss", [curve(bn, "train_loss", "train"), curve(bn, "val_loss", "validation")], []),
        ("(b) accuracy, with BN", "accuracy", [curve(bn, "train_acc", "train"), curve(bn, "val_acc", "validation")], []),
        ("(c) loss, without BN", "loss", [curve(nobn, "train_loss", "train"), curve(nobn, "val_loss", "validation")], []),
        ("(d) accuracy, without BN", "accuracy", [curve(nobn, "train_acc", "train"), curve(nobn, "val_acc", "validation")], []),
    ], p, "triwijoyo2021 Figure 3, remeasured", cols=2))
    rows = ["## Learning curves (the paper's Figure 3)", "", f"![Figure 3]({fig})", "",
            "| epoch | BN train acc | BN val acc | BN train loss | no-BN train acc | no-BN val acc | no-BN train loss |",
            "|---|---|---|---|---|---|---|"]
    for a, b in zip(bn, nobn):
        rows.append(f"| {a['epoch']} | {pct(a['train_acc'])} | {pct(a['val_acc'])} | {a['train_loss']:.3f} | "
                    f"{pct(b['train_acc'])} | {pct(b['val_acc'])} | {b['train_loss']:.3f} |")
    r.sections += rows + [""]


# ---------------------------------------------------------------------------------------------
# sarmah2023: random search, batch sizes, optimizers, 5-conv vs 8-conv, final training

def sarmah2023(r: Reproduction) -> None:
    from ferlab.models.sarmah2023 import SARMAH2023_SEARCH_SPACE
    from ferlab.tune import TuneSettings, run_study

    data = r.path("data", "--data FER2013_CSV")
    b = r.budget
    sizes = r.split_sizes(data)
    r.data_notes.append(f"{data}: Training {sizes.get('Training', 0):,} / PublicTest {sizes.get('PublicTest', 0):,} / "
                        f"PrivateTest {sizes.get('PrivateTest', 0):,} faces (paper: FER2013's 28,709 / 3,589 / 3,589)")
    full = BUDGETS["sarmah2023"]["full"]
    for key, what in (("search_trials", "search trials per family"), ("search_epochs", "epochs per search trial"),
                      ("batch_epochs", "epochs per batch-size run (not stated in the paper; full: 20 as in the search)"),
                      ("adam_epochs", "epochs of the final 8-conv Adam run"), ("sgd_epochs", "epochs of the SGD run"),
                      ("conv5_epochs", "epochs of the 5-conv run"), ("base_epochs", "epochs of the baseline (not stated; full: 50)")):
        if b[key] != full[key]:
            r.reductions.append(f"{b[key]} instead of {full[key]} {what}")
    for key, what in (("search_fraction", "search"), ("batch_fraction", "batch-size runs")):
        if b[key] < 1:
            r.reductions.append(f"{what} trained on a stratified {100 * b[key]:.0f}% of Training")
    if b["final_params"] == "default":
        r.reductions.append("final runs use the documented default layout (64..512 filters, 5,228,487 parameters for 8-conv) "
                            "instead of the search's best")
    common = "PublicTest for model selection, PrivateTest reported; PyTorch port (precision: see the machine line)"

    # 1. random search per family (Adam 1e-3, batch 32, no augmentation)
    space = {k: list(v) for k, v in SARMAH2023_SEARCH_SPACE.items()}
    if r.budget_name == "smoke":
        space.update(TINY_SPACE)
    best, summaries = {}, {}
    for family in ("5conv", "8conv"):
        settings = TuneSettings(family=family, data=data, epochs=b["search_epochs"], train_fraction=b["search_fraction"],
                                seed=r.seed, space=space, model_kwargs={"dense": [16]} if r.budget_name == "smoke" else {})
        folder = r.out / "runs" / f"search-{family}"
        folder.mkdir(parents=True, exist_ok=True)
        best[family] = run_study(settings, trials=b["search_trials"], storage=f"sqlite:///{folder.resolve()}/tune.db",
                                 study_name=f"sarmah2023-{family}", out=folder, device=r.device,
                                 log=lambda m, f=family: r.log(f"[search-{f}] {m}"))
        summaries[family] = (folder / "best.json").read_text()
        r.other_seconds += best[family]["seconds_total"]
    search_note = f"{b['search_trials']} random trials x {n_epochs(b['search_epochs'])}" + (
        f" on {100 * b['search_fraction']:.0f}% of Training" if b["search_fraction"] < 1 else "") + "; lr 1e-3 (Keras default, not stated)"
    # A trial no better than always answering the most common class has learned nothing: the search
    # then picks its best by noise, which the report must say (short budgets end there).
    counts = np.bincount(r.dataset(data).select("PublicTest").labels)
    majority_rate = counts.max() / counts.sum()
    majority = f"{pct(majority_rate)} of PublicTest is its most common class"
    untrained = {f for f in best if best[f]["value"] < majority_rate + 0.02}
    for family, paper in (("5conv", "62%"), ("8conv", "61.9%")):
        bf = best[family]
        r.claim(f"Random search, {family[0]}-conv family: best validation accuracy after 20 epochs", paper,
                f"{pct(bf['value'])} (trial {bf['number']}, {bf['params_keras']:,} params)",
                search_note + (f"; no trial learned beyond the majority class ({majority}): the best is picked by noise"
                               if family in untrained else ""))

    kwargs = {f: (best[f]["model_kwargs"] if b["final_params"] == "search" else {}) for f in ("5conv", "8conv")}

    # 2. batch size 32 / 64 / 128 (8-conv, the search's protocol)
    batch = {}
    for bs in (32, 64, 128):
        cfg = r.config(None, model="sarmah2023_8conv", model_kwargs=kwargs["8conv"], data=data, epochs=b["batch_epochs"],
                       batch_size=bs, optimizer="adam", lr=1e-3, test_splits="", train_fraction=b["batch_fraction"])
        batch[bs] = r.train(f"batch-{bs}", cfg, evaluate=False)["history"]
    best_bs = max(batch, key=lambda k: best_row(batch[k])["val_acc"])
    learned = max(best_row(h)["val_acc"] for h in batch.values()) >= majority_rate + 0.02
    r.claim("Batch size 32 gives the best results of 32 / 64 / 128", "32 best (no numbers given)",
            ", ".join(f"{k}: {pct(best_row(h)['val_acc'])}" for k, h in batch.items())
            + (f" -> {best_bs} best (val acc)" if learned else f" -> no winner: none learned beyond the majority class ({majority})"),
            f"8-conv, Adam 1e-3, {n_epochs(b['batch_epochs'])}" + (f" on {100 * b['batch_fraction']:.0f}% of Training" if b["batch_fraction"] < 1 else "")
            + "; the paper does not say which model or epochs")

    # 3. final trainings (Adam 1e-4, augmentation) and the baseline
    runs = {
        "final-8conv-adam": r.config("sarmah2023", data=data, epochs=b["adam_epochs"], model_kwargs=kwargs["8conv"]),
        "final-8conv-sgd": r.config("sarmah2023_sgd", data=data, epochs=b["sgd_epochs"], model_kwargs=kwargs["8conv"]),
        "final-5conv-adam": r.config("sarmah2023_5conv", data=data, epochs=b["conv5_epochs"], model_kwargs=kwargs["5conv"]),
        # baseline: Adam, batch 64 (stated); lr 1e-3 and no augmentation (Keras defaults); epochs not stated
        "baseline": r.config(None, model="sarmah2023_base", data=data, epochs=b["base_epochs"], batch_size=64,
                             optimizer="adam", lr=1e-3, train_splits="Training", val_splits="PublicTest", test_splits="PrivateTest"),
    }
    res = {name: r.train(name, cfg) for name, cfg in runs.items()}

    def test_summary(name):
        h, rep = res[name]["history"], res[name]["test"]
        return (f"{pct(rep['accuracy'])} (best-val epoch {best_row(h)['epoch']} of {len(h)}; max over epochs {pct(max_test(h))})"
                + recalibrated_note([res[name]]))
    test_note = "ours: PrivateTest accuracy of the best-PublicTest checkpoint, and the max over epochs (the paper's 'max test accuracy' may be read off its curve)"
    base = res["baseline"]
    r.claim("Baseline CNN (4 conv + 2 dense, Adam, batch 64): test accuracy", "65%", test_summary("baseline"),
            f"layout of the baseline is our choice (Fig. 3 missing); {n_epochs(b['base_epochs'])} (not stated); " + test_note)
    r.claim("Baseline CNN: training accuracy", "92%", pct(base["history"][-1]["train_acc"]) + f" (epoch {len(base['history'])})",
            "no augmentation; epochs not stated")
    r.claim("8-conv, Adam 1e-4, 150 epochs, augmentation: test accuracy", "69.55%", test_summary("final-8conv-adam"),
            f"{n_epochs(b['adam_epochs'])}; " + test_note)
    r.claim("8-conv, SGD-Nesterov, 150 epochs: test accuracy", "68.21%", test_summary("final-8conv-sgd"),
            f"{n_epochs(b['sgd_epochs'])}; lr 0.01 (Keras' default) and momentum 0.9 (ours: Keras' default 0 makes Nesterov a no-op), "
            "neither stated; " + test_note)
    gaps = {n: res[n]["history"][-1]["train_acc"] - res[n]["test"]["accuracy"] for n in ("final-8conv-adam", "final-8conv-sgd")}
    r.claim("Adam reaches higher test accuracy than SGD, SGD generalizes better (smaller train-test gap)", "Adam 69.55% > SGD 68.21%; SGD smaller gap",
            f"Adam {pct(res['final-8conv-adam']['test']['accuracy'])} vs SGD {pct(res['final-8conv-sgd']['test']['accuracy'])}; "
            f"gap Adam {100 * gaps['final-8conv-adam']:.1f} vs SGD {100 * gaps['final-8conv-sgd']:.1f} points", common)
    r.claim("5-conv, 300 epochs: max test accuracy", "70.58%", test_summary("final-5conv-adam"),
            f"{n_epochs(b['conv5_epochs'])}; Adam 1e-4 + augmentation as the 8-conv run; " + test_note)
    gap5 = res["final-5conv-adam"]["history"][-1]["train_acc"] - res["final-5conv-adam"]["test"]["accuracy"]
    r.claim("5-conv overfits ('massive overfitting'), which is why the paper keeps the 8-conv model", "5-conv overfits more",
            f"train-test gap 5-conv {100 * gap5:.1f} vs 8-conv {100 * gaps['final-8conv-adam']:.1f} points",
            f"last-epoch train accuracy minus test accuracy; {n_epochs(b['conv5_epochs'])} vs {n_epochs(b['adam_epochs'])} (paper 300 vs 150)")
    r.claim("Final 8-conv model size", "5,228,487 parameters", f"{res['final-8conv-adam']['params_keras']:,} (Keras-style count)",
            "layer widths are in a figure we do not have; " + ("the search's best" if b["final_params"] == "search" else "our default layout"))

    # sections: search, batch sizes, final runs
    sec = ["## Random search (section 3.1)", ""]
    for family in ("5conv", "8conv"):
        bj = json.loads(summaries[family])
        sec += [f"**{family}**: {bj['n_complete']} complete, {bj['n_pruned']} pruned, {bj['n_failed']} failed trials; "
                f"best trial {bj['number']}: `{json.dumps(bj['model_kwargs'])}` -> val {pct(bj['value'])} (epoch {bj['best_epoch']})"
                + (f". No trial learned beyond the majority class ({majority}) at this budget, so the trials cannot be told apart." if family in untrained else ""), "",
                "| trial | val acc | " + " | ".join(space) + " | params |", "|---" * (len(space) + 3) + "|"]
        for t in bj["top"]:
            sec.append(f"| {t['number']} | {pct(t['value'])} | " + " | ".join(f"{t['params'][k]:.3g}" for k in space)
                       + f" | {t.get('params_keras', 0):,} |")
        sec.append("")
    sec += ["## Batch size", "", "| batch | best val acc | epoch | train acc there | time |", "|---|---|---|---|---|"]
    for bs, h in batch.items():
        br = best_row(h)
        sec.append(f"| {bs} | {pct(br['val_acc'])} | {br['epoch']} | {pct(br['train_acc'])} | {minutes(sum(x['time_s'] for x in h))} |")
    sec += ["", "## Final trainings", "", "| run | model | epochs | params | train acc (last) | val acc (best) | test acc (best-val ckpt) | max test acc | macro-F1 | time |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name, rr in res.items():
        h = rr["history"]
        sec.append(f"| {name} | {rr['model']} | {len(h)} | {rr['params_keras']:,} | {pct(h[-1]['train_acc'])} | {pct(best_row(h)['val_acc'])} | "
                   f"{pct(rr['test']['accuracy'])} | {pct(max_test(h))} | {pct(rr['test']['macro_f1'])} | {minutes(rr['train_seconds'])} |")
    fig = r.figure("final-curves.png", lambda p: plot_panels(
        [(name, "accuracy", [curve(rr["history"], "train_acc", "train"), curve(rr["history"], "val_acc", "validation (PublicTest)"),
                             curve(rr["history"], "test_acc", "test (PrivateTest)", "--o")], [])
         for name, rr in res.items()], p, "sarmah2023 final trainings (the paper's Figures 2, 4-6)"))
    sec += ["", f"![final curves]({fig})", ""]
    r.sections += sec


# ---------------------------------------------------------------------------------------------
# bah2022: basic vs residual CNN on FERGIT and CK+

BAH_TABLE2 = {"angry": (0.64, 0.49, 0.56, 260), "disgust": (0.75, 0.57, 0.65, 37), "fear": (0.6, 0.44, 0.51, 257),
              "happy": (0.89, 0.93, 0.91, 735), "sad": (0.54, 0.62, 0.57, 304), "surprise": (0.76, 0.73, 0.75, 218),
              "neutral": (0.75, 0.82, 0.78, 654), "accuracy": 0.74, "n": 2465}
BAH_TABLE3 = {"angry": (0.62, 0.54, 0.58, 260), "disgust": (0.71, 0.54, 0.62, 37), "fear": (0.62, 0.44, 0.51, 257),
              "happy": (0.89, 0.92, 0.9, 735), "sad": (0.55, 0.56, 0.55, 304), "surprise": (0.76, 0.79, 0.77, 218),
              "neutral": (0.75, 0.84, 0.79, 654), "accuracy": 0.75, "n": 2465}
BAH_TABLE4 = {"anger": (1.0, 1.0, 1.0, 14), "contempt": (1.0, 0.6, 0.75, 5), "disgust": (1.0, 0.94, 0.97, 18),
              "fear": (0.88, 1.0, 0.93, 7), "happy": (0.91, 1.0, 0.95, 21), "sadness": (1.0, 1.0, 1.0, 9),
              "surprise": (1.0, 1.0, 1.0, 25), "accuracy": 0.97, "n": 99}

_SUBJECT = re.compile(r"^(S\d+)_\d+_\d+$")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def ckplus_files(root: Path) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """(files, labels in CK+'s label space, subject ids) of a CK+48-style folder tree."""
    from ferlab.labels import CKPLUS_CLASSES, class_index

    files, labels = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = class_index(folder.name, CKPLUS_CLASSES)
        if label is None:
            continue
        for f in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS):
            files.append(f.resolve())
            labels.append(label)
    if not files:
        raise FerlabError(f"{root}: no CK+ class folders with images (expected {root}/anger/S010_004_00000017.png ...)")
    subjects = [m.group(1) if (m := _SUBJECT.match(f.stem)) else None for f in files]
    if None in subjects:
        raise FerlabError(f"{root}: CK+ file names must be S<subject>_<sequence>_<frame> for subject-independent folds")
    return files, np.array(labels), np.array(subjects)


def split_tree(tree: Path, files: list[Path], splits: np.ndarray, source: Path) -> str:
    """Materialise a split as symlinks tree/<split>/<class>/<file> (no image is copied); returns a
    `ckplus:` data spec. A tree is built once; the run directories that use it refer to it."""
    manifest = {"source": str(source.resolve()), "files": [f"{s}/{f.parent.name}/{f.name}" for f, s in zip(files, splits)]}
    if (tree / "manifest.json").is_file():
        if json.loads((tree / "manifest.json").read_text()) != manifest:
            raise FerlabError(f"{tree}: was built from other CK+ data or another split; use another --out")
        return f"ckplus:{tree}"
    for f, s in zip(files, splits):
        link = tree / str(s) / f.parent.name / f.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(f)
    atomic_write_text(tree / "manifest.json", json.dumps(manifest))
    return f"ckplus:{tree}"


def bn_settling_note(steps: int) -> str:
    """A short run's eval-mode accuracy can sit near chance: its BN statistics were gathered under
    dropout and, with Keras' momentum 0.99, still hold 0.99**n of their initial values after n steps."""
    if steps >= 500:
        return ""
    return (f"; only ~{steps} optimizer steps: eval-mode accuracy can sit near chance (BN statistics gathered under "
            f"dropout, and Keras' momentum 0.99 leaves {100 * 0.99 ** steps:.0f}% of their initial values; "
            "see 'BatchNorm statistics recomputed' below)")


def recalibrated_note(runs: list[dict]) -> str:
    """'; with BN statistics recomputed: ...' from the runs' BatchNorm checks (the mean over several runs)."""
    checks = [run["bn_check"] for run in runs if run.get("bn_check")]
    if not checks:
        return ""
    accs = np.array([c["recalibrated"] for c in checks])
    value = pct(accs[0]) if len(accs) == 1 else f"{pct(accs.mean())} +- {100 * accs.std():.2f}"
    return f"; last-epoch weights with BN statistics recomputed (see below): {value}"


def happy_neutral_share(report: dict) -> tuple[float, float]:
    """(share of predictions, share of true labels) that are happy or neutral, from a confusion matrix."""
    cm = np.asarray(report["confusion_matrix"])
    idx = [report["classes"].index(c) for c in ("happy", "neutral")]
    return cm[:, idx].sum() / max(cm.sum(), 1), cm[idx, :].sum() / max(cm.sum(), 1)


def pooled_report(reports: list[dict]) -> dict:
    """One classification report over all folds' test predictions (their confusion matrices summed)."""
    from ferlab.metrics import classification_report

    cm = np.sum([np.asarray(rep["confusion_matrix"]) for rep in reports], axis=0)
    true, pred = np.nonzero(cm)
    counts = cm[true, pred]
    return classification_report(np.repeat(true, counts), np.repeat(pred, counts), reports[0]["classes"])


def bah2022(r: Reproduction) -> None:
    from ferlab.data.splits import stratified_split, subject_fold_splits
    from ferlab.metrics import plot_confusion

    fergit = r.path("fergit", "--fergit fergit:FER2013_CSV,IMAGE_DIR")
    ckplus = Path(r.path("ckplus", "--ckplus CK+48_DIR"))
    b, full = r.budget, BUDGETS["bah2022"]["full"]
    for key, what in (("fergit_epochs", "epochs on FERGIT (each model)"), ("ckplus_epochs", "epochs on the CK+ random split"),
                      ("fold_epochs", "epochs per CK+ fold"), ("folds", "CK+ folds")):
        if b[key] != full[key]:
            r.reductions.append(f"{b[key]} instead of {full[key]} {what}")
    sizes = r.split_sizes(fergit)
    total = sum(sizes.values())
    r.data_notes.append(f"FERGIT {fergit}: {total:,} faces, train/val/test {sizes.get('train', 0):,} / {sizes.get('val', 0):,} / "
                        f"{sizes.get('test', 0):,} (paper: 49,300 = 44,370 / 2,465 / 2,465)")
    recipe_note = "Nadam 1e-3, batch 64, class weights, ReduceLROnPlateau, early stopping, best-val checkpoint, augmentation (values not stated: ours)"

    # FERGIT: basic then residual
    fer = {name: r.train(f"fergit-{name}", r.config(recipe, data=fergit, epochs=b["fergit_epochs"]))
           for name, recipe in (("basic", "bah2022_basic"), ("resnet", "bah2022"))}
    r.claim("FERGIT composition and split", "49,300 faces, 90/5/5 = 44,370 / 2,465 / 2,465",
            f"{total:,} faces, {sizes.get('train', 0):,} / {sizes.get('val', 0):,} / {sizes.get('test', 0):,}",
            "FER2013 without its 177 not-a-face rows + muxspace48 without contempt; seeded split stratified by class and source")
    for name, paper_test, paper_tv, table in (("basic", "74%", "train 75%, validation 73.7%", "Table 2"),
                                              ("resnet", "75%", "train 86%, validation 74%", "Table 3")):
        rr = fer[name]
        h, br = rr["history"], best_row(rr["history"])
        note = f"{n_epochs(b['fergit_epochs'])} (paper 100); " + recipe_note
        r.claim(f"FERGIT, {name} CNN: test accuracy ({table})", paper_test, f"{pct(rr['test']['accuracy'])} ({rr['test']['num_samples']:,} faces)", note)
        r.claim(f"FERGIT, {name} CNN: training and validation accuracy", paper_tv,
                f"train {pct(br['train_acc'])}, validation {pct(br['val_acc'])} (best-val epoch {br['epoch']}; last train {pct(h[-1]['train_acc'])})", note)
    diff = fer["resnet"]["test"]["accuracy"] - fer["basic"]["test"]["accuracy"]
    r.claim("Residual blocks improve FERGIT test accuracy", "+1 point (75% vs 74%)", f"{100 * diff:+.2f} points", "same split and recipe for both")
    rec = {name: {c: v["recall"] for c, v in fer[name]["test"]["per_class"].items()} for name in fer}
    r.claim("FERGIT: happy recognised best, fear worst (recall, Tables 2-3)", "basic happy 0.93, fear 0.44; ResNet happy 0.92, fear 0.44",
            "; ".join(f"{name}: happy {rec[name]['happy']:.2f}, fear {rec[name]['fear']:.2f} (best {max(rec[name], key=rec[name].get)}, "
                      f"worst {min(rec[name], key=rec[name].get)})" for name in ("basic", "resnet")), "")
    precision = {name: min(fer[name]["test"]["per_class"].items(), key=lambda kv: kv[1]["precision"]) for name in fer}
    r.claim("Precision of every class above 50% (both models)", "yes",
            "; ".join(f"{name}: lowest {c} {v['precision']:.2f}" for name, (c, v) in precision.items()), "")
    r.claim("Macro F1 (both models)", "65% (the text; Tables 2-3 average to 67-68%)",
            "; ".join(f"{name} {pct(fer[name]['test']['macro_f1'])}" for name in ("basic", "resnet")), "")
    share = {name: happy_neutral_share(fer[name]["test"]) for name in fer}
    r.claim("The basic CNN is biased toward neutral and happy; the residual one is more balanced",
            "yes (confusion matrices, Figure 5)",
            f"share of predictions that are happy or neutral: basic {pct(share['basic'][0])}, ResNet {pct(share['resnet'][0])} "
            f"(true share {pct(share['basic'][1])})", "")
    losses = {name: (best_row(fer[name]["history"]), fer[name]["history"][-1]) for name in fer}
    for name, paper_loss in (("basic", "train 0.48, validation 0.79, test 0.7"), ("resnet", "train 0.2, validation 0.82, test 0.8")):
        br, last = losses[name]
        r.claim(f"FERGIT, {name} CNN: losses", paper_loss,
                f"train {br['train_loss']:.2f}, validation {br['val_loss']:.2f} at the best-val epoch {br['epoch']} "
                f"(last epoch: train {last['train_loss']:.2f}, validation {last['val_loss']:.2f}); test loss not recorded",
                f"class-weighted cross-entropy as trained; {n_epochs(b['fergit_epochs'])} (paper 100)")
    r.claim("Residual blocks lower the training loss", "yes ('reduced considerably the loss')",
            f"last-epoch train loss basic {losses['basic'][1]['train_loss']:.3f} vs ResNet {losses['resnet'][1]['train_loss']:.3f}",
            f"{n_epochs(b['fergit_epochs'])}")
    h = fer["resnet"]["history"]
    lowest = min(h, key=lambda row: row["val_loss"])
    r.claim("Overfitting: basic none in 100 epochs; ResNet's validation loss stalls after ~35 epochs while its training loss falls",
            "basic: no; ResNet: yes, from epoch ~35",
            f"ResNet validation loss lowest at epoch {lowest['epoch']} of {len(h)}; train-validation accuracy gap at the last epoch: "
            + ", ".join(f"{name} {100 * (fer[name]['history'][-1]['train_acc'] - fer[name]['history'][-1]['val_acc']):+.1f} points" for name in fer),
            f"only {n_epochs(b['fergit_epochs'])}: the paper's epoch 35 is not reached" if len(h) < 35 else "")
    r.claim("ResNet model size (Table 1)", "9,773,111 parameters (9,766,391 trainable)", f"{fer['resnet']['params_keras']:,} (Keras-style count)",
            "layer by layer as Table 1")

    # CK+: the paper's random 10% test split, then subject-independent k-fold
    files, labels, subjects = ckplus_files(ckplus)
    names = stratified_split(labels, (0.9, 0.1), seed=r.seed, names=("train", "test"))
    spec = split_tree(r.out / "data" / "ckplus-random", files, names, ckplus)
    ck = r.train("ckplus-random", r.config("bah2022", data=spec, epochs=b["ckplus_epochs"],
                                           train_splits="train", val_splits="test", test_splits=""))
    r.claim("CK+, ResNet CNN: test accuracy (Table 4)", "97% (99 faces)",
            f"{pct(ck['test']['accuracy'])} ({ck['test']['num_samples']} faces)" + recalibrated_note([ck]),
            f"random stratified 90/10 split of the {len(files)} frames as the paper's support of 99 suggests; validation = the test split "
            "(the paper names no other), so checkpoint and LR schedule see the test faces; frames of one subject fall on both sides; "
            f"{n_epochs(b['ckplus_epochs'])}" + bn_settling_note(b["ckplus_epochs"] * math.ceil(0.9 * len(files) / 64)))
    k = b["folds"]
    fold_runs = []
    for i in range(k):
        split = subject_fold_splits(subjects, labels, k, i, r.seed)
        spec_i = split_tree(r.out / "data" / f"ckplus-fold{i}", files, split, ckplus)
        fold_runs.append(r.train(f"ckplus-fold{i}", r.config("bah2022", data=spec_i, epochs=b["fold_epochs"])))
    fold_reports = [run["test"] for run in fold_runs]
    accs = np.array([rep["accuracy"] for rep in fold_reports])
    pooled = pooled_report(fold_reports)
    r.claim(f"CK+, subject-independent {k}-fold accuracy (not in the paper; the usual CK+ protocol)", "-",
            f"{pct(accs.mean())} +- {100 * accs.std():.2f} (mean +- std over folds; pooled {pct(pooled['accuracy'])})"
            + recalibrated_note(fold_runs),
            f"fold i tests, fold i+1 validates, the rest trains; no subject in two parts; {n_epochs(b['fold_epochs'])} per fold"
            + bn_settling_note(b["fold_epochs"] * math.ceil(0.8 * len(files) / 64)))
    times = {name: fer[name]["train_seconds"] for name in fer} | {"ckplus": ck["train_seconds"]}
    r.claim("Training time (100 epochs, Colab K80 GPU)", "basic 44 min, ResNet 48 min, CK+ 29 min (119 min in all)",
            f"basic {minutes(times['basic'])}, ResNet {minutes(times['resnet'])}, CK+ {minutes(times['ckplus'])} "
            f"({b['fergit_epochs']}/{b['fergit_epochs']}/{b['ckplus_epochs']} epochs; {minutes(sum(times.values()))} in all)",
            f"{os.cpu_count()}-core CPU (see machine above), not a GPU; early stopping may end runs before 100 epochs")

    # personal photos: detect, crop, resize to 48x48, predict with confidence (Figures 9-10)
    photos = personal_photos(r, fer["resnet"]["run_dir"])
    if photos:
        r.claim("Personal photos: detect, crop, resize to 48x48, predict with confidence (Figures 9-10)",
                "a posed expression recognised at 86% confidence; a posed disgust read as neutral at 40%",
                "; ".join(f"{name}: {pred}" for name, _, pred, _ in photos),
                "photos that pip packages ship (scikit-image, matplotlib), not the authors' own; FERGIT ResNet; "
                "ferlab's detector and crop (the paper names neither)")

    # sections: per-class tables next to the paper's, confusion matrices, curves
    from ferlab.labels import CKPLUS_CLASSES, FER2013_CLASSES
    sec = ["## Per-class results next to the paper's tables", ""]
    sec += per_class_table(fer["basic"]["test"], BAH_TABLE2, FER2013_CLASSES, "Table 2: basic CNN on the FERGIT test split")
    sec += per_class_table(fer["resnet"]["test"], BAH_TABLE3, FER2013_CLASSES, "Table 3: ResNet-based CNN on the FERGIT test split")
    sec += per_class_table(ck["test"], BAH_TABLE4, CKPLUS_CLASSES, "Table 4: ResNet-based CNN on CK+ (random 10% split)")
    sec += per_class_table(pooled, None, CKPLUS_CLASSES, f"CK+ subject-independent {k}-fold, all folds' test predictions pooled (no paper counterpart)")
    sec += ["Per-fold accuracy: " + ", ".join(pct(a) for a in accs), "", "## Confusion matrices (the paper's Figure 5)", ""]
    for title, rep, classes, fname in (("FERGIT basic", fer["basic"]["test"], FER2013_CLASSES, "confusion-fergit-basic.png"),
                                       ("FERGIT ResNet", fer["resnet"]["test"], FER2013_CLASSES, "confusion-fergit-resnet.png"),
                                       ("CK+ ResNet, random split", ck["test"], CKPLUS_CLASSES, "confusion-ckplus-random.png"),
                                       (f"CK+ ResNet, {k}-fold pooled", pooled, CKPLUS_CLASSES, "confusion-ckplus-folds.png")):
        r.figure(fname, lambda p, rep=rep, classes=classes, title=title: plot_confusion(rep["confusion_matrix"], classes, p, title=title))
        sec += [f"**{title}**", "", f"![{title}]({fname})", ""] + confusion_table(rep)
    fig = r.figure("curves.png", lambda p: plot_panels(
        [(f"{name} on {data}", "accuracy", [curve(rr["history"], "train_acc", "train"), curve(rr["history"], "val_acc", "validation")]
          + ([curve(rr["history"], "test_acc", "test", "--o")] if rr["history"][0].get("test_acc") is not None else []), [])
         for name, data, rr in (("basic", "FERGIT", fer["basic"]), ("ResNet", "FERGIT", fer["resnet"]), ("ResNet", "CK+", ck))],
        p, "bah2022 Figures 6-8, remeasured"))
    sec += ["## Learning curves (the paper's Figures 6-8)", "", f"![curves]({fig})", ""]
    if photos:
        sec += ["## Personal photos (the paper's Figures 9-10)", "",
                "Each photo through `Recognizer(FERGIT ResNet run)`: face detection, crop, 48x48 grayscale, prediction.", "",
                "| photo | shows | prediction | image |", "|---|---|---|---|"]
        sec += [f"| {name} | {shows} | {pred} | ![{name}]({fname}) |" for name, shows, pred, fname in photos]
        sec.append("")
    r.sections += sec


def personal_photos(r: Reproduction, run_dir: str) -> list[tuple[str, str, str, str]]:
    """bah2022's last experiment on photos pip packages ship: [(name, what it shows, prediction, annotated
    image file)]; [] (with a note) without scikit-image or a face detector."""
    import cv2
    from ferlab.predict import Recognizer, draw_faces, write_image

    try:
        from matplotlib import cbook
        from PIL import Image
        from skimage import data
        with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
            hopper = np.asarray(im.convert("RGB"))
        photos = [("astronaut", "Eileen Collins, smiling", data.astronaut()),
                  ("grace_hopper", "Grace Hopper, portrait", hopper),
                  ("camera", "a photographer (grayscale)", np.stack([data.camera()] * 3, -1))]
        rec = Recognizer(run_dir)
    except (ImportError, FerlabError) as e:
        r.data_notes.append(f"personal-photo experiment skipped ({e})")
        return []
    rows = []
    with rec:
        for name, shows, rgb in photos:
            faces = rec.predict(rgb)
            pred = ", ".join(f"{f['label']} {f['confidence']:.0%}" for f in faces) or "no face found"
            fname = f"photo-{name}.jpg"
            write_image(r.out / fname, draw_faces(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), faces))
            rows.append((name, shows, pred, fname))
    return rows


# ---------------------------------------------------------------------------------------------
# li2023: the same CNN trained for 20 / 40 / 60 / 80 / 100 epochs

def li2023(r: Reproduction) -> None:
    data = r.path("data", "--data FER2013_CSV")
    checkpoints, separate = r.budget["epochs"], r.budget["separate_runs"]
    sizes = r.split_sizes(data)
    r.data_notes.append(f"{data}: Training {sizes.get('Training', 0):,} (paper 28,709), PublicTest {sizes.get('PublicTest', 0):,} "
                        f"for validation, PrivateTest {sizes.get('PrivateTest', 0):,} for test")
    if not separate:
        r.reductions.append(f"one {max(checkpoints)}-epoch run read at epochs {', '.join(map(str, checkpoints))} instead of "
                            f"{len(checkpoints)} separate runs: with a constant learning rate and no epoch-dependent callback, the "
                            "first E epochs of a run are a run of E epochs (same seed); what is lost is the run-to-run spread")
    rows = {}
    if separate:   # independent runs, as the paper's: seeds seed, seed+1, ...
        for i, e in enumerate(checkpoints):
            h = r.train(f"epochs-{e}", r.config("li2023", data=data, epochs=e, seed=r.seed + i))["history"]
            rows[e] = (h[-1], h)
    else:
        h = r.train(f"epochs-{max(checkpoints)}", r.config("li2023", data=data, epochs=max(checkpoints)))["history"]
        rows = {e: (at_epoch(h, e), h[:e]) for e in checkpoints if at_epoch(h, e) is not None}
    last_e = max(rows)
    last = rows[last_e][0]
    note = "batch 32, layer widths and augmentation values not stated (ours: see models/li2023.py and the li2023 recipe); Adam 1e-3 as stated"
    r.claim("Training accuracy at the end of training (epochs not stated; read as the longest run, 100)", "51.17%",
            f"{pct(last['train_acc'])} (epoch {last_e})", note)
    prev = sorted(rows)[-2] if len(rows) > 1 else None
    if prev is not None:
        gain = last["train_acc"] - rows[prev][0]["train_acc"]
        r.claim("Improvement over the previous (shorter) training", "8.11%",
                f"{100 * gain:+.2f} points ({100 * gain / max(rows[prev][0]['train_acc'], 1e-9):+.1f}% relative), epoch {prev} -> {last_e}",
                "the paper does not say whether 8.11% is points or relative, nor which shorter run it compares with")
    accs = [rows[e][0]["train_acc"] for e in sorted(rows)]
    losses = [rows[e][0]["train_loss"] for e in sorted(rows)]
    rising = all(a <= b for a, b in zip(accs, accs[1:])) and all(a >= b for a, b in zip(losses, losses[1:]))
    r.claim("More epochs: accuracy rises and loss falls", "yes (abstract, Section 3; Figures 4-8 plot the loss)",
            ("yes" if rising else "not monotone") + ": train acc " + " / ".join(pct(a) for a in accs)
            + "; loss " + " / ".join(f"{x:.3f}" for x in losses), note)
    gains = [b - a for a, b in zip(accs, accs[1:])]
    if gains:
        shrinking = all(a >= b for a, b in zip(gains, gains[1:]))
        r.claim("Gains shrink as training lengthens: the CNN converges", "once converged, more epochs do not improve accuracy "
                "'a great deal' (Section 3, no numbers)",
                ("yes" if shrinking else "not monotone") + ": train acc gain per step " + " / ".join(f"{100 * g:+.2f}" for g in gains) + " points",
                note)
    val_losses = [rows[e][0]["val_loss"] for e in sorted(rows)]
    r.claim("The loss also falls on held-out faces (the model 'was able to pass validation', Figures 4-8)", "yes (curves, no numbers)",
            ("yes" if all(a >= b for a, b in zip(val_losses, val_losses[1:])) else "not monotone") + ": PublicTest loss "
            + " / ".join(f"{x:.3f}" for x in val_losses), note)
    tests = [rows[e][0].get("test_acc") for e in sorted(rows)]
    if None not in tests:
        better = all(a <= b for a, b in zip(tests, tests[1:]))
        r.claim("More epochs improve accuracy on unseen data (generalisation)", "suggested (Conclusion), no test number",
                ("yes" if better else "not monotone") + f": PrivateTest after {' / '.join(map(str, sorted(rows)))} epochs "
                + " / ".join(pct(t) for t in tests),
                "PrivateTest at the end of each training (last epoch, no checkpoint selection)")

    sec = ["## Accuracy and loss after each training length", "",
           "| epochs | train loss | train acc | val loss | val acc | test acc | time |", "|---|---|---|---|---|---|---|"]
    for e in sorted(rows):
        row, hist = rows[e]
        sec.append(f"| {e} | {row['train_loss']:.3f} | {pct(row['train_acc'])} | {row['val_loss']:.3f} | {pct(row['val_acc'])} | "
                   f"{pct(row.get('test_acc'))} | {minutes(sum(x['time_s'] for x in hist))} |")
    if separate:
        panels = [(f"{e} epochs", "loss", [curve(rows[e][1], "train_loss", "train"), curve(rows[e][1], "val_loss", "validation")], [])
                  for e in sorted(rows)]
    else:
        h = rows[last_e][1]
        panels = [("loss", "loss", [curve(h, "train_loss", "train"), curve(h, "val_loss", "validation")], sorted(rows)),
                  ("accuracy", "accuracy", [curve(h, "train_acc", "train"), curve(h, "val_acc", "validation"),
                                            curve(h, "test_acc", "test", "--o")], sorted(rows))]
    fig = r.figure("curves.png", lambda p: plot_panels(panels, p, "li2023 Figures 4-8, remeasured"))
    sec += ["", f"![curves]({fig})", ""]
    r.sections += sec


PAPERS = {"triwijoyo2021": triwijoyo2021, "sarmah2023": sarmah2023, "bah2022": bah2022, "li2023": li2023}


# ---------------------------------------------------------------------------------------------
# Command line

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paper", metavar="PAPER", help=", ".join(PAPERS))
    p.add_argument("--budget", default="full", help="full (the paper's protocol; default) | cpu (a few hours on a 2-core CPU) | "
                   "smoke (for tests: 1-epoch tiny models)")
    p.add_argument("--data", help=f"FER2013 CSV (default {DEFAULT_PATHS['data']} if it exists)")
    p.add_argument("--fergit", help="FERGIT spec fergit:FER2013_CSV,IMAGE_DIR (default: --data with "
                   f"{DEFAULT_PATHS['muxspace']} if both exist)")
    p.add_argument("--ckplus", help=f"CK+ folder tree (default {DEFAULT_PATHS['ckplus']} if it exists)")
    p.add_argument("--out", type=Path, help="report and run directory (default ./reproduce-PAPER-BUDGET)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")


def resolve_paths(args) -> dict:
    """Explicit paths must exist; defaults under ../shared/data are used only if they do."""
    paths = {}
    for key, flag in (("data", "--data"), ("ckplus", "--ckplus")):
        given = getattr(args, key)
        if given:
            if not Path(given).exists():
                raise FerlabError(f"{flag} {given}: no such file or directory")
            paths[key] = given
        elif DEFAULT_PATHS[key].exists():
            paths[key] = str(DEFAULT_PATHS[key])
    if args.fergit:
        if not args.fergit.startswith("fergit:"):
            raise FerlabError(f"--fergit {args.fergit}: expected fergit:FER2013_CSV,IMAGE_DIR")
        paths["fergit"] = args.fergit
    elif "data" in paths and DEFAULT_PATHS["muxspace"].exists():
        paths["fergit"] = f"fergit:{paths['data']},{DEFAULT_PATHS['muxspace']}"
    return paths


def run(args) -> int:
    if args.paper not in PAPERS:
        raise FerlabError(f"unknown paper {args.paper!r} (known: {', '.join(PAPERS)})")
    if args.budget not in ("full", "cpu", "smoke"):
        raise FerlabError(f"--budget must be full, cpu or smoke, not {args.budget!r}")
    out = args.out or Path(f"reproduce-{args.paper}-{args.budget}")
    out.mkdir(parents=True, exist_ok=True)
    r = Reproduction(args.paper, args.budget, out, resolve_paths(args), args.seed, args.device)
    t0 = time.time()
    PAPERS[args.paper](r)
    command = " ".join(["ferlab reproduce", args.paper, "--budget", args.budget]
                       + [f"--{k} {getattr(args, k)}" for k in ("data", "fergit", "ckplus") if getattr(args, k)]
                       + [f"--out {out}"] + ([f"--seed {args.seed}"] if args.seed else []))
    report = r.write(command, time.time() - t0)
    print(f"wrote {report}, {out / 'report.json'} and figures")
    return 0
