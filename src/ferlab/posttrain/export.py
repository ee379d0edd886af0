"""ONNX export: `ferlab export MODEL --onnx model.onnx [--opset 17] [--quantize int8] [--data PATH]`.

The ONNX graph takes "faces", float32 (N, 1, 48, 48) gray pixels in [0, 1] (any batch size N),
and gives "logits", float32 (N, 7); softmax of the logits gives the class probabilities. The
model card (architecture, classes, preprocessing, opset, quantisation) goes into the file's
metadata_props under "ferlab.*" keys and into a sidecar `<name>.json`. Both files are written
atomically.

After export the graph is run with onnxruntime on faces that look like the real input (crops of
scikit-image's astronaut with random shifts, zooms, rotations, flips, lighting and noise, or 256
faces of a data set with --data) and compared with the PyTorch fp32 model: the largest
difference of any softmax probability must stay below 1e-4, else the export fails.

--quantize int8 writes an int8 model instead: static quantisation (QDQ, per-channel int8
weights, uint8 activations calibrated on those faces), after the fp32 graph passed the parity
check. Static, not dynamic: onnxruntime's dynamic quantisation turns convolutions into
ConvInteger, which ran *slower* than fp32 here (benchmarks/backends.py), while static QDQ ran
~3x faster and kept PrivateTest accuracy within ~0.1 point. Calibrate with --data: the
astronaut's variants are one face. The int8 model's agreement with fp32 is printed, not enforced.

The TorchScript-based exporter (`dynamo=False`) is used: it needs only `onnx` and works offline;
the torch.export-based one needs onnxscript. BatchNorm stays a node of its own (no constant
folding), so `Recognizer.adapt` can re-estimate its statistics on a user's faces (ferlab.inference.adapt);
onnxruntime folds it into the convolutions when it loads the file, so it runs as fast.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

from ferlab.atomic import atomic_write
from ferlab.checkpoint import load_model
from ferlab.data import load_dataset
from ferlab.errors import FerlabError
from ferlab.inference.torchloop import batched_probs
from ferlab.inference.onnxrt import INPUT_NAME, OUTPUT_NAME, OnnxModel, read_metadata
from ferlab.spec import (CLASSES, CROP_SCALE, CROP_SHIFT, FACE_CROP, INPUT_SIZE, PIXEL_DIVISOR, card_input, face_crop_text,
                         to_model_input)

DEFAULT_OPSET = 17
PARITY_TOLERANCE = 1e-4  # max |p_onnx - p_torch| over all softmax probabilities
PREPROCESSING = {
    "input": INPUT_NAME, "shape": ["N", 1, INPUT_SIZE, INPUT_SIZE], "dtype": "float32",
    "pixels": "grayscale, value / 255 (range [0, 1])",
    "face_crop": FACE_CROP,
    "output": f"{OUTPUT_NAME}: (N, classes) float32; softmax gives the class probabilities",
}


# ---- export -----------------------------------------------------------------------------------

def to_onnx(model: torch.nn.Module, opset: int = DEFAULT_OPSET, metadata: dict | None = None) -> bytes:
    """Serialise an eval-mode model as ONNX bytes with a dynamic batch axis; metadata values are
    stored as strings (dicts/lists as JSON) in metadata_props."""
    import onnx

    model = model.eval()
    try:
        param = next(model.parameters())
        example = torch.rand(2, 1, INPUT_SIZE, INPUT_SIZE, device=param.device)
    except StopIteration:
        example = torch.rand(2, 1, INPUT_SIZE, INPUT_SIZE)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        try:
            torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=opset, do_constant_folding=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        except Exception as e:  # unsupported opset or operator: one line for the user
            raise FerlabError(f"ONNX export failed (opset {opset}): {str(e).strip().splitlines()[0][:300]}") from None
    proto = onnx.load_from_string(buf.getvalue())
    set_metadata(proto, {"ferlab.opset": opset, **(metadata or {})})
    return proto.SerializeToString()


def set_metadata(proto, metadata: dict) -> None:
    """Replace/add metadata_props entries (values that are not strings are stored as JSON)."""
    values = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    for key, value in kept + list(values.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "ferlab"


def onnx_card(card: dict, opset: int, quantization: str = "none") -> dict:
    """The metadata stored in the ONNX file, from a model card as load_model returns it. The model's
    input (size, pixel scale, face framing) is read from the card, spec's defaults filling what an
    older card lacks, and written back whole: the ONNX file's card carries it."""
    weights = card.get("weights_path")
    inp = card_input(card, weights or card.get("model", "model"))
    classes = card.get("classes")
    if not classes:
        classes = list(CLASSES)
    public = {k: v for k, v in card.items() if k != "weights_path"} | {"input": inp}
    if weights:
        public["weights_file"] = Path(weights).name
        public["weights_sha256"] = file_sha256(weights)
    return {
        "ferlab.model": card.get("model", "unknown"),
        "ferlab.classes": list(classes),
        "ferlab.preprocessing": {**PREPROCESSING, "face_crop": face_crop_text(inp["crop_scale"], inp["crop_shift"]),
                                 "training_input": inp},
        "ferlab.opset": opset,
        "ferlab.quantization": quantization,
        "ferlab.card": public,
    }


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- parity ----------------------------------------------------------------------------------

def compare(model: torch.nn.Module, onnx_model: OnnxModel, faces: np.ndarray) -> dict:
    """Max abs softmax difference and top-1 agreement of an ONNX model against the PyTorch fp32 model,
    both run through the loop evaluate and the Recognizer use."""
    device = next(model.parameters()).device
    ref = batched_probs(model, faces, device=device)
    got = batched_probs(onnx_model, faces)
    return {"max_abs_diff": float(np.abs(ref - got).max()),
            "top1_agreement": float((ref.argmax(1) == got.argmax(1)).mean()), "faces": len(faces)}


# ---- faces for parity checks and calibration --------------------------------------------------

ASTRONAUT_BOX = (174, 68, 104, 104)  # MediaPipe's box of the face in skimage.data.astronaut()


def astronaut_faces(n: int = 64, seed: int = 0) -> np.ndarray:
    """(n, 48, 48) float32: the astronaut's face under random zoom (0.85-1.4), rotation (±20°),
    shift (±10%), mirror, brightness/contrast and sensor noise; the first is the plain crop."""
    try:
        from skimage import data
    except ImportError:
        raise FerlabError("the parity-check faces come from scikit-image (pip install scikit-image), "
                          "or pass --data PATH") from None
    gray = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY).astype(np.float32)
    x, y, w, h = ASTRONAUT_BOX
    cx, cy, side = x + w / 2, y + h / 2 + CROP_SHIFT * h, CROP_SCALE * max(w, h)  # spec's framing
    rng = np.random.default_rng(seed)
    out = np.empty((n, INPUT_SIZE, INPUT_SIZE), np.float32)
    for i in range(n):
        plain = i == 0
        zoom = 1.0 if plain else rng.uniform(0.85, 1.4)
        angle = 0.0 if plain else rng.uniform(-20, 20)
        dx, dy = (0.0, 0.0) if plain else rng.uniform(-0.1, 0.1, 2) * side
        s = INPUT_SIZE / (side * zoom)
        m = cv2.getRotationMatrix2D((cx + dx, cy + dy), angle, s)
        m[:, 2] += INPUT_SIZE / 2 - np.array([cx + dx, cy + dy])
        face = cv2.warpAffine(gray, m, (INPUT_SIZE, INPUT_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if not plain:
            if rng.random() < 0.5:
                face = face[:, ::-1]
            face = (face - 128) * rng.uniform(0.6, 1.4) + 128 + rng.uniform(-40, 40)
            face = face + rng.normal(0, rng.uniform(0, 8), face.shape)
        out[i] = np.clip(face, 0, 255) / PIXEL_DIVISOR  # float64 faces: divided, then rounded to float32 once
    return out


def dataset_faces(spec: str, n: int = 256, seed: int = 0) -> np.ndarray:
    """(n, 48, 48) float32: n faces drawn at random (seeded) from a data set (its Training split
    when it has one: calibration must not see the test faces)."""
    ds = load_dataset(spec)
    if "Training" in ds.split_names():
        ds = ds.select("Training")
    if len(ds) == 0:
        raise FerlabError(f"{spec}: the data set has no faces")
    idx = np.random.default_rng(seed).choice(len(ds), size=min(n, len(ds)), replace=False)
    return to_model_input(ds.images[np.sort(idx)])


# ---- int8 ---------------------------------------------------------------------------------------

def quantize_int8(fp32: bytes, calibration: np.ndarray) -> bytes:
    """Static int8 quantisation (QDQ, per-channel weights) of an fp32 ONNX model, with activation
    ranges calibrated on `calibration` faces ((N, 48, 48) float32 in [0, 1]).

    Weights use 7 of their 8 bits (reduce_range): on x86 CPUs without VNNI (AVX2, early AVX-512),
    onnxruntime's uint8 x int8 kernels add pairs of products in saturating 16-bit registers, which
    full-range weights overflow. Measured on an AVX2 EPYC: a FERNet-M scoring 70.78% PrivateTest in
    fp32 scores 65.13% with 8-bit weights (83% top-1 agreement with fp32) and 70.78% with 7-bit ones."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    x = np.asarray(calibration, np.float32).reshape(-1, 1, INPUT_SIZE, INPUT_SIZE)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{INPUT_NAME: x[i:i + 32]} for i in range(0, len(x), 32)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="ferlab-quant-") as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src, pre, dst = (os.path.join(d, f"{name}.onnx") for name in ("fp32", "pre", "int8"))
        Path(src).write_bytes(fp32)
        quant_pre_process(src, pre, skip_symbolic_shape=True)
        quantize_static(pre, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True)
        return Path(dst).read_bytes()


# ---- the command ------------------------------------------------------------------------------

def export_model(spec: str, out, *, opset: int = DEFAULT_OPSET, quantize: str = "none", data: str | None = None,
                 log=print) -> dict:
    """Export MODEL (run dir, weights file or bundled name) to `out`; returns the sidecar card."""
    out = Path(out)
    if out.is_dir():
        raise FerlabError(f"{out}: is a directory, expected an .onnx file name")
    if quantize not in ("none", "int8"):
        raise FerlabError(f"unknown quantisation {quantize!r} (known: none, int8)")
    card_path = out.with_suffix(".json")
    if card_path == out:
        raise FerlabError(f"{out}: name the ONNX file *.onnx (the card goes to NAME.json)")
    if card_path.is_file() and '"onnx_file"' not in card_path.read_text(errors="replace"):
        raise FerlabError(f"{card_path} exists and is not an ONNX card (a weights file's model card?); "
                          "choose another output name")
    try:  # fail before the work when the folder cannot exist (e.g. a file is in the way)
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FerlabError(f"{out}: cannot write ({e.strerror or e})") from None
    model, card = load_model(spec, "cpu")
    if isinstance(model, OnnxModel):
        raise FerlabError(f"{spec}: already an ONNX model; export its PyTorch weights (a run directory or .safetensors file)")
    faces = dataset_faces(data) if data else astronaut_faces()
    fp32 = to_onnx(model, opset, onnx_card(card, opset))
    parity = compare(model, OnnxModel(fp32), faces)
    log(f"parity (onnxruntime fp32 vs PyTorch fp32, {len(faces)} faces): max |softmax diff| = "
        f"{parity['max_abs_diff']:.2e}, top-1 agreement {parity['top1_agreement']:.1%}")
    if not parity["max_abs_diff"] < PARITY_TOLERANCE:
        raise FerlabError(f"ONNX output differs from PyTorch by {parity['max_abs_diff']:.2e} "
                          f"(tolerance {PARITY_TOLERANCE:g}); not written")
    result, report = fp32, {"fp32_parity": parity}
    if quantize == "int8":
        import onnx

        proto = onnx.load_from_string(quantize_int8(fp32, faces))
        set_metadata(proto, {"ferlab.quantization": "int8 static QDQ (per-channel int8 weights, uint8 activations)",
                             "ferlab.calibration": data or "skimage astronaut variants"})
        result = proto.SerializeToString()
        int8 = compare(model, OnnxModel(result), faces)
        log(f"int8 vs PyTorch fp32: max |softmax diff| = {int8['max_abs_diff']:.3f}, "
            f"top-1 agreement {int8['top1_agreement']:.1%}")
        report["int8_vs_fp32"] = int8
    meta = {k.removeprefix("ferlab."): v for k, v in read_metadata(result).items() if k.startswith("ferlab.")}
    sidecar = {**meta, **report, "onnx_file": out.name, "onnx_sha256": hashlib.sha256(result).hexdigest(),
               "input": INPUT_NAME, "output": OUTPUT_NAME}
    try:
        atomic_write(out, lambda tmp: Path(tmp).write_bytes(result))
        atomic_write(card_path, lambda tmp: Path(tmp).write_text(json.dumps(sidecar, indent=2) + "\n"))
    except OSError as e:
        raise FerlabError(f"{out}: cannot write ({e.strerror or e})") from None
    log(f"wrote {out} ({len(result) / 1e6:.1f} MB) and {card_path}")
    return sidecar


def add_arguments(p) -> None:
    p.add_argument("model", help="run directory, weights file or bundled name ('default')")
    p.add_argument("--onnx", required=True, type=Path, metavar="FILE", help="output .onnx file (a sidecar FILE.json card is written too)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--quantize", choices=["none", "int8"], default="none",
                   help="int8: write a statically quantised model (calibrated on the parity faces; use --data)")
    p.add_argument("--data", help="take the 256 parity/calibration faces from this data set (default: astronaut variants)")


def run(args) -> int:
    export_model(args.model, args.onnx, opset=args.opset, quantize=args.quantize, data=args.data)
    return 0
