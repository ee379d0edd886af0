"""ferlab: facial expression recognition, from the published CNNs to a fast offline recognizer."""

__version__ = "0.1.0"

from ferlab.errors import FerlabError
from ferlab.labels import FER2013_CLASSES

__all__ = ["FerlabError", "FER2013_CLASSES", "__version__"]
