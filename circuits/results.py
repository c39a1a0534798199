"""The one writer of analysis results: strict JSON with a schema version and provenance.

Every result file says how it was made: the model (shape, numerics, KV-cache
status), the task, seed and number of prompts, the versions of the packages that
computed it, the git commit of this code (and whether the tree had uncommitted
changes), and which engine fast paths were on (``circuits.engines.fastpaths``).
The analysis's own numbers sit beside that, under keys of its choosing.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from circuits.io import atomic_write_json

SCHEMA_VERSION = 1
_PACKAGES = ("circuitlab", "torch", "transformers", "transformer-lens", "tokenizers", "numpy")


def versions() -> dict[str, str | None]:
    """Installed versions of the packages that compute results, and Python's."""
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    return out


def git_commit(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """{"commit": the HEAD commit of the repository holding ``path`` (default: this package) or None
    outside a git checkout, "dirty": whether tracked files have uncommitted changes}."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if dirty is None else bool(dirty)}


def provenance(*, model: dict[str, Any], task: str | None, seed: int | None, n: int | None,
               fast_paths: dict[str, Any] | None = None, **settings: Any) -> dict[str, Any]:
    """What every result records about how it was made (``model``: ``circuits.models.model_info``)."""
    return {"model": model, "task": task, "seed": seed, "n": n, "settings": settings,
            "versions": versions(), "git": git_commit(), "fast_paths": fast_paths or {}}


def write_result(path: str | os.PathLike, analysis: str, data: dict[str, Any],
                 provenance: dict[str, Any]) -> str:
    """Write ``{"schema_version", "analysis", "provenance", **data}`` to ``path`` as strict JSON
    (atomically); returns the path."""
    clash = {"schema_version", "analysis", "provenance"} & set(data)
    if clash:
        raise ValueError(f"result data may not use the reserved keys {sorted(clash)}")
    atomic_write_json(path, {"schema_version": SCHEMA_VERSION, "analysis": analysis, "provenance": provenance,
                             **data})
    return os.fspath(path)
