"""Scores: what every engine returns - a tensor with named axes and how it was made."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from circuits.io import atomic_write_text, dumps
from circuits.metrics import check_difference


@dataclass
class Scores:
    """Engine output.

    values:      [*axes] metric means over prompts.
    per_example: [*axes, batch] metric per prompt, or None.
    labels:      axis -> tick labels (e.g. position names), for axes that have them.
    baseline:    the metric on unpatched runs, e.g. {"clean": 3.1, "corrupted": -0.2}.
    settings:    everything needed to reproduce the numbers (engine, site, metric, n, ...).
    """

    values: Tensor
    axes: tuple[str, ...]
    per_example: Tensor | None = None
    labels: dict[str, list[str]] = field(default_factory=dict)
    baseline: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.axes = tuple(self.axes)
        if self.values.ndim != len(self.axes):
            raise ValueError(f"values has {self.values.ndim} dims but axes are {self.axes}")
        if self.per_example is not None and tuple(self.per_example.shape[:-1]) != tuple(self.values.shape):
            raise ValueError("per_example must be [*values.shape, batch]")

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of ``values``: one size per axis."""
        return tuple(self.values.shape)

    def normalized(self) -> Tensor:
        """(value - corrupted) / (clean - corrupted): 1 = clean behaviour, 0 = corrupted."""
        if "clean" not in self.baseline or "corrupted" not in self.baseline:
            raise ValueError("normalized() needs clean and corrupted baselines")
        clean, corrupted = self.baseline["clean"], self.baseline["corrupted"]
        check_difference(clean, corrupted, f"clean ({clean:.4g}) minus corrupted ({corrupted:.4g}) baseline")
        return (self.values - corrupted) / (clean - corrupted)

    def effect(self) -> Tensor:
        """The share of the clean-minus-corrupted gap each cell accounts for, one sign convention for every
        engine: 0 = no effect, 1 = the whole gap, positive = the component carries the clean behaviour.

        denoising (a clean patch into the corrupted run): ``normalized()``; noising (a corrupted patch
        into the clean run): ``1 - normalized()``; attribution (an estimated drop, clean - corrupted):
        ``values / (clean - corrupted)``. Which one is read from ``settings["direction"]``."""
        direction = str(self.settings.get("direction", ""))
        if direction == "denoise":
            return self.normalized()
        if direction == "noise":
            return 1.0 - self.normalized()
        if direction.startswith("clean - corrupted"):
            if "clean" not in self.baseline or "corrupted" not in self.baseline:
                raise ValueError("effect() needs clean and corrupted baselines")
            clean, corrupted = self.baseline["clean"], self.baseline["corrupted"]
            check_difference(clean, corrupted, f"clean ({clean:.4g}) minus corrupted ({corrupted:.4g}) baseline")
            return self.values / (clean - corrupted)
        raise ValueError(f"effect() needs settings['direction'] to be 'denoise', 'noise' or 'clean - corrupted' "
                         f"(an attribution), got {direction!r}")

    def ci(self, level: float = 0.95, n_boot: int = 1000, seed: int = 0) -> tuple[Tensor, Tensor]:
        """Bootstrap confidence interval of the mean over prompts: (low, high), each [*axes]."""
        if self.per_example is None:
            raise ValueError("ci() needs per-example values (run the engine with keep_per_example=True)")
        b = self.per_example.shape[-1]
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(b, (n_boot, b), generator=g)
        flat = self.per_example.reshape(-1, b).float().cpu()
        means = flat[:, idx].mean(-1)  # [cells, n_boot]
        lo = torch.quantile(means, (1 - level) / 2, dim=-1).reshape(self.shape)
        hi = torch.quantile(means, 1 - (1 - level) / 2, dim=-1).reshape(self.shape)
        return lo, hi

    def top(self, k: int = 10, by: str = "abs") -> list[tuple[tuple[Any, ...], float]]:
        """The k largest cells as ((label per axis), value); ``by`` = abs | max | min."""
        if by not in ("abs", "max", "min"):
            raise ValueError(f"by must be 'abs', 'max' or 'min', got {by!r}")
        flat = self.values.flatten().float()
        key = torch.nan_to_num({"abs": flat.abs(), "max": flat, "min": -flat}[by], nan=-float("inf"))
        order = torch.argsort(key, descending=True)[:k]
        out = []
        for i in order.tolist():
            index = torch.unravel_index(torch.tensor(i), self.shape)
            out.append((tuple(self._label(a, int(j)) for a, j in zip(self.axes, index)), float(flat[i])))
        return out

    def _label(self, axis: str, i: int) -> Any:
        labels = self.labels.get(axis)
        return labels[i] if labels else i

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field, tensors as nested lists (:meth:`from_dict` reads it back)."""
        return {"axes": list(self.axes), "values": self.values.tolist(),
                "per_example": None if self.per_example is None else self.per_example.tolist(),
                "labels": self.labels, "baseline": self.baseline, "settings": self.settings}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scores:
        """Inverse of :meth:`to_dict` (JSON's null, a cell not scored, becomes NaN again)."""
        missing = [k for k in ("values", "axes") if k not in d]
        if missing:
            raise ValueError(f"Scores data lacks {missing}; expected what Scores.to_dict writes")
        pe = d.get("per_example")
        return cls(_tensor(d["values"]), tuple(d["axes"]), None if pe is None else _tensor(pe),
                   d.get("labels", {}), d.get("baseline", {}), d.get("settings", {}))

    def save(self, path: str | Path) -> Path:
        """Write as JSON (atomically)."""
        atomic_write_text(path, dumps(self.to_dict()))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Scores:
        """Read Scores written by :meth:`save`; errors name the file."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{str(path)!r} is not a Scores JSON file: {e}") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"{str(path)!r} is not a valid Scores file: {e}") from None


def _tensor(values: Any) -> Tensor:
    """A float tensor of nested lists whose None entries (undefined cells) become NaN."""
    def fill(x: Any) -> Any:
        if isinstance(x, list):
            return [fill(v) for v in x]
        return float("nan") if x is None else x

    return torch.tensor(fill(values), dtype=torch.float32)
