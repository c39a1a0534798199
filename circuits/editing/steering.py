"""Steering: add alpha * v to the residual stream at chosen layers while the model runs or samples
(ThinkEdit's step C). Hooks go through the TransformerBridge, so a model sampled through its HF
module (which the bridge's components replace) is steered too; they are removed on exit, also
after an exception."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from circuits.engines.sites import hook_at

STEER_SITES = ("resid_pre", "resid_mid", "resid_post")


@contextmanager
def steer(model: Any, vectors: Mapping[int, Tensor], alpha: float, *, site: str = "resid_post") -> Iterator[None]:
    """Inside the block, ``alpha * vectors[layer]`` ([d_model] each) is added at ``site`` of each layer,
    every position. A vector of the wrong width or a non-finite alpha is a ValueError."""
    if site not in STEER_SITES:
        raise ValueError(f"site must be one of {STEER_SITES}, got {site!r}")
    if not torch.isfinite(torch.tensor(float(alpha))):
        raise ValueError(f"alpha must be finite, got {alpha!r}")
    d, n = int(model.cfg.d_model), int(model.cfg.n_layers)
    hooks = []
    for layer, v in vectors.items():
        if not 0 <= int(layer) < n:
            raise ValueError(f"layer {layer} does not exist: the model has {n} layers")
        if v.ndim != 1 or v.shape[0] != d:
            raise ValueError(f"the vector at layer {layer} has shape {tuple(v.shape)}, the residual stream is [{d}]")
        add = (alpha * v.float()).to(model.cfg.device)

        def hook(x: Tensor, hook: Any, add: Tensor = add) -> Tensor:
            return x + add.to(x.dtype)

        hooks.append((hook_at(site, int(layer)), hook))
    with model.hooks(fwd_hooks=hooks):
        yield
