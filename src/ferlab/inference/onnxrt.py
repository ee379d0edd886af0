"""Running the ONNX files `ferlab export` writes: onnxruntime sessions, `OnnxModel`, and the model
card stored in a file's metadata.

This is the runtime half of ONNX support; `ferlab.posttrain.export` is the writer. It needs onnxruntime
(a base dependency, imported when a model is loaded) and neither torch nor the onnx package:
`pip install ferlab` runs the bundled ONNX models without the training framework.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np

from ferlab.errors import FerlabError

INPUT_NAME, OUTPUT_NAME = "faces", "logits"
_threads = 0  # set_threads(); 0: default_threads()


def set_threads(n: int) -> None:
    """The intra-op threads of sessions created from now on (--threads); 0 restores the default."""
    global _threads
    _threads = max(0, int(n))


def configured_threads() -> int:
    """The value of set_threads (0: none)."""
    return _threads


def default_threads() -> int:
    """set_threads' value, else torch's thread count when torch is already loaded (so --threads and
    torch.set_num_threads govern both backends alike), else the CPUs this process may use. Never
    imports torch: the onnxruntime path must not pay for it."""
    if _threads:
        return _threads
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_num_threads"):
        return torch.get_num_threads()
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def create_session(model, threads: int | None = None):
    """An onnxruntime CPU session for ONNX bytes or a file. threads: intra-op threads (default:
    default_threads()). Idle worker threads do not spin: on a machine busy with other work
    spinning threads slow everyone down."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise FerlabError("running ONNX models needs onnxruntime (pip install onnxruntime)") from None

    threads = threads or default_threads()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for bad files
        raise FerlabError(f"onnxruntime cannot load the model: {str(e).strip().splitlines()[0][:300]}") from None


class OnnxModel:
    """An ONNX file written by `ferlab export` (fp32 or int8), run by onnxruntime.

    Called like a PyTorch model on a batch (N, 1, 48, 48): a torch tensor gives logits as a tensor
    on the input's device (onnxruntime itself runs on the CPU), a NumPy array gives a NumPy array.
    `eval()` and `to()` return the model itself, so evaluate, TTA, the Recognizer and --teacher use
    it as they use a PyTorch model. Inference only: it has no parameters to train, fine-tune or
    export again.
    """

    def __init__(self, source, threads: int | None = None):
        self.source = source   # ONNX bytes or a file: what `model_bytes` reads back (ferlab.inference.adapt)
        self.session = create_session(source, threads)

    def model_bytes(self) -> bytes:
        return self.source if isinstance(self.source, bytes) else Path(self.source).read_bytes()

    def __call__(self, x):
        if isinstance(x, np.ndarray):
            return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, np.float32)})[0]
        import torch

        faces = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: faces})[0]).to(x.device)

    def eval(self):
        return self

    def to(self, *args, **kwargs):
        return self

    def parameters(self):
        return iter(())


def _decoded(props) -> dict:
    out = {}
    for key, value in props:
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def read_metadata(path_or_bytes) -> dict:
    """The ferlab.* metadata of an ONNX file, JSON values decoded (reads the file with the onnx package)."""
    import onnx

    proto = onnx.load_from_string(path_or_bytes) if isinstance(path_or_bytes, bytes) else onnx.load(str(path_or_bytes))
    return _decoded((p.key, p.value) for p in proto.metadata_props)


def load_onnx(path) -> tuple[OnnxModel, dict]:
    """An exported ONNX file -> (OnnxModel, model card); the card is the one export embedded, read
    from the onnxruntime session (no onnx package needed)."""
    try:
        model = OnnxModel(path)
    except FerlabError as e:
        if "cannot load the model" not in str(e):
            raise
        raise FerlabError(f"{path}: not a readable ONNX file ({str(e).split(': ', 1)[1][:200]})") from None
    meta = _decoded(model.session.get_modelmeta().custom_metadata_map.items())
    if "ferlab.model" not in meta:
        raise FerlabError(f"{path}: an ONNX file without ferlab's metadata (export it with `ferlab export`)")
    card = {**meta.get("ferlab.card", {}), "model": meta["ferlab.model"], "classes": meta["ferlab.classes"],
            "quantization": meta.get("ferlab.quantization", "none"), "onnx_opset": meta.get("ferlab.opset")}
    return model, card
