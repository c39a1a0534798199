"""Head repair interventions (the circuit-reuse study's repair): force chosen heads at chosen query
positions to attend to given key positions; scale heads' outputs by c (c = 0: zero ablation).

All are context managers over TransformerBridge hooks, removed on exit (also after an exception).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from circuits.editing.weights import check_head
from circuits.engines.sites import hook_at


def _as_keys(k: Tensor) -> Tensor:
    """[batch] or [batch, K] key positions (-1: padding) as [batch, K]."""
    return k[:, None] if k.ndim == 1 else k


@contextmanager
def override_attention(model: Any, heads: Sequence[tuple[int, int]], query: Int[Tensor, " batch"],
                       keys: Tensor | Mapping[tuple[int, int], Tensor]) -> Iterator[None]:
    """Inside the block, each (layer, head) in ``heads`` attends, from query position ``query[i]`` of
    prompt i, only to its key positions there: ``keys`` [batch] (one key: a one-hot row) or
    [batch, K] (uniform over the row's keys; -1 pads rows with fewer), one tensor for every head or
    one per head. Other rows, heads and layers are untouched. A key after its query (attention is
    causal), a row without keys, or a shape that does not match the queries is a ValueError."""
    heads = [check_head(model, *h) for h in heads]
    if not heads:
        raise ValueError("no head to override")
    per_head = {h: _as_keys(keys[h] if isinstance(keys, Mapping) else keys) for h in heads}
    for h, k in per_head.items():
        name = f"a{h[0]}.h{h[1]}"
        if k.ndim != 2 or k.shape[0] != query.shape[0]:
            raise ValueError(f"{name}: key positions of shape {tuple(k.shape)} for {tuple(query.shape)} queries")
        valid = k >= 0
        if not bool(valid.any(1).all()):
            raise ValueError(f"{name}: a prompt has no key position to attend to")
        if bool(((k > query[:, None]) & valid).any()):
            raise ValueError(f"{name}: a key position lies after its query (attention is causal)")
    by_layer: dict[int, list[int]] = {}
    for layer, h in heads:
        by_layer.setdefault(layer, []).append(h)

    def hook_for(layer: int):
        def hook(pattern: Tensor, hook: Any) -> Tensor:  # [b, heads, q, k]
            b, n_keys = pattern.shape[0], pattern.shape[-1]
            if b != len(query):
                raise ValueError(f"override_attention was given {len(query)} query positions for a batch of {b}")
            out = pattern.clone()
            rows = torch.arange(b, device=pattern.device)
            q = query.to(pattern.device)
            for h in by_layer[layer]:
                k = per_head[(layer, h)].to(pattern.device)
                valid = k >= 0
                row = torch.zeros(b, n_keys, dtype=pattern.dtype, device=pattern.device)
                weight = (valid / valid.sum(1, keepdim=True)).to(pattern.dtype)
                row.scatter_add_(1, k.clamp(min=0), weight * valid)
                out[rows, h, q] = row
            return out
        return hook

    with model.hooks(fwd_hooks=[(hook_at("pattern", layer), hook_for(layer)) for layer in by_layer]):
        yield


@contextmanager
def scale_heads(model: Any, heads: Sequence[tuple[int, int]], factor: float) -> Iterator[None]:
    """Inside the block, each head's output (z, every position) is multiplied by ``factor`` (0: zero
    ablation, as Thinking Sparks' causal tests; 1.3 / 0.5: their up and down scaling)."""
    heads = [check_head(model, *h) for h in heads]
    if not torch.isfinite(torch.tensor(float(factor))):
        raise ValueError(f"factor must be finite, got {factor!r}")
    by_layer: dict[int, list[int]] = {}
    for layer, h in heads:
        by_layer.setdefault(layer, []).append(h)

    def hook_for(layer: int):
        idx = torch.tensor(by_layer[layer])

        def hook(z: Tensor, hook: Any) -> Tensor:  # [b, p, heads, d_head]
            out = z.clone()
            out[:, :, idx.to(z.device)] = out[:, :, idx.to(z.device)] * factor
            return out
        return hook

    with model.hooks(fwd_hooks=[(hook_at("z", layer), hook_for(layer)) for layer in by_layer]):
        yield
