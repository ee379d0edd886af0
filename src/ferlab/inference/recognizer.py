"""Recognise facial expressions in photos, arrays and face crops: the `Recognizer`.

    rec = Recognizer()                      # bundled "default" model, bundled BlazeFace face detector
    rec.predict("photo.jpg")                # -> [{"box", "score", "label", "confidence", "probs"}]
    rec.predict_faces(crops)                # already-cropped faces -> [{"label", "confidence", "probs"}]
    rec.predict_frame(["a.jpg", "b.jpg"])   # a pandas DataFrame, one row per face (pandas optional)
    rec.adapt("my_photos/")                 # BatchNorm and class prior fitted to these faces, no labels; then + mirror view
    rec.reset()                             # back to the model as loaded
    Recognizer(backend="onnx")              # classifier run by onnxruntime (see Recognizer)
    Recognizer("default-int8")              # the default model's int8 export: ~2x the faces/s on AVX2 CPUs
    Recognizer("ferplus")                   # the bundled FER+ model: 8 classes, the 7 and contempt
    Recognizer("general")                   # the default's fine-tune on posed and web faces, all the way
    Recognizer(["default", "run2/"], tta="flip")   # ensemble of two models, each face and its mirror
    for path, faces in rec.predict_many(["folder/"]): ...   # faces is a list or a FerlabError

Probabilities come from `ferlab.inference.torchloop.batched_probs`, the loop `ferlab evaluate` runs, with the
same test-time augmentation (tta="flip" or "tencrop", ferlab.inference.tta), or, for models run by
onnxruntime, from its NumPy twin `ferlab.inference.numpyloop` (same views, same probabilities to ~1e-6),
and an ensemble averages its members' probabilities as `ferlab evaluate MODEL MODEL...` does.

No torch: `pip install ferlab` runs the bundled default (its fp32 ONNX export, default-fp32.onnx,
same probabilities as the PyTorch weights to ~1e-7), the int8 exports and any .onnx file without
PyTorch; this module imports torch only through ferlab.inference.torchbackend, when a member needs it
(PyTorch weights, an nn.Module, backend "torch", CUDA, bf16). Without torch installed those fail
with one FerlabError naming `pip install "ferlab[train]"`.

Images: a path, a PIL image or a NumPy array (RGB HxWx3, or BGR with color="bgr", gray HxW,
RGBA HxWx4), any size, decoded and converted by ferlab.inference.images; boxes are in the pixels of the
upright (EXIF-oriented) image at its full size. Images smaller than 8 px on a side, and images
without a face, give []. Faces are cropped with the framing the models' cards name (rec.framing:
crop_scale, crop_shift; ferlab.spec.card_input, spec's defaults for older cards), mapped onto the
detector's boxes, and scaled to the model input by ferlab.spec.to_model_input. `add_model_arguments`
and `recognizer_from_args` are the model options of every command that recognises (predict, video, ...).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from ferlab.inference import numpyloop, onnxrt
from ferlab.inference.adapt import MIN_FACES, adapt_onnx, class_weights, members_prior, reweight, target_weight
from ferlab.bundled import WEIGHTS_DIR, check_card_classes, onnx_twin, read_card, resolve_weights
from ferlab.errors import FerlabError
from ferlab.inference.faces import create_detector, crop_faces_for
from ferlab.inference.images import as_pixels, expand_paths, faces_to_input, load_image, prefetch, safe_load
from ferlab.labels import check_same_classes
from ferlab.inference.numpyloop import TTA_MODES, check_tta
from ferlab.inference.onnxrt import OnnxModel, load_onnx
from ferlab.spec import CLASSES, card_input, to_model_input

TORCH_HINT = 'pip install "ferlab[train]"'
PRECISIONS = ("fp32", "bf16")
BACKENDS = ("torch", "onnx", "auto")
RECOGNIZER_TTA = ("auto",) + TTA_MODES   # auto: flip once adapted, else none (Recognizer)


class Recognizer:
    """Faces -> expression probabilities with one model (or an ensemble) and one face detector.

    model: "default" (bundled), "default-int8" (its bundled int8 ONNX export), "ferplus" (the bundled 8-class
    FER+ model; "ferplus-int8"), "general" (the fine-tune on FER2013, muxspace48, CK+48 and taiwanese_tpe that
    `default` is 0.4 of the way to: stronger on posed and web photos; "general-int8"), a run directory, a
    .safetensors file, an .onnx file written by `ferlab export`, or an nn.Module (then pass classes); or a list
    of these: an ensemble whose probabilities are the mean of its members' (each with the same tta). Members
    must name the same classes, else a FerlabError names the first that does not. rec.models and rec.cards list
    the members; rec.model and rec.card are the first (the only one for a single model). detector: a name for
    `create_detector` or a Detector. device: "cpu", "cuda", "auto".
    tta: "none", "flip" (average the probabilities of each face and its mirror image), "tencrop" (ten views: the
    corner and centre 44x44 crops, resized to 48, and their mirrors; 10x the classifier work; see
    ferlab.inference.tta) or "auto", the default: "none" until adapt(), "flip" once adapted (adapted fold models
    gained with flip on seven of nine held-out sets, lost one face in 1,232 on the other two, and gained 0.1-1.2
    points on FER2013; unadapted, flip lost 0.25 on one of three: docs/experiments.md).
    precision: "fp32" (default) or "bf16" autocast (2-3x the faces/s on CPUs with AMX or AVX512-BF16, see
    benchmarks/inference_speed.py; probabilities move by up to ~1e-2). Refused where the hardware has no native
    bf16: emulated, it ran 7.6x slower than fp32 on an AVX2 CPU. channels_last: NHWC memory layout (default on:
    1.2-1.5x faster on CPU, same fp32 results up to summation order, ~1e-6).
    backend: "torch", "onnx" (the classifier exported to ONNX in memory when the Recognizer is created, ~0.3 s
    per model, and run by onnxruntime, one session per ensemble member: fp32 only, CPU only; probabilities
    within ~1e-6 of torch's) or "auto", the default (onnx when onnxruntime is importable, the device is the CPU,
    precision is fp32 and every model exports, else torch). Why: onnxruntime ran fernet_s ~3x faster than
    PyTorch fp32 eager at one face per call (a photo, a webcam frame: 364 vs 115 faces/s on one thread) and
    ~2.5x at batch 256 (425 vs 172), with the same probabilities to ~1e-6 (benchmarks/backends.py). The export
    happens once per Recognizer, in memory: no cache file to invalidate or race on; bundled weights with an fp32
    ONNX twin (default -> default-fp32.onnx) load the twin instead, without torch. Sessions use --threads
    (ferlab.inference.onnxrt.default_threads) and are safe to call from several threads. Members loaded from
    .onnx files run in onnxruntime whatever the backend.
    """

    def __init__(self, model="default", detector="auto", device: str = "cpu", batch_size: int = 64, tta: str = "auto",
                 precision: str = "fp32", channels_last: bool = True, classes=None, align: bool = True,
                 backend: str = "auto"):
        check_tta(tta, RECOGNIZER_TTA)
        if precision not in PRECISIONS:
            raise FerlabError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
        if batch_size < 1:
            raise FerlabError(f"batch_size must be at least 1, got {batch_size}")
        if backend not in BACKENDS:
            raise FerlabError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
        specs = list(model) if isinstance(model, (list, tuple)) else [model]
        if not specs:
            raise FerlabError("model: an empty list names no model")
        self._torch_backend = None
        # "cpu" (and "auto" where torch is not installed) needs no torch; otherwise ask torch.
        self.device = "cpu" if device == "cpu" or (device == "auto" and importlib.util.find_spec("torch") is None) else \
            self._torch(f"device {device!r}").resolve_device(device)
        device_type = getattr(self.device, "type", self.device)
        if precision == "bf16" and not self._torch("precision 'bf16'").native_bf16(self.device):
            raise FerlabError(f"precision 'bf16' needs native bf16 (AVX-512 BF16 or AMX CPUs, recent GPUs); this {device_type} "
                              "would emulate it, several times slower than fp32: use precision 'fp32'")
        self.backend = _pick_backend(backend, device_type, precision)
        self.names = [_model_name(spec, i) for i, spec in enumerate(specs)]
        self.models, self.cards = [], []
        for spec in specs:
            m, card = self._load(spec)
            self.models.append(m)
            self.cards.append(card)
        check_same_classes(self.names, self.cards)
        self.framing = _framing(self.names, self.cards)
        card_classes = next((card["classes"] for card in self.cards if card.get("classes")), None)
        self.classes = tuple(classes or card_classes or CLASSES)
        self.detector = create_detector(detector) if isinstance(detector, str) else detector
        self.batch_size, self.tta, self.precision, self.align = batch_size, tta, precision, align
        self.runners = list(self.models)  # what computes each member's logits: the model, or its ONNX export
        self.adaptation = None  # after adapt(): {"faces", "weight", "class_prior"}; reset() restores the runners below
        self._unadapted = None
        self._class_weights = None  # after adapt(): per-class factors from the training prior to the faces' prior
        if self.backend == "onnx" and not all(isinstance(m, OnnxModel) for m in self.models):
            try:
                self.runners = [m if isinstance(m, OnnxModel) else self._torch("exporting to ONNX").exported(m)
                                for m in self.models]
            except (FerlabError, ImportError) as e:  # a model the exporter cannot handle: "auto" falls back to torch
                if backend == "onnx":
                    raise e if isinstance(e, FerlabError) else FerlabError(
                        f"the onnx backend exports PyTorch models with the onnx package ({TORCH_HINT})") from None
                self.backend = "torch"
        self.channels_last = channels_last and self.backend == "torch"
        if self.backend == "torch":
            tb = self._torch("the torch backend")
            if self.channels_last:  # in place: the runners are these same modules
                for m in self.models:
                    if tb.is_module(m):
                        tb.channels_last(m)
        self.model, self.card = self.models[0], self.cards[0]

    def _torch(self, why: str, alternative: str = ""):
        """ferlab.inference.torchbackend (imported here, on first need, so that ONNX models never load torch), or
        one FerlabError naming the extra to install when PyTorch is missing."""
        if self._torch_backend is None:
            try:
                from ferlab.inference import torchbackend
            except ImportError as e:
                if (e.name or "").split(".")[0] not in ("torch", "safetensors", "onnx"):
                    raise
                raise FerlabError(f"{why} needs PyTorch, which is not installed: {TORCH_HINT}{alternative}") from None
            if onnxrt.configured_threads():
                torchbackend.set_threads(onnxrt.configured_threads())
            if isinstance(getattr(self, "device", None), str):
                self.device = torchbackend.resolve_device(self.device)
            self._torch_backend = torchbackend
        return self._torch_backend

    def _load(self, spec) -> tuple[object, dict]:
        """One member: (model, card). ONNX files, and bundled weights that have an fp32 ONNX twin when
        the backend is onnx, load without torch; PyTorch weights and modules need it."""
        if _is_module(spec):
            return self._torch("an nn.Module").prepare(spec, self.device), {}
        path = resolve_weights(str(spec))
        twin = onnx_twin(path) if self.backend == "onnx" else None
        if path.suffix == ".onnx" or twin is not None:
            path = twin or path
            if not path.is_file():
                raise FerlabError(f"{path}: no such ONNX file")
            model, card = load_onnx(path)
            return model, {**card, "weights_path": str(path)}
        why = f"{spec}: PyTorch weights" if self.backend == "onnx" else f"{spec} on the torch backend"
        int8 = path.with_name(f"{path.stem}-int8.onnx")
        alternative = f" (or model {int8.stem}, its int8 export, which runs without it)" \
            if self.backend == "onnx" and int8.is_file() and int8.parent == WEIGHTS_DIR else ""
        card = read_card(path)  # a broken card is one line here, not a traceback in load_model
        model, meta = self._torch(why, alternative).load_model(str(spec), self.device)
        check_card_classes(card, path, meta.get("classes", card.get("classes")))
        return model, meta

    # ---- classification -------------------------------------------------------------------
    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(N, 48, 48) float32 pixels in [0, 1] -> (N, num_classes) float32 probabilities."""
        if len(x) == 0:
            return np.empty((0, len(self.classes)), np.float32)
        x = np.asarray(x, np.float32)
        if self.backend == "onnx":  # every runner is an OnnxModel: NumPy in, NumPy out, no torch
            members = (numpyloop.batched_probs(self._forward(i), x, self.active_tta, self.batch_size)
                       for i in range(len(self.runners)))
        else:
            tb = self._torch("the torch backend")
            members = (tb.probs(runner, x, tta=self.active_tta, batch_size=self.batch_size, device=self.device,
                                precision=self.precision, channels_last=self.channels_last,
                                check=lambda n, i=i: self._check_scores(i, n))
                       for i, runner in enumerate(self.runners))
        probs = numpyloop.ensemble_mean(members)
        return probs if self._class_weights is None else reweight(probs, self._class_weights)

    @property
    def active_tta(self) -> str:
        """The test-time augmentation predictions use now (tta "auto": flip once adapted, else none)."""
        return self.tta if self.tta != "auto" else "none" if self._unadapted is None else "flip"

    def _forward(self, i: int):
        runner = self.runners[i]

        def forward(batch: np.ndarray) -> np.ndarray:
            logits = runner(batch)
            self._check_scores(i, logits.shape[1])
            return logits
        return forward

    def _check_scores(self, i: int, n: int) -> None:
        if n != len(self.classes):
            raise FerlabError(f"{self.names[i]}: the model gives {n} scores but {len(self.classes)} "
                              f"classes are named ({', '.join(self.classes)})")

    def predict_faces(self, crops) -> list[dict]:
        """Already-cropped faces -> [{"label", "confidence", "probs"}], one per face.

        crops: an (N, H, W) or (N, H, W, 3) array (uint8 0-255, or float in [0, 1]; floats above
        1 are taken as 0-255), a single (H, W) face, or a list of arrays / PIL images of any
        size. Faces not 48x48 are resized (area averaging when shrinking); colour is made gray.
        """
        x = faces_to_input(crops)
        return [self._result(p) for p in self.probabilities(x)]

    # ---- whole images ---------------------------------------------------------------------
    def predict(self, image, color: str = "rgb") -> list[dict]:
        """One image (path, PIL image or array) -> [{"box", "score", "label", "confidence", "probs"}]."""
        if isinstance(image, (str, Path)):
            pixels, scale = load_image(image)
        else:
            pixels, scale = as_pixels(image, color), 1.0
        return self.predict_pixels(pixels, scale)

    def predict_pixels(self, pixels: np.ndarray, scale: float = 1.0) -> list[dict]:
        """predict() for a uint8 RGB (H, W, 3) or gray (H, W) array; boxes are multiplied by scale."""
        faces = self.detector.detect(pixels)
        if not faces:
            return []
        crops = crop_faces_for(self.detector, pixels, faces, align=self.align, framing=self.framing)
        probs = self.probabilities(to_model_input(crops))
        results = []
        for face, p in zip(faces, probs):
            box = [int(round(v * scale)) for v in face.box] if scale != 1.0 else list(face.box)
            results.append({"box": box, "score": round(face.score, 4), **self._result(p)})
        return results

    def predict_many(self, paths: Iterable, recursive: bool = True) -> Iterator[tuple[Path, list[dict] | FerlabError]]:
        """Files and folders -> (path, faces) for each image file, or (path, FerlabError) when it
        cannot be read. Folders are searched for image suffixes (recursively by default); the
        next image is decoded in a background thread while this one is processed."""
        for path, loaded in prefetch(expand_paths(paths, recursive), safe_load):
            if isinstance(loaded, FerlabError):
                yield path, loaded
            else:
                yield path, self.predict_pixels(*loaded)

    def predict_frame(self, images, color: str = "rgb"):
        """predict() over one image or a list of them as a pandas DataFrame (pandas is optional: a
        FerlabError says to install it): one row per face, columns image (the path, else the
        image's index in the list), face, x, y, w, h, score, label, confidence and one per class."""
        try:
            import pandas
        except ImportError:
            raise FerlabError("Recognizer.predict_frame needs pandas: pip install pandas") from None
        single = isinstance(images, (str, Path, np.ndarray)) or not isinstance(images, (list, tuple))
        rows = []
        for n, image in enumerate([images] if single else images):
            name = str(image) if isinstance(image, (str, Path)) else n
            for i, f in enumerate(self.predict(image, color)):
                rows.append({"image": name, "face": i, **dict(zip("xywh", f["box"])), "score": f["score"],
                             "label": f["label"], "confidence": f["confidence"], **f["probs"]})
        columns = ["image", "face", "x", "y", "w", "h", "score", "label", "confidence", *self.classes]
        return pandas.DataFrame(rows, columns=columns)

    # ---- adaptation to the user's faces ---------------------------------------------------
    def adapt(self, images, color: str = "rgb", recursive: bool = True, prior: bool = True) -> "Recognizer":
        """Adapt the model to the faces in `images` without labels, in place; returns self.

        images: a path (an image or a folder, searched as predict_many does), a PIL image or array (a whole
        photo, read as predict reads it), or a list or iterable of these (e.g. a video's frames, with
        color="bgr" for OpenCV's). Faces are found and cropped as in predict; the first BatchNorm layers'
        statistics are then blended with those of these faces, the more faces the further (weight n / (n +
        PRIOR_FACES)), and predictions are re-weighted from the training class prior (the card's class_prior) to
        the one these faces show (ferlab.inference.adapt), with each face averaged with its mirror under tta
        "auto" (the prior estimated so too). Later predictions use the adapted model until reset(); the
        estimated prior is in rec.adaptation["class_prior"] (None for a model without a class_prior).
        prior=False keeps the training prior (for faces known to be mostly of one expression, whose other faces
        the re-weighting would pull toward it). FerlabError when fewer than MIN_FACES faces are found, or a
        member cannot be adapted (an int8 export, the torch backend).
        """
        crops = [crop for pixels in _photos(images, color, recursive)
                 if (faces := self.detector.detect(pixels))
                 for crop in crop_faces_for(self.detector, pixels, faces, align=self.align, framing=self.framing)]
        return self.adapt_faces(np.stack(crops) if crops else np.zeros((0, 48, 48), np.uint8), prior)

    def adapt_faces(self, crops, prior: bool = True) -> "Recognizer":
        """adapt() for already-cropped faces, in any of predict_faces' forms."""
        x = faces_to_input(crops)
        if len(x) < MIN_FACES:
            raise FerlabError(f"adapt: {len(x)} face(s) found; at least {MIN_FACES} are needed to estimate their "
                              "statistics (fewer made predictions worse on our folds)")
        if self.backend != "onnx":
            raise FerlabError("adapt runs on the onnx backend (backend='onnx', or 'auto' on the CPU in fp32)")
        unadapted = self._unadapted or list(self.runners)
        weight = target_weight(len(x))
        adapted = []
        for name, runner in zip(self.names, unadapted):
            try:
                adapted.append(OnnxModel(adapt_onnx(runner.model_bytes(), x[:, None], weight, self.batch_size)))
            except FerlabError as e:
                raise FerlabError(f"{name}: {e}") from None
        self._unadapted, self.runners, self._class_weights = unadapted, adapted, None
        training_prior = members_prior(self.cards, len(self.classes)) if prior else None
        if training_prior is not None:   # estimated from the BatchNorm-adapted model's probabilities
            self._class_weights = class_weights(self.probabilities(x), training_prior)
        self.adaptation = {"faces": len(x), "weight": round(weight, 4), "class_prior": None if training_prior is None else
                           {c: round(float(v), 4) for c, v in zip(self.classes, self._class_weights * training_prior)}}
        return self

    def reset(self) -> "Recognizer":
        """Undo adapt(): the models as they were loaded."""
        if self._unadapted is not None:
            self.runners, self._unadapted, self.adaptation = self._unadapted, None, None
        self._class_weights = None
        return self

    def _result(self, p: np.ndarray) -> dict:
        i = int(p.argmax())
        return {"label": self.classes[i], "confidence": float(p[i]), "probs": {c: float(v) for c, v in zip(self.classes, p)}}

    def close(self) -> None:
        self.detector.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _photos(images, color: str, recursive: bool) -> Iterator[np.ndarray]:
    """adapt()'s images as uint8 pixel arrays: paths and folders decoded (unreadable files skipped
    with a warning, as predict does; a progress bar past 50 files), arrays and PIL images converted."""
    single = isinstance(images, (str, Path, np.ndarray)) or not isinstance(images, Iterable)
    for item in [images] if single else images:
        if not isinstance(item, (str, Path)):
            yield as_pixels(item, color)
            continue
        files = list(expand_paths([item], recursive))
        for path, loaded in tqdm(prefetch(files, safe_load), total=len(files), desc="adapt: reading faces", unit="img",
                                 disable=len(files) <= 50, file=sys.stderr, leave=False):
            if isinstance(loaded, FerlabError):
                print(f"ferlab: warning: {loaded}", file=sys.stderr)
            else:
                yield loaded[0]


def _framing(names: list[str], cards: list[dict]) -> tuple[float, float]:
    """The face framing the models' cards name (crop_scale, crop_shift; ferlab.spec's for cards
    without it), one for the ensemble: FerlabError naming two members that frame faces differently."""
    framings = {}
    for name, card in zip(names, cards):
        inp = card_input(card, name)
        framings.setdefault((inp["crop_scale"], inp["crop_shift"]), name)
    if len(framings) > 1:
        (a, first), (b, second) = list(framings.items())[:2]
        raise FerlabError(f"{second}: frames faces at crop_scale {b[0]}, crop_shift {b[1]} (its card's input) but {first} at "
                          f"{a[0]}, {a[1]}; an ensemble's members must take the same face crops")
    return next(iter(framings))


def _is_module(obj) -> bool:
    """A torch nn.Module, recognised without importing torch (none exists unless torch is loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def _model_name(spec, i: int) -> str:
    """How errors name an ensemble member: its path or bundled name, or its position and class."""
    return f"model #{i + 1} ({type(spec).__name__})" if _is_module(spec) else str(spec)


def _pick_backend(backend: str, device_type: str, precision: str) -> str:
    if backend == "torch":
        return "torch"
    problem = ("the onnx backend runs on the CPU only" if device_type != "cpu" else
               "the onnx backend runs fp32 only (bf16 is a torch autocast)" if precision != "fp32" else None)
    if problem is None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            problem = "the onnx backend needs onnxruntime (pip install onnxruntime)"
    if problem is None:
        return "onnx"
    if backend == "onnx":
        raise FerlabError(problem)
    return "torch"


# ---- the options of every command that recognises ----------------------------------------

def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by predict, video, webcam and serve."""
    # Repeated rather than nargs="+": several values would swallow the positional paths that follow.
    parser.add_argument("--model", action="append", metavar="MODEL",
                        help="'default' (bundled; the default), 'default-int8' (its int8 export), 'ferplus' (8 classes), "
                             "'general' (stronger on posed and web photos), a run directory, "
                             "a .safetensors file or an .onnx file from `ferlab export`; "
                             "repeat (--model A --model B) for an ensemble that averages their probabilities")
    parser.add_argument("--detector", default="auto", choices=["auto", "blazeface", "haar", "none", "full"],
                        help="face detector: auto = blazeface (bundled); haar = OpenCV's cascade; none/full = image is one face")
    parser.add_argument("--tta", default="auto", choices=RECOGNIZER_TTA,
                        help="test-time augmentation: flip averages each face with its mirror, tencrop over 10 crops; "
                             "auto (default): flip once adapted (--adapt), else none")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help="bf16 autocast: 2-3x faster on CPUs with AMX or AVX-512 BF16, refused on others")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="NHWC memory layout (default: on, faster on CPU)")
    parser.add_argument("--batch-size", type=int, default=64, help="faces per classifier batch")
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="classifier runtime: torch, onnx (onnxruntime, faster on CPU) or auto (onnx when usable)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads of the classifier, onnxruntime or torch (default: the CPUs available; use 1 on a machine busy with other work)")


def model_specs(args) -> list[str]:
    """The --model values (["default"] when none was given)."""
    return args.model or ["default"]


def recognizer_from_args(args) -> Recognizer:
    if getattr(args, "threads", 0):
        onnxrt.set_threads(args.threads)  # and torch's, if the Recognizer loads it
    return Recognizer(model=model_specs(args), detector=args.detector, device=args.device, batch_size=args.batch_size,
                      tta=args.tta, precision=args.precision, channels_last=args.channels_last,
                      backend=getattr(args, "backend", "torch"))
