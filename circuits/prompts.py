"""PromptSet: the plain data that tasks build and engines consume.

A PromptSet holds aligned clean/corrupted token tensors, answer ids, named
positions and provenance. Engines read only this class, never a task module.

Conventions
-----------
* Prompts are right-padded with ``pad_token_id``. For a causal LM, right padding
  never changes the activations at real positions, so no attention mask is
  needed; ``lengths`` says where each prompt ends and ``positions["END"]`` is
  the last real token (where the next-token prediction is read).
* Clean and corrupted prompts of a pair have the same length and every named
  position is the same token index in both (checked at construction).
* ``answers``/``wrong_answers`` are single token ids; the logit difference is
  ``logit[answer] - logit[wrong]`` read at END.
* Optional ``answer_candidates`` [k] with ``answer_mask`` [batch, k] describe
  tasks whose correct answer is a *set* of tokens (greater-than).
* Optional ``corrupted_answers`` [batch]: the correct answer of each *corrupted*
  prompt, where the corruption asks a question of its own (colored objects asks
  about another object, reasoning about the other item). Scoring the corrupted
  prompts against them shows whether a model reads the question or answers from a
  property every clean prompt shares.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from circuits.io import atomic_write_text, dumps


class PromptAlignmentError(ValueError):
    """A clean/corrupted pair does not align position by position."""


def _as_long(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(x, dtype=torch.long)


@dataclass
class PromptSet:
    """Clean/corrupted prompt pairs with answers and named positions.

    Shapes: ``clean``/``corrupted`` [batch, pos] (long, right-padded);
    ``answers``/``wrong_answers``/``lengths``/``groups`` [batch];
    each ``positions[name]`` [batch] (token index into the padded row).
    """

    task: str
    clean: Int[Tensor, "batch pos"]
    corrupted: Int[Tensor, "batch pos"]
    answers: Int[Tensor, " batch"]
    wrong_answers: Int[Tensor, " batch"]
    lengths: Int[Tensor, " batch"]
    positions: dict[str, Int[Tensor, " batch"]]
    groups: Int[Tensor, " batch"]
    pad_token_id: int
    clean_text: list[str] = field(default_factory=list)
    corrupted_text: list[str] = field(default_factory=list)
    answer_text: list[str] = field(default_factory=list)
    wrong_text: list[str] = field(default_factory=list)
    group_names: list[str] = field(default_factory=list)
    answer_candidates: Int[Tensor, " k"] | None = None
    answer_mask: Bool[Tensor, "batch k"] | None = None
    corrupted_answers: Int[Tensor, " batch"] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.clean = _as_long(self.clean)
        self.corrupted = _as_long(self.corrupted)
        self.answers = _as_long(self.answers)
        self.wrong_answers = _as_long(self.wrong_answers)
        self.lengths = _as_long(self.lengths)
        self.groups = _as_long(self.groups)
        self.positions = {k: _as_long(v) for k, v in self.positions.items()}
        if self.answer_candidates is not None:
            self.answer_candidates = _as_long(self.answer_candidates)
            self.answer_mask = torch.as_tensor(self.answer_mask, dtype=torch.bool)
        if self.corrupted_answers is not None:
            self.corrupted_answers = _as_long(self.corrupted_answers)
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise PromptAlignmentError/ValueError if the set is inconsistent."""
        ints = {"clean": self.clean, "corrupted": self.corrupted, "answers": self.answers,
                "wrong_answers": self.wrong_answers, "lengths": self.lengths, "groups": self.groups,
                **{f"positions[{k!r}]": v for k, v in self.positions.items()}}
        for name, t in ints.items():
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise TypeError(f"PromptSet {name} must hold integer token ids or indices, got {t.dtype}")
        if self.clean.ndim != 2:
            raise ValueError(f"clean tokens must be [batch, pos], got shape {tuple(self.clean.shape)}")
        b = self.clean.shape[0]
        if b == 0:
            raise ValueError(f"PromptSet {self.task!r} has no prompts; an analysis needs at least one")
        if self.corrupted.shape != self.clean.shape:
            raise PromptAlignmentError(
                f"clean tokens {tuple(self.clean.shape)} and corrupted tokens "
                f"{tuple(self.corrupted.shape)} differ in shape; pairs must align position by position"
            )
        for name in ("answers", "wrong_answers", "lengths", "groups", "corrupted_answers"):
            t = getattr(self, name)
            if t is not None and t.shape != (b,):
                raise ValueError(f"{name} must have shape ({b},), got {tuple(t.shape)}")
        for name, pos in self.positions.items():
            if pos.shape != (b,):
                raise ValueError(f"position {name!r} must have shape ({b},), got {tuple(pos.shape)}")
        if self.clean.device.type == "meta":
            return  # shapes only: meta tensors hold no values
        for name, pos in self.positions.items():
            bad = (pos < -1) | (pos >= self.lengths) | ((pos == -1) & (name == "END"))
            if bad.any():
                i = int(bad.nonzero()[0])
                raise PromptAlignmentError(
                    f"position {name!r} of prompt {i} is {int(pos[i])}, outside its length {int(self.lengths[i])}"
                )
        if "END" not in self.positions:
            raise ValueError("positions must include 'END' (the token where the answer is predicted)")
        if (self.positions["END"] != self.lengths - 1).any():
            raise PromptAlignmentError("positions['END'] must be lengths - 1 for every prompt")
        if (self.lengths > self.clean.shape[1]).any() or (self.lengths < 1).any():
            raise ValueError("lengths must lie in [1, pos]")
        # Padding beyond each length must be identical in clean and corrupted.
        ar = torch.arange(self.clean.shape[1])
        pad_region = ar[None, :] >= self.lengths[:, None]
        if (self.clean[pad_region] != self.pad_token_id).any() or (
            self.corrupted[pad_region] != self.pad_token_id
        ).any():
            raise PromptAlignmentError("tokens after a prompt's length must be pad_token_id in clean and corrupted")
        same = (self.answers == self.wrong_answers).nonzero().flatten()
        if len(same) and self.answer_candidates is None:
            i = int(same[0])
            word = f" ({self.answer_text[i]!r})" if i < len(self.answer_text) else ""
            raise ValueError(f"prompt {i} of {self.task!r}: the answer and the wrong answer are the same token "
                             f"(id {int(self.answers[i])}{word}), so their logit difference is 0 by construction")
        if self.answer_candidates is not None:
            k = self.answer_candidates.shape[0]
            if self.answer_mask is None or self.answer_mask.shape != (b, k):
                raise ValueError(f"answer_mask must have shape ({b}, {k})")

    # --------------------------------------------------------------- basics
    def __len__(self) -> int:
        return int(self.clean.shape[0])

    @property
    def n_pos(self) -> int:
        """Number of token positions (the padded prompt length)."""
        return int(self.clean.shape[1])

    @property
    def position_names(self) -> list[str]:
        """Names of the named positions (e.g. IO, S1, END), in the order ``positions`` holds them."""
        return list(self.positions)

    @property
    def device(self) -> torch.device:
        """The device of the token tensors."""
        return self.clean.device

    @property
    def attention_mask(self) -> Bool[Tensor, "batch pos"]:
        """True at real tokens, False at right padding."""
        ar = torch.arange(self.n_pos, device=self.device)
        return ar[None, :] < self.lengths[:, None]

    def to(self, device: str | torch.device) -> PromptSet:
        """A copy with every tensor on ``device``."""
        return self._map(lambda t: t.to(device))

    def subset(self, idx: Sequence[int] | Tensor | slice) -> PromptSet:
        """The prompts at ``idx`` (indices, bool mask or slice), trimmed of unused padding."""
        if isinstance(idx, (str, bytes, float)):
            raise TypeError(f"subset takes prompt indices, a bool mask or a slice, got {idx!r}")
        if isinstance(idx, slice):
            idx = torch.arange(len(self))[idx]
        idx = torch.as_tensor(idx)
        if idx.dtype == torch.bool:
            if idx.shape != (len(self),):
                raise ValueError(f"bool mask must have shape ({len(self)},), got {tuple(idx.shape)}")
            idx = idx.nonzero().flatten()
        idx = idx.long().cpu()
        if len(idx) == 0:
            raise ValueError(f"this subset selects none of the {len(self)} prompts of {self.task!r}")
        if (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"subset index out of range for a PromptSet of {len(self)} prompts")
        dev_idx = idx.to(self.device)
        max_len = int(self.lengths[dev_idx].max()) if len(idx) else 1

        def pick_list(xs: list) -> list:
            return [xs[i] for i in idx.tolist()] if xs else []

        out = self._map(lambda t: t[dev_idx], rows_only=True)
        out.clean = out.clean[:, :max_len]
        out.corrupted = out.corrupted[:, :max_len]
        out.clean_text = pick_list(self.clean_text)
        out.corrupted_text = pick_list(self.corrupted_text)
        out.answer_text = pick_list(self.answer_text)
        out.wrong_text = pick_list(self.wrong_text)
        out.provenance = {**self.provenance, "subset_of": len(self)}
        out.validate()
        return out

    def group_subsets(self) -> dict[str, PromptSet]:
        """One PromptSet per group (template) id, keyed by group name."""
        out = {}
        for g in sorted(set(self.groups.tolist())):
            name = self.group_names[g] if g < len(self.group_names) else str(g)
            out[name] = self.subset(self.groups == g)
        return out

    def length_subsets(self) -> dict[int, PromptSet]:
        """One PromptSet per prompt length: no padding inside each."""
        return {int(n): self.subset(self.lengths == n) for n in sorted(set(self.lengths.tolist()))}

    def generation_prompts(self, which: str = "clean") -> list[list[int]]:
        """Unpadded token id lists (BOS included if present), for generation."""
        toks = self.clean if which == "clean" else self.corrupted
        return [toks[i, : int(n)].tolist() for i, n in enumerate(self.lengths)]

    def _map(self, fn, rows_only: bool = False) -> PromptSet:
        cands = self.answer_candidates
        return PromptSet(
            task=self.task,
            clean=fn(self.clean),
            corrupted=fn(self.corrupted),
            answers=fn(self.answers),
            wrong_answers=fn(self.wrong_answers),
            lengths=fn(self.lengths),
            positions={k: fn(v) for k, v in self.positions.items()},
            groups=fn(self.groups),
            pad_token_id=self.pad_token_id,
            clean_text=list(self.clean_text),
            corrupted_text=list(self.corrupted_text),
            answer_text=list(self.answer_text),
            wrong_text=list(self.wrong_text),
            group_names=list(self.group_names),
            answer_candidates=None if cands is None else (cands if rows_only else fn(cands)),
            answer_mask=None if self.answer_mask is None else fn(self.answer_mask),
            corrupted_answers=None if self.corrupted_answers is None else fn(self.corrupted_answers),
            provenance=dict(self.provenance),
        )

    # ------------------------------------------------------------ serialise
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict holding everything (tensors as lists)."""

        def lst(t: Tensor | None):
            return None if t is None else t.cpu().tolist()

        return {
            "task": self.task,
            "clean": lst(self.clean),
            "corrupted": lst(self.corrupted),
            "answers": lst(self.answers),
            "wrong_answers": lst(self.wrong_answers),
            "lengths": lst(self.lengths),
            "positions": {k: lst(v) for k, v in self.positions.items()},
            "groups": lst(self.groups),
            "pad_token_id": self.pad_token_id,
            "clean_text": self.clean_text,
            "corrupted_text": self.corrupted_text,
            "answer_text": self.answer_text,
            "wrong_text": self.wrong_text,
            "group_names": self.group_names,
            "answer_candidates": lst(self.answer_candidates),
            "answer_mask": lst(self.answer_mask),
            "corrupted_answers": lst(self.corrupted_answers),
            "provenance": self.provenance,
        }

    def describe(self) -> dict[str, Any]:
        """A short JSON description of how the set was made (no token data)."""
        return {
            "task": self.task,
            "n": len(self),
            "max_len": self.n_pos,
            "lengths": sorted(set(self.lengths.tolist())),
            "positions": self.position_names,
            "groups": len(set(self.groups.tolist())),
            **self.provenance,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the set as JSON atomically (temp file, then rename)."""
        atomic_write_text(path, dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> PromptSet:
        """Read a set written by :meth:`save`; errors name the file."""
        try:
            with open(path) as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{os.fspath(path)!r} is not a PromptSet JSON file: {e}") from None
        except OSError as e:
            raise OSError(f"cannot read PromptSet file {os.fspath(path)!r}: {e.strerror or e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{os.fspath(path)!r} holds a JSON {type(data).__name__}, not a PromptSet")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{os.fspath(path)!r} is not a valid PromptSet: {e}") from None

    @classmethod
    def from_token_ids(cls, clean: Sequence[Sequence[int]], corrupted: Sequence[Sequence[int]],
                       answers: Sequence[int], wrong_answers: Sequence[int], *, pad_token_id: int,
                       positions: dict[str, Sequence[int]] | None = None, groups: Sequence[int] | None = None,
                       group_names: Sequence[str] | None = None, task: str = "custom",
                       corrupted_answers: Sequence[int] | None = None) -> PromptSet:
        """A PromptSet from already tokenized prompts: ``clean[i]`` and ``corrupted[i]`` are token id lists
        of one length (BOS included if the model wants one), right-padded here with ``pad_token_id``;
        ``answers`` / ``wrong_answers`` are single token ids. ``lengths`` and ``positions["END"]`` (the
        last token) are filled in; ``positions`` adds named positions (token indices); ``groups`` (default
        all 0) names template groups. A pair of different lengths is a PromptAlignmentError naming it."""
        if not (len(clean) == len(corrupted) == len(answers) == len(wrong_answers)):
            raise ValueError(f"clean ({len(clean)}), corrupted ({len(corrupted)}), answers ({len(answers)}) and "
                             f"wrong_answers ({len(wrong_answers)}) must hold one entry per prompt")
        if not clean:
            raise ValueError("from_token_ids needs at least one prompt")
        for i, (c, r) in enumerate(zip(clean, corrupted)):
            if len(c) != len(r):
                raise PromptAlignmentError(f"prompt {i}: clean has {len(c)} tokens, corrupted {len(r)}; pairs must "
                                           "align position by position")
            if not c:
                raise ValueError(f"prompt {i} is empty")
        width = max(len(c) for c in clean)

        def padded(rows: Sequence[Sequence[int]]) -> Tensor:
            out = torch.full((len(rows), width), int(pad_token_id), dtype=torch.long)
            for i, row in enumerate(rows):
                out[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
            return out

        lengths = torch.tensor([len(c) for c in clean])
        named = {k: torch.as_tensor(list(v), dtype=torch.long) for k, v in (positions or {}).items()}
        if "END" in named and not torch.equal(named["END"], lengths - 1):
            raise PromptAlignmentError("positions['END'] must be the last token of each prompt (length - 1)")
        named["END"] = lengths - 1
        g = torch.zeros(len(clean), dtype=torch.long) if groups is None else torch.as_tensor(list(groups))
        names = list(group_names) if group_names is not None else [str(k) for k in range(int(g.max()) + 1)]
        return cls(task, padded(clean), padded(corrupted), torch.as_tensor(list(answers)),
                   torch.as_tensor(list(wrong_answers)), lengths, named, g, int(pad_token_id), group_names=names,
                   corrupted_answers=None if corrupted_answers is None else torch.as_tensor(list(corrupted_answers)),
                   provenance={"source": "from_token_ids"})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromptSet:
        """Inverse of :meth:`to_dict`; names missing or unknown keys."""
        fields = set(cls.__dataclass_fields__)
        required = {n for n, f in cls.__dataclass_fields__.items()
                    if f.default is MISSING and f.default_factory is MISSING}
        missing, unknown = sorted(required - set(d)), sorted(set(d) - fields)
        if missing or unknown:
            raise ValueError(f"PromptSet data {'lacks ' + str(missing) if missing else ''}"
                             f"{' and ' if missing and unknown else ''}"
                             f"{'has unknown keys ' + str(unknown) if unknown else ''}")
        return cls(**d)
