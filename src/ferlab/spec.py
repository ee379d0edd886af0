"""The classifier's contract, written once: what every ferlab model takes and what it names.

A model sees a 48x48 grayscale face, its uint8 pixels / 255 as float32 (`to_model_input`), cut
out of a photo as `ferlab.inference.faces.crop_faces` frames it: a square of CROP_SCALE x the face box side,
its centre moved by CROP_SHIFT box heights; it gives one logit per class.

`input_card()` writes these facts machine-readably, as timm keeps input size and crop in each
model's pretrained config: training writes it into each weights file, `ferlab bundle` into each
bundled card, `ferlab export` into the ONNX metadata. `card_input(card)` reads them back (the
Recognizer's crop framing, export's and evaluate's checks), with these defaults for the fields a
card written before them lacks.
"""

import numbers

import numpy as np

from ferlab.errors import FerlabError
from ferlab.labels import FER2013_CLASSES

INPUT_SIZE = 48  # side of the classifier's square input
CHANNELS = 1
PIXEL_DIVISOR = 255.0  # model input = uint8 pixels / PIXEL_DIVISOR (to_model_input)
PIXEL_SCALE = "pixels / 255"
# The face crop the bundled models were trained for: a square of CROP_SCALE x the BlazeFace
# (MediaPipe) box side around the box centre, moved by CROP_SHIFT box heights (negative: up).
# Other detectors map their boxes onto BlazeFace's (faces.Detector.framing).
CROP_SCALE = 1.15
CROP_SHIFT = -0.03
CLASSES = FER2013_CLASSES  # what a model predicts when its card names no classes


def to_model_input(pixels) -> np.ndarray:
    """uint8 pixels (faces (N, 48, 48), any shape) -> float32 in [0, 1], the models' input scale:
    the one place the division is written (a float array on the 0-255 scale is divided alike)."""
    return np.asarray(pixels).astype(np.float32) / PIXEL_DIVISOR


def input_card(crop_scale: float = CROP_SCALE, crop_shift: float = CROP_SHIFT) -> dict:
    """The "input" entry of a model card: size, channels, pixel scale and face framing."""
    return {"size": INPUT_SIZE, "channels": CHANNELS, "scale": PIXEL_SCALE, "pixel_divisor": PIXEL_DIVISOR,
            "crop_scale": crop_scale, "crop_shift": crop_shift, "crop_box": "blazeface"}


def card_input(card: dict, name: str = "model") -> dict:
    """The input a model card names (its "input" entry), spec's defaults for the fields it lacks;
    FerlabError, naming the model, for an input this ferlab does not make."""
    given = card.get("input") or {}
    if not isinstance(given, dict):
        raise FerlabError(f"{name}: the model card's input is a {type(given).__name__}, not an object")
    inp = {**input_card(), **given}
    made = (INPUT_SIZE, CHANNELS, PIXEL_DIVISOR, "blazeface")
    if (inp["size"], inp["channels"], inp["pixel_divisor"], inp["crop_box"]) != made:
        raise FerlabError(f"{name}: the model takes {inp['size']}x{inp['size']} faces, {inp['channels']} channel(s), "
                          f"pixels / {inp['pixel_divisor']:g}, framed on {inp['crop_box']} boxes; ferlab makes "
                          f"{INPUT_SIZE}x{INPUT_SIZE} gray faces, pixels / 255, framed on blazeface boxes")
    for key in ("crop_scale", "crop_shift"):
        if not isinstance(inp[key], numbers.Real) or isinstance(inp[key], bool) or not -10 < inp[key] < 10:
            raise FerlabError(f"{name}: the model card's input {key} is {inp[key]!r}, not a number")
    if inp["crop_scale"] <= 0:
        raise FerlabError(f"{name}: the model card's input crop_scale is {inp['crop_scale']}, not positive")
    return inp


def face_crop_text(crop_scale: float = CROP_SCALE, crop_shift: float = CROP_SHIFT) -> str:
    """The framing in words, as export's ONNX metadata states it."""
    return (f"square of {crop_scale} x the face box side around its centre (MediaPipe box, centre "
            f"{-crop_shift:.0%} of the box higher), rotated so the eyes are level, area-resized to "
            f"{INPUT_SIZE}x{INPUT_SIZE} (ferlab.inference.faces.crop_faces)")


FACE_CROP = face_crop_text()
