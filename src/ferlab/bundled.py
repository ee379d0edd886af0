"""Where model names lead: bundled names, run directories, weights and ONNX files. No torch here:
the Recognizer resolves names before it knows whether a model needs PyTorch.

Bundled under ferlab/weights: `default` (default.safetensors, PyTorch weights, and its fp32 ONNX
export default-fp32.onnx, which `pip install ferlab` runs without torch), `default-int8` (its int8
ONNX export), `ferplus`, `ferplus-int8`, `general` and `general-int8`.
"""

from pathlib import Path

from ferlab.errors import FerlabError

WEIGHTS_DIR = Path(__file__).parent / "weights"


def resolve_weights(spec: str) -> Path:
    """A bundled model name ('default', 'default-int8', 'ferplus'), a run directory (its best weights), a
    weights file or an exported .onnx file."""
    path = Path(spec)
    if path.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (path / name).is_file():
                return path / name
        raise FerlabError(f"{path}: no best.safetensors or last.safetensors in this run directory")
    if path.suffix in (".safetensors", ".onnx") or path.exists():
        return path
    for bundled in (WEIGHTS_DIR / f"{spec}.safetensors", WEIGHTS_DIR / f"{spec}.onnx"):
        if bundled.is_file():
            return bundled
    known = sorted(p.stem for p in [*WEIGHTS_DIR.glob("*.safetensors"), *WEIGHTS_DIR.glob("*.onnx")])
    raise FerlabError(f"{spec}: not a weights file, run directory or bundled model (bundled: {', '.join(known) or 'none'})")


def onnx_twin(path: Path) -> Path | None:
    """The bundled fp32 ONNX export of a bundled weights file (default.safetensors ->
    default-fp32.onnx), exported with a parity check of ~1e-7 (its card): the same model without torch."""
    twin = path.with_name(f"{path.stem}-fp32.onnx")
    if path.suffix == ".safetensors" and path.parent == WEIGHTS_DIR and twin.is_file():
        return twin
    return None
