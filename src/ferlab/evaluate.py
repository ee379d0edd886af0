"""`ferlab evaluate`: a model's accuracy, macro-F1, per-class precision/recall/F1 and confusion
matrix on one split, written as report.md / report.json / confusion.png (plus the run's learning
curves when MODEL is a run directory).

MODEL is a run directory, a weights file, an .onnx file from `ferlab export` or a bundled model name
(`default`, `default-int8`, `ferplus`: score it with `--ferplus fer2013new.csv`); several MODELs
form an ensemble that averages their probabilities (they must share their classes). `--tta flip`
averages each face with its mirror image; `--tta tencrop` averages ten 44x44 crops (corners,
centre, and their mirrors) resized back to 48x48. TTA and ensembling are those of
`ferlab.Recognizer` (both run `ferlab.inference.torchloop.batched_probs`): `Recognizer([MODEL, ...], tta=...)` gives the
same faces the same fp32 probabilities as the ones measured here.

Without --data, a run directory is scored on the data it was trained with, split as in training
(its seed and --folds/--fold), and by default on its test split (PrivateTest for FER2013).

`--recalibrate-bn SPLITS` first recomputes every BatchNorm layer's statistics on those splits, in
the state the model is scored in (see `ferlab.training.batchnorm`): a diagnosis for short runs of the
papers' Keras-style models, whose stored statistics can make them predict a single class.
"""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ferlab.atomic import atomic_write_text, check_writable
from ferlab.training.batchnorm import batchnorm_layers, recalibrate_batchnorm
from ferlab.checkpoint import check_same_classes, load_model, load_state, resolve_weights
from ferlab.data import data_names, default_splits, load_run_data, load_with_splits
from ferlab.device import resolve_device
from ferlab.errors import FerlabError
from ferlab.inference.torchloop import batched_probs, model_forward
from ferlab.metrics import classification_report, plot_confusion, report_markdown
from ferlab.models import create_model
from ferlab.inference.numpyloop import ensemble_mean
from ferlab.spec import card_input
from ferlab.inference.tta import TTA_MODES


def predict_probs(model, images_u8: np.ndarray, *, tta: str = "none", batch_size: int = 256,
                  device="cpu", amp: str = "fp32") -> np.ndarray:
    """Class probabilities (N, C) for uint8 faces (N, 48, 48) with the given test-time augmentation."""
    device = torch.device(device)
    return batched_probs(model_forward(model, device, amp), images_u8, tta, batch_size, device=device,
                         channels_last=True)


def batchnorm_check(run: Path, cfg, *, max_images: int = 4096, seed: int = 0, device="cpu") -> dict | None:
    """A run's last-epoch weights (last.pt) scored on its test split (else validation) as trained, and
    again after recalibrate_batchnorm on up to max_images of its training faces; None without BN layers."""
    data, train, val, test = load_run_data(cfg)
    model = create_model(cfg.model, **{**cfg.model_kwargs, "num_classes": len(data.classes)})
    if not batchnorm_layers(model):
        return None
    state = load_state(Path(run) / "last.pt")
    model.load_state_dict(state["model"])
    model.to(device)   # the faces go to `device`: so must the weights (a CUDA reproduce crashed here)
    subset = test if test is not None else val
    pick = np.sort(np.random.default_rng(seed).permutation(len(train))[:max_images])

    def accuracy() -> float:
        return float((predict_probs(model, subset.images, device=device).argmax(1) == subset.labels).mean())

    as_trained = accuracy()
    recalibrate_batchnorm(model, train.images[pick], device=device)
    return {"epoch": int(state["epoch"]), "split": ",".join(subset.split_names()), "as_trained": as_trained,
            "recalibrated": accuracy(), "images": int(len(pick))}


def evaluate_models(specs: list[str], images: np.ndarray, *, tta: str = "none", device="cpu",
                    amp: str = "fp32", bn_images: np.ndarray | None = None) -> tuple[np.ndarray, list[dict]]:
    """Average probabilities of one or more models (an ensemble); returns (probs, model cards).
    Members must name the same classes (FerlabError naming the first one that does not), and their
    cards an input these 48x48 gray faces are (spec.card_input: size, channels, pixel scale).
    bn_images: faces to recompute each model's BatchNorm statistics on first (see recalibrate_batchnorm)."""
    members, cards = [], []
    for spec in specs:
        model, card = load_model(spec, device)
        card_input(card, spec)
        check_same_classes([specs[0], spec], [cards[0] if cards else card, card])
        if bn_images is not None and not recalibrate_batchnorm(model, bn_images, device=device):
            raise FerlabError(f"{spec}: --recalibrate-bn needs BatchNorm layers in a PyTorch model; this one has none")
        p = predict_probs(model, images, tta=tta, device=device, amp=amp)
        if members and p.shape != members[0].shape:
            raise FerlabError(f"{spec}: an ensemble needs the same classes, but it gives {p.shape[1]} class scores "
                              f"and {specs[0]} {members[0].shape[1]}")
        members.append(p)
        cards.append(card)
    return ensemble_mean(members), cards


def add_arguments(p) -> None:
    p.add_argument("model", nargs="+", help="run directory, weights or .onnx file, or bundled name (several: an ensemble)")
    p.add_argument("--data", help="data set (as for ferlab train; default: the first MODEL's, when it is a run directory)")
    p.add_argument("--ferplus", help="FER+ votes file: evaluate against FER+ majority labels")
    p.add_argument("--split", help="split(s) to evaluate, comma-separated (default: the test split, PrivateTest for FER2013)")
    p.add_argument("--tta", choices=TTA_MODES, default="none", help="test-time augmentation (see ferlab.inference.tta)")
    p.add_argument("--recalibrate-bn", metavar="SPLITS", default="",
                   help="recompute BatchNorm statistics on these splits of --data first, dropout off (a diagnosis for "
                        "short runs of the papers' models; see ferlab.training.batchnorm)")
    p.add_argument("--out", type=Path, help="report directory (default: <run dir>/eval-<split>-<tta>, or ./eval-<split>-<tta>)")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=["fp32", "bf16", "auto"], default="fp32",
                   help="fp32 (default: the numbers Recognizer's fp32 backends reproduce) or bf16 autocast (faster)")
    # Not given, and no --data: the first MODEL's training options when it is a run directory (else 0).
    p.add_argument("--seed", type=int, help="seed of random splits (FERGIT, folders, folds), as in training")
    p.add_argument("--folds", type=int, metavar="K", help="subject-independent K-fold split, as in training (CK+)")
    p.add_argument("--fold", type=int, metavar="I", help="which fold tests (with --folds; the next one validates)")


def fill_data_options(args) -> None:
    """Without --data: the first MODEL's run config.json gives --data, --ferplus, --seed, --folds and
    --fold (those not given), so `ferlab evaluate RUN` scores the split the run was trained around.
    With --data, options not given are none / 0."""
    saved = {}
    if args.data is None:
        config = Path(args.model[0]) / "config.json"
        if not config.is_file():
            resolve_weights(args.model[0])   # a model that does not exist says so first
            raise FerlabError(f"{args.model[0]}: not a run directory, so --data is needed")
        try:
            saved = json.loads(config.read_text())
        except (OSError, ValueError) as e:
            raise FerlabError(f"{config}: unreadable run config ({e})") from None
    for key, default in (("data", None), ("ferplus", None), ("seed", 0), ("folds", 0), ("fold", 0)):
        if getattr(args, key) is None:
            setattr(args, key, saved.get(key, default))
    if not args.data:
        raise FerlabError(f"{args.model[0]}: its config.json names no data, so --data is needed")


def run(args) -> int:
    fill_data_options(args)
    device = resolve_device(args.device)
    data = load_with_splits(args.data, args.ferplus, args.seed, args.folds, args.fold)
    split = args.split or default_splits(data.split_names())[2]
    if not split:
        raise FerlabError(f"{args.data}: no test split to default to (have: {', '.join(data.split_names())}); pass --split")
    first = Path(args.model[0])
    name = f"eval-{split.replace(',', '+')}-{args.tta}" + ("-bn" if args.recalibrate_bn else "")
    out = args.out or ((first if first.is_dir() else Path(".")) / name)
    check_writable(out)   # before the evaluation, not after it
    subset = data.select(split)
    bn_images = data.select(args.recalibrate_bn).images if args.recalibrate_bn else None
    t0 = time.time()
    probs, cards = evaluate_models(args.model, subset.images, tta=args.tta, device=device, amp=args.amp, bn_images=bn_images)
    seconds = time.time() - t0
    model_classes = cards[0].get("classes") or list(data.classes)
    if list(model_classes) != list(data.classes):
        raise FerlabError(f"{args.model[0]}: model classes {model_classes} differ from the data's {list(data.classes)}")
    report = classification_report(subset.labels, probs.argmax(1), data.classes)
    report.update(model=" + ".join(args.model), data=args.data, ferplus=args.ferplus, split=split, tta=args.tta, amp=args.amp,
                  recalibrate_bn=args.recalibrate_bn or None,
                  seconds=round(seconds, 2), faces_per_s=round(len(subset) / max(seconds, 1e-9), 1))
    labels = f" with FER+ labels ({Path(args.ferplus).name})" if args.ferplus else ""
    title = f"{report['model']} on {data_names(args.data)}{labels} {split} (TTA: {args.tta})"
    if args.recalibrate_bn:
        title += f", BatchNorm statistics recomputed on {args.recalibrate_bn}"
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    atomic_write_text(out / "report.md", report_markdown(report, title))
    plot_confusion(report["confusion_matrix"], data.classes, out / "confusion.png", title=title)
    if first.is_dir() and (first / "curves.png").is_file():
        shutil.copyfile(first / "curves.png", out / "curves.png")
    print(report_markdown(report, title))
    print(f"wrote {out}/report.md, report.json, confusion.png")
    return 0
