"""`ferlab bundle RUN --name NAME`: a finished run as one of ferlab's shipped models, weights + model card.

    ferlab bundle ~/ferlab-runs/fernet_s-r1 --name default --int8
    ferlab bundle ~/ferlab-runs/fernet_m-ferplus-ft --name ferplus --int8
    ferlab bundle ~/ferlab-runs/general --name general --balance-prior auto --int8 \
        --cross-dataset ~/ferlab-runs/xd-lodo/report.json

Writes the run's best weights, stored as float16 (half the bytes; every number below is measured
on the float16-rounded weights), to <out>/<name>.safetensors and <name>.json (out: the package's
weights folder, src/ferlab/weights, unless --out), the model card: architecture, parameters, data,
recipe and command, epochs, wall time, machine, PrivateTest accuracy and macro-F1 (fp32; no TTA,
flip and ten-crop TTA) of the FER2013 CSV the run trained on (or --data), the minutes of training
to first reach each PrivateTest accuracy when the run logged it (`ferlab train --test-splits
PrivateTest`, as benchmarks/time_to_accuracy.py runs it), the PrivateTest accuracy of its ONNX
exports (fp32, and with --int8 int8 as `ferlab export --quantize int8 --data` writes it) with the
opset, preprocessing, classes. A run trained on FER+ labels (`ferlab train --ferplus`) is scored
against the FER+ majority labels of the votes file its config names.

--int8 also ships the int8 export, as <name>-int8.onnx (+ its card <name>-int8.json):
`Recognizer("default-int8")`; for "default" (or a name that has one) the fp32 export ships as
<name>-fp32.onnx, which `Recognizer()` runs without torch. A run trained on a mix (`--data A --data
B ...`) also gets each source's test-part accuracy, macro-F1 and per-class recall.
--interpolate moves the weights part of the way back to the run's --init model, BatchNorm statistics
recomputed (posttrain/interpolate.py; `auto` chooses alpha on the run's validation faces), and
--balance-prior folds a post-hoc logit adjustment into them (posttrain/prior.py; `auto` chooses tau
on the run's validation faces), both before anything is measured. The card records the class prior of
the run's training faces (after --balance-prior, the prior the adjusted model is left with), from
which `Recognizer.adapt` re-weights for the user's faces; --cross-dataset copies the
held-out rows of a benchmarks/cross_dataset.py report.json into the card. A run that started from
(`--init`) or distilled from (`--teacher`) other models records their cards' training too, read
before anything is overwritten: the total training cost includes theirs.
"""

import argparse
import csv
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ferlab.atomic import atomic_write_text, check_writable
from ferlab.checkpoint import WEIGHTS_DIR, load_model, save_weights
from ferlab.data import data_names, load_with_splits
from ferlab.data.mix import source_name
from ferlab.data.specs import parse_spec
from ferlab.errors import FerlabError
from ferlab.evaluate import predict_probs
from ferlab.posttrain.export import DEFAULT_OPSET, dataset_faces, export_model, quantize_int8, to_onnx
from ferlab.inference.torchloop import batched_probs
from ferlab.metrics import classification_report, first_reached, source_summaries
from ferlab.models import count_parameters
from ferlab.inference.onnxrt import OnnxModel
from ferlab.posttrain.interpolate import interpolate_run
from ferlab.posttrain.prior import balance_for_run, fold_into_bias, rebalanced_prior, training_prior
from ferlab.spec import card_input, to_model_input
from ferlab.training.config import run_config, train_command
from ferlab.training.run import BestWeights


def onnx_accuracy(model, data: str, test, int8: bool) -> dict:
    """PrivateTest accuracy of the fp32 and (with int8) int8 ONNX exports, as `ferlab export` writes them."""
    faces = to_model_input(test.images)
    fp32 = to_onnx(model)
    out = {"opset": DEFAULT_OPSET}
    graphs = [("fp32", fp32)] + ([("int8", quantize_int8(fp32, dataset_faces(data)))] if int8 else [])
    for name, graph in graphs:
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="the run directory (`ferlab train --out`)")
    p.add_argument("--name", required=True, help="the bundled model's name (default, general, ...)")
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="the folder it is written to (default: the package's weights)")
    p.add_argument("--data", help="the FER2013 CSV the card's PrivateTest numbers are measured on (default: the run's "
                   "own; its FER+ votes file, if any, comes from the run's config)")
    p.add_argument("--interpolate", metavar="auto|ALPHA", help="move the weights part of the way back to the run's "
                   "--init model (posttrain/interpolate.py)")
    p.add_argument("--start", help="with --interpolate: the run's --init weights under another name or path "
                   "(when this bundle's name is the run's --init)")
    p.add_argument("--balance-prior", metavar="auto|TAU", help="fold a post-hoc logit adjustment into the weights (posttrain/prior.py)")
    p.add_argument("--int8", action="store_true", help="also ship the int8 ONNX export (<name>-int8.onnx) and its accuracy")
    p.add_argument("--cross-dataset", type=Path, metavar="REPORT_JSON", help="a benchmarks/cross_dataset.py report.json to copy into the card")


def setting(value: str | None, flag: str) -> float | None:
    """auto -> None (chosen on validation faces), else the number given."""
    if value is None or value == "auto":
        return None
    try:
        return float(value)
    except ValueError:
        raise FerlabError(f"{flag} takes auto or a number, not {value!r}") from None


def fer2013_csv(config: dict) -> str:
    """The FER2013 CSV among the run's data (the card's PrivateTest numbers are measured on it)."""
    specs = config["data"] if isinstance(config["data"], list) else [config["data"]]
    for spec in specs:
        if source_name(spec) == "fer2013" and not parse_spec(spec).prefix:
            return spec
    raise FerlabError(f"{data_names(config['data'])}: the run has no FER2013 CSV to measure PrivateTest on; pass --data")


def adjust(a, config: dict, model) -> tuple[dict | None, dict | None]:
    """--interpolate and --balance-prior, in place on `model`; returns what each chose (None: not asked)."""
    line = balance = None
    if a.interpolate:
        line = interpolate_run(a.run, model, setting(a.interpolate, "--interpolate"), a.start)
        line["start"] = config["init"] + (" as it was before this bundle" if a.start else "")   # no local paths in a card
    if a.balance_prior:
        balance = balance_for_run(a.run, model, setting(a.balance_prior, "--balance-prior"))
        fold_into_bias(model, np.array(balance["prior"]), balance["tau"])
    return line, balance


def measure(model, data_csv: str, config: dict, int8: bool):
    """(metrics, the PrivateTest faces): accuracy and macro-F1 per TTA, of the ONNX exports, and of
    each source's test part for a mix."""
    data = load_with_splits(data_csv, config.get("ferplus"), config.get("seed", 0))
    test = data.select("PrivateTest")
    metrics = {}
    for tta in ("none", "flip", "tencrop"):
        t = time.time()
        probs = predict_probs(model, test.images, tta=tta)
        r = classification_report(test.labels, probs.argmax(1), data.classes)
        metrics[f"privatetest_tta_{tta}"] = {"accuracy": round(r["accuracy"], 4), "macro_f1": round(r["macro_f1"], 4),
                                             "num_samples": r["num_samples"], "seconds": round(time.time() - t, 2)}
    metrics["onnx"] = onnx_accuracy(model, data_csv, test, int8)
    if is_mix(config):
        metrics["source_test_parts_tta_none"] = source_test_metrics(model, config)
    return metrics, test


def is_mix(config: dict) -> bool:
    return isinstance(config["data"], list) and len(config["data"]) > 1


def model_card(name: str, config: dict, meta: dict, model, run: Path, parents: dict, line, balance, metrics: dict,
               test, cross_dataset: Path | None) -> dict:
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    best = BestWeights.of_run(run)
    mix = is_mix(config)
    thresholds, train_labels, test_labels = (0.65, 0.68, 0.70, 0.71, 0.72), "", ""
    if config.get("ferplus"):   # FER+ labels: 8 classes, scored against the majority of the votes
        targets = "vote distributions" if config.get("targets") == "soft" else "majority labels"
        thresholds = (0.80, 0.83, 0.85, 0.86, 0.87)
        train_labels = f" with FER+ labels ({Path(config['ferplus']).name}; {targets} as targets)"
        test_labels = ", FER+ majority labels"
    reached = {f"{t:.0%}": {"epoch": epoch, "minutes": round(mins, 1)}
               for t, (epoch, mins) in first_reached(rows, thresholds).items()}
    return {
        "name": name,
        "model": meta["model"],
        "model_kwargs": meta.get("model_kwargs", {}),
        "parameters": count_parameters(model),
        "classes": meta["classes"],
        "class_prior": meta["class_prior"],
        "preprocessing": {"input": "grayscale face crop resized to 48x48 (INTER_AREA)", "scale": "pixels / 255 in [0, 1]",
                          "layout": "(N, 1, 48, 48) float32", "output": "logits over classes; softmax for probabilities"},
        "input": meta["input"],   # machine-readable: size, pixel scale, face framing (ferlab.spec.card_input)
        "data": {"train": (" + ".join("FER2013 Training" if source_name(s) == "fer2013" else f"{source_name(s)} train part"
                                      for s in config["data"]) + train_labels if mix
                           else f"FER2013 {config['train_splits']} ({Path(config['data']).name}){train_labels}"),
                 "selection": ("the last epoch (a fixed schedule; --select last)" if config.get("select") == "last"
                               else f"best validation accuracy on {'every source val part' if mix else config['val_splits']}"
                               + (" among the epochs and the running average of the later ones (--average-from "
                                  f"{config['average_from']})" if config.get("average_from") else "")
                               + (f"; then {line['alpha']} of the way from {line['start']} to those weights, alpha chosen "
                                  "on the same validation faces (ferlab/posttrain/interpolate.py)" if line else "")),
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
        **({"cross_dataset": json.loads(cross_dataset.read_text())["held_out"]} if cross_dataset else {}),
        "licence": ("weights: MIT, trained by ferlab on " + (", ".join(source_name(s) for s in config["data"]) if mix else "FER2013")
                    + " (research data sets; check their terms for your use)"),
    }


def run(a) -> int:
    config = asdict(run_config(a.run))
    data_csv = a.data or fer2013_csv(config)
    check_writable(a.out)
    parents = parent_training(config, a.start)   # before this bundle may overwrite one of them
    model, meta = load_model(str(a.run / "best.safetensors"))
    meta.pop("weights_path")
    meta["input"] = card_input(meta, str(a.run))   # whole, spec's defaults for what an older run's card lacks
    line, balance = adjust(a, config, model)
    if line:
        meta["interpolation"] = {"alpha": line["alpha"], "start": line["start"]}
    if balance:
        meta["prior_adjustment"] = {"tau": balance["tau"]}
    # the class prior the shipped model was trained toward: Recognizer.adapt re-weights from it (inference/adapt.py)
    prior = np.array(balance["prior"]) if balance else training_prior(run_config(a.run))
    meta["class_prior"] = [round(float(v), 6) for v in rebalanced_prior(prior, balance["tau"] if balance else 0.0)]
    with torch.no_grad():  # measure exactly what ships: the float16-rounded weights
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
    metrics, test = measure(model, data_csv, config, a.int8)
    card = model_card(a.name, config, meta, model, a.run, parents, line, balance, metrics, test, a.cross_dataset)
    weights = a.out / f"{a.name}.safetensors"
    save_weights(weights, model, meta, float_dtype=torch.float16)
    atomic_write_text(a.out / f"{a.name}.json", json.dumps(card, indent=2) + "\n")
    print(f"wrote {a.out / a.name}.safetensors and .json")
    if a.int8:   # the same calibration faces as onnx_accuracy's, so the card's int8 accuracy is this file's
        export_model(str(weights), a.out / f"{a.name}-int8.onnx", quantize="int8", data=data_csv)
    # the fp32 twin that Recognizer() runs without torch (`pip install ferlab`): kept in step with the weights
    twin = a.out / f"{a.name}-fp32.onnx"
    if a.name == "default" or twin.is_file():
        export_model(str(weights), twin)
    print(json.dumps(metrics, indent=2))
    return 0
