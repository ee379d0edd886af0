"""The model zoo: the four papers' CNNs and ferlab's own, behind one registry."""

from ferlab.models.registry import count_parameters, create_model, list_models, register_model

# Importing the modules registers their models.
from ferlab.models import fernet  # noqa: F401,E402

__all__ = ["count_parameters", "create_model", "list_models", "register_model"]
