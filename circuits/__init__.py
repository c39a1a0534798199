"""circuits: find, compare, export and edit head-level circuits in transformer LMs.

The package import is kept light (no torch / transformers at import time), so
``import circuits`` is fast; submodules load what they need:

    from circuits.models import load_model
    from circuits.tasks import build_task
    from circuits.prompts import PromptSet
    from circuits import metrics
"""

__version__ = "0.1.0"

#: The numerics convention of every model this toolkit loads (see circuits.models).
NUMERICS = "raw-hf"

__all__ = ["__version__", "NUMERICS"]
