"""Slow, obvious reference implementations the engines are tested against.

One intervention per forward pass, full logits, plain hooks: nothing clever.
"""

from __future__ import annotations

import torch

from circuits import metrics


def metric_full(model, tokens, ps, hooks=()):
    logits = model.run_with_hooks(tokens, fwd_hooks=list(hooks))
    return metrics.logit_diff(logits, ps, reduce="none")


def naive_patch(model, ps, site_hook, index_fn, direction="denoise", cells=()):
    """For each cell: run base with activation[index_fn(cell)] := source activation."""
    base, src = (ps.corrupted, ps.clean) if direction == "denoise" else (ps.clean, ps.corrupted)
    _, cache = model.run_with_cache(src)
    out = []
    for cell in cells:
        name = site_hook(cell)
        src_act = cache[name]

        def hook(act, hook, cell=cell, src_act=src_act):
            act = act.clone()
            idx = index_fn(cell, act)
            act[idx] = src_act[idx]
            return act

        out.append(metric_full(model, base, ps, [(name, hook)]))
    return torch.stack(out)
