"""What every analysis script shares: result folder names and the versions that made a result."""

from __future__ import annotations

import platform


def safe_name(spec: str) -> str:
    """A model spec as a folder name: zoo:toyworld@200 -> zoo_toyworld_200."""
    return spec.replace(":", "_").replace("/", "_").replace("@", "_")


def versions() -> dict[str, str]:
    import torch

    import circuits

    return {"circuits": circuits.__version__, "torch": torch.__version__, "python": platform.python_version()}
