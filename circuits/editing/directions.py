"""Difference-of-means directions in the residual stream (ThinkEdit's step B).

``site_means`` averages a site's activation over chosen (row, position) cells; a direction is
the mean over group A's cells minus the mean over group B's, per layer. Units: the site's
(residual-stream) units; ``relative_norm`` compares |v| with the mean activation norm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from circuits.engines.sites import get_site, hook_at
from circuits.records import Record

SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


def _check(model: Any, tokens: Tensor, mask: Tensor, site: str, layers: list[int] | None) -> list[int]:
    if site not in SITES:
        raise ValueError(f"site must be one of {SITES}, got {site!r}")
    get_site(site)
    if tokens.ndim != 2 or mask.shape != tokens.shape:
        raise ValueError(f"tokens [batch, pos] and mask must have one shape, got {tuple(tokens.shape)} and "
                         f"{tuple(mask.shape)}")
    if not bool(mask.any()):
        raise ValueError("the mask selects no position: there is nothing to average")
    n = int(model.cfg.n_layers)
    out = list(range(n)) if layers is None else [int(x) for x in layers]
    bad = [x for x in out if not 0 <= x < n]
    if bad:
        raise ValueError(f"layers {bad} do not exist: the model has {n} layers")
    return out


@torch.no_grad()
def site_means(model: Any, tokens: Int[Tensor, "batch pos"], mask: Bool[Tensor, "batch pos"], *,
               site: str = "resid_post", layers: list[int] | None = None, batch_size: int = 64
               ) -> tuple[Float[Tensor, "layer d_model"], Float[Tensor, " layer"]]:
    """(mean activation over the masked cells, mean activation norm there) per layer, in float32."""
    layers = _check(model, tokens, mask, site, layers)
    device = model.cfg.device
    d = int(model.cfg.d_model)
    total = torch.zeros(len(layers), d, dtype=torch.float32)
    norms = torch.zeros(len(layers), dtype=torch.float32)
    count = 0
    names = [hook_at(site, layer) for layer in layers]
    for start in range(0, len(tokens), batch_size):
        x = tokens[start:start + batch_size].to(device)
        m = mask[start:start + batch_size].to(device)
        store: dict[str, Tensor] = {}

        def saver(name: str, store: dict[str, Tensor] = store, m: Tensor = m):
            def save(act: Tensor, hook: Any) -> None:
                store[name] = act[m].float().cpu()  # [cells, d]
            return save

        model.run_with_hooks(x, fwd_hooks=[(n, saver(n)) for n in names], return_type=None)
        for i, n in enumerate(names):
            total[i] += store[n].sum(0)
            norms[i] += store[n].norm(dim=-1).sum()
        count += int(m.sum())
    return total / count, norms / count


@dataclass
class Direction(Record):
    """v[layer] = mean(group A) - mean(group B) at ``site`` (float32 lists); ``n_a``/``n_b``: the cells
    averaged; ``relative_norm[layer]``: |v| over the mean activation norm of both groups' cells."""

    site: str
    layers: list[int]
    vectors: list[list[float]]
    n_a: int
    n_b: int
    relative_norm: list[float]
    settings: dict[str, Any] = field(default_factory=dict)

    def vector(self, layer: int) -> Float[Tensor, " d_model"]:
        """v at ``layer`` (a ValueError if the direction was not computed there)."""
        if layer not in self.layers:
            raise ValueError(f"the direction has no vector at layer {layer} (it has {self.layers})")
        return torch.tensor(self.vectors[self.layers.index(layer)])

    def unit(self, layer: int) -> Float[Tensor, " d_model"]:
        """v / |v| at ``layer``; a ValueError for a zero vector (no direction to project)."""
        v = self.vector(layer)
        n = float(v.norm())
        if n == 0.0:
            raise ValueError(f"the direction is zero at layer {layer}: there is no direction to use")
        return v / n


def mean_difference(model: Any, tokens_a: Tensor, mask_a: Tensor, tokens_b: Tensor, mask_b: Tensor, *,
                    site: str = "resid_post", layers: list[int] | None = None, batch_size: int = 64) -> Direction:
    """The difference-of-means direction, group A minus group B, per layer (see :class:`Direction`)."""
    mean_a, norm_a = site_means(model, tokens_a, mask_a, site=site, layers=layers, batch_size=batch_size)
    mean_b, norm_b = site_means(model, tokens_b, mask_b, site=site, layers=layers, batch_size=batch_size)
    layers = _check(model, tokens_a, mask_a, site, layers)
    v = mean_a - mean_b
    na, nb = int(mask_a.sum()), int(mask_b.sum())
    scale = (norm_a * na + norm_b * nb) / (na + nb)
    return Direction(site, layers, v.tolist(), na, nb, (v.norm(dim=-1) / scale).tolist(),
                     {"d_model": int(model.cfg.d_model), "dtype": "float32"})


def cosine(a: Direction, b: Direction) -> list[float]:
    """Per shared layer, the cosine between two directions' vectors (stability across draws)."""
    out = []
    for layer in a.layers:
        if layer in b.layers:
            x, y = a.vector(layer), b.vector(layer)
            out.append(float(torch.nn.functional.cosine_similarity(x, y, dim=0)))
    return out
