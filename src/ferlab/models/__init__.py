"""The model zoo: the four papers' CNNs and ferlab's own, behind one registry."""

from ferlab.models.registry import count_parameters, create_model, list_models, register_model

# Importing the modules registers their models.
from ferlab.models import bah2022, fernet, li2023, sarmah2023, triwijoyo2021  # noqa: F401,E402
from ferlab.models.sarmah2023 import SARMAH2023_SEARCH_SPACE  # noqa: E402

__all__ = ["SARMAH2023_SEARCH_SPACE", "count_parameters", "create_model", "list_models", "register_model"]
