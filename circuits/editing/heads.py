"""Head scores along a direction (ThinkEdit's step D): each head's direct write z_h W_O^h, projected on a
unit direction, averaged over chosen cells. Units: residual-stream units along u (per cell)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from circuits.engines.sites import hook_at


@torch.no_grad()
def head_direction_scores(model: Any, tokens: Int[Tensor, "batch pos"], mask: Bool[Tensor, "batch pos"],
                          units: Mapping[int, Tensor], *, batch_size: int = 64) -> Float[Tensor, "layer head"]:
    """[layer, head] mean over the masked cells of (z_h W_O^h) . u_layer, for each layer in ``units``
    (unit vectors [d_model]; u_layer is usually the direction at that layer's attention output); NaN
    for layers without a unit. A unit of the wrong width, or a mask that selects nothing, is a ValueError."""
    n_layers, n_heads, d = int(model.cfg.n_layers), int(model.cfg.n_heads), int(model.cfg.d_model)
    if mask.shape != tokens.shape or not bool(mask.any()):
        raise ValueError("the mask must have the tokens' shape and select at least one position")
    for layer, u in units.items():
        if not 0 <= int(layer) < n_layers:
            raise ValueError(f"layer {layer} does not exist: the model has {n_layers} layers")
        if u.ndim != 1 or u.shape[0] != d:
            raise ValueError(f"the unit vector at layer {layer} has shape {tuple(u.shape)}, expected [{d}]")
        if float(u.norm()) == 0.0:
            raise ValueError(f"the unit vector at layer {layer} is zero: there is no direction to score along")
    out = torch.full((n_layers, n_heads), float("nan"))
    sums = {layer: torch.zeros(n_heads) for layer in units}
    count = 0
    for start in range(0, len(tokens), batch_size):
        x = tokens[start:start + batch_size].to(model.cfg.device)
        m = mask[start:start + batch_size].to(model.cfg.device)
        store: dict[int, Tensor] = {}

        def saver(layer: int, store: dict[int, Tensor] = store, m: Tensor = m):
            def save(z: Tensor, hook: Any) -> None:
                store[layer] = z[m].float()  # [cells, heads, d_head]
            return save

        model.run_with_hooks(x, fwd_hooks=[(hook_at("z", int(layer)), saver(int(layer))) for layer in units],
                             return_type=None)
        for layer, u in units.items():
            w_o = model.blocks[int(layer)].attn.W_O.float()  # [heads, d_head, d_model]
            proj = w_o @ (u.float() / u.float().norm()).to(w_o.device)  # [heads, d_head]
            sums[layer] += torch.einsum("chd,hd->h", store[int(layer)], proj).cpu()
        count += int(m.sum())
    for layer in units:
        out[int(layer)] = sums[layer] / count
    return out
