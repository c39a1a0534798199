"""Circuits in MIB / EAP-IG graph JSON, both ways (EAP-IG's ``Graph.to_json`` layout).

``{"cfg": {...}, "nodes": {name: in_graph}, "edges": {name: {"score": float, "in_graph": bool}}}``,
listing every edge of the model's graph (:func:`mib_edges`), so MIB submissions and EAP-IG outputs
load (:func:`from_mib`, :func:`load_mib`) and our circuits can be submitted (:func:`to_mib`,
:func:`save_mib`). Names are read through :mod:`circuits.names` only.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

from circuits.graph.circuit import Circuit, NodeInfo, Shape
from circuits.io import atomic_write_text, dumps
from circuits.names import (
    BadName,
    Node,
    Reader,
    graph_names,
    is_edge,
    parse_edge,
    parse_node,
    parse_reader,
)

#: cfg keys :func:`to_mib` sets itself (others are carried from ``settings["mib_cfg"]``).
_OWN_CFG = ("n_layers", "n_heads", "n_key_value_heads", "parallel_attn_mlp", "circuit")


def mib_edges(shape: Shape) -> list[str]:
    """Every edge of the model's graph (:func:`circuits.names.graph_names` and ``is_edge``), in EAP-IG's
    order: per layer the attention inputs' edges writer by writer (head, then q/k/v), then the MLP's;
    the logits' last. Under grouped-query attention keys and values are read per KV group."""
    writers, readers = graph_names(shape.n_layers, shape.n_heads, shape.n_kv_heads)
    index = {w: i for i, w in enumerate(writers)}
    size = shape.n_heads // shape.n_kv_heads

    def key(edge: tuple[str, Reader]) -> tuple:
        w, r = edge
        block = shape.n_layers if r.kind == "logits" else r.layer
        head = -1 if r.index is None else r.index * (size if r.kind == "group" else 1)
        is_mlp = r.kind == "mlp"
        order = (index[w], is_mlp) if shape.parallel_attn_mlp else (is_mlp, index[w])
        return (block, *order, head, "qkv".index(r.component) if r.component else 0)

    parsed = [(w, parse_node(w)) for w in writers]
    pairs = [(w, r) for r in map(parse_reader, readers) for w, node in parsed
             if is_edge(node, r, shape.n_layers, shape.parallel_attn_mlp)]
    return [f"{w}->{r.name}" for w, r in sorted(pairs, key=key)]


def to_mib(circuit: Circuit, all_scores: Mapping[str, float] | None = None, *, d_model: int | None = None,
           node_format: str = "bool") -> dict[str, Any]:
    """The circuit as a MIB / EAP-IG graph JSON (EAP-IG's ``Graph.to_json`` layout).

    Every edge of the model's graph is listed (:func:`mib_edges`), ``in_graph`` when the circuit has
    it; its score is the circuit's, else ``all_scores[edge]`` (default: ``settings["mib_scores"]``,
    which :func:`from_mib` keeps when asked), else 0.0. A node is in the graph when an in-graph edge
    touches it (a KV group reader: every head of its group) or the circuit lists it; ``logits`` always
    is, as in EAP-IG. ``node_format="dict"`` writes nodes as ``{"in_graph": bool}`` (EAP-IG's newest
    ``from_json`` reads that form). ``cfg`` holds ``n_layers``, ``n_heads``, ``n_key_value_heads``,
    ``parallel_attn_mlp``, ``d_model`` when given (or kept) and the circuit itself under ``"circuit"``
    (EAP-IG keeps cfg keys it does not know), so that :func:`from_mib` restores the circuit exactly while
    the in-graph edges stay as written.
    """
    shape = circuit.shape
    if shape is None:
        raise ValueError("a MIB graph lists every edge of the model's graph: the circuit needs its model's shape")
    if node_format not in ("bool", "dict"):
        raise ValueError(f"node_format must be 'bool' or 'dict', got {node_format!r}")
    edges = mib_edges(shape)
    known = set(edges)
    table = dict(circuit.settings.get("mib_scores") or {}) if all_scores is None else dict(all_scores)
    unknown = sorted(set(table) - known)
    if unknown:
        raise BadName(f"scores for edges the model's graph lacks: {_listed(unknown)}")
    outside = sorted(set(circuit.edges) - known)
    if outside:  # the Circuit checks names against the shape, so this only fails for odd shapes
        raise BadName(f"circuit edges the model's graph lacks: {_listed(outside)}")
    touched = {"logits"} | {parse_node(n).unpositioned().name for n in circuit.nodes}
    for name in circuit.edges:
        w, r = parse_edge(name)
        touched.add(w.name)
        touched |= {Node("head", r.layer, h).name for h in r.heads(shape.n_heads, shape.n_kv_heads)}
        if r.kind in ("mlp", "logits"):
            touched.add(r.name)
    writers, _ = graph_names(shape.n_layers, shape.n_heads, shape.n_kv_heads)
    nodes = {n: (n in touched) if node_format == "bool" else {"in_graph": n in touched} for n in [*writers, "logits"]}
    out_edges = {}
    for name in edges:
        score = circuit.edges.get(name)
        if score is None:
            score = table.get(name)
        out_edges[name] = {"score": 0.0 if score is None else float(score), "in_graph": name in circuit.edges}
    cfg: dict[str, Any] = {k: v for k, v in (circuit.settings.get("mib_cfg") or {}).items() if k not in _OWN_CFG}
    if d_model is not None:
        cfg["d_model"] = int(d_model)
    embedded = circuit.to_dict()
    embedded["settings"] = {k: v for k, v in circuit.settings.items() if k not in ("mib_scores", "mib_cfg")}
    cfg = {"n_layers": shape.n_layers, "n_heads": shape.n_heads, "n_key_value_heads": shape.n_kv_heads,
           "parallel_attn_mlp": shape.parallel_attn_mlp, **cfg, "circuit": embedded}
    return {"cfg": cfg, "nodes": nodes, "edges": out_edges}


def from_mib(data: Mapping[str, Any], shape: Shape | None = None, keep: bool = False) -> Circuit:
    """The circuit a MIB / EAP-IG graph JSON holds: its in-graph edges with their scores.

    The model's shape comes from ``cfg`` (``n_layers``, ``n_heads``, ``n_key_value_heads`` when present,
    else ``n_heads``; ``parallel_attn_mlp``), or from ``shape`` (which must agree with what cfg says;
    give it to read an EAP-IG file of a grouped-query model, whose cfg does not say so). Node names are
    EAP-IG's (``input``, ``a{L}.h{H}``, ``m{L}``, ``logits``), as bools or ``{"in_graph": ...}``; nodes
    in the graph that no in-graph edge touches join the circuit too. Under grouped-query attention our
    key/value readers are per KV group (``a1.g0<k>``); EAP-IG's per-head names (``a1.h1<k>``) are
    accepted and merged into their group (scores summed; in the graph if any head's edge is), which
    ``settings["mib_gqa"]`` records. ``keep=True`` records the full score table in
    ``settings["mib_scores"]`` and the cfg in ``settings["mib_cfg"]``, so that :func:`to_mib` writes the
    same file back. A file :func:`to_mib` wrote restores its circuit exactly (classes, positions, node
    scores, metadata) while its in-graph edges are the circuit's. A name the model's graph lacks, or a
    malformed entry, raises ValueError naming them; nothing half-built is returned.
    """
    if not isinstance(data, Mapping) or not {"cfg", "nodes", "edges"} <= set(data):
        raise ValueError("not a MIB graph: expected a JSON object with keys cfg, nodes and edges")
    cfg, nodes_in, edges_in = data["cfg"], data["nodes"], data["edges"]
    if not all(isinstance(x, Mapping) for x in (cfg, nodes_in, edges_in)):
        raise ValueError("not a MIB graph: cfg, nodes and edges must be JSON objects")
    shape = _mib_shape(cfg, shape)
    writers, _ = graph_names(shape.n_layers, shape.n_heads, shape.n_kv_heads)
    known_edges = mib_edges(shape)
    known = set(known_edges)
    bad_nodes = sorted(n for n in nodes_in if n not in set(writers) | {"logits"})
    bad_edges, merged, per_head, per_group = [], {}, set(), set()
    for name, entry in edges_in.items():
        ours = name if name in known else _group_edge(name, shape)
        if ours is None:
            bad_edges.append(name)
            continue
        (per_group if ours == name else per_head).add(ours)
        merged.setdefault(ours, []).append((name, entry))
    if bad_nodes or bad_edges:
        parts = ([f"nodes {_listed(bad_nodes)}"] if bad_nodes else []) + ([f"edges {_listed(sorted(bad_edges))}"]
                                                                          if bad_edges else [])
        raise BadName(f"the MIB graph names what a {_describe(shape)} model's graph lacks: {'; '.join(parts)}")
    mixed = sorted(per_head & per_group)
    if mixed:
        raise ValueError(f"the MIB graph names KV group readers both per head and per group: {_listed(mixed)}")
    scores: dict[str, float | None] = {}
    in_graph: dict[str, bool] = {}
    for ours, entries in merged.items():
        values = [_edge_entry(name, entry) for name, entry in entries]
        numbers = [s for s, _ in values if s is not None]
        scores[ours] = math.fsum(numbers) if len(numbers) > 1 else (numbers[0] if numbers else None)
        in_graph[ours] = any(flag for _, flag in values)
    node_flags = {name: _node_entry(name, entry) for name, entry in nodes_in.items()}

    chosen = {e: scores[e] for e in known_edges if in_graph.get(e)}
    circuit = _embedded(cfg, shape, chosen)
    if circuit is None:
        settings: dict[str, Any] = {}
        if per_head:
            settings["mib_gqa"] = (f"{len(per_head)} key/value readers named per head in the file were merged into "
                                   "their KV groups (scores summed; in the graph if any head's edge was)")
        circuit = Circuit.from_edges(chosen, shape, settings=settings)
        derived = {parse_node(n).unpositioned().name for n in circuit.nodes}
        for name, (flag, score) in node_flags.items():
            if name == "logits":
                continue
            if flag and name not in derived:
                circuit.nodes[name] = NodeInfo()
            if flag and score is not None:
                circuit.nodes[name].score = score
        meta = cfg.get("circuit") if isinstance(cfg.get("circuit"), Mapping) else {}
        for k in ("task", "model", "method"):
            setattr(circuit, k, meta.get(k) if isinstance(meta.get(k), str) else None)
    if keep:
        circuit.settings["mib_scores"] = {e: scores.get(e) for e in known_edges if e in scores}
        circuit.settings["mib_cfg"] = {k: v for k, v in cfg.items() if k != "circuit"}
    return circuit


def _mib_shape(cfg: Mapping[str, Any], shape: Shape | None) -> Shape:
    def number(key: str) -> int | None:
        value = cfg.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"MIB cfg[{key!r}] must be a positive integer, got {value!r}")
        return value

    layers, heads, kv = number("n_layers"), number("n_heads"), number("n_key_value_heads")
    parallel = cfg.get("parallel_attn_mlp")
    if shape is None:
        if layers is None or heads is None:
            raise ValueError("the MIB graph's cfg lacks n_layers / n_heads; give the model's shape")
        kv = kv or heads
        if heads % kv:
            raise ValueError(f"MIB cfg: n_heads {heads} is not a multiple of n_key_value_heads {kv}")
        return Shape(layers, heads, kv, bool(parallel))
    said = {"n_layers": (layers, shape.n_layers), "n_heads": (heads, shape.n_heads),
            "n_key_value_heads": (kv, shape.n_kv_heads),
            "parallel_attn_mlp": (None if parallel is None else bool(parallel), shape.parallel_attn_mlp)}
    clash = {k: v for k, (v, s) in said.items() if v is not None and v != s}
    if clash:
        raise ValueError(f"the MIB graph's cfg {clash} disagrees with the shape given, {shape}")
    return shape


def _group_edge(name: str, shape: Shape) -> str | None:
    """EAP-IG's per-head key/value edge name as ours (its KV group's), under grouped-query attention."""
    if shape.n_kv_heads == shape.n_heads:
        return None
    try:
        w, r = parse_edge(name)
    except BadName:
        return None
    if r.kind != "head" or r.component not in ("k", "v") or not 0 <= r.index < shape.n_heads:
        return None
    ours = f"{w.name}->{Reader('group', r.layer, r.index // (shape.n_heads // shape.n_kv_heads), r.component).name}"
    return ours if is_edge(w, r, shape.n_layers, shape.parallel_attn_mlp) else None


def _edge_entry(name: str, entry: Any) -> tuple[float | None, bool]:
    if not isinstance(entry, Mapping) or "in_graph" not in entry:
        raise ValueError(f"MIB edge {name!r}: expected {{\"score\": number, \"in_graph\": bool}}, got {entry!r}")
    flag, score = entry["in_graph"], entry.get("score")
    if not isinstance(flag, bool):
        raise ValueError(f"MIB edge {name!r}: in_graph must be true or false, got {flag!r}")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        raise ValueError(f"MIB edge {name!r}: score must be a number or null, got {score!r}")
    return (None if score is None or math.isnan(score) else score), flag


def _node_entry(name: str, entry: Any) -> tuple[bool, float | None]:
    if isinstance(entry, bool):
        return entry, None
    if isinstance(entry, Mapping) and isinstance(entry.get("in_graph"), bool):
        score = entry.get("score")
        ok = isinstance(score, (int, float)) and not isinstance(score, bool) and not math.isnan(score)
        return entry["in_graph"], (score if ok else None)
    raise ValueError(f"MIB node {name!r}: expected true/false or {{\"in_graph\": bool}}, got {entry!r}")


def _embedded(cfg: Mapping[str, Any], shape: Shape, chosen: Mapping[str, float | None]) -> Circuit | None:
    """The circuit :func:`to_mib` embedded in cfg, when the file's in-graph edges are still its edges."""
    data = cfg.get("circuit")
    if not isinstance(data, dict):
        return None
    try:
        circuit = Circuit.from_dict(data)
    except (TypeError, ValueError):
        return None
    if circuit.shape != shape or set(circuit.edges) != set(chosen):
        return None
    if any(s is not None and s != chosen[e] for e, s in circuit.edges.items()):
        return None
    return circuit


def _listed(items: list[str], most: int = 10) -> str:
    shown = ", ".join(repr(x) for x in items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def _describe(shape: Shape) -> str:
    kv = f", {shape.n_kv_heads} KV groups" if shape.n_kv_heads != shape.n_heads else ""
    return f"{shape.n_layers}-layer, {shape.n_heads}-head{kv}"


def mib_text(circuit: Circuit, all_scores: Mapping[str, float] | None = None, **options: Any) -> str:
    """The JSON text :func:`save_mib` writes (strict JSON, one line as EAP-IG writes it)."""
    return dumps(to_mib(circuit, all_scores, **options)) + "\n"


def save_mib(circuit: Circuit, path: str | os.PathLike, all_scores: Mapping[str, float] | None = None,
             **options: Any) -> None:
    """Write :func:`to_mib` of ``circuit`` to ``path`` (atomically); options as :func:`to_mib`'s."""
    text = mib_text(circuit, all_scores, **options)
    try:
        atomic_write_text(path, text)
    except OSError as e:
        raise OSError(f"cannot write {os.fspath(path)!r}: {e}") from None


def load_mib(path: str | os.PathLike, shape: Shape | None = None, keep: bool = False) -> Circuit:
    """:func:`from_mib` of the MIB / EAP-IG graph JSON at ``path``; errors name the file."""
    name = os.fspath(path)
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise OSError(f"cannot read {name!r}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{name!r} is not a JSON file: {e}") from None
    try:
        return from_mib(data, shape, keep)
    except ValueError as e:  # BadName stays BadName
        raise type(e)(f"{name!r}: {e}") from None
