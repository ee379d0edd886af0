"""ferlab: facial expression recognition, from the published CNNs to a fast offline recognizer.

    from ferlab import Recognizer
    Recognizer().predict("photo.jpg")   # -> [{"box", "score", "label", "confidence", "probs"}]
"""

__version__ = "0.1.0"

from ferlab.errors import FerlabError
from ferlab.labels import FER2013_CLASSES

__all__ = ["FerlabError", "FER2013_CLASSES", "Recognizer", "__version__"]


def __getattr__(name: str):
    # Loaded on first use: `import ferlab` and commands that never recognise stay free of torch.
    if name == "Recognizer":
        from ferlab.inference.recognizer import Recognizer
        return Recognizer
    raise AttributeError(f"module 'ferlab' has no attribute {name!r}")
