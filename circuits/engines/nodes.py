"""Nodes of a head-level circuit, named as EAP-IG / MIB name them.

``a{L}.h{H}`` is attention head H of layer L (its output, hook_z), ``m{L}`` the
MLP of layer L (hook_mlp_out), ``r{L}`` the residual stream entering layer L
(hook_resid_pre). ``a9.h6@END`` keeps a position: the node is only that head at
that named position (the IOI paper keeps each circuit head at one position).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from circuits.engines.sites import SITES, Site

_NODE = re.compile(r"^(?:a(?P<al>\d+)\.h(?P<h>\d+)|m(?P<ml>\d+)|r(?P<rl>\d+))(?:@(?P<pos>[\w+]+))?$")


@dataclass(frozen=True, order=True)
class Node:
    kind: str  # "head" | "mlp" | "resid"
    layer: int
    head: int | None = None
    pos: str | None = None  # a named position of the PromptSet, or None for all positions

    @property
    def name(self) -> str:
        base = {"head": f"a{self.layer}.h{self.head}", "mlp": f"m{self.layer}", "resid": f"r{self.layer}"}[self.kind]
        return base + (f"@{self.pos}" if self.pos else "")

    @property
    def site(self) -> Site:
        return SITES[{"head": "z", "mlp": "mlp_out", "resid": "resid_pre"}[self.kind]]

    def unpositioned(self) -> Node:
        return Node(self.kind, self.layer, self.head)

    def __str__(self) -> str:
        return self.name


def parse_node(spec: str | Node | tuple) -> Node:
    """'a3.h1', 'm2', 'r0', 'a9.h6@END', (layer, head) or a Node."""
    if isinstance(spec, Node):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2:
        return Node("head", int(spec[0]), int(spec[1]))
    m = _NODE.match(str(spec))
    if not m:
        raise ValueError(f"bad node name {spec!r}: expected a{{L}}.h{{H}}, m{{L}} or r{{L}}, optionally @POSITION")
    if m["al"] is not None:
        return Node("head", int(m["al"]), int(m["h"]), m["pos"])
    if m["ml"] is not None:
        return Node("mlp", int(m["ml"]), None, m["pos"])
    return Node("resid", int(m["rl"]), None, m["pos"])


def check_nodes(model: Any, nodes: list[Node]) -> list[Node]:
    """Raise a clear error for a node the model does not have."""
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    for n in nodes:
        if not 0 <= n.layer < n_layers:
            raise ValueError(f"node {n.name}: layer {n.layer} out of range (the model has layers 0..{n_layers - 1})")
        if n.kind == "head" and not 0 <= (n.head or 0) < n_heads:
            raise ValueError(f"node {n.name}: head {n.head} out of range (the model has heads 0..{n_heads - 1})")
    return nodes


def all_heads(model: Any) -> list[Node]:
    return [Node("head", layer, h) for layer in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]


def all_mlps(model: Any) -> list[Node]:
    return [Node("mlp", layer) for layer in range(model.cfg.n_layers)]
