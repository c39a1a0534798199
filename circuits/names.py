"""Names of circuit nodes, readers and edges, as EAP-IG and MIB write them: the one parser.

Nodes (what writes into the residual stream, or what an ablation or a circuit holds):

* ``input`` - the embeddings;
* ``a{L}.h{H}`` - attention head H of layer L (its output);
* ``m{L}`` - the MLP of layer L;
* ``r{L}`` - the residual stream entering layer L;
* ``logits`` - the unembedding, which reads the final residual stream.

A node may carry a named position of its PromptSet: ``a9.h6@END`` is that head at
END only (the IOI paper keeps each circuit head at one position).

Readers (what reads the residual stream): a head's query, key or value input
``a{L}.h{H}<q>`` / ``<k>`` / ``<v>``; under grouped-query attention keys and values
are read once per KV group, ``a{L}.g{G}<k>`` / ``<v>``; an MLP ``m{L}``; ``logits``.
An edge is ``WRITER->READER``, e.g. ``a0.h1->a2.g0<k>``.

This module knows nothing of hooks, tensors or engines: the engines map names to
hook sites (``circuits.engines.sites.site_of``), the graph module and the figures
read names only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("input", "head", "mlp", "resid", "logits")
COMPONENTS = ("q", "k", "v")

_NODE = re.compile(r"^(?:a(?P<al>\d+)\.h(?P<h>\d+)|m(?P<ml>\d+)|r(?P<rl>\d+)|(?P<io>input|logits))"
                   r"(?:@(?P<pos>[\w+]+))?$")
_READER = re.compile(r"^(?:a(?P<al>\d+)\.(?:h(?P<h>\d+)|g(?P<g>\d+))<(?P<c>[qkv])>|m(?P<ml>\d+)|(?P<lg>logits))$")


class BadName(ValueError):
    """A node, reader or edge name that does not parse."""


@dataclass(frozen=True)
class Node:
    """A component of a circuit. ``layer`` is -1 for ``input`` and ``logits`` (see :func:`level`)."""

    kind: str  # input | head | mlp | resid | logits
    layer: int = -1
    head: int | None = None
    pos: str | None = None  # a named position of the PromptSet, or None for every position

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise BadName(f"node kind must be one of {KINDS}, got {self.kind!r}")
        if (self.head is None) == (self.kind == "head"):
            raise BadName(f"a {self.kind} node {'needs' if self.kind == 'head' else 'has no'} head index")

    @property
    def name(self) -> str:
        """The node's name, e.g. ``a9.h6@END``."""
        base = {"head": f"a{self.layer}.h{self.head}", "mlp": f"m{self.layer}", "resid": f"r{self.layer}",
                "input": "input", "logits": "logits"}[self.kind]
        return base + (f"@{self.pos}" if self.pos else "")

    def unpositioned(self) -> Node:
        """The same node at every position."""
        return Node(self.kind, self.layer, self.head)

    def at(self, pos: str | None) -> Node:
        """The same node at the named position ``pos`` (None: every position)."""
        return Node(self.kind, self.layer, self.head, pos)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Reader:
    """An input that reads the residual stream: a head's q/k/v, a KV group's k/v, an MLP, or the logits."""

    kind: str  # head | group | mlp | logits
    layer: int = -1
    index: int | None = None  # the head (kind head) or the KV group (kind group)
    component: str | None = None  # q | k | v for heads and groups

    @property
    def name(self) -> str:
        """The reader's name, e.g. ``a2.h1<q>`` or ``a2.g0<k>``."""
        if self.kind == "head":
            return f"a{self.layer}.h{self.index}<{self.component}>"
        if self.kind == "group":
            return f"a{self.layer}.g{self.index}<{self.component}>"
        return f"m{self.layer}" if self.kind == "mlp" else "logits"

    def heads(self, n_heads: int, n_kv_heads: int) -> list[int]:
        """The query heads whose computation this reader feeds (a KV group feeds all its heads)."""
        if self.kind == "head":
            return [int(self.index)]
        if self.kind == "group":
            size = n_heads // n_kv_heads
            return list(range(int(self.index) * size, (int(self.index) + 1) * size))
        return []

    def owner(self) -> str:
        """The node name the reader belongs to: ``a2.h1`` for ``a2.h1<q>``, ``a2.g0`` for a group."""
        return self.name.split("<")[0]

    def __str__(self) -> str:
        return self.name


def parse_node(spec: str | Node | tuple[int, int]) -> Node:
    """``'a3.h1'``, ``'m2'``, ``'r0'``, ``'input'``, ``'logits'``, ``'a9.h6@END'``, ``(layer, head)`` or a Node."""
    if isinstance(spec, Node):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2:
        return Node("head", int(spec[0]), int(spec[1]))
    m = _NODE.match(str(spec)) if isinstance(spec, str) else None
    if not m:
        raise BadName(f"bad node name {spec!r}: expected a{{L}}.h{{H}}, m{{L}}, r{{L}}, input or logits, "
                         "optionally @POSITION")
    if m["al"] is not None:
        return Node("head", int(m["al"]), int(m["h"]), m["pos"])
    if m["ml"] is not None:
        return Node("mlp", int(m["ml"]), None, m["pos"])
    if m["rl"] is not None:
        return Node("resid", int(m["rl"]), None, m["pos"])
    return Node(m["io"], -1, None, m["pos"])


def parse_reader(spec: str | Reader | tuple[int, int, str]) -> Reader:
    """``'a2.h1<q>'``, ``'a2.g0<k>'``, ``'m1'``, ``'logits'``, ``(layer, head, 'q')`` or a Reader."""
    if isinstance(spec, Reader):
        return spec
    if isinstance(spec, tuple) and len(spec) == 3 and spec[2] in COMPONENTS:
        return Reader("head", int(spec[0]), int(spec[1]), str(spec[2]))
    m = _READER.match(spec) if isinstance(spec, str) else None
    if not m:
        raise BadName(f"bad reader name {spec!r}: expected a{{L}}.h{{H}}<q|k|v>, a{{L}}.g{{G}}<k|v>, "
                         "m{L} or logits")
    if m["al"] is not None:
        kind, idx = ("head", int(m["h"])) if m["h"] is not None else ("group", int(m["g"]))
        if kind == "group" and m["c"] == "q":
            raise BadName(f"bad reader name {spec!r}: queries are read per head (a{{L}}.h{{H}}<q>), not per group")
        return Reader(kind, int(m["al"]), idx, m["c"])
    if m["ml"] is not None:
        return Reader("mlp", int(m["ml"]))
    return Reader("logits")


def edge_name(writer: str | Node, reader: str | Reader) -> str:
    """``WRITER->READER``."""
    return f"{writer}->{reader}"


def parse_edge(name: str) -> tuple[Node, Reader]:
    """``'a0.h1->a2.h3<q>'`` -> (writer Node, Reader)."""
    if not isinstance(name, str) or "->" not in name:
        raise BadName(f"bad edge name {name!r}: expected WRITER->READER, e.g. a0.h1->a2.h3<q>")
    w, r = name.split("->", 1)
    writer = parse_node(w)
    if writer.kind in ("logits", "resid") or writer.pos:
        raise BadName(f"bad edge name {name!r}: writers are input, a{{L}}.h{{H}} and m{{L}}")
    return writer, parse_reader(r)


def level(name: str | Node | Reader, n_layers: int) -> float:
    """Where a node or reader sits in the forward pass, for ordering and drawing: ``input`` -1,
    the heads of layer L at L, its MLP at L + 0.5, ``logits`` at n_layers."""
    item = name if isinstance(name, (Node, Reader)) else (parse_reader(name) if "<" in name or name == "logits"
                                                          else parse_node(name))
    if item.kind == "input":
        return -1.0
    if item.kind == "logits":
        return float(n_layers)
    return item.layer + (0.5 if item.kind == "mlp" else 0.0)


def graph_names(n_layers: int, n_heads: int, n_kv_heads: int) -> tuple[list[str], list[str]]:
    """(writers, readers) of a model's edge graph in EAP-IG / MIB order: ``input``, then per layer its
    heads and its MLP; per layer its heads' query readers, key and value readers (per KV group under
    grouped-query attention), its MLP; then ``logits``."""
    kv = "head" if n_kv_heads == n_heads else "group"
    writers, readers = ["input"], []
    for layer in range(n_layers):
        writers += [Node("head", layer, h).name for h in range(n_heads)] + [Node("mlp", layer).name]
        readers += [Reader("head", layer, h, "q").name for h in range(n_heads)]
        readers += [Reader(kv, layer, i, c).name for c in "kv" for i in range(n_kv_heads)]
        readers.append(Reader("mlp", layer).name)
    readers.append("logits")
    return writers, readers


def is_edge(writer: str | Node, reader: str | Reader, n_layers: int, parallel_attn_mlp: bool = False) -> bool:
    """Whether ``writer->reader`` is an edge of the model's graph: the writer comes before the reader,
    and (in parallel attention/MLP blocks) a layer's MLP does not read its own layer's heads."""
    w = writer if isinstance(writer, Node) else parse_node(writer)
    r = reader if isinstance(reader, Reader) else parse_reader(reader)
    if parallel_attn_mlp and w.kind == "head" and r.kind == "mlp" and w.layer == r.layer:
        return False
    return level(w, n_layers) < level(r, n_layers)
