"""The one parser of node, reader and edge names (EAP-IG / MIB convention)."""

from __future__ import annotations

import pytest

from circuits.names import (
    BadName,
    Node,
    Reader,
    edge_name,
    level,
    parse_edge,
    parse_node,
    parse_reader,
)


@pytest.mark.parametrize("name, node", [
    ("a3.h1", Node("head", 3, 1)),
    ("a9.h6@END", Node("head", 9, 6, "END")),
    ("a0.h2@S1+1", Node("head", 0, 2, "S1+1")),
    ("m2", Node("mlp", 2)),
    ("r0", Node("resid", 0)),
    ("input", Node("input")),
    ("logits", Node("logits")),
])
def test_nodes_round_trip(name, node):
    assert parse_node(name) == node
    assert node.name == name
    assert parse_node(node) is node


@pytest.mark.parametrize("name, reader, heads", [
    ("a2.h1<q>", Reader("head", 2, 1, "q"), [1]),
    ("a2.h3<v>", Reader("head", 2, 3, "v"), [3]),
    ("a1.g1<k>", Reader("group", 1, 1, "k"), [2, 3]),  # 4 query heads, 2 KV groups
    ("m4", Reader("mlp", 4), []),
    ("logits", Reader("logits"), []),
])
def test_readers_round_trip_and_know_their_heads(name, reader, heads):
    assert parse_reader(name) == reader
    assert reader.name == name
    assert reader.heads(4, 2) == heads


@pytest.mark.parametrize("bad", ["a1", "h1", "a1.h", "embed", "a1.h2<x>", "m", "a1.h2@", 3, None, "a-1.h0"])
def test_bad_node_names_are_named(bad):
    with pytest.raises(BadName, match="bad node name"):
        parse_node(bad)


@pytest.mark.parametrize("bad", ["a1.h2", "a1.g0<q>", "input", "a1.h2<x>", "m1<q>"])
def test_bad_reader_names_are_named(bad):
    with pytest.raises(BadName, match="bad reader name"):
        parse_reader(bad)


def test_edges_parse_to_a_writer_and_a_reader():
    w, r = parse_edge("a0.h1->a2.g0<k>")
    assert w == Node("head", 0, 1) and r == Reader("group", 2, 0, "k")
    assert edge_name(w, r) == "a0.h1->a2.g0<k>"
    assert r.owner() == "a2.g0"
    for bad in ("a0.h1", "logits->m1", "a0.h1@END->m1", "a0.h1->a1.h0"):
        with pytest.raises(BadName):
            parse_edge(bad)


def test_levels_order_the_forward_pass():
    names = ["logits", "m1", "a1.h0<q>", "a1.h0", "m0", "a0.h3", "input"]
    assert [level(n, 2) for n in names] == [2.0, 1.5, 1.0, 1.0, 0.5, 0.0, -1.0]


def test_a_head_node_needs_its_head_and_others_have_none():
    with pytest.raises(BadName):
        Node("head", 1)
    with pytest.raises(BadName):
        Node("mlp", 1, 0)
    with pytest.raises(BadName):
        Node("embed")
