"""Does a fine-tune keep what its starting model knew? Weight interpolation (WiSE-FT, Wortsman et al.
2022) between a run's `--init` model and the run's selected weights, scored along the line.

    python benchmarks/interpolate.py ~/ferlab-runs/RUN --fer2013 DATA/fer2013/fer2013.csv.gz \
        --ckplus DATA/ckplus48/CK+48 --muxspace DATA/muxspace48 [--alphas 0.3,0.5,0.7] [--keep-bn]

alpha 0 is the starting model (e.g. `default`), alpha 1 the fine-tune (ferlab/posttrain/interpolate.py; its
BatchNorm statistics recomputed on the run's training faces unless --keep-bn). For each alpha it
prints the run's validation accuracy / macro-F1 per source (what choose_alpha may look at) and the
cross_dataset.py sets (what it may not): FER2013 PrivateTest, FER+, and CK+48 / muxspace48, whole
when the run never trained on them, else their test part; then the alpha choose_alpha picks.
One JSON line per alpha, also written to --out.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cross_dataset import evaluation_sets, held_out_part, trained_sources  # noqa: E402

from ferlab.atomic import atomic_write_text  # noqa: E402
from ferlab.checkpoint import load_model  # noqa: E402
from ferlab.evaluate import predict_probs  # noqa: E402
from ferlab.posttrain.interpolate import ALPHA_GRID, WeightLine, choose_alpha, source_scores  # noqa: E402
from ferlab.labels import FER2013_CLASSES  # noqa: E402
from ferlab.metrics import summary  # noqa: E402
from ferlab.errors import run_script  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="a run directory whose config.json names its --init model")
    p.add_argument("--fer2013", required=True)
    p.add_argument("--ferplus")
    p.add_argument("--ckplus")
    p.add_argument("--muxspace")
    p.add_argument("--alphas", default=",".join(str(a) for a in ALPHA_GRID))
    p.add_argument("--start", help="the run's --init weights under another name or path (if a bundle has since replaced them)")
    p.add_argument("--keep-bn", action="store_true", help="blend the BatchNorm statistics too instead of recomputing them")
    p.add_argument("--out", type=Path, help="JSON lines file (default: RUN/interpolate.jsonl)")
    a = p.parse_args()

    line = WeightLine(a.run, load_model(str(a.run))[0], a.start)
    seen, seed = trained_sources(str(a.run))
    scored = {}
    for name, (faces, test_part) in evaluation_sets(a).items():
        rows, mask = held_out_part(name, faces, test_part, seen, seed)
        scored[f"{name} ({rows})"] = (faces.images[mask], faces.labels[mask])
    print(json.dumps({"start": line.start_name, "val": line.start_scores}), flush=True)
    rows, val_scores = [], {}
    for alpha in [float(x) for x in a.alphas.split(",")]:
        t0 = time.time()
        model = line.move_to(alpha, recalibrate=not a.keep_bn)
        val_scores[alpha] = source_scores(model, line.val)
        row = {"alpha": alpha, "recalibrated_bn": not a.keep_bn, **{f"val {s}": [v["accuracy"], v["macro_f1"]] for s, v in val_scores[alpha].items()}}
        for name, (images, labels) in scored.items():
            s = summary(labels, predict_probs(model, images).argmax(1), FER2013_CLASSES)
            row[name] = [s["accuracy"], s["macro_f1"]]
        row["seconds"] = round(time.time() - t0)
        rows.append(row)
        print(json.dumps(row), flush=True)
    chosen = choose_alpha(val_scores, line.start_scores)
    print(f"alpha chosen on validation (ferlab.posttrain.interpolate.choose_alpha): {chosen}")
    atomic_write_text(a.out or a.run / "interpolate.jsonl", "".join(json.dumps(r) + "\n" for r in rows)
                      + json.dumps({"chosen_alpha": chosen}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
