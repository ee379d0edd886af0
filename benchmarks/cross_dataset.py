"""How a model holds up on faces that are not FER2013: a leave-one-data-set-out report.

    python benchmarks/cross_dataset.py --fer2013 DATA/fer2013/fer2013.csv.gz --ferplus DATA/fer2013/fer2013new.csv \
        --ckplus DATA/ckplus48/CK+48 --muxspace DATA/muxspace48 --tpe DATA/taiwanese_tpe \
        default ~/ferlab-runs/run1 v1,v2 [...] [--tta flip] [--adapt] \
        [--train "--recipe fernet_m --init default --epochs 2 ..." --runs ~/ferlab-runs/lodo-NAME]

Every MODEL (bundled name, run directory or weights file; A,B an ensemble: the mean of their
probabilities) is scored on five sets of faces:
- fer2013: FER2013 PrivateTest with its own labels (the standard benchmark);
- ferplus: the same faces with FER+ plurality labels (7 classes; contempt/unknown/not-a-face/tied rows dropped);
- CK+48: posed expressions of 123 subjects (927 faces in 6 shared classes; CK+ has no neutral);
- muxspace48: crowd-labelled LFW-style photos (13,670 faces, mostly happy and neutral);
- taiwanese_tpe: posed expressions of 29 East Asian performers (1,232 faces, performed labels).
A set the model never trained on is scored on all its faces ("held out"). A set it trained on (its
run's config names it in --data) is scored only on the test part of its mix split, which training
and selection never saw (data/mix.py, the run's seed), and is marked "seen". For a like-for-like
view, the second table scores every model on the same test parts.

--train ARGS trains one model per held-out source first (leave-one-data-set-out): for each of the
sources given besides FER2013, on FER2013 + the others with that one held out, each `ferlab train
ARGS --data ...` into --runs/<held-out>/ (resumed if killed), then scores them next to the MODELs.

--adapt also scores every model adapted to the faces it is scored on, without their labels
(`Recognizer.adapt_faces`, ferlab/inference/adapt.py), as `ferlab predict DIR --adapt` would: with
--tta auto (the default, the Recognizer's) the adapted model averages each face with its mirror and
the others see each face once.

--balance-prior auto,0.2,0.4 also scores each model re-balanced for its training class prior
(ferlab/posttrain/prior.py), as `ferlab bundle --balance-prior` ships it: `auto` with tau chosen on a run
directory's own validation faces (never on a scored face), a number with that tau (any model whose run
or card names its training data). On leave-one-out models this chooses tau for faces of an unseen source.

Reports accuracy, macro-F1 (over the classes present) and per-class recall; prints Markdown and
writes it with a JSON copy to --out.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ferlab.atomic import atomic_write_text  # noqa: E402
from ferlab.checkpoint import load_model  # noqa: E402
from ferlab.data import load_dataset  # noqa: E402
from ferlab.data.mix import mix_splits, source_name, to_fer2013_classes  # noqa: E402
from ferlab.evaluate import evaluate_models  # noqa: E402
from ferlab.inference.recognizer import RECOGNIZER_TTA  # noqa: E402
from ferlab.labels import FER2013_CLASSES  # noqa: E402
from ferlab.metrics import summary  # noqa: E402
from ferlab.posttrain.prior import balance_for_run, rebalance, training_prior  # noqa: E402
from ferlab.training.config import config_from_file  # noqa: E402
from ferlab.errors import run_script  # noqa: E402
from ferlab.spec import to_model_input  # noqa: E402

SHORT = {"angry": "ang", "disgust": "dis", "fear": "fea", "happy": "hap", "sad": "sad", "surprise": "sur", "neutral": "neu"}


def evaluation_sets(a) -> dict:
    """name -> (all faces FaceDataset, test-part mask); every set in FER2013's 7 classes."""
    fer = load_dataset(a.fer2013)
    sets = {"fer2013": (fer.select("PrivateTest"), None)}
    if a.ferplus:
        plus = load_dataset(a.fer2013, ferplus=a.ferplus).select("PrivateTest")
        sets["ferplus"] = (to_fer2013_classes(plus), None)
    for path, spec in source_specs(a):
        if path:
            data = to_fer2013_classes(load_dataset(spec))
            sets[source_name(spec)] = (data, mix_splits(data, seed=0) == "test")
    return sets


def source_specs(a) -> list[tuple[str, str]]:
    """(path, --data spec) of each non-FER2013 source given."""
    return [(path, spec) for path, spec in ((a.ckplus, f"ckplus:{a.ckplus}"), (a.muxspace, a.muxspace), (a.tpe, f"tpe:{a.tpe}"))
            if path]


def adapted_probs(members: list[str], images: np.ndarray, tta: str) -> np.ndarray:
    """A model's (or ensemble's) probabilities on uint8 faces after adapting it to those same faces (no labels)."""
    from ferlab import Recognizer

    x = to_model_input(images)
    return Recognizer(members, detector="none", tta=tta, backend="onnx").adapt_faces(x).probabilities(x)


def trained_sources(members: list[str]) -> tuple[set, int]:
    """(names of the data sets a model, or any member of an ensemble, trained on; the first member's
    seed): from a run's config.json or a card's config."""
    seen, seeds = set(), []
    for spec in members:
        names, seed = member_sources(spec)
        seen |= names
        seeds.append(seed)
    if len(set(seeds)) > 1:
        print(f"warning: members split their mixes with seeds {seeds}; seen sets are scored on the first's test part",
              file=sys.stderr)
    return seen, seeds[0]


def member_sources(spec: str) -> tuple[set, int]:
    config = training_settings(spec)
    data = config.get("data") or []
    return {source_name(s) for s in ([data] if isinstance(data, str) else data)}, int(config.get("seed", 0))


def training_settings(spec: str) -> dict:
    """The training settings of a run directory (its config.json) or of a weights file (its card's); {} if none."""
    path = Path(spec).expanduser()
    if (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text())
    return load_model(spec)[1].get("training", {}).get("config", {})


def balance_variants(spec: str, settings: list[str]) -> list[tuple[str, dict]]:
    """(report name, {"prior", "tau"}) for each --balance-prior setting that applies to a model."""
    path = Path(spec).expanduser()
    variants, prior = [], None
    for setting in settings:
        if setting == "auto":
            if (path / "config.json").is_file():
                balance = balance_for_run(path, load_model(spec)[0])
                variants.append((f"{spec} balanced (tau {balance['tau']})", balance))
                print(json.dumps({"model": spec, **balance}), flush=True)
            continue
        if prior is None:
            trained_with = training_settings(spec)
            if not trained_with:
                print(f"warning: {spec}: no training settings, so no class prior to re-balance for", file=sys.stderr)
                return variants
            prior = training_prior(config_from_file(trained_with, path))
        variants.append((f"{spec} tau {float(setting):g}", {"prior": prior.tolist(), "tau": float(setting)}))
    return variants


def held_out_part(name: str, data, test_part, seen: set, seed: int) -> tuple[str, np.ndarray]:
    """(how the report names them, which faces) of a set's faces that a model trained on the sources
    `seen` (with `seed`) never trained on or was selected with: a set it never saw counts whole, a seen
    set only the test part of the model's own mix split."""
    if test_part is None:   # FER2013 PrivateTest: never trained on
        return "PrivateTest", np.ones(len(data), bool)
    if name in seen:
        return "seen: test part", mix_splits(data, seed) == "test"
    return "held out: all", np.ones(len(data), bool)


def markdown(title: str, rows: list[dict]) -> str:
    classes = [c for c in FER2013_CLASSES if any(c in r["recall"] for r in rows)]
    head = ["set", "model", "rows", "faces", "accuracy", "macro-F1"] + [f"{SHORT[c]} R" for c in classes]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["set"], r["model"], r["rows"], str(r["num_samples"]), f"{r['accuracy']:.2%}", f"{r['macro_f1']:.2%}"]
        cells += [f"{r['recall'][c]:.2f}" if c in r["recall"] else "-" for c in classes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(out: Path, text: str, data: dict) -> None:
    """The report as Markdown (printed too) and JSON, in folder `out`."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.md", text)
    atomic_write_text(out / "report.json", json.dumps(data, indent=1))
    print(text)


def train_lodo(a) -> list[str]:
    """One run per held-out source (see module doc); returns the run directories."""
    specs = source_specs(a)
    folds = {source_name(spec): [a.fer2013] + [other for _, other in specs if other != spec] for _, spec in specs}
    runs = []
    for held_out, specs in folds.items():
        out = Path(a.runs).expanduser() / held_out
        resume = (out / "last.pt").is_file()
        cmd = [sys.executable, "-m", "ferlab", "train", "--out", str(out)]
        cmd += ["--resume"] if resume else a.train.split() + [w for s in specs for w in ("--data", s)]
        done = (out / "metrics.csv").is_file() and (out / "best.safetensors").is_file() and resume and \
            json.loads((out / "config.json").read_text())["epochs"] <= len((out / "metrics.csv").read_text().splitlines()) - 1
        if not done:
            print(f"training the model that holds out {held_out}: {' '.join(cmd)}", file=sys.stderr)
            subprocess.run(cmd, check=True)
        runs.append(str(out))
    return runs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="*", default=["default"], help="bundled names, run directories, weights files")
    p.add_argument("--fer2013", required=True, help="fer2013.csv(.gz)")
    p.add_argument("--ferplus", help="fer2013new.csv (adds the FER+ set)")
    p.add_argument("--ckplus", help="the CK+48 folder")
    p.add_argument("--muxspace", help="the muxspace48 folder")
    p.add_argument("--tpe", help="the taiwanese_tpe folder")
    p.add_argument("--adapt", action="store_true", help="also score each model adapted to the faces it is scored on")
    p.add_argument("--tta", default="auto", choices=RECOGNIZER_TTA,
                   help="auto: flip for adapted models (as the Recognizer does), none for the others")
    p.add_argument("--train", help="`ferlab train` options for the leave-one-data-set-out models (needs --runs)")
    p.add_argument("--runs", help="where the --train runs go (one subfolder per held-out source)")
    p.add_argument("--balance-prior", metavar="auto,TAU,...", default="",
                   help="also score each model re-balanced for its training class prior: auto (tau chosen on a run's "
                        "validation faces) and/or given taus")
    p.add_argument("--out", type=Path, default=Path("cross_dataset"), help="report folder (report.md, report.json)")
    a = p.parse_args()
    balance_settings = [s for s in a.balance_prior.split(",") if s]
    for setting in balance_settings:
        if setting != "auto":
            try:
                float(setting)
            except ValueError:
                p.error(f"--balance-prior takes auto or numbers, not {setting!r}")
    if a.train and not (a.runs and len(source_specs(a)) >= 2):
        p.error("--train needs --runs and at least two of --ckplus, --muxspace, --tpe")
    models = list(a.models) + (train_lodo(a) if a.train else [])

    t0 = time.time()
    sets = evaluation_sets(a)
    held_out, same_rows = [], []
    for spec in models:
        members = spec.split(",")
        variants = [(spec, None)]   # (its name in the report, prior adjustment, "adapt" or None)
        if len(members) == 1:
            variants += balance_variants(spec, balance_settings)
        if a.adapt:
            variants.append((f"{spec} adapted", "adapt"))
        seen, seed = trained_sources(members)
        for name, (data, test_part) in sets.items():
            # (table, its rows column, which faces)
            parts = [(held_out, *held_out_part(name, data, test_part, seen, seed))]
            if test_part is not None:
                parts.append((same_rows, "seed-0 test part", test_part))
            scored = np.logical_or.reduce([mask for _, _, mask in parts])
            model_probs = evaluate_models(members, data.images[scored], tta="none" if a.tta == "auto" else a.tta)[0]
            for label, balance in variants:
                pred = np.zeros(len(data), np.int64)
                probs = adapted_probs(members, data.images[scored], a.tta) if balance == "adapt" else \
                    rebalance(model_probs, np.array(balance["prior"]), balance["tau"]) if balance else model_probs
                pred[scored] = probs.argmax(1)
                for table, rows, mask in parts:
                    table.append({"set": name, "model": label, "rows": rows,
                                  **summary(data.labels[mask], pred[mask], FER2013_CLASSES)})
                print(json.dumps(held_out[-1]), flush=True)
    held_out.sort(key=lambda r: list(sets).index(r["set"]))
    same_rows.sort(key=lambda r: list(sets).index(r["set"]))
    text = (f"## Cross-dataset report (TTA {a.tta}; {time.time() - t0:.0f} s)\n\n"
            + markdown("Each set held out where the model never trained on it", held_out) + "\n"
            + markdown("Same rows for every model: the seed-0 test part of each mix source", same_rows))
    write_report(a.out, text, {"held_out": held_out, "same_rows": same_rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
