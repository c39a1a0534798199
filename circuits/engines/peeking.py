"""Attention peeking (All-for-One's ABP): restrict which positions a query may read.

A *mode* decides, per layer (optionally per head), which keys each query reads:

- ``full``: normal causal attention;
- ``self``: every query reads only itself (and BOS with ``bos=True``);
- ``transfer``: the last token (END) reads everything, every other query self-peeks;
- ``knockout``: END reads only itself (and BOS), every other query reads normally
  (the AF1 necessity test);
- an explicit boolean tensor ``allowed[q, k]`` or ``allowed[b, q, k]``.

Masks are applied to the attention scores (disallowed -> -inf) through
``hook_attn_scores``; the causal mask still applies on top.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from circuits.engines import forward
from circuits.engines.sites import hook_at
from circuits.prompts import PromptSet

MODES = ("full", "self", "transfer", "knockout")
Mode = str | Tensor
# layer -> mode, or layer -> {head: mode} (heads not listed: full)
Schedule = Mapping[int, Mode | Mapping[int, Mode]]


def allowed_mask(ps: PromptSet, mode: Mode, bos: bool = True) -> Tensor | None:
    """[b, q, k] boolean mask of allowed reads (None: no restriction)."""
    b, n = ps.clean.shape
    dev = ps.clean.device
    if isinstance(mode, Tensor):
        m = mode.to(dev).bool()
        if m.shape[-2:] != (n, n):
            raise ValueError(f"an explicit peeking mask must end in [{n}, {n}] (query, key), got {tuple(m.shape)}")
        return (m if m.ndim == 3 else m.expand(b, n, n)) | torch.eye(n, dtype=torch.bool, device=dev)
    if mode not in MODES:
        raise ValueError(f"peeking mode must be one of {MODES} or a boolean [q, k] tensor, got {mode!r}")
    if mode == "full":
        return None
    own = torch.eye(n, dtype=torch.bool, device=dev).expand(b, n, n).clone()
    if bos:
        own[:, :, 0] = True
    if mode == "self":
        return own
    end = ps.positions["END"].to(dev)
    is_end = torch.zeros(b, n, dtype=torch.bool, device=dev)
    is_end[torch.arange(b, device=dev), end] = True
    rows = is_end[:, :, None].expand(b, n, n)
    everything = torch.ones(b, n, n, dtype=torch.bool, device=dev)
    if mode == "transfer":
        return torch.where(rows, everything, own)
    return torch.where(rows, own, everything)  # knockout


def _layer_masks(ps: PromptSet, spec: Any, n_heads: int, bos: bool) -> Tensor | None:
    """[b, h, q, k] allowed mask for one layer, or None."""
    if isinstance(spec, Mapping):
        per_head = []
        for h in range(n_heads):
            m = allowed_mask(ps, spec.get(h, "full"), bos)
            per_head.append(m if m is not None else torch.ones(len(ps), ps.clean.shape[1], ps.clean.shape[1],
                                                                dtype=torch.bool, device=ps.clean.device))
        bad = [h for h in spec if not 0 <= h < n_heads]
        if bad:
            raise ValueError(f"peeking schedule names heads {bad}; the model has heads 0..{n_heads - 1}")
        return torch.stack(per_head, 1)
    m = allowed_mask(ps, spec, bos)
    return None if m is None else m[:, None]


def peeking_hooks(model: Any, ps: PromptSet, schedules: Sequence[Schedule], bos: bool = True) -> list[forward.Hook]:
    """Hooks applying ``schedules[t]`` to tile t of a tiled batch (one schedule: untiled)."""
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    for sched in schedules:
        bad = [layer for layer in sched if not 0 <= int(layer) < n_layers]
        if bad:
            raise ValueError(f"peeking schedule names layers {bad}; the model has layers 0..{n_layers - 1}")
    hooks = []
    for layer in range(n_layers):
        masks = [_layer_masks(ps, s[layer], n_heads, bos) if layer in s else None for s in schedules]
        if all(m is None for m in masks):
            continue
        full = torch.ones(len(ps), 1, ps.clean.shape[1], ps.clean.shape[1], dtype=torch.bool, device=ps.clean.device)
        stacked = torch.cat([(m if m is not None else full).expand(len(ps), n_heads, -1, -1) for m in masks])

        def hook(scores: Tensor, hook: Any, allowed: Tensor = stacked) -> Tensor:
            return scores.masked_fill(~allowed, float("-inf"))
        hooks.append((hook_at("attn_scores", layer), hook))
    return hooks
