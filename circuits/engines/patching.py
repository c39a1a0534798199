"""Activation patching at node level, batched (see circuits.engines.sites for the sites).

Denoising runs the corrupted prompts and patches in clean activations (is this
component *sufficient* to restore the behaviour?); noising runs the clean prompts
and patches in corrupted activations (is it *necessary*?). The clean and
corrupted caches are computed once; all interventions share tiled forward passes.
Positions before the first clean/corrupted difference are the same in both runs,
so they are not recomputed: the restarted blocks read their keys and values from
the base run's KV cache (exact; colored-objects prompts share 26 of 30 positions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from circuits.engines import forward
from circuits.engines.common import (
    EngineRun,
    Metric,
    as_list,
    base_and_source,
    model_settings,
    position_specs,
)
from circuits.engines.interventions import Edit, run_variants
from circuits.engines.replay import BlockReplay
from circuits.engines.sites import check_head, check_layer, get_site, hook_name, n_heads_at
from circuits.prompts import PromptSet
from circuits.scores import Scores


def shared_prefix(base: Int[Tensor, "batch pos"], source: Int[Tensor, "batch pos"], end: Int[Tensor, " batch"]) -> int:
    """How many leading positions every prompt pair shares (at most the earliest END).

    A causal model computes the same activations there in both runs, so patching
    one run's into the other changes nothing before this position.
    """
    differs = (base != source).any(0).nonzero()
    first = int(differs[0]) if len(differs) else base.shape[1]
    return min(first, int(end.min()))


@torch.no_grad()
def activation_patching(model: Any, ps: PromptSet, site: str = "z", *, metric: str | Metric = "logit_diff",
                        direction: str = "denoise", positions: None | str | Sequence[str] = None,
                        layers: Sequence[int] | None = None, heads: Sequence[int] | None = None,
                        memory_budget: int | None = None, progress: bool = True) -> Scores:
    """Patch one site, one (layer[, position][, head]) cell at a time; all cells batched.

    Args:
        site: resid_pre | resid_mid | resid_post | attn_out | mlp_out | z | q | k | v | pattern.
        direction: "denoise" (corrupted run, clean patch) or "noise" (clean run, corrupted patch).
        positions: None (all positions at once), "each" (every token index), or
            names of the PromptSet's positions (["IO", "S2", "END"]). For ``pattern``
            a position is the destination (query) position.
        layers, heads: restrict the sweep (default: all; heads of k/v are KV groups).

    Returns:
        Scores with axes (layer[, pos][, head]) - the order transformer-lens uses -
        per-prompt values [..., batch], and the clean/corrupted baselines.
    """
    s = get_site(site)
    with EngineRun(model, ps, metric) as run:
        ps, metric_name = run.ps, run.metric.name
        layers = [check_layer(model, x) for x in (range(model.cfg.n_layers) if layers is None
                                                   else as_list(layers, "layers"))]
        head_ids: list[int | None] = [None]
        if s.head_dim is not None:
            head_ids = [check_head(model, s, h) for h in (range(n_heads_at(model, s)) if heads is None
                                                          else as_list(heads, "heads"))]
        elif heads is not None:
            raise ValueError(f"site {site!r} has no heads; drop heads=")
        pos_specs, pos_labels = position_specs(ps, positions)

        base, source = base_and_source(ps, direction)
        end = ps.positions["END"]
        names = [hook_name(s, layer) for layer in layers]
        replay = BlockReplay(model, base, end)  # the base run, recorded for restarts
        base_logits = replay.base_logits
        src_logits, src_store = forward.run_with_store(model, source, end, names)
        clean_logits, corrupted_logits = ((src_logits, base_logits) if direction == "denoise"
                                          else (base_logits, src_logits))

        cells, variants = [], []
        for layer in layers:
            value = src_store[hook_name(s, layer)]
            for p_i, pos in enumerate(pos_specs):
                for head in head_ids:
                    cells.append((layer, p_i, head))
                    variants.append([Edit(s, layer, value, head, pos)])
        skip = shared_prefix(base, source, end)
        logits = run_variants(model, base, end, variants, memory_budget, progress and f"patch {site}",
                              replay=replay, skip=skip)
        per = torch.stack([run.evaluate(lg) for lg in logits])  # [cells, b]

        axes = ["layer"] + (["pos"] if positions is not None else []) + (["head"] if s.head_dim is not None else [])
        shape = [len(layers)] + ([len(pos_specs)] if positions is not None else []) + (
            [len(head_ids)] if s.head_dim is not None else [])
        per = per.reshape(*shape, len(ps)).cpu()
        labels = {"layer": [str(x) for x in layers]}
        if positions is not None:
            labels["pos"] = pos_labels
        if s.head_dim is not None:
            labels["head"] = [str(h) for h in head_ids]
        return Scores(per.mean(-1), tuple(axes), per, labels,
                      {"clean": float(run.evaluate(clean_logits).mean()),
                       "corrupted": float(run.evaluate(corrupted_logits).mean())},
                      {"engine": "activation_patching", "site": site, "direction": direction, "metric": metric_name,
                       "positions": positions if positions is None or isinstance(positions, str) else list(positions),
                       **model_settings(model), "n_prompts": len(ps), "provenance": ps.provenance,
                       "positions_not_recomputed": skip if skip and replay.supports_skip(skip) else 0})
