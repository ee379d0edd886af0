"""`ferlab demo`: recognise the expression in scikit-image's astronaut photo and show the result.

Writes astronaut.png and astronaut_annotated.png to the output folder (default ./demo-output)
and prints the faces as JSON. Needs the bundled default model (or --model) and scikit-image
(for the photo: NASA's portrait of Eileen Collins, public domain).
"""

from __future__ import annotations

import argparse
import json

import cv2

from ferlab.bundled import WEIGHTS_DIR
from ferlab.errors import FerlabError
from ferlab.inference.images import check_writable_dir, draw_faces, rounded, write_image
from ferlab.inference.recognizer import Recognizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo-output", help="output folder (default ./demo-output)")
    parser.add_argument("--model", default="default", help="'default' (bundled), 'default-int8', 'ferplus', a run directory, a .safetensors or .onnx file")
    parser.add_argument("--detector", default="auto", choices=["auto", "blazeface", "haar"], help="face detector")


def run(args) -> int:
    if args.model == "default" and not (WEIGHTS_DIR / "default.safetensors").is_file():
        raise FerlabError(f"the bundled default model is missing ({WEIGHTS_DIR / 'default.safetensors'}); "
                          "reinstall ferlab or pass --model RUN_DIR_OR_WEIGHTS")
    try:
        from skimage import data
    except ImportError:
        raise FerlabError("the demo photo comes from scikit-image: pip install scikit-image") from None
    out = check_writable_dir(args.out)
    rgb = data.astronaut()
    photo, annotated = out / "astronaut.png", out / "astronaut_annotated.png"
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    write_image(photo, bgr)
    with Recognizer(args.model, detector=args.detector) as rec:
        faces = rec.predict(photo)
    write_image(annotated, draw_faces(bgr.copy(), faces))
    print(json.dumps({"path": str(photo), "faces": rounded(faces)}))
    summary = ", ".join(f"{f['label']} ({f['confidence']:.0%})" for f in faces) or "no face found"
    print(f"{photo}: {summary}\nannotated image: {annotated.resolve()}")
    return 0
