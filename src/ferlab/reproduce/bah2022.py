"""bah2022: a basic and a residual CNN on FERGIT (FER2013 + muxspace48) and CK+, and personal photos."""

import json
import math
import os
from pathlib import Path

import cv2
import numpy as np

from ferlab.atomic import atomic_write_text
from ferlab.data import FaceDataset, load_dataset, stratified_split
from ferlab.errors import FerlabError
from ferlab.inference.images import draw_faces, write_image
from ferlab.labels import CKPLUS_CLASSES, FER2013_CLASSES
from ferlab.metrics import classification_report, plot_confusion
from ferlab.inference.recognizer import Recognizer
from ferlab.reproduce.core import (Claim, Reproduction, best_row, confusion_table, curve, minutes, n_epochs, pct,
                                   per_class_table, plot_panels, recalibrated_note)

TITLE = "Bah & Xue 2022, \"Facial expression recognition using adapted residual based deep neural network\""
BUDGETS = {
    # ~35 h (13 h; less if early stopping ends runs)
    "full": {"fergit_epochs": 100, "ckplus_epochs": 100, "folds": 10, "fold_epochs": 100},
    # ~1.5 h (35 min): 3 epochs of each model on FERGIT's 44,440 training faces; CK+ is small (~880 faces a run);
    # measured ~2.4 h on 1 AVX2 thread beside another run (FERGIT epochs 15-18 min)
    "cpu": {"fergit_epochs": 3, "ckplus_epochs": 15, "folds": 10, "fold_epochs": 8},
    "smoke": {"fergit_epochs": 1, "ckplus_epochs": 1, "folds": 3, "fold_epochs": 1},
}
TABLE2 = {"angry": (0.64, 0.49, 0.56, 260), "disgust": (0.75, 0.57, 0.65, 37), "fear": (0.6, 0.44, 0.51, 257),
          "happy": (0.89, 0.93, 0.91, 735), "sad": (0.54, 0.62, 0.57, 304), "surprise": (0.76, 0.73, 0.75, 218),
          "neutral": (0.75, 0.82, 0.78, 654), "accuracy": 0.74, "n": 2465}
TABLE3 = {"angry": (0.62, 0.54, 0.58, 260), "disgust": (0.71, 0.54, 0.62, 37), "fear": (0.62, 0.44, 0.51, 257),
          "happy": (0.89, 0.92, 0.9, 735), "sad": (0.55, 0.56, 0.55, 304), "surprise": (0.76, 0.79, 0.77, 218),
          "neutral": (0.75, 0.84, 0.79, 654), "accuracy": 0.75, "n": 2465}
TABLE4 = {"anger": (1.0, 1.0, 1.0, 14), "contempt": (1.0, 0.6, 0.75, 5), "disgust": (1.0, 0.94, 0.97, 18),
          "fear": (0.88, 1.0, 0.93, 7), "happy": (0.91, 1.0, 0.95, 21), "sadness": (1.0, 1.0, 1.0, 9),
          "surprise": (1.0, 1.0, 1.0, 25), "accuracy": 0.97, "n": 99}
RECIPE_NOTE = ("Nadam 1e-3, batch 64, class weights, ReduceLROnPlateau, early stopping, best-val checkpoint, "
               "augmentation (values not stated: ours)")


def split_tree(tree: Path, data: FaceDataset, splits: np.ndarray) -> str:
    """Write a CK+ data set split as image folders tree/<split>/<class>/<subject>_<row>_0.png (its 48x48
    faces, lossless; names keep the subject ids and the rows' order) and return the `ckplus:` spec of
    the tree, so a run trained on the split is an ordinary run directory. Built once per split."""
    manifest = {"source": data.source, "splits": [str(s) for s in splits]}
    if (tree / "manifest.json").is_file():
        if json.loads((tree / "manifest.json").read_text()) != manifest:
            raise FerlabError(f"{tree}: was built from other CK+ data or another split; use another --out")
        return f"ckplus:{tree}"
    for i, (image, label, subject, split) in enumerate(zip(data.images, data.labels, data.groups, splits)):
        path = tree / str(split) / data.classes[label] / f"{subject}_{i:05d}_0.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), image):
            raise FerlabError(f"{path}: cannot write")
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


def happy_neutral_share(report: dict) -> tuple[float, float]:
    """(share of predictions, share of true labels) that are happy or neutral, from a confusion matrix."""
    cm = np.asarray(report["confusion_matrix"])
    idx = [report["classes"].index(c) for c in ("happy", "neutral")]
    return cm[:, idx].sum() / max(cm.sum(), 1), cm[idx, :].sum() / max(cm.sum(), 1)


def pooled_report(reports: list[dict]) -> dict:
    """One classification report over all folds' test predictions (their confusion matrices summed)."""
    cm = np.sum([np.asarray(rep["confusion_matrix"]) for rep in reports], axis=0)
    true, pred = np.nonzero(cm)
    counts = cm[true, pred]
    return classification_report(np.repeat(true, counts), np.repeat(pred, counts), reports[0]["classes"])


def run(r: Reproduction) -> None:
    fergit = r.path("fergit", "--fergit fergit:FER2013_CSV,IMAGE_DIR")
    ckplus = Path(r.path("ckplus", "--ckplus CK+48_DIR"))
    b, full = r.budget, BUDGETS["full"]
    for key, what in (("fergit_epochs", "epochs on FERGIT (each model)"),
                      ("ckplus_epochs", "epochs on the CK+ random split"),
                      ("fold_epochs", "epochs per CK+ fold"), ("folds", "CK+ folds")):
        if b[key] != full[key]:
            r.reductions.append(f"{b[key]} instead of {full[key]} {what}")
    sizes = r.split_sizes(fergit)
    r.data_notes.append(f"FERGIT {fergit}: {sum(sizes.values()):,} faces, train/val/test {sizes.get('train', 0):,} / "
                        f"{sizes.get('val', 0):,} / {sizes.get('test', 0):,} (paper: 49,300 = 44,370 / 2,465 / 2,465)")

    # FERGIT: basic then residual
    fer = {name: r.train(f"fergit-{name}", r.config(recipe, data=fergit, epochs=b["fergit_epochs"]))
           for name, recipe in (("basic", "bah2022_basic"), ("resnet", "bah2022"))}
    # CK+: the paper's random 10% test split, then subject-independent k-fold (ferlab.data's --folds)
    ck_data = load_dataset(f"ckplus:{ckplus}")
    if ck_data.groups is None:
        raise FerlabError(f"{ckplus}: CK+ file names must be S<subject>_<sequence>_<frame> for subject-independent "
                          "folds")
    names = stratified_split(ck_data.labels, (0.9, 0.1), seed=r.seed, names=("train", "test"))
    spec = split_tree(r.out / "data" / "ckplus-random", ck_data, names)
    ck = r.train("ckplus-random", r.config("bah2022", data=spec, epochs=b["ckplus_epochs"],
                                           train_splits="train", val_splits="test", test_splits=""))
    folds = [r.train(f"ckplus-fold{i}", r.config("bah2022", data=f"ckplus:{ckplus}", folds=b["folds"], fold=i,
                                                 epochs=b["fold_epochs"]))
             for i in range(b["folds"])]
    photos = personal_photos(r, fer["resnet"]["run_dir"])
    results = {"budget": b, "fergit_sizes": sizes, "fergit": fer, "ckplus_faces": len(ck_data), "ckplus_random": ck,
               "ckplus_folds": folds, "photos": photos, "cpus": os.cpu_count()}
    r.claims += claims(results)
    r.sections += sections(r, results)


def claims(results: dict) -> list[Claim]:
    """results: budget, fergit_sizes (split -> faces), fergit (basic/resnet run results), ckplus_faces,
    ckplus_random and ckplus_folds (run results), photos (personal_photos' rows) and cpus."""
    b, sizes, fer, ck = results["budget"], results["fergit_sizes"], results["fergit"], results["ckplus_random"]
    total = sum(sizes.values())
    out = [Claim("FERGIT composition and split", "49,300 faces, 90/5/5 = 44,370 / 2,465 / 2,465",
                 f"{total:,} faces, {sizes.get('train', 0):,} / {sizes.get('val', 0):,} / {sizes.get('test', 0):,}",
                 "FER2013 without its 177 not-a-face rows + muxspace48 without contempt; seeded split stratified by "
                 "class and source")]
    for name, paper_test, paper_tv, table in (("basic", "74%", "train 75%, validation 73.7%", "Table 2"),
                                              ("resnet", "75%", "train 86%, validation 74%", "Table 3")):
        rr = fer[name]
        h, br = rr["history"], best_row(rr)
        note = f"{n_epochs(b['fergit_epochs'])} (paper 100); " + RECIPE_NOTE
        out.append(Claim(f"FERGIT, {name} CNN: test accuracy ({table})", paper_test,
                         f"{pct(rr['test']['accuracy'])} ({rr['test']['num_samples']:,} faces)", note))
        out.append(Claim(f"FERGIT, {name} CNN: training and validation accuracy", paper_tv,
                         f"train {pct(br['train_acc'])}, validation {pct(br['val_acc'])} (best-val epoch "
                         f"{br['epoch']}; last train {pct(h[-1]['train_acc'])})", note))
    diff = fer["resnet"]["test"]["accuracy"] - fer["basic"]["test"]["accuracy"]
    out.append(Claim("Residual blocks improve FERGIT test accuracy", "+1 point (75% vs 74%)",
                     f"{100 * diff:+.2f} points",
                     "same split and recipe for both"))
    rec = {name: {c: v["recall"] for c, v in fer[name]["test"]["per_class"].items()} for name in fer}
    out.append(Claim("FERGIT: happy recognised best, fear worst (recall, Tables 2-3)",
                     "basic happy 0.93, fear 0.44; ResNet happy 0.92, fear 0.44",
                     "; ".join(f"{name}: happy {rec[name]['happy']:.2f}, fear {rec[name]['fear']:.2f} (best "
                               f"{max(rec[name], key=rec[name].get)}, worst {min(rec[name], key=rec[name].get)})"
                               for name in ("basic", "resnet")), ""))
    precision = {name: min(fer[name]["test"]["per_class"].items(), key=lambda kv: kv[1]["precision"]) for name in fer}
    out.append(Claim("Precision of every class above 50% (both models)", "yes",
                     "; ".join(f"{name}: lowest {c} {v['precision']:.2f}" for name, (c, v) in precision.items()), ""))
    out.append(Claim("Macro F1 (both models)", "65% (the text; Tables 2-3 average to 67-68%)",
                     "; ".join(f"{name} {pct(fer[name]['test']['macro_f1'])}" for name in ("basic", "resnet")), ""))
    share = {name: happy_neutral_share(fer[name]["test"]) for name in fer}
    out.append(Claim("The basic CNN is biased toward neutral and happy; the residual one is more balanced",
                     "yes (confusion matrices, Figure 5)",
                     f"share of predictions that are happy or neutral: basic {pct(share['basic'][0])}, ResNet "
                     f"{pct(share['resnet'][0])} (true share {pct(share['basic'][1])})", ""))
    losses = {name: (best_row(fer[name]), fer[name]["history"][-1]) for name in fer}
    for name, paper_loss in (("basic", "train 0.48, validation 0.79, test 0.7"),
                             ("resnet", "train 0.2, validation 0.82, test 0.8")):
        br, last = losses[name]
        out.append(Claim(f"FERGIT, {name} CNN: losses", paper_loss,
                         f"train {br['train_loss']:.2f}, validation {br['val_loss']:.2f} at the best-val epoch "
                         f"{br['epoch']} (last epoch: train {last['train_loss']:.2f}, validation "
                         f"{last['val_loss']:.2f}); test loss not recorded",
                         f"class-weighted cross-entropy as trained; {n_epochs(b['fergit_epochs'])} (paper 100)"))
    out.append(Claim("Residual blocks lower the training loss", "yes ('reduced considerably the loss')",
                     f"last-epoch train loss basic {losses['basic'][1]['train_loss']:.3f} vs ResNet "
                     f"{losses['resnet'][1]['train_loss']:.3f}", f"{n_epochs(b['fergit_epochs'])}"))
    def last_row(name):
        return fer[name]["history"][-1]
    h = fer["resnet"]["history"]
    lowest = min(h, key=lambda row: row["val_loss"])
    out.append(Claim("Overfitting: basic none in 100 epochs; ResNet's validation loss stalls after ~35 epochs while "
                     "its training loss falls", "basic: no; ResNet: yes, from epoch ~35",
                     f"ResNet validation loss lowest at epoch {lowest['epoch']} of {len(h)}; train-validation accuracy "
                     "gap at the last epoch: "
                     + ", ".join(f"{name} {100 * (last_row(name)['train_acc'] - last_row(name)['val_acc']):+.1f} points"
                                 for name in fer),
                     f"only {n_epochs(b['fergit_epochs'])}: the paper's epoch 35 is not reached"
                     if len(h) < 35 else ""))
    out.append(Claim("ResNet model size (Table 1)", "9,773,111 parameters (9,766,391 trainable)",
                     f"{fer['resnet']['params_keras']:,} (Keras-style count)", "layer by layer as Table 1"))

    n = results["ckplus_faces"]
    out.append(Claim("CK+, ResNet CNN: test accuracy (Table 4)", "97% (99 faces)",
                     f"{pct(ck['test']['accuracy'])} ({ck['test']['num_samples']} faces)" + recalibrated_note([ck]),
                     f"random stratified 90/10 split of the {n} frames as the paper's support of 99 suggests; "
                     "validation = the test split (the paper names no other), so checkpoint and LR schedule see the "
                     "test faces; frames of one subject fall on both sides; "
                     f"{n_epochs(b['ckplus_epochs'])}"
                     + bn_settling_note(b["ckplus_epochs"] * math.ceil(0.9 * n / 64))))
    k, fold_runs = b["folds"], results["ckplus_folds"]
    accs = np.array([run["test"]["accuracy"] for run in fold_runs])
    pooled = pooled_report([run["test"] for run in fold_runs])
    out.append(Claim(f"CK+, subject-independent {k}-fold accuracy (not in the paper; the usual CK+ protocol)", "-",
                     f"{pct(accs.mean())} +- {100 * accs.std():.2f} (mean +- std over folds; pooled "
                     f"{pct(pooled['accuracy'])})" + recalibrated_note(fold_runs),
                     f"fold i tests, fold i+1 validates, the rest trains; no subject in two parts; "
                     f"{n_epochs(b['fold_epochs'])} per fold"
                     + bn_settling_note(b["fold_epochs"] * math.ceil(0.8 * n / 64))))
    times = {name: fer[name]["train_seconds"] for name in fer} | {"ckplus": ck["train_seconds"]}
    out.append(Claim("Training time (100 epochs, Colab K80 GPU)",
                     "basic 44 min, ResNet 48 min, CK+ 29 min (119 min in all)",
                     f"basic {minutes(times['basic'])}, ResNet {minutes(times['resnet'])}, "
                     f"CK+ {minutes(times['ckplus'])} "
                     f"({b['fergit_epochs']}/{b['fergit_epochs']}/{b['ckplus_epochs']} epochs; "
                     f"{minutes(sum(times.values()))} in all)",
                     f"{results['cpus']}-core CPU (see machine above), not a GPU; early stopping may end runs before "
                     "100 epochs"))
    if results["photos"]:
        out.append(Claim("Personal photos: detect, crop, resize to 48x48, predict with confidence (Figures 9-10)",
                         "a posed expression recognised at 86% confidence; a posed disgust read as neutral at 40%",
                         "; ".join(f"{name}: {pred}" for name, _, pred, _ in results["photos"]),
                         "photos that pip packages ship (scikit-image, matplotlib), not the authors' own; FERGIT "
                         "ResNet; ferlab's detector and crop (the paper names neither)"))
    return out


def sections(r: Reproduction, results: dict) -> list[str]:
    """Per-class tables next to the paper's, confusion matrices, curves and the personal photos."""
    fer, ck, k = results["fergit"], results["ckplus_random"], results["budget"]["folds"]
    fold_runs = results["ckplus_folds"]
    accs = [run["test"]["accuracy"] for run in fold_runs]
    pooled = pooled_report([run["test"] for run in fold_runs])
    sec = ["## Per-class results next to the paper's tables", ""]
    sec += per_class_table(fer["basic"]["test"], TABLE2, FER2013_CLASSES, "Table 2: basic CNN on the FERGIT test split")
    sec += per_class_table(fer["resnet"]["test"], TABLE3, FER2013_CLASSES,
                           "Table 3: ResNet-based CNN on the FERGIT test split")
    sec += per_class_table(ck["test"], TABLE4, CKPLUS_CLASSES, "Table 4: ResNet-based CNN on CK+ (random 10% split)")
    sec += per_class_table(pooled, None, CKPLUS_CLASSES,
                           f"CK+ subject-independent {k}-fold, all folds' test predictions pooled "
                           "(no paper counterpart)")
    sec += ["Per-fold accuracy: " + ", ".join(pct(a) for a in accs), "",
            "## Confusion matrices (the paper's Figure 5)", ""]
    for title, rep, classes, fname in (
            ("FERGIT basic", fer["basic"]["test"], FER2013_CLASSES, "confusion-fergit-basic.png"),
            ("FERGIT ResNet", fer["resnet"]["test"], FER2013_CLASSES, "confusion-fergit-resnet.png"),
            ("CK+ ResNet, random split", ck["test"], CKPLUS_CLASSES, "confusion-ckplus-random.png"),
            (f"CK+ ResNet, {k}-fold pooled", pooled, CKPLUS_CLASSES, "confusion-ckplus-folds.png")):
        r.figure(fname, lambda p, rep=rep, classes=classes, title=title:
                 plot_confusion(rep["confusion_matrix"], classes, p, title=title))
        sec += [f"**{title}**", "", f"![{title}]({fname})", ""] + confusion_table(rep)
    fig = r.figure("curves.png", lambda p: plot_panels(
        [(f"{name} on {data}", "accuracy",
          [curve(rr["history"], "train_acc", "train"), curve(rr["history"], "val_acc", "validation")]
          + ([curve(rr["history"], "test_acc", "test", "--o")] if rr["history"][0].get("test_acc") is not None else []),
          [])
         for name, data, rr in (("basic", "FERGIT", fer["basic"]), ("ResNet", "FERGIT", fer["resnet"]),
                                ("ResNet", "CK+", ck))],
        p, "bah2022 Figures 6-8, remeasured"))
    sec += ["## Learning curves (the paper's Figures 6-8)", "", f"![curves]({fig})", ""]
    if results["photos"]:
        sec += ["## Personal photos (the paper's Figures 9-10)", "",
                "Each photo through `Recognizer(FERGIT ResNet run)`: face detection, crop, 48x48 grayscale, "
                "prediction.",
                "", "| photo | shows | prediction | image |", "|---|---|---|---|"]
        sec += [f"| {name} | {shows} | {pred} | ![{name}]({fname}) |" for name, shows, pred, fname in results["photos"]]
        sec.append("")
    return sec


def personal_photos(r: Reproduction, run_dir: str) -> list[tuple[str, str, str, str]]:
    """bah2022's last experiment on photos pip packages ship: [(name, what it shows, prediction, annotated
    image file)]; [] (with a note) without scikit-image or a face detector."""
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
