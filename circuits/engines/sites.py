"""Where engines intervene: named activation sites, their hooks and axes.

A site's activation is read and written through one transformer-lens hook per
layer. Shapes (b = batch, p = positions, h = heads, d = width):

=============  ==================================  =====================
site           hook                                activation
=============  ==================================  =====================
resid_pre      blocks.L.hook_resid_pre             [b, p, d_model]
resid_mid      blocks.L.hook_resid_mid             [b, p, d_model]
resid_post     blocks.L.hook_resid_post            [b, p, d_model]
attn_out       blocks.L.hook_attn_out              [b, p, d_model]
mlp_out        blocks.L.hook_mlp_out               [b, p, d_model]
z              blocks.L.attn.hook_z                [b, p, h, d_head]  (head outputs)
q              blocks.L.attn.hook_q                [b, p, h, d_head]
k, v           blocks.L.attn.hook_k / hook_v       [b, p, h_kv, d_head]  (GQA: one per KV group)
pattern        blocks.L.attn.hook_pattern          [b, h, p_dest, p_src]
=============  ==================================  =====================

With grouped-query attention ``k`` and ``v`` are indexed by KV group: a patch
of group g changes the keys/values every query head of that group reads.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from circuits.models import n_kv_heads
from circuits.names import Node

__all__ = ["Site", "SITES", "get_site", "hook_at", "hook_name", "site_of", "n_kv_heads", "n_heads_at",
           "check_layer", "check_head", "block_prefix", "write", "as_index"]


@dataclass(frozen=True)
class Site:
    """An activation site: its name, hook-name template, the axes of heads and positions, and
    whether its heads are KV groups.
    """

    name: str
    hook: str  # format string with {layer}
    head_dim: int | None  # axis of the head index in the activation (None: no heads)
    pos_dim: int  # axis of the (destination) position
    kv: bool = False  # heads are KV groups


SITES: dict[str, Site] = {
    "resid_pre": Site("resid_pre", "blocks.{layer}.hook_resid_pre", None, 1),
    "resid_mid": Site("resid_mid", "blocks.{layer}.hook_resid_mid", None, 1),
    "resid_post": Site("resid_post", "blocks.{layer}.hook_resid_post", None, 1),
    "attn_out": Site("attn_out", "blocks.{layer}.hook_attn_out", None, 1),
    "mlp_out": Site("mlp_out", "blocks.{layer}.hook_mlp_out", None, 1),
    "z": Site("z", "blocks.{layer}.attn.hook_z", 2, 1),
    "q": Site("q", "blocks.{layer}.attn.hook_q", 2, 1),
    "k": Site("k", "blocks.{layer}.attn.hook_k", 2, 1, kv=True),
    "v": Site("v", "blocks.{layer}.attn.hook_v", 2, 1, kv=True),
    "pattern": Site("pattern", "blocks.{layer}.attn.hook_pattern", 1, 2),
    "attn_scores": Site("attn_scores", "blocks.{layer}.attn.hook_attn_scores", 1, 2),
    "ln1_in": Site("ln1_in", "blocks.{layer}.ln1.hook_in", None, 1),  # what a layer's attention reads
    "ln2_in": Site("ln2_in", "blocks.{layer}.ln2.hook_in", None, 1),  # what a layer's MLP reads
    "final_in": Site("final_in", "ln_final.hook_in", None, 1),  # the residual the unembedding reads (no layer)
    "mlp_post": Site("mlp_post", "blocks.{layer}.mlp.hook_post", None, 1),  # MLP neurons after the nonlinearity
}


def site_of(node: Node) -> Site:
    """The activation that holds a node: a head's output (z), an MLP's output, the residual entering a layer."""
    kinds = {"head": "z", "mlp": "mlp_out", "resid": "resid_pre"}
    if node.kind not in kinds:
        raise ValueError(f"node {node.name} has no activation to intervene on")
    return SITES[kinds[node.kind]]


def hook_at(site: str, layer: int | None = None) -> str:
    """The hook name of ``site`` at ``layer``: ``hook_at("z", 3)`` -> ``blocks.3.attn.hook_z``."""
    return hook_name(get_site(site), layer)


def block_prefix(layer: int) -> str:
    """The prefix every hook of block ``layer`` starts with."""
    return f"blocks.{layer}."


def get_site(name: str) -> Site:
    """The Site called ``name`` (a ValueError lists the known sites otherwise)."""
    if name not in SITES:
        raise ValueError(f"unknown site {name!r}; sites are {sorted(SITES)}")
    return SITES[name]


def hook_name(site: Site, layer: int | None = None) -> str:
    """The hook name of ``site`` at ``layer`` (sites outside the blocks take no layer)."""
    if layer is None and "{layer}" in site.hook:
        raise ValueError(f"site {site.name!r} needs a layer")
    return site.hook.format(layer=layer)


def n_heads_at(model: Any, site: Site) -> int:
    """Number of head indices the site has (query heads, or KV groups for k/v)."""
    if site.head_dim is None:
        raise ValueError(f"site {site.name!r} has no heads")
    return n_kv_heads(model) if site.kv else int(model.cfg.n_heads)


def as_index(x: Any, what: str) -> int:
    """``x`` as a plain int (ints, numpy ints, 0-d integer tensors); a float or bool is an error."""
    if isinstance(x, bool):
        raise TypeError(f"{what} must be an integer, got {x!r}")
    try:
        return operator.index(x)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {x!r} ({type(x).__name__})") from None


def check_layer(model: Any, layer: Any) -> int:
    """``layer`` as an int in [0, n_layers); TypeError or ValueError otherwise."""
    n = int(model.cfg.n_layers)
    layer = as_index(layer, "layer")
    if not 0 <= layer < n:
        raise ValueError(f"layer {layer!r} out of range: the model has layers 0..{n - 1}")
    return layer


def check_head(model: Any, site: Site, head: Any) -> int:
    """``head`` as an int in [0, heads of ``site``) (KV groups for k/v); TypeError or ValueError otherwise."""
    n = n_heads_at(model, site)
    head = as_index(head, "head")
    if not 0 <= head < n:
        what = "KV groups" if site.kv else "heads"
        raise ValueError(f"head {head!r} out of range for site {site.name!r}: the model has {what} 0..{n - 1}")
    return head


def write(act: Tensor, value: Tensor, site: Site, head: int | None = None, pos: Tensor | None = None) -> None:
    """In place: ``act[..., head, pos] = value[..., head, pos]`` for one batch of prompts.

    ``act`` and ``value`` are [b, ...] activations of ``site``; ``pos`` is a [b]
    tensor of per-prompt positions (-1: leave that prompt alone), a [b, p] boolean
    mask of the (prompt, position) cells to write, or None (all positions).
    """
    idx: list[Any] = [slice(None)] * act.ndim
    if head is not None:
        idx[site.head_dim] = head
    if pos is not None and pos.dtype == torch.bool:
        rows, cols = torch.nonzero(pos.to(act.device), as_tuple=True)
        idx[0] = rows
        idx[site.pos_dim] = cols
    elif pos is not None:
        rows = torch.nonzero(pos >= 0).flatten().to(act.device)
        idx[0] = rows
        idx[site.pos_dim] = pos.to(act.device)[rows]
    act[tuple(idx)] = value[tuple(idx)].to(act.dtype)
