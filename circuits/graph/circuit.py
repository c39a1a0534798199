"""Circuit: one plain-data type for node-level and edge-level circuits.

A circuit names its nodes and edges as EAP-IG and MIB do (``circuits.names``):

* nodes - ``input``, heads ``a{L}.h{H}`` (optionally at a position, ``a9.h9@END``),
  MLPs ``m{L}``, ``logits``; each with an optional class label ("name mover") and score;
* edges - ``WRITER->READER`` (``a0.h1->a2.h3<q>``, GQA group readers ``a1.g0<k>``),
  each with an optional score.

It also records the model's shape (layers, heads, KV groups), so that comparing
circuits of different models fails clearly, and what made it: task, model, method,
settings, provenance. It is plain data (JSON in and out through ``circuits.records``)
and imports nothing of the engines: engines build Circuits, the rest of the graph
module compares, exports and draws them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from circuits.names import BadName, Node, Reader, parse_edge, parse_node, parse_reader
from circuits.records import Record

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Shape(Record):
    """The shape of the model a circuit lives in."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    parallel_attn_mlp: bool = False  # GPT-NeoX style: a layer's MLP reads the layer input, not its heads

    @classmethod
    def of(cls, model: Any) -> Shape:
        """The shape of a loaded model (anything with a transformer-lens ``cfg``)."""
        cfg = model.cfg
        kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
        return cls(int(cfg.n_layers), int(cfg.n_heads), int(kv), bool(getattr(cfg, "parallel_attn_mlp", False)))


@dataclass
class NodeInfo(Record):
    """What a circuit says about one node: its class label and its score (either may be unknown)."""

    cls: str | None = None
    score: float | None = None


@dataclass
class Circuit(Record):
    """A node-level or edge-level circuit (see the module docstring).

    ``nodes``: node name -> NodeInfo. ``edges``: edge name -> score (None: unscored). An
    edge circuit's nodes are its writers and the heads its readers feed (a GQA group
    reader feeds every head of its group), added by :meth:`from_edges`.
    """

    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    edges: dict[str, float | None] = field(default_factory=dict)
    shape: Shape | None = None
    task: str | None = None
    model: str | None = None
    method: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    _nested = {"nodes": ("dict", NodeInfo), "shape": ("one", Shape)}

    def __post_init__(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"circuit schema_version {self.schema_version} is not the supported {SCHEMA_VERSION}")
        for name in self.nodes:
            self._check_node(parse_node(name), name)
        for name in self.edges:
            w, r = parse_edge(name)
            self._check_node(w, name)
            self._check_reader(r, name)

    def _check_node(self, node: Node, where: str) -> None:
        if self.shape is None or node.kind in ("input", "logits"):
            return
        if not 0 <= node.layer < self.shape.n_layers:
            raise BadName(f"{where}: layer {node.layer} is outside the model's {self.shape.n_layers} layers")
        if node.kind == "head" and not 0 <= node.head < self.shape.n_heads:
            raise BadName(f"{where}: head {node.head} is outside the model's {self.shape.n_heads} heads")

    def _check_reader(self, reader: Reader, where: str) -> None:
        if self.shape is None or reader.kind == "logits":
            return
        if not 0 <= reader.layer < self.shape.n_layers:
            raise BadName(f"{where}: layer {reader.layer} is outside the model's {self.shape.n_layers} layers")
        limit = self.shape.n_kv_heads if reader.kind == "group" else self.shape.n_heads
        if reader.kind in ("head", "group") and not 0 <= reader.index < limit:
            raise BadName(f"{where}: {'KV group' if reader.kind == 'group' else 'head'} {reader.index} is outside "
                          f"the model's {limit}")
        if reader.kind == "head" and reader.component in ("k", "v") and self.shape.n_kv_heads != self.shape.n_heads:
            raise BadName(f"{where}: under grouped-query attention keys and values are read per KV group "
                          f"(a{reader.layer}.g{reader.index // (self.shape.n_heads // self.shape.n_kv_heads)}"
                          f"<{reader.component}>)")

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_classes(cls, classes: Mapping[str, str | None], edges: Iterable[tuple[str, str]] = (),
                     shape: Shape | None = None, scores: Mapping[str, float] | None = None, **meta: Any) -> Circuit:
        """A node circuit from {node name: class label} (and optional class-to-class ``edges``
        (source node, target node or reader), unscored, and node ``scores``)."""
        nodes = {n: NodeInfo(c, (scores or {}).get(n)) for n, c in classes.items()}
        out: dict[str, float | None] = {}
        for source, target in edges:
            out[f"{parse_node(source).unpositioned().name}->{_reader_name(target, shape)}"] = None
        return cls(nodes, out, shape, **meta)

    @classmethod
    def from_edges(cls, edges: Mapping[str, float | None] | Iterable[str], shape: Shape | None = None,
                   **meta: Any) -> Circuit:
        """An edge circuit from edge names (or {edge name: score}); its nodes are the writers and the
        heads the readers feed (a KV group reader: every head of the group, which needs ``shape``)."""
        scored = dict(edges) if isinstance(edges, Mapping) else dict.fromkeys(edges)
        nodes: dict[str, NodeInfo] = {}
        for name in scored:
            w, r = parse_edge(name)
            nodes.setdefault(w.name, NodeInfo())
            if r.kind == "logits":
                nodes.setdefault("logits", NodeInfo())
            elif r.kind == "mlp":
                nodes.setdefault(Node("mlp", r.layer).name, NodeInfo())
            elif r.kind == "group" and shape is None:
                raise ValueError(f"edge {name}: a KV group reader needs the model shape to know its heads")
            else:
                n_heads, n_kv = (shape.n_heads, shape.n_kv_heads) if shape else (1, 1)
                for h in r.heads(n_heads, n_kv):
                    nodes.setdefault(Node("head", r.layer, h).name, NodeInfo())
        return cls(nodes, scored, shape, **meta)

    @classmethod
    def from_head_scores(cls, values: Any, *, k: int | None = None, threshold: float | None = None,
                         by_abs: bool = True, shape: Shape | None = None, **meta: Any) -> Circuit:
        """The heads of a [layer, head] score grid (a Scores or a tensor/array) with the ``k`` largest
        scores or a score >= ``threshold`` (by |score| when ``by_abs``); each node keeps its score.
        NaN cells (not scored) never enter."""
        import math

        grid = values.values if hasattr(values, "axes") else values  # a Scores, or the grid itself
        rows = grid.tolist() if hasattr(grid, "tolist") else [list(r) for r in grid]
        if (k is None) == (threshold is None):
            raise ValueError("give exactly one of k= and threshold=")
        cells = [((layer, h), float(v)) for layer, row in enumerate(rows) for h, v in enumerate(row)
                 if not math.isnan(float(v))]
        key = (lambda c: abs(c[1])) if by_abs else (lambda c: c[1])
        if k is not None:
            if isinstance(k, bool) or not isinstance(k, int) or k < 0:
                raise ValueError(f"k must be a non-negative integer, got {k!r}")
            chosen = sorted(cells, key=key, reverse=True)[:k]
        else:
            chosen = [c for c in cells if key(c) >= threshold]
        shape = shape or Shape(len(rows), len(rows[0]) if rows else 0, len(rows[0]) if rows else 0)
        nodes = {Node("head", layer, h).name: NodeInfo(None, v) for (layer, h), v in chosen}
        return cls(nodes, {}, shape, **meta)

    # ------------------------------------------------------------------- views
    @property
    def kind(self) -> str:
        """"edge" when the circuit has edges, else "node"."""
        return "edge" if self.edges else "node"

    def heads(self) -> set[tuple[int, int]]:
        """(layer, head) of every head node, positions ignored."""
        out = set()
        for name in self.nodes:
            n = parse_node(name)
            if n.kind == "head":
                out.add((n.layer, n.head))
        return out

    def node_set(self, positions: bool = False) -> set[str]:
        """Node names (without their ``@POSITION`` unless ``positions``)."""
        return set(self.nodes) if positions else {parse_node(n).unpositioned().name for n in self.nodes}

    def edge_set(self) -> set[str]:
        """Edge names."""
        return set(self.edges)

    def classes(self) -> dict[str, list[str]]:
        """{class label: node names} (unlabelled nodes under None)."""
        out: dict[str, list[str]] = {}
        for name, info in self.nodes.items():
            out.setdefault(info.cls, []).append(name)
        return out

    def head_importance(self) -> dict[tuple[int, int], float]:
        """Each head's importance, normalised to sum 1 (Thinking Sparks): the sum of |score| of the
        edges it writes, for an edge circuit; its own |score| for a node circuit (unscored: 1)."""
        raw: dict[tuple[int, int], float] = {}
        if self.edges:
            for name, score in self.edges.items():
                w, _ = parse_edge(name)
                if w.kind == "head":
                    raw[(w.layer, w.head)] = raw.get((w.layer, w.head), 0.0) + abs(score if score is not None else 1.0)
        else:
            for name, info in self.nodes.items():
                n = parse_node(name)
                if n.kind == "head":
                    key = (n.layer, n.head)
                    raw[key] = raw.get(key, 0.0) + abs(info.score if info.score is not None else 1.0)
        total = sum(raw.values())
        return {h: v / total for h, v in raw.items()} if total else raw

    def check_comparable(self, other: Circuit) -> None:
        """Raise ValueError unless both circuits come from models of the same shape (when both know it)."""
        if self.shape is not None and other.shape is not None and self.shape != other.shape:
            raise ValueError(f"circuits of models with different shapes cannot be compared: {self.shape} "
                             f"({self.model or 'unnamed'}) against {other.shape} ({other.model or 'unnamed'})")


def _reader_name(target: str, shape: Shape | None = None) -> str:
    """A circuit edge's target as a reader name (``a2.h1<q>``, ``m2``, ``logits``; an MLP node is its
    own reader; under grouped-query attention a head's key or value input is its KV group's,
    ``a2.g0<k>``). A bare head is refused: the edge must say which input it feeds."""
    if target == "logits":
        return target
    if "<" in target:
        r = parse_reader(target)
        if r.kind == "head" and r.component in ("k", "v") and shape is not None and shape.n_kv_heads != shape.n_heads:
            return Reader("group", r.layer, r.index // (shape.n_heads // shape.n_kv_heads), r.component).name
        return r.name
    node = parse_node(target)
    if node.kind == "mlp":
        return node.unpositioned().name
    raise BadName(f"edge target {target!r} must be a reader: a head's input (a{{L}}.h{{H}}<q|k|v>), an MLP "
                  "or logits")
