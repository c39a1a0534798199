"""The nodes an engine can intervene on, checked against a model.

Names are parsed by ``circuits.names`` (``a{L}.h{H}``, ``m{L}``, ``r{L}``, with an
optional ``@POSITION``); here they are checked against the model's shape, and
``circuits.engines.sites.site_of`` maps them to the activation that holds them.
"""

from __future__ import annotations

from typing import Any

from circuits.names import Node, parse_node

__all__ = ["Node", "parse_node", "check_nodes", "all_heads", "all_mlps"]

INTERVENABLE = ("head", "mlp", "resid")


def check_nodes(model: Any, nodes: list[Node]) -> list[Node]:
    """``nodes``, or a clear error for one the model does not have or that cannot be ablated."""
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    for n in nodes:
        if n.kind not in INTERVENABLE:
            raise ValueError(f"node {n.name}: only heads, MLPs and residual positions can be intervened on")
        if not 0 <= n.layer < n_layers:
            raise ValueError(f"node {n.name}: layer {n.layer} out of range (the model has layers 0..{n_layers - 1})")
        if n.kind == "head" and not 0 <= n.head < n_heads:
            raise ValueError(f"node {n.name}: head {n.head} out of range (the model has heads 0..{n_heads - 1})")
    return nodes


def all_heads(model: Any) -> list[Node]:
    """Every attention head of the model, layer by layer."""
    return [Node("head", layer, h) for layer in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]


def all_mlps(model: Any) -> list[Node]:
    """Every MLP of the model."""
    return [Node("mlp", layer) for layer in range(model.cfg.n_layers)]
