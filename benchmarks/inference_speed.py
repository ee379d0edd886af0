"""How fast ferlab recognises expressions on this machine; one JSON line per measurement.

    python benchmarks/inference_speed.py [--model default|RUN_DIR|FILE] [--threads N] [--seconds S]

1. classifier: faces/s at batch 1 and 256 through Recognizer.probabilities (NumPy in,
   probabilities out): torch fp32 / bf16 autocast, with and without channels_last, onnxruntime fp32,
   and the bundled int8 export (`default-int8`) when the model is the default;
2. pipeline: latency per photo of Recognizer.predict (detect, crop, classify) on the
   astronaut letterboxed to 640x480 and 1920x1080, fp32 and bf16;
3. video: frames/s of `ferlab video`'s loop over a synthetic 640x480 clip (one moving face),
   with and without writing the annotated mp4.

The model defaults to the bundled "default" when present, else a fernet_s with random
weights (same speed as a trained one). Numbers drift with machine load: compare lines from
one run.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ferlab.checkpoint import WEIGHTS_DIR, save_weights  # noqa: E402
from ferlab.labels import FER2013_CLASSES  # noqa: E402
from ferlab.models import create_model  # noqa: E402
from ferlab.inference.recognizer import Recognizer  # noqa: E402
from ferlab.device import native_bf16  # noqa: E402
from ferlab.errors import run_script  # noqa: E402


def emit(**record):
    print(json.dumps(record), flush=True)


def timed(fn, seconds, min_runs=3):
    """Median wall time of fn() over repeated runs lasting about `seconds` (after one warm-up)."""
    fn()
    times, start = [], time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), len(times)


def model_spec(arg, tmp):
    if arg:
        return arg
    if (WEIGHTS_DIR / "default.safetensors").is_file():
        return "default"
    torch.manual_seed(0)
    path = Path(tmp) / "fernet_s_random.safetensors"
    save_weights(path, create_model("fernet_s"), {"model": "fernet_s", "model_kwargs": {}, "classes": list(FER2013_CLASSES)})
    return str(path)


def letterbox(image, width, height):
    h, w = image.shape[:2]
    s = min(width / w, height / h)
    nw, nh = round(w * s), round(h * s)
    out = np.zeros((height, width, 3), np.uint8)
    x0, y0 = (width - nw) // 2, (height - nh) // 2
    out[y0:y0 + nh, x0:x0 + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
    return out


def synthetic_clip(path, face_rgb, frames=60, size=(640, 480)):
    w, h = size
    face = cv2.cvtColor(cv2.resize(face_rgb, (h, h)), cv2.COLOR_RGB2BGR)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, size)
    for i in range(frames):
        frame = np.full((h, w, 3), 80, np.uint8)
        x = int((w - h) * (0.5 + 0.5 * np.sin(i / 10)))
        frame[:, x:x + h] = face
        writer.write(frame)
    writer.release()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="default: the bundled 'default' if present, else fernet_s random weights")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--skip", nargs="*", default=[], choices=["classifier", "pipeline", "video"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from skimage import data

    astronaut = data.astronaut()
    # bf16 only where the CPU runs it natively: emulated, it is several times slower than fp32
    precisions = ("fp32", "bf16") if native_bf16(torch.device("cpu")) else ("fp32",)
    with tempfile.TemporaryDirectory() as tmp:
        spec = model_spec(args.model, tmp)
        common = dict(threads=torch.get_num_threads(), model=Path(spec).stem if spec != "default" else "default")

        if "classifier" not in args.skip:
            rng = np.random.default_rng(0)
            # (model, backend, precision, channels_last): the torch variants, then onnxruntime (fp32, its own
            # layout), then the bundled int8 export, which onnxruntime runs whatever the backend
            variants = [(spec, "torch", p, cl) for p in precisions for cl in (False, True)] + [(spec, "onnx", "fp32", False)]
            if spec == "default" and (WEIGHTS_DIR / "default-int8.onnx").is_file():
                variants.append(("default-int8", "onnx", "fp32", False))
            for model, backend, precision, channels_last in variants:
                rec = Recognizer(model, detector="none", precision=precision, channels_last=channels_last, batch_size=256,
                                 backend=backend)
                int8 = str(rec.card.get("quantization", "none")).startswith("int8")
                for batch in (1, 256):
                    x = rng.random((batch, 48, 48), dtype=np.float32)
                    sec, runs = timed(lambda: rec.probabilities(x), args.seconds)
                    emit(what="classifier", backend=backend, precision="int8" if int8 else precision, channels_last=channels_last, batch=batch,
                         faces_per_s=round(batch / sec, 1), ms_per_batch=round(sec * 1000, 2), runs=runs,
                         **{**common, "model": model if model != spec else common["model"]})

        if "pipeline" not in args.skip:
            for precision in precisions:
                rec = Recognizer(spec, detector="auto", precision=precision)  # fp32: the default (auto) backend
                for size in ((640, 480), (1920, 1080)):
                    photo = letterbox(astronaut, *size)
                    assert len(rec.predict(photo)) == 1
                    sec, runs = timed(lambda: rec.predict(photo), args.seconds)
                    # where the time goes: detection alone
                    det, _ = timed(lambda: rec.detector.detect(photo), args.seconds / 2)
                    emit(what="pipeline", size=f"{size[0]}x{size[1]}", precision=precision, detector=rec.detector.name,
                         ms_per_photo=round(sec * 1000, 2), detect_ms=round(det * 1000, 2), runs=runs, **common)

        if "video" not in args.skip:
            from ferlab.inference.video import process_video

            clip = Path(tmp) / "clip.mp4"
            synthetic_clip(clip, astronaut)
            for precision in precisions:
                rec = Recognizer(spec, detector="auto", precision=precision)
                for out in (None, Path(tmp) / "annotated.mp4"):
                    t = time.perf_counter()
                    counts = process_video(rec, clip, out_path=out, progress=False)
                    sec = time.perf_counter() - t
                    emit(what="video", size="640x480", precision=precision, annotated_mp4=out is not None,
                         frames=counts["frames"], faces=counts["faces"], frames_per_s=round(counts["frames"] / sec, 1), **common)


if __name__ == "__main__":
    raise SystemExit(run_script(main))
