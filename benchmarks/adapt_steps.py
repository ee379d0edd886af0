"""Which of Recognizer.adapt's two steps help on faces a model never saw: an ablation on held-out sets.

    python benchmarks/adapt_steps.py --fer2013 DATA/fer2013/fer2013.csv.gz --ckplus DATA/ckplus48/CK+48 \
        --muxspace DATA/muxspace48 --tpe DATA/taiwanese_tpe MODEL [MODEL ...] [--sizes 16,32,64,256] \
        [--draws 300] [--prior-faces 0,16,64] [--out adapt_steps]

Every MODEL (bundled name, run directory or weights file) is scored on each set it never trained on
(all its faces, as benchmarks/cross_dataset.py holds it out) and on FER2013 PrivateTest, five ways:
as shipped; its BatchNorm statistics adapted to those faces (`Recognizer.adapt_faces(x, prior=False)`);
its predictions re-weighted to the class prior of those faces without the BatchNorm step; both; and
both with each face averaged with its mirror, as `Recognizer.adapt` ships (ferlab/inference/adapt.py,
tta "auto"). No labels are used to adapt.

Then, for the prior step alone, random draws of --sizes faces from each held-out set (--draws each):
the mean gain in accuracy and the share of draws that lost, with the training prior counted as each
of --prior-faces faces in the estimate (ferlab.inference.adapt.PRIOR_SHIFT_FACES ships).

The training prior is the card's class_prior (`ferlab bundle` writes it); for an older card without
one, the class prior of the training faces its config names (which needs those data sets here).
Prints Markdown and writes it with a JSON copy to --out.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cross_dataset import evaluation_sets, held_out_part, trained_sources, training_settings, write_report  # noqa: E402
from ferlab import Recognizer  # noqa: E402
from ferlab.errors import FerlabError, run_script  # noqa: E402
from ferlab.inference.adapt import class_weights, reweight  # noqa: E402
from ferlab.labels import FER2013_CLASSES  # noqa: E402
from ferlab.metrics import summary  # noqa: E402
from ferlab.posttrain.prior import training_prior  # noqa: E402
from ferlab.spec import to_model_input  # noqa: E402
from ferlab.training.config import config_from_file  # noqa: E402

WAYS = ("as shipped", "BatchNorm only", "prior only", "BatchNorm + prior", "BatchNorm + prior, flip")


def model_prior(spec: str, rec: Recognizer) -> np.ndarray:
    if rec.card.get("class_prior"):
        return np.array(rec.card["class_prior"])
    settings = training_settings(spec)
    if not settings:
        raise FerlabError(f"{spec}: its card has no class_prior and no training settings to compute one from")
    return training_prior(config_from_file(settings, Path(spec)))


def adapted_ways(spec: str, x: np.ndarray, prior: np.ndarray) -> dict:
    """{way: probabilities} of one model on faces x, adapted to x where the way says so."""
    rec = Recognizer([spec], detector="none", backend="onnx", tta="none")
    raw = rec.probabilities(x)
    batchnorm = rec.adapt_faces(x, prior=False).probabilities(x)
    shipped = Recognizer([spec], detector="none", backend="onnx").adapt_faces(x).probabilities(x)   # tta auto: flip
    return {"as shipped": raw, "BatchNorm only": batchnorm,
            "prior only": reweight(raw, class_weights(raw, prior)),
            "BatchNorm + prior": reweight(batchnorm, class_weights(batchnorm, prior)),
            "BatchNorm + prior, flip": shipped}


def draws(probs, labels, prior, sizes, count, prior_faces, seed=0) -> dict:
    """{(size, k): (mean accuracy gain in points, share of draws that lost)} of the prior step alone."""
    rng = np.random.default_rng(seed)
    hit = probs.argmax(1) == labels
    out = {}
    for size in sizes:
        picks = [rng.choice(len(labels), size, replace=False) for _ in range(count)]
        for k in prior_faces:
            gains = np.array([100 * ((reweight(probs[i], class_weights(probs[i], prior, k)).argmax(1) == labels[i]).mean()
                                     - hit[i].mean()) for i in picks])
            out[(size, k)] = (float(gains.mean()), float((gains < 0).mean()))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="bundled names, run directories, weights files")
    p.add_argument("--fer2013", required=True, help="fer2013.csv(.gz)")
    p.add_argument("--ckplus", help="the CK+48 folder")
    p.add_argument("--muxspace", help="the muxspace48 folder")
    p.add_argument("--tpe", help="the taiwanese_tpe folder")
    p.add_argument("--sizes", default="16,32,64,256", help="faces per random draw")
    p.add_argument("--draws", type=int, default=300, help="random draws per size")
    p.add_argument("--prior-faces", default="0,16,64", help="how many faces the training prior counts as")
    p.add_argument("--out", type=Path, default=Path("adapt_steps"), help="report folder (report.md, report.json)")
    a = p.parse_args()
    a.ferplus = None
    sizes = [int(s) for s in a.sizes.split(",")]
    prior_faces = [float(k) for k in a.prior_faces.split(",")]

    t0 = time.time()
    sets = evaluation_sets(a)
    rows, draw_rows = [], []
    for spec in a.models:
        prior = model_prior(spec, Recognizer([spec], detector="none", backend="onnx"))
        seen, seed = trained_sources([spec])
        for name, (data, test_part) in sets.items():
            rows_name, mask = held_out_part(name, data, test_part, seen, seed)
            if rows_name.startswith("seen"):
                continue
            x, labels = to_model_input(data.images[mask]), data.labels[mask]
            ways = adapted_ways(spec, x, prior)
            for way, probs in ways.items():
                rows.append({"model": spec, "set": name, "rows": rows_name, "way": way,
                             **summary(labels, probs.argmax(1), FER2013_CLASSES)})
                print(json.dumps({k: rows[-1][k] for k in ("model", "set", "way", "accuracy", "macro_f1")}), flush=True)
            if test_part is not None:   # a held-out source (not FER2013's PrivateTest)
                for (size, k), (gain, lost) in draws(ways["as shipped"], labels, prior, sizes, a.draws, prior_faces).items():
                    draw_rows.append({"model": spec, "set": name, "faces": size, "prior_faces": k,
                                      "mean_gain": round(gain, 2), "lost": round(lost, 3)})

    lines = [f"## Adaptation steps on held-out faces ({time.time() - t0:.0f} s)", "",
             "| model | set | rows | faces | " + " | ".join(WAYS) + " |", "|---|---|---|---|" + "---|" * len(WAYS)]
    for i in range(0, len(rows), len(WAYS)):
        group = rows[i:i + len(WAYS)]
        cells = [f"{100 * r['accuracy']:.2f} / {100 * r['macro_f1']:.2f}" for r in group]
        lines.append(f"| {group[0]['model']} | {group[0]['set']} | {group[0]['rows']} | {group[0]['num_samples']} | "
                     + " | ".join(cells) + " |")
    lines += ["", f"### The prior step alone on random draws ({a.draws} each): mean accuracy gain, share of draws that lost", "",
              "| model | set | training prior counted as | " + " | ".join(f"{s} faces" for s in sizes) + " |",
              "|---|---|---|" + "---|" * len(sizes)]
    for spec in a.models:
        for name in sets:
            for k in prior_faces:
                cells = [next((f"{r['mean_gain']:+.2f} ({r['lost']:.0%})" for r in draw_rows if r["model"] == spec
                               and r["set"] == name and r["faces"] == s and r["prior_faces"] == k), None) for s in sizes]
                if all(cells):
                    lines.append(f"| {spec} | {name} | {k:g} faces | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    write_report(a.out, text, {"ways": rows, "draws": draw_rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
