"""Classifier backends compared: PyTorch fp32 / bf16 against onnxruntime fp32 / int8.

    python benchmarks/backends.py [--model default|RUN_DIR|FILE] [--data fer2013.csv.gz]
                                  [--threads 1] [--seconds 3]

For each backend, faces/s at batch 1 and batch 256 through Recognizer.probabilities (NumPy
faces in, probabilities out: what `ferlab predict` and `ferlab serve` pay per face), and with
--data the accuracy on the PrivateTest split (else the "test"/"val" split) plus the top-1
agreement and max probability difference against torch fp32. The int8 model is the one
`ferlab export --quantize int8` writes, calibrated on 256 Training faces of --data (without
--data: on the astronaut variants). One JSON line per backend, then a Markdown table.

The model defaults to the bundled "default" when present, else a fernet_s with random weights
(same speed as a trained one; accuracy is then meaningless). Numbers drift with machine load:
compare lines from one run.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ferlab.posttrain.export import astronaut_faces, export_model  # noqa: E402
from ferlab.inference.recognizer import Recognizer  # noqa: E402
from ferlab.device import native_bf16  # noqa: E402
from ferlab.errors import run_script  # noqa: E402
from ferlab.spec import to_model_input  # noqa: E402
from inference_speed import model_spec, timed  # noqa: E402  (same folder: the scripts run from benchmarks/)


def test_split(spec):
    from ferlab.data import load_dataset

    ds = load_dataset(spec)
    for name in ("PrivateTest", "test", "val"):
        if name in ds.split_names():
            return name, ds.select(name)
    raise SystemExit(f"{spec}: no PrivateTest/test/val split")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="default: the bundled model, else random fernet_s weights")
    p.add_argument("--data", help="data set for accuracy and int8 calibration (e.g. fer2013.csv.gz)")
    p.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads (default 1)")
    p.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        spec = model_spec(args.model, tmp)
        recs = {"torch fp32": Recognizer(spec, detector="none", batch_size=256, backend="torch")}
        if native_bf16(torch.device("cpu")):   # emulated bf16 is several times slower than fp32: no row for it
            recs["torch bf16"] = Recognizer(spec, detector="none", batch_size=256, backend="torch", precision="bf16")
        recs["onnxruntime fp32"] = Recognizer(spec, detector="none", batch_size=256, backend="onnx")
        int8 = Path(tmp) / "int8.onnx"
        export_model(spec, int8, quantize="int8", data=args.data, log=lambda *_: None)
        recs["onnxruntime int8"] = Recognizer(str(int8), detector="none", batch_size=256)

    split, test = test_split(args.data) if args.data else (None, None)
    faces = astronaut_faces(256, seed=1)
    ref = None
    rows = []
    for name, rec in recs.items():
        row = {"backend": name, "model": spec, "threads": args.threads}
        for batch in (1, 256):
            x = faces[:batch]
            row[f"faces_per_s_batch{batch}"] = round(batch / timed(lambda: rec.probabilities(x), args.seconds)[0], 1)
        if test is not None:
            probs = rec.probabilities(to_model_input(test.images))
            ref = probs if ref is None else ref
            row.update({f"{split}_accuracy": round(float((probs.argmax(1) == test.labels).mean()), 4),
                        "top1_agreement_vs_torch_fp32": round(float((probs.argmax(1) == ref.argmax(1)).mean()), 4),
                        "max_prob_diff_vs_torch_fp32": float(np.abs(probs - ref).max()), "faces": len(test)})
        rows.append(row)
        print(json.dumps(row), flush=True)

    cols = ["faces_per_s_batch1", "faces_per_s_batch256"] + ([f"{split}_accuracy", "top1_agreement_vs_torch_fp32"] if split else [])
    print("\n| backend | " + " | ".join(cols) + " |\n" + "|---" * (len(cols) + 1) + "|")
    for row in rows:
        print(f"| {row['backend']} | " + " | ".join(str(row[c]) for c in cols) + " |")


if __name__ == "__main__":
    raise SystemExit(run_script(main))
