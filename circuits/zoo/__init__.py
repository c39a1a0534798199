"""The zoo: small model organisms trained by this project, bundled as HF checkpoints.

``zoo:<name>`` names a folder ``circuits/zoo/models/<name>`` holding config.json,
model.safetensors, tokenizer.json and a model card. Training checkpoints are
``<name>@<step>`` folders, and ``recipe.json`` in each says how it was made and with
which task options to evaluate it. The recipes that (re)build them live in
``circuits.zoo.recipes``; this registry never imports them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def weights_hash(name: str) -> str:
    """The first 16 hex digits of the SHA-256 of zoo model ``name``'s weights (model.safetensors): what a
    result records to say which bundled weights it describes."""
    import hashlib

    return hashlib.sha256((zoo_path(name) / "model.safetensors").read_bytes()).hexdigest()[:16]


def recipe(name: str) -> dict[str, Any]:
    """The recipe.json of zoo model ``name`` ({} if it has none)."""
    path = zoo_path(name) / "recipe.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def task_options(spec: str) -> dict[str, dict[str, Any]]:
    """Task options to evaluate a model with: for ``zoo:<name>``, those its recipe records
    (``eval_task_options``: the options it was trained with, evaluation overrides applied);
    {} for any other model (the tasks' defaults)."""
    if not spec.startswith("zoo:"):
        return {}
    return recipe(spec[4:]).get("eval_task_options", {})
