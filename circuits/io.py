"""Writing results: atomic files, strict JSON, and a run's outputs published as a unit.

A run that fails halfway never leaves a half-written file, nor a folder that mixes
two runs' files.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def checked_folder(path: str | os.PathLike) -> str:
    """The folder ``path`` will be written in: created if missing, and checked to be writable."""
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create output folder {folder!r}: {e}") from e
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"output folder {folder!r} is not writable")
    return folder


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder, then rename."""
    path = os.fspath(path)
    folder = checked_folder(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix="-" + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (utf-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def strict(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf) replaced by None: JSON's "undefined".

    JSON has no NaN or infinity; ``json.dumps`` would write bare ``NaN`` tokens that
    strict parsers reject. Tuples become lists.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def dumps(obj: Any, indent: int | None = None) -> str:
    """Strict JSON text of ``obj`` (non-finite floats written as null, see :func:`strict`)."""
    return json.dumps(strict(obj), indent=indent, allow_nan=False)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented strict JSON to ``path`` atomically."""
    atomic_write_text(path, dumps(obj, indent=2) + "\n")


@contextmanager
def run_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Stage a run's outputs, then publish them as ``folder`` in one step.

    Yields a fresh staging folder beside ``folder`` (created at once, so an output
    place that is not writable fails before any compute). On success the staging
    folder replaces ``folder``; on failure it is removed and ``folder`` keeps the
    previous run's files untouched.
    """
    final = Path(folder)
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=parent, prefix=f".{final.name}.partial-"))
    except OSError as e:
        raise OSError(f"cannot write results under {str(parent)!r}: {e.strerror or e}") from None
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes 0700; results are ordinary folders
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{final.name}.old-"))
        final.replace(old / final.name)
    stage.replace(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
