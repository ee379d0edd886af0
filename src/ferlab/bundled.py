"""Where model names lead: bundled names, run directories, weights and ONNX files. No torch here:
the Recognizer resolves names before it knows whether a model needs PyTorch.

Bundled under ferlab/weights: `default` (default.safetensors, PyTorch weights, and its fp32 ONNX
export default-fp32.onnx, which `pip install ferlab` runs without torch), `default-int8` (its int8
ONNX export), `ferplus`, `ferplus-int8`, `general` and `general-int8`.
"""

import json
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


def read_card(weights: Path) -> dict:
    """The model card beside a weights file (NAME.json beside NAME.safetensors), {} when there is none;
    FerlabError naming the card when it is not a JSON object."""
    card_path = Path(weights).with_suffix(".json")
    return read_json_object(card_path, "model card") if card_path.is_file() else {}


def read_json_object(path: Path, what: str) -> dict:
    """A user-editable JSON file that must hold an object (a model card, a run's config.json);
    FerlabError naming the file when it cannot be read, is not JSON or is not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise FerlabError(f"{path}: {what} is not valid JSON ({str(e).splitlines()[0][:160]})") from None
    if not isinstance(data, dict):
        raise FerlabError(f"{path}: {what} is a JSON {type(data).__name__}, not an object")
    return data


def check_card_classes(card: dict, weights: Path, classes) -> None:
    """FerlabError naming both files when the card beside `weights` lists other classes than the weights hold."""
    named = card.get("classes")
    if named is not None and list(named) != list(classes):
        raise FerlabError(f"{Path(weights).with_suffix('.json')}: the model card lists {len(named)} classes "
                          f"({', '.join(map(str, named))}) but {weights} holds {len(classes)} ({', '.join(classes)}); "
                          "correct or remove the card")
