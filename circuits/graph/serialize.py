"""Circuits in and out of other formats, losslessly: JSON, networkx, GraphML, MIB / EAP-IG graph JSON.

* JSON - :func:`save_circuit` / :func:`load_circuit` (the Circuit's own record, with its schema_version);
  :func:`read_circuit` also reads a result file that holds a circuit under ``"circuit"`` and a MIB file.
* networkx - :func:`to_networkx` / :func:`from_networkx`, exact inverses. The graph is a
  ``networkx.MultiDiGraph`` (a DiGraph subclass): a writer may feed a head's query, key and value at
  once, three edges between one pair of nodes, keyed by the edge's name. See :func:`to_networkx`.
* GraphML - :func:`write_graphml` / :func:`read_graphml`: the networkx graph as standard GraphML
  (``networkx.write_graphml``), which Gephi, Cytoscape and yEd open. Attribute values are scalars: a
  None is an absent attribute, a dict is JSON text.
* MIB / EAP-IG graph JSON - in :mod:`circuits.graph.mib`.

Names are read through :mod:`circuits.names` only; nothing here knows engines, tasks or models.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any
from xml.etree import ElementTree

import networkx as nx

from circuits.graph.circuit import SCHEMA_VERSION, Circuit, NodeInfo, Shape
from circuits.io import atomic_write_bytes, dumps
from circuits.names import (
    BadName,
    Node,
    Reader,
    level,
    parse_edge,
    parse_node,
    parse_reader,
)

# ---------------------------------------------------------------------------------------------- JSON


def save_circuit(circuit: Circuit, path: str | os.PathLike) -> None:
    """Write ``circuit`` as its JSON record (strict JSON, atomically); errors name the file."""
    try:
        circuit.save(path)
    except OSError as e:
        raise OSError(f"cannot write the circuit to {os.fspath(path)!r}: {e}") from None


def load_circuit(path: str | os.PathLike) -> Circuit:
    """Read what :func:`save_circuit` wrote; errors name the file."""
    try:
        return Circuit.load(path)
    except OSError as e:
        raise OSError(f"cannot read the circuit {os.fspath(path)!r}: {e.strerror or e}") from None


def read_circuit(path: str | os.PathLike, keep: bool = False) -> Circuit:
    """A Circuit from any file that holds one: a Circuit JSON, a result file with the circuit under the
    key ``"circuit"`` (the analyses' ioi.json), or a MIB / EAP-IG graph JSON (its ``"cfg"``, ``"nodes"``
    and ``"edges"`` keys; ``keep`` as in :func:`from_mib`). Errors name the file."""
    name = os.fspath(path)
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise OSError(f"cannot read {name!r}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{name!r} is not a JSON file: {e}") from None
    try:
        if isinstance(data, dict) and {"cfg", "nodes", "edges"} <= set(data):
            from circuits.graph.mib import from_mib

            return from_mib(data, keep=keep)
        if isinstance(data, dict) and isinstance(data.get("circuit"), dict):
            try:
                return Circuit.from_dict(data["circuit"])
            except (TypeError, ValueError) as e:
                raise ValueError(f"its \"circuit\" entry is not a Circuit record ({e}); a result file written "
                                 "before circuits.graph.Circuit existed needs its analysis rerun") from None
        if isinstance(data, dict) and "nodes" in data:
            return Circuit.from_dict(data)
    except ValueError as e:
        raise type(e)(f"{name!r}: {e}") from None
    except TypeError as e:
        raise ValueError(f"{name!r}: {e}") from None
    raise ValueError(f"{name!r} holds no circuit: expected a Circuit JSON, a result file with a \"circuit\" "
                     "key, or a MIB graph JSON (keys cfg, nodes, edges)")


# ----------------------------------------------------------------------------------------- networkx


def n_layers_of(circuit: Circuit) -> int:
    """The model's number of layers: from the circuit's shape, else one more than the deepest layer named."""
    if circuit.shape is not None:
        return circuit.shape.n_layers
    layers = [parse_node(n).layer for n in circuit.nodes]
    for name in circuit.edges:
        w, r = parse_edge(name)
        layers += [w.layer, r.layer]
    return max(layers, default=-1) + 1


def attachments(circuit: Circuit) -> dict[str, str]:
    """{unpositioned node name: the circuit's node it stands for} where that differs: an edge names its
    ends without positions (``a0.h2->a1.h0<k>``), so an end meets the circuit's node at a position
    (``a1.h0@END``) when that is the circuit's only node of that head (or MLP) and none is unpositioned."""
    by_base: dict[str, list[str]] = {}
    for name in circuit.nodes:
        by_base.setdefault(parse_node(name).unpositioned().name, []).append(name)
    return {base: found[0] for base, found in by_base.items() if len(found) == 1 and found[0] != base}


def _edge_ends(circuit: Circuit, name: str, attach: Mapping[str, str]) -> tuple[str, str, Reader]:
    """(source graph node, target graph node, reader) of an edge of ``circuit``."""
    w, r = parse_edge(name)
    target = r.owner() if r.kind in ("head", "group") else r.name
    return attach.get(w.name, w.name), attach.get(target, target), r


def to_networkx(circuit: Circuit) -> nx.MultiDiGraph:
    """The circuit as a networkx graph (a MultiDiGraph, a DiGraph subclass: a writer may feed one head's
    query, key and value, three edges between one pair of nodes, each keyed by its edge name).

    Nodes: the circuit's nodes, in order, with ``in_circuit=True``, ``kind`` (input, head, mlp, resid,
    logits), ``layer`` (input -1, logits n_layers), ``level`` (:func:`circuits.names.level`), ``head``
    and ``pos`` where they apply, ``cls`` and ``score`` when known. Edge ends the circuit does not list
    are added with ``in_circuit=False``; a GQA group reader's end is its group, ``a1.g0`` (``kind
    "kv_group"``, ``kv_group=True``, ``group``, ``heads``). An end at a position meets the circuit's
    node at that position (:func:`attachments`).
    Edges: ``name`` (``a0.h1->a2.h3<q>``), ``reader``, ``order`` (its place in the circuit), ``score``
    when known, ``component`` q/k/v for head and group readers, ``kv_group=True`` for group readers.
    Graph: ``task``, ``model``, ``method`` when known; ``shape``, ``settings``, ``provenance`` as JSON
    text; ``schema_version``. An absent attribute means None. :func:`from_networkx` inverts it exactly.
    """
    n_layers = n_layers_of(circuit)
    g = nx.MultiDiGraph()
    g.graph.update({k: v for k, v in (("task", circuit.task), ("model", circuit.model),
                                      ("method", circuit.method)) if v is not None})
    g.graph["shape"] = dumps(None if circuit.shape is None else circuit.shape.to_dict())
    g.graph["settings"] = dumps(circuit.settings)
    g.graph["provenance"] = dumps(circuit.provenance)
    g.graph["schema_version"] = circuit.schema_version
    for name, info in circuit.nodes.items():
        g.add_node(name, **_node_attrs(parse_node(name), n_layers), in_circuit=True,
                   **({} if info.cls is None else {"cls": info.cls}),
                   **({} if info.score is None else {"score": float(info.score)}))
    attach = attachments(circuit)
    for order, (name, score) in enumerate(circuit.edges.items()):
        u, v, r = _edge_ends(circuit, name, attach)
        for end, item in ((u, parse_edge(name)[0]), (v, r)):
            if end not in g:
                g.add_node(end, **_end_attrs(item, n_layers, circuit.shape), in_circuit=False)
        attrs: dict[str, Any] = {"name": name, "reader": r.name, "order": order}
        if score is not None:
            attrs["score"] = float(score)
        if r.component:
            attrs["component"] = r.component
        if r.kind == "group":
            attrs["kv_group"] = True
        g.add_edge(u, v, key=name, **attrs)
    return g


def _node_attrs(node: Node, n_layers: int) -> dict[str, Any]:
    lvl = level(node, n_layers)
    out: dict[str, Any] = {"kind": node.kind, "layer": math.floor(lvl), "level": lvl}
    if node.head is not None:
        out["head"] = node.head
    if node.pos:
        out["pos"] = node.pos
    return out


def _end_attrs(item: Node | Reader, n_layers: int, shape: Shape | None) -> dict[str, Any]:
    if isinstance(item, Node):
        return _node_attrs(item, n_layers)
    if item.kind != "group":
        return _node_attrs(parse_node(item.owner()), n_layers)
    out: dict[str, Any] = {"kind": "kv_group", "layer": item.layer, "level": level(item, n_layers),
                           "kv_group": True, "group": item.index}
    if shape is not None:
        out["heads"] = " ".join(Node("head", item.layer, h).name for h in item.heads(shape.n_heads, shape.n_kv_heads))
    return out


def from_networkx(g: nx.DiGraph) -> Circuit:
    """The Circuit :func:`to_networkx` made ``g`` from (also GraphML read back by :func:`read_graphml`).

    A graph made elsewhere works too: a node without ``in_circuit`` is a circuit node when its name is
    a node name; an edge without ``name`` is named from its ends and its ``component``."""
    try:
        meta = {k: g.graph.get(k) for k in ("task", "model", "method")}
        shape = _json_attr(g.graph, "shape", None)
        settings = _json_attr(g.graph, "settings", {})
        provenance = _json_attr(g.graph, "provenance", {})
        nodes: dict[str, NodeInfo] = {}
        for name, d in g.nodes(data=True):
            inside = d.get("in_circuit")
            if inside is None:
                inside = _is_node_name(name)
            if inside:
                nodes[str(name)] = NodeInfo(d.get("cls"), d.get("score"))
        rows = []
        data = g.edges(keys=True, data=True) if g.is_multigraph() else ((u, v, None, d) for u, v, d in g.edges(data=True))
        for i, (u, v, _, d) in enumerate(data):
            name = d.get("name") or _edge_name_of(str(u), str(v), d.get("component"))
            rows.append((d.get("order", i), name, d.get("score")))
        edges = {name: score for _, name, score in sorted(rows, key=lambda row: row[0])}
        return Circuit(nodes, edges, None if shape is None else Shape.from_dict(shape),
                       settings=settings, provenance=provenance,
                       schema_version=int(g.graph.get("schema_version", SCHEMA_VERSION)), **meta)
    except (TypeError, KeyError) as e:
        raise ValueError(f"the graph is not a circuit: {e}") from None


def _json_attr(attrs: Mapping[str, Any], key: str, default: Any) -> Any:
    text = attrs.get(key)
    if text is None:
        return default
    try:
        return json.loads(text)
    except (TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"graph attribute {key!r} is not JSON text: {e}") from None


def _is_node_name(name: Any) -> bool:
    try:
        parse_node(name)
    except BadName:
        return False
    return True


def _edge_name_of(u: str, v: str, component: str | None) -> str:
    writer = parse_node(u).unpositioned().name
    if component:
        return f"{writer}->{v.split('@')[0]}<{component}>"
    target = v if v == "logits" else parse_node(v).unpositioned().name
    return f"{writer}->{parse_reader(target).name}"


# ------------------------------------------------------------------------------------------ GraphML


def graphml_bytes(circuit: Circuit) -> bytes:
    """The GraphML text of :func:`to_networkx` (standard GraphML, networkx's writer), deterministic."""
    import io

    buf = io.BytesIO()
    nx.write_graphml_xml(to_networkx(circuit), buf)
    return buf.getvalue()


def write_graphml(circuit: Circuit, path: str | os.PathLike) -> None:
    """Write ``circuit`` as GraphML (atomically); Gephi, Cytoscape and yEd open it."""
    data = graphml_bytes(circuit)
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise OSError(f"cannot write {os.fspath(path)!r}: {e}") from None


def read_graphml(path: str | os.PathLike) -> Circuit:
    """The Circuit a GraphML file written by :func:`write_graphml` holds; errors name the file."""
    name = os.fspath(path)
    try:
        g = nx.read_graphml(path, force_multigraph=True, edge_key_type=str)
    except OSError as e:
        raise OSError(f"cannot read {name!r}: {e.strerror or e}") from None
    except (ElementTree.ParseError, nx.NetworkXError, KeyError, ValueError, TypeError) as e:  # not GraphML
        raise ValueError(f"{name!r} is not a GraphML file: {e}") from None
    try:
        return from_networkx(g)
    except ValueError as e:
        raise type(e)(f"{name!r}: {e}") from None
