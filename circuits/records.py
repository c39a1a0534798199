"""Plain-data results: dataclasses that write and read strict JSON.

Engines return small documented dataclasses (faithfulness, a MIB curve, an
agreement report, ...) rather than loose dicts. Each derives from :class:`Record`,
which gives it ``to_dict`` / ``from_dict`` and ``save`` / ``load``: JSON in and out,
with nested records rebuilt from the field types named in ``_nested``.
"""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, fields
from typing import Any, ClassVar, TypeVar

from circuits.io import atomic_write_json

R = TypeVar("R", bound="Record")


def _plain(x: Any) -> Any:
    if isinstance(x, Record):
        return x.to_dict()
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


class Record:
    """Mixin for result dataclasses: ``to_dict``/``from_dict`` and ``save``/``load`` (strict JSON).

    ``_nested`` maps a field to (container, Record type): container ``"one"`` (the
    value is a record), ``"list"`` or ``"dict"`` (of records). ``_derived`` names keys
    ``to_dict`` adds that are not fields (computed properties), which ``from_dict``
    ignores.
    """

    _nested: ClassVar[dict[str, tuple[str, type]]] = {}
    _derived: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain data (nested records as dicts), plus the ``_derived`` properties."""
        out = {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]
        out.update({k: _plain(getattr(self, k)) for k in self._derived})
        return out

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        """Inverse of :meth:`to_dict`; names missing or unknown keys."""
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__} data must be a JSON object, got {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        required = {n for n, f in known.items() if f.default is MISSING and f.default_factory is MISSING}
        given = {k: v for k, v in data.items() if k not in cls._derived}
        missing, unknown = sorted(required - set(given)), sorted(set(given) - set(known))
        if missing or unknown:
            raise ValueError(f"{cls.__name__} data: missing {missing}, unknown {unknown}")
        for name, (container, kind) in cls._nested.items():
            value = given.get(name)
            if value is None:
                continue
            if container == "list":
                given[name] = [kind.from_dict(v) for v in value]
            elif container == "dict":
                given[name] = {k: kind.from_dict(v) for k, v in value.items()}
            else:
                given[name] = kind.from_dict(value)
        return cls(**given)

    def save(self, path: str | os.PathLike) -> None:
        """Write as strict JSON, atomically."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls: type[R], path: str | os.PathLike) -> R:
        """Read what :meth:`save` wrote; errors name the file."""
        try:
            with open(path) as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{os.fspath(path)!r} is not a {cls.__name__} JSON file: {e}") from None
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{os.fspath(path)!r}: {e}") from None

