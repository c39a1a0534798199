"""Tiled interventions: many variants of one prompt batch in few forward passes.

An :class:`Edit` overwrites part of one site's activation at one layer with a
given value. A *variant* is a list of edits applied together; ``run_variants``
runs every variant on the same prompts, ``T`` variants per forward pass (the
prompt batch tiled ``T`` times, ``T`` chosen from a memory budget), and returns
END logits per variant.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from circuits.engines import forward
from circuits.engines.replay import BlockReplay
from circuits.engines.sites import Site, hook_name, write


@dataclass
class Edit:
    """``act[site@layer][..., head, pos] <- value[..., head, pos]`` (value: [b, ...] like the activation)."""

    site: Site
    layer: int
    value: Tensor
    head: int | None = None
    pos: Tensor | None = None  # [b] per-prompt position, -1 = untouched; None = all positions

    @property
    def hook(self) -> str:
        """The transformer-lens hook name of the edited site at ``layer``."""
        return hook_name(self.site, self.layer)


def _hooks_for(chunk: Sequence[Sequence[Edit]], b: int) -> list[forward.Hook]:
    by_hook: dict[str, list[tuple[int, Edit]]] = defaultdict(list)
    for t, variant in enumerate(chunk):
        for e in variant:
            by_hook[e.hook].append((t, e))
    n = len(chunk)

    def make(edits: list[tuple[int, Edit]]):
        def hook(act: Tensor, hook: Any) -> Tensor:
            a = act.clone().reshape(n, b, *act.shape[1:])
            for t, e in edits:
                write(a[t], e.value, e.site, e.head, e.pos)
            return a.reshape(act.shape)
        return hook

    return [(name, make(edits)) for name, edits in by_hook.items()]


@torch.no_grad()
def run_variants(model: Any, tokens: Int[Tensor, "batch pos"], end: Int[Tensor, " batch"],
                 variants: Sequence[Sequence[Edit]], memory_budget: int | None = None,
                 progress: bool | str = False, extra_hooks: Sequence[forward.Hook] = (),
                 schedules: Sequence[Any] | None = None, ps: Any = None, bos: bool = True,
                 replay: BlockReplay | None = None, skip: int = 0) -> Float[Tensor, "variant batch vocab"]:
    """END logits of every variant: [n_variants, batch, vocab].

    ``extra_hooks`` apply to every row. ``schedules`` (one attention-peeking
    schedule per variant, see circuits.engines.peeking; needs ``ps``) restrict
    attention variant by variant. ``replay``: a BlockReplay of ``tokens`` the caller already has.
    ``skip``: the caller's guarantee that no edit changes anything at positions
    ``< skip`` (their values there equal the base run's); those positions are
    then not recomputed where the model allows it (BlockReplay).
    """
    if schedules is not None and len(schedules) != len(variants):
        raise ValueError("schedules must give one peeking schedule per variant")
    b = tokens.shape[0]
    per = max(1, forward.rows_per_forward(model, tokens.shape[1], memory_budget) // b)
    starts = [_start_layer(v, None if schedules is None else schedules[i]) for i, v in enumerate(variants)]
    order = sorted(range(len(variants)), key=lambda i: -starts[i])  # chunks of similar start layers
    if replay is None and (skip or any(st > 0 for st in starts)):
        replay = BlockReplay(model, tokens, end)
    if not (skip and replay is not None and not extra_hooks and schedules is None and replay.supports_skip(skip)):
        skip = 0
    out: list[Tensor | None] = [None] * len(variants)
    groups: list[list[int]] = []  # chunks never mix start layers: a chunk restarts at its own layer
    for i in order:
        if not groups or len(groups[-1]) >= per or starts[groups[-1][0]] != starts[i]:
            groups.append([])
        groups[-1].append(i)
    desc = progress if isinstance(progress, str) else "patching"
    for ids in tqdm(groups, desc=desc, disable=not progress or len(groups) < 2, leave=False):
        chunk = [variants[i] for i in ids]
        n = len(chunk)
        hooks = [*extra_hooks, *_hooks_for([[_suffix_edit(e, skip) for e in v] for v in chunk] if skip else chunk, b)]
        if schedules is not None:
            from circuits.engines.peeking import peeking_hooks

            hooks += peeking_hooks(model, ps, [schedules[i] for i in ids], bos)
        start = 0 if extra_hooks or replay is None else min(starts[i] for i in ids)
        if start > 0 or skip:
            logits = replay.end_logits_from(start, n, hooks, skip=skip)
        else:
            logits = forward.end_logits(model, forward.tile(tokens, n), forward.tile(end, n), hooks)
        for t, i in enumerate(ids):
            out[i] = logits[t * b:(t + 1) * b]
    return torch.stack(out) if out else torch.empty(0, b, 0)


def _suffix_edit(e: Edit, skip: int) -> Edit:
    """``e`` as hooks see it when positions ``< skip`` are not run (those cells dropped)."""
    idx = [slice(None)] * e.value.ndim
    idx[e.site.pos_dim] = slice(skip, None)
    pos = e.pos
    if pos is not None and pos.dtype == torch.bool:
        pos = pos[:, skip:]
    elif pos is not None:
        pos = torch.where(pos >= skip, pos - skip, torch.full_like(pos, -1))
    return Edit(e.site, e.layer, e.value[tuple(idx)], e.head, pos)


def _start_layer(variant: Sequence[Edit], schedule: Any) -> int:
    """First layer a variant changes: blocks before it compute the unmodified base run."""
    layers = [e.layer for e in variant]
    if schedule:
        layers += [int(k) for k in schedule]
    return min(layers) if layers else 0
