"""The edge graph of a model, named as EAP-IG / MIB name it.

Writers put a vector into the residual stream: ``input`` (the embeddings), every
attention head ``a{L}.h{H}`` (its output through W_O) and every MLP ``m{L}``.
Readers take the residual stream in: every head's query, key and value inputs
(``a{L}.h{H}<q>``, ``<k>``, ``<v>``), every MLP (``m{L}``) and the ``logits``.
An edge ``writer->reader`` exists when the writer comes before the reader.

Grouped-query attention keeps its groups: keys and values are computed once per
KV group, so their readers are ``a{L}.g{G}<k>`` and ``a{L}.g{G}<v>`` (queries stay
per head). Parallel-attention blocks (GPT-NeoX) have no edge from a layer's heads
to the same layer's MLP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from circuits.engines.sites import n_kv_heads
from circuits.graph.circuit import Shape
from circuits.names import BadName, edge_name, graph_names, is_edge, level, parse_node, parse_reader


@dataclass
class EdgeGraph:
    """Writers x readers with a boolean mask of the edges that exist."""

    writers: list[str]
    readers: list[str]
    mask: Tensor  # [n_writers, n_readers] bool
    n_layers: int
    n_heads: int
    n_kv_heads: int
    parallel_attn_mlp: bool = False
    writer_index: dict[str, int] = field(default_factory=dict)
    reader_index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.writer_index = {w: i for i, w in enumerate(self.writers)}
        self.reader_index = {r: i for i, r in enumerate(self.readers)}

    @property
    def gqa(self) -> bool:
        """True when the model has grouped-query attention (``n_kv_heads`` differs from ``n_heads``)."""
        return self.n_kv_heads != self.n_heads

    @property
    def n_edges(self) -> int:
        """Number of edges (True cells of ``mask``)."""
        return int(self.mask.sum())

    def edges(self) -> list[tuple[str, str]]:
        """All edges (writer, reader) in writer-major order."""
        return [(self.writers[int(w)], self.readers[int(r)]) for w, r in torch.nonzero(self.mask)]

    def index(self, writer: str, reader: str) -> tuple[int, int]:
        """The mask cell (writer index, reader index) of edge ``writer->reader``.

        A ValueError says what names look like when either is unknown, or that the edge does not exist.
        """
        if writer not in self.writer_index:
            raise ValueError(f"unknown writer {writer!r}; writers look like input, a0.h1, m2")
        reader = self.canonical_reader(reader)
        if reader not in self.reader_index:
            kind = "a{L}.g{G}<k|v>" if self.gqa else "a{L}.h{H}<q|k|v>"
            raise ValueError(f"unknown reader {reader!r}; readers look like {kind}, m2, logits")
        w, r = self.writer_index[writer], self.reader_index[reader]
        if not self.mask[w, r]:
            raise ValueError(f"{writer}->{reader} is not an edge: the writer does not come before the reader")
        return w, r

    def canonical_reader(self, reader: str) -> str:
        """The graph's name of ``reader``: under grouped-query attention a head's key or value reader
        (``a1.h2<k>``) is its KV group's (``a1.g1<k>``: the whole group reads those keys); else unchanged."""
        if not self.gqa or not reader.endswith(("<k>", "<v>")):
            return reader
        try:
            r = parse_reader(reader)
        except BadName:
            return reader
        if r.kind != "head":
            return reader
        return f"a{r.layer}.g{r.index // (self.n_heads // self.n_kv_heads)}<{r.component}>"

    def shape(self) -> Shape:
        """The model shape the graph was built for (what circuits record)."""
        return Shape(self.n_layers, self.n_heads, self.n_kv_heads, self.parallel_attn_mlp)

    def edge(self, w: int, r: int) -> str:
        """The name of the edge at mask cell [w, r]."""
        return edge_name(self.writers[w], self.readers[r])

    def reader_layer(self, reader: str) -> float:
        """Where a reader sits: heads of layer L at L, the MLP of L at L + 0.5, logits at n_layers."""
        return level(parse_reader(reader), self.n_layers)

    def writer_layer(self, writer: str) -> float:
        """Where a writer sits: input at -1, heads of layer L at L, the MLP of L at L + 0.5."""
        return level(parse_node(writer), self.n_layers)


def edge_graph(model: Any) -> EdgeGraph:
    """The full edge graph of a TransformerBridge (or anything with the same cfg fields)."""
    cfg = model.cfg
    n_layers, n_heads = int(cfg.n_layers), int(cfg.n_heads)
    n_kv = n_kv_heads(model)
    parallel = bool(getattr(cfg, "parallel_attn_mlp", False))
    writers, readers = graph_names(n_layers, n_heads, n_kv)
    mask = torch.tensor([[is_edge(w, r, n_layers, parallel) for r in readers] for w in writers])
    return EdgeGraph(writers, readers, mask, n_layers, n_heads, n_kv, parallel)
