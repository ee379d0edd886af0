"""The classifier's contract, written once: what every ferlab model takes and what it names.

A model sees a 48x48 grayscale face, pixels / 255, cut out of a photo as `ferlab.faces.crop_faces`
frames it; it gives one logit per class. faces.py crops to this size and framing, training writes
`input_card()` into each weights file, and `ferlab export` writes the same facts into the ONNX
metadata, so the three cannot drift apart.
"""

from ferlab.labels import FER2013_CLASSES

INPUT_SIZE = 48  # side of the classifier's square input
CHANNELS = 1
PIXEL_SCALE = "pixels / 255"
# The face crop the bundled models were trained for: a square of CROP_SCALE x the (MediaPipe) box
# side around the box centre, moved by CROP_SHIFT box heights (negative: up).
CROP_SCALE = 1.15
CROP_SHIFT = -0.03
CLASSES = FER2013_CLASSES  # what a model predicts when its card names no classes

FACE_CROP = (f"square of {CROP_SCALE} x the face box side around its centre (MediaPipe box, centre "
             f"{-CROP_SHIFT:.0%} of the box higher), rotated so the eyes are level, area-resized to "
             f"{INPUT_SIZE}x{INPUT_SIZE} (ferlab.faces.crop_faces)")


def input_card() -> dict:
    """The "input" entry of a weights file's model card."""
    return {"size": INPUT_SIZE, "channels": CHANNELS, "scale": PIXEL_SCALE}
