"""Running the ONNX files `ferlab export` writes: onnxruntime sessions, `OnnxModel`, and the model
card stored in a file's metadata.

This is the runtime half of ONNX support; `ferlab.export` is the writer. It imports neither torch
nor onnx at module level: onnx and onnxruntime are optional dependencies, loaded when a model is,
and running a model should not need the training framework.
"""

import json

import numpy as np

from ferlab.errors import FerlabError

INPUT_NAME, OUTPUT_NAME = "faces", "logits"


def create_session(model, threads: int | None = None):
    """An onnxruntime CPU session for ONNX bytes or a file. threads: intra-op threads (default:
    torch's thread count, so --threads governs both backends). Idle worker threads do not spin:
    on a machine busy with other work spinning threads slow everyone down."""
    import onnxruntime as ort

    if not threads:
        import torch   # only for its thread setting, which --threads sets
        threads = torch.get_num_threads()
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
        self.session = create_session(source, threads)

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


def read_metadata(path_or_bytes) -> dict:
    """The ferlab.* metadata of an ONNX file, JSON values decoded."""
    import onnx

    proto = onnx.load_from_string(path_or_bytes) if isinstance(path_or_bytes, bytes) else onnx.load(str(path_or_bytes))
    out = {}
    for p in proto.metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except ValueError:
            out[p.key] = p.value
    return out


def load_onnx(path) -> tuple[OnnxModel, dict]:
    """An exported ONNX file -> (OnnxModel, model card); the card is the one export embedded."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise FerlabError(f"{path}: running ONNX models needs onnx and onnxruntime (pip install 'ferlab[onnx]')") from None
    try:
        meta = read_metadata(path)
    except Exception as e:  # onnx raises DecodeError and others for files that are not ONNX
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise FerlabError(f"{path}: not a readable ONNX file ({reason})") from None
    if "ferlab.model" not in meta:
        raise FerlabError(f"{path}: an ONNX file without ferlab's metadata (export it with `ferlab export`)")
    card = {**meta.get("ferlab.card", {}), "model": meta["ferlab.model"], "classes": meta["ferlab.classes"],
            "quantization": meta.get("ferlab.quantization", "none"), "onnx_opset": meta.get("ferlab.opset")}
    return OnnxModel(path), card
