"""Bundle a finished run as one of ferlab's shipped models: weights + model card.

    python scripts/bundle_default.py ~/ferlab-runs/fernet_s-r1 --data ../shared/data/fer2013/fer2013.csv.gz [--name default]
    python scripts/bundle_default.py ~/ferlab-runs/fernet_m-ferplus-ft --data ../shared/data/fer2013/fer2013.csv.gz --name ferplus
    python scripts/bundle_default.py ~/ferlab-runs/general --data ../shared/data/fer2013/fer2013.csv.gz --name general \
        --balance-prior auto --cross-dataset ~/ferlab-runs/xd-lodo/report.json

A run trained on FER+ labels (`ferlab train --ferplus`) is scored against the FER+ majority labels
of the votes file its config names.

Writes the run's best weights, stored as float16 (half the bytes; every number below is measured
on the float16-rounded weights), to src/ferlab/weights/<name>.safetensors and <name>.json,
the model card: architecture, parameters, data, recipe and command, epochs, wall time, machine,
PrivateTest accuracy and macro-F1 (fp32; no TTA, flip and ten-crop TTA) measured here, the
minutes of training to first reach each PrivateTest accuracy when the run logged it (`ferlab train
--test-splits PrivateTest`, as benchmarks/time_to_accuracy.py runs it), the PrivateTest accuracy
of its ONNX exports (fp32, and int8 as `ferlab export --quantize int8 --data` writes it) with the
opset, preprocessing, classes. The int8 export itself ships too, as <name>-int8.onnx (+ its
card <name>-int8.json): `Recognizer("default-int8")`; for "default" (or a name that has one) the
fp32 export ships as <name>-fp32.onnx, which `Recognizer()` runs without torch. A run trained on a mix
(`--data A --data B ...`) also gets each source's test-part accuracy, macro-F1 and per-class recall.
--interpolate moves the weights part of the way back to the run's --init model, BatchNorm statistics
recomputed (ferlab/interpolate.py; `auto` chooses alpha on the run's validation faces), and
--balance-prior folds a post-hoc logit adjustment into them (ferlab/prior.py; `auto` chooses tau on
the run's validation faces), both before anything is measured; --cross-dataset copies the
held-out rows of a benchmarks/cross_dataset.py report.json into the card. A run that
started from (`--init`) or distilled from (`--teacher`) other models records their cards'
training too, read before anything is overwritten: the total training cost includes theirs.
"""

import argparse
import csv
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ferlab.atomic import atomic_write_text
from ferlab.checkpoint import WEIGHTS_DIR, load_model, save_weights
from ferlab.evaluate import predict_probs
from ferlab.export import DEFAULT_OPSET, dataset_faces, export_model, quantize_int8, to_onnx
from ferlab.inference import batched_probs
from ferlab.onnxrt import OnnxModel
from ferlab.metrics import classification_report, first_reached, source_summaries
from ferlab.models import count_parameters
from ferlab.data import load_with_splits
from ferlab.data.mix import source_name
from ferlab.interpolate import interpolate_run
from ferlab.prior import balance_for_run, fold_into_bias
from ferlab.train import BestWeights, run_config, train_command
from ferlab.errors import run_script


def onnx_accuracy(model, data: str, test) -> dict:
    """PrivateTest accuracy of the fp32 and int8 ONNX exports, as `ferlab export` writes them."""
    faces = test.images.astype(np.float32) / 255.0
    fp32 = to_onnx(model)
    out = {"opset": DEFAULT_OPSET}
    for name, graph in (("fp32", fp32), ("int8", quantize_int8(fp32, dataset_faces(data)))):
        probs = batched_probs(OnnxModel(graph), faces)
        out[f"privatetest_accuracy_{name}"] = round(float((probs.argmax(1) == test.labels).mean()), 4)
    return out


def parent_training(config: dict, init_weights: str | None = None) -> dict:
    """The training summaries of the models a run was initialised (from `init_weights` when its --init's
    have been replaced since) or distilled from."""
    specs = [config.get("init", "")] + config.get("teacher", "").split(",")
    parents = {}
    for spec in dict.fromkeys(name.strip() for name in specs if name.strip()):
        _, card = load_model(init_weights if init_weights and spec == config.get("init") else spec)
        training = card.get("training", {})
        parents[spec] = {"weights": Path(card["weights_path"]).name, "model": card["model"],
                         **{k: training[k] for k in ("command", "epochs", "wall_time_minutes", "machine", "parents") if k in training}}
    return parents


def source_test_metrics(model, config: dict) -> dict:
    """Accuracy, macro-F1 and per-class recall on each source's test part of a mix run (no TTA)."""
    data = load_with_splits(config["data"], config.get("ferplus"), config.get("seed", 0))
    test = data.select("test")
    return source_summaries(test.labels, predict_probs(model, test.images).argmax(1), test.origins, data.classes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--data", required=True, help="the FER2013 CSV the run was trained on (its FER+ votes file, if any, comes from the run's config)")
    p.add_argument("--name", default="default")
    p.add_argument("--interpolate", metavar="auto|ALPHA", help="move the weights part of the way back to the run's --init model (ferlab/interpolate.py)")
    p.add_argument("--start", help="with --interpolate: the run's --init weights under another name or path "
                   "(when this bundle's name is the run's --init)")
    p.add_argument("--balance-prior", metavar="auto|TAU", help="fold a post-hoc logit adjustment into the weights (ferlab/prior.py)")
    p.add_argument("--cross-dataset", type=Path, metavar="REPORT_JSON", help="a benchmarks/cross_dataset.py report.json to copy into the card")
    a = p.parse_args()

    config = asdict(run_config(a.run))
    with open(a.run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    parents = parent_training(config, a.start)   # before this bundle may overwrite one of them
    model, meta = load_model(str(a.run / "best.safetensors"))
    best = BestWeights.of_run(a.run)
    meta.pop("weights_path")
    line = None
    if a.interpolate:
        line = interpolate_run(a.run, model, None if a.interpolate == "auto" else float(a.interpolate), a.start)
        line["start"] = config["init"] + (" as it was before this bundle" if a.start else "")   # no local paths in a card
        meta["interpolation"] = {"alpha": line["alpha"], "start": line["start"]}
    balance = None
    if a.balance_prior:
        balance = balance_for_run(a.run, model, None if a.balance_prior == "auto" else float(a.balance_prior))
        fold_into_bias(model, np.array(balance["prior"]), balance["tau"])
        meta["prior_adjustment"] = {"tau": balance["tau"]}
    with torch.no_grad():  # measure exactly what ships: the float16-rounded weights
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
    data = load_with_splits(a.data, config.get("ferplus"), config.get("seed", 0))
    test = data.select("PrivateTest")
    metrics = {}
    for tta in ("none", "flip", "tencrop"):
        t = time.time()
        probs = predict_probs(model, test.images, tta=tta)
        r = classification_report(test.labels, probs.argmax(1), data.classes)
        metrics[f"privatetest_tta_{tta}"] = {"accuracy": round(r["accuracy"], 4), "macro_f1": round(r["macro_f1"], 4),
                                             "num_samples": r["num_samples"], "seconds": round(time.time() - t, 2)}
    metrics["onnx"] = onnx_accuracy(model, a.data, test)
    mix = isinstance(config["data"], list) and len(config["data"]) > 1
    if mix:
        metrics["source_test_parts_tta_none"] = source_test_metrics(model, config)
    thresholds, train_labels, test_labels = (0.65, 0.68, 0.70, 0.71, 0.72), "", ""
    if config.get("ferplus"):   # FER+ labels: 8 classes, scored against the majority of the votes
        targets = "vote distributions" if config.get("targets") == "soft" else "majority labels"
        thresholds = (0.80, 0.83, 0.85, 0.86, 0.87)
        train_labels = f" with FER+ labels ({Path(config['ferplus']).name}; {targets} as targets)"
        test_labels = ", FER+ majority labels"
    reached = {f"{t:.0%}": {"epoch": epoch, "minutes": round(mins, 1)}
               for t, (epoch, mins) in first_reached(rows, thresholds).items()}
    card = {
        "name": a.name,
        "model": meta["model"],
        "model_kwargs": meta.get("model_kwargs", {}),
        "parameters": count_parameters(model),
        "classes": meta["classes"],
        "preprocessing": {"input": "grayscale face crop resized to 48x48 (INTER_AREA)", "scale": "pixels / 255 in [0, 1]",
                          "layout": "(N, 1, 48, 48) float32", "output": "logits over classes; softmax for probabilities"},
        "data": {"train": (" + ".join("FER2013 Training" if source_name(s) == "fer2013" else f"{source_name(s)} train part"
                                      for s in config["data"]) + train_labels if mix
                           else f"FER2013 {config['train_splits']} ({Path(config['data']).name}){train_labels}"),
                 "selection": ("the last epoch (a fixed schedule; --select last)" if config.get("select") == "last"
                               else f"best validation accuracy on {'every source val part' if mix else config['val_splits']}"
                               + (" among the epochs and the running average of the later ones (--average-from "
                                  f"{config['average_from']})" if config.get("average_from") else "")
                               + (f"; then {line['alpha']} of the way from {line['start']} to those weights, alpha chosen "
                                  "on the same validation faces (ferlab/interpolate.py)" if line else "")),
                 "test": f"PrivateTest ({len(test):,} rows in ferlab's copy{test_labels})"},
        "training": {"command": train_command(config), "config": config,
                     "epochs": len(rows), "best_epoch": best.epoch,
                     **({"averaged_epochs": list(best.averaged_epochs)} if best.averaged_epochs else {}),
                     "wall_time_minutes": round(sum(float(r["time_s"]) for r in rows) / 60, 1),
                     "privatetest_reached_no_tta": reached,
                     "machine": meta.get("trained_on", "not recorded"),
                     **({"parents": parents} if parents else {})},
        **({"interpolation": line} if line else {}),
        **({"prior_adjustment": balance} if balance else {}),
        "metrics": metrics,
        **({"cross_dataset": json.loads(a.cross_dataset.read_text())["held_out"]} if a.cross_dataset else {}),
        "licence": ("weights: MIT, trained by ferlab on " + (", ".join(source_name(s) for s in config["data"]) if mix else "FER2013")
                    + " (research data sets; check their terms for your use)"),
    }
    WEIGHTS_DIR.mkdir(exist_ok=True)
    save_weights(WEIGHTS_DIR / f"{a.name}.safetensors", model, meta, float_dtype=torch.float16)
    atomic_write_text(WEIGHTS_DIR / f"{a.name}.json", json.dumps(card, indent=2) + "\n")
    print(f"wrote {WEIGHTS_DIR / a.name}.safetensors and .json")
    # the same calibration faces as onnx_accuracy's, so the card's int8 accuracy is this file's
    export_model(a.name, WEIGHTS_DIR / f"{a.name}-int8.onnx", quantize="int8", data=a.data)
    # the fp32 twin that Recognizer() runs without torch (`pip install ferlab`): kept in step with the weights
    twin = WEIGHTS_DIR / f"{a.name}-fp32.onnx"
    if a.name == "default" or twin.is_file():
        export_model(a.name, twin)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    raise SystemExit(run_script(main))
