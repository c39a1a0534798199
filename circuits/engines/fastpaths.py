"""The record of which fast paths the engines use on a model, and why one is off.

Each fast path is exact where it applies and is checked once per model against
the plain computation; a check that fails, or cannot run, turns the path off
for that model. Nothing turns off silently: every decision is kept here (read it
with :func:`report`), logged through ``logging`` (INFO when a path is on,
WARNING when it is off), and copied into the settings of every result.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

#: every fast path, with what it does
FAST_PATHS = {
    "end_only_last_mlp": "the last block's MLP runs at each prompt's END only",
    "block_replay": "forward passes restart at the first layer a variant changes, from the base run's block inputs",
    "prefix_skip": "positions before the first clean/corrupted difference are not recomputed "
                   "(restarted blocks read them from the base run's KV cache)",
    "path_direct_shortcut": "path patching with frozen MLPs computes receiver inputs from sender deltas "
                            "(no pass-C forward)",
    "path_one_layer_receivers": "path patching recomputes only the receiver heads when all receivers "
                                "sit in one layer",
}


@dataclass(frozen=True)
class FastPath:
    """One fast path's state on one model."""

    on: bool
    reason: str


_RECORDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {name: FastPath}


def _check_name(name: str) -> None:
    if name not in FAST_PATHS:
        raise KeyError(f"unknown fast path {name!r}; known: {sorted(FAST_PATHS)}")


def record(model: Any, name: str, on: bool, reason: str) -> bool:
    """Keep the outcome of ``name``'s check on ``model``; log it when it changes. Returns ``on``."""
    _check_name(name)
    entry = FastPath(bool(on), reason)
    paths = _RECORDS.setdefault(model, {})
    if paths.get(name) != entry:
        label = getattr(getattr(model, "cfg", None), "model_name", None) or type(model).__name__
        if on:
            log.info("fast path %s on for %s: %s", name, label, reason)
        else:
            log.warning("fast path %s OFF for %s: %s", name, label, reason)
    paths[name] = entry
    return entry.on


def get(model: Any, name: str) -> FastPath | None:
    """``name``'s state on ``model`` (None: not checked yet)."""
    _check_name(name)
    return _RECORDS.get(model, {}).get(name)


def is_on(model: Any, name: str) -> bool:
    """True only where ``name`` was checked on ``model`` and passed."""
    entry = get(model, name)
    return entry is not None and entry.on


def report(model: Any) -> dict[str, dict[str, Any]]:
    """Every fast path's state on ``model`` as plain data: {name: {"on": bool | None, "reason": str}}."""
    paths = _RECORDS.get(model, {})
    return {name: asdict(paths[name]) if name in paths else {"on": None, "reason": "not checked yet"}
            for name in FAST_PATHS}


def forget(model: Any, *names: str) -> None:
    """Drop the record of ``names`` (all if none) on ``model``, so the next use checks again."""
    paths = _RECORDS.get(model, {})
    for name in names or list(paths):
        _check_name(name)
        paths.pop(name, None)


def summary(model: Any) -> str:
    """One line: each fast path on, off (with the reason) or not checked on ``model``."""
    def state(entry: dict[str, Any]) -> str:
        if entry["on"] is None:
            return "not checked"
        return "on" if entry["on"] else f"OFF ({entry['reason']})"

    return "; ".join(f"{name} {state(entry)}" for name, entry in report(model).items())
