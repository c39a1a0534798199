"""The zoo: small model organisms trained by this project, bundled as HF checkpoints.

``zoo:<name>`` names a folder ``circuits/zoo/models/<name>`` holding config.json,
model.safetensors, tokenizer.json and a model card. Training checkpoints are
``<name>@<step>`` folders. Recipes that (re)build them live beside this file.
"""

from __future__ import annotations

from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = "zoo:toyworld"


def list_zoo() -> list[str]:
    """Names of the bundled zoo models (``name`` or ``name@step``), sorted."""
    if not ZOO_DIR.is_dir():
        return []
    return sorted(p.name for p in ZOO_DIR.iterdir() if (p / "config.json").is_file())


def zoo_path(name: str) -> Path:
    """Folder of zoo model ``name``; a clear error listing the zoo if unknown."""
    path = ZOO_DIR / name
    if not (path / "config.json").is_file():
        available = list_zoo()
        listing = ", ".join(f"zoo:{n}" for n in available) if available else "none are bundled yet (run `make zoo`)"
        raise KeyError(f"unknown zoo model {name!r}; available zoo models: {listing}")
    return path
