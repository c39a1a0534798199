"""The Circuit type: one plain-data circuit for nodes and edges, validated against the model's shape."""

from __future__ import annotations

import json

import pytest
import torch

from circuits.graph import Circuit, NodeInfo, Shape
from circuits.names import BadName

GPT2 = Shape(4, 4, 4)
GQA = Shape(2, 4, 2)


def test_a_node_circuit_round_trips_through_json_with_positions_and_classes():
    c = Circuit.from_classes({"a1.h0@END": "s-suppression", "a0.h2@S2": "induction"},
                             [("a0.h2@S2", "a1.h0<k>"), ("a1.h0@END", "logits")], GPT2, task="ioi", model="zoo:x",
                             method="path patching", scores={"a1.h0@END": -12.5})
    back = Circuit.from_dict(json.loads(json.dumps(c.to_dict())))
    assert back == c and back.nodes["a1.h0@END"] == NodeInfo("s-suppression", -12.5)
    assert c.edges == {"a0.h2->a1.h0<k>": None, "a1.h0->logits": None}
    assert c.heads() == {(1, 0), (0, 2)} and c.node_set() == {"a1.h0", "a0.h2"}
    assert c.classes() == {"s-suppression": ["a1.h0@END"], "induction": ["a0.h2@S2"]}


def test_under_gqa_a_heads_key_input_is_its_groups():
    c = Circuit.from_classes({"a0.h1": "x", "a1.h3": "y"}, [("a0.h1", "a1.h3<k>"), ("a0.h1", "a1.h3<q>")], GQA)
    assert set(c.edges) == {"a0.h1->a1.g1<k>", "a0.h1->a1.h3<q>"}
    with pytest.raises(BadName, match="read per KV group"):
        Circuit(edges={"a0.h1->a1.h3<k>": 1.0}, shape=GQA)


def test_an_edge_circuit_knows_the_heads_its_readers_feed():
    c = Circuit.from_edges({"input->a1.g0<v>": 0.5, "a0.h2->m1": -1.0, "m1->logits": 2.0}, GQA)
    assert set(c.nodes) == {"input", "a1.h0", "a1.h1", "a0.h2", "m1", "logits"}
    assert c.kind == "edge" and c.heads() == {(1, 0), (1, 1), (0, 2)}
    with pytest.raises(ValueError, match="needs the model shape"):
        Circuit.from_edges(["input->a1.g0<v>"])


def test_head_scores_select_top_k_or_a_threshold_and_skip_unscored_cells():
    grid = torch.tensor([[1.0, -5.0, float("nan")], [0.5, 3.0, -0.1]])
    top = Circuit.from_head_scores(grid, k=2)
    assert set(top.nodes) == {"a0.h1", "a1.h1"} and top.nodes["a0.h1"].score == -5.0
    assert set(Circuit.from_head_scores(grid, threshold=1.0, by_abs=False).nodes) == {"a0.h0", "a1.h1"}
    with pytest.raises(ValueError, match="exactly one of"):
        Circuit.from_head_scores(grid)


def test_importance_sums_the_edges_each_head_writes():
    c = Circuit.from_edges({"a0.h1->a1.h0<q>": 3.0, "a0.h1->logits": -1.0, "a0.h2->logits": 4.0}, GPT2)
    assert c.head_importance() == {(0, 1): 0.5, (0, 2): 0.5}


@pytest.mark.parametrize("bad, match", [
    ({"nodes": {"a9.h0": NodeInfo()}}, "layer 9 is outside"),
    ({"nodes": {"a1.h7": NodeInfo()}}, "head 7 is outside"),
    ({"edges": {"a0.h1->a1.g3<k>": None}}, "KV group 3 is outside"),
    ({"nodes": {"embed": NodeInfo()}}, "bad node name"),
    ({"edges": {"a0.h1->a1.h0": None}}, "bad reader name"),
])
def test_names_the_model_lacks_are_refused(bad, match):
    with pytest.raises(BadName, match=match):
        Circuit(shape=GQA if "g3" in str(bad) else GPT2, **bad)


def test_circuits_of_different_models_do_not_compare():
    with pytest.raises(ValueError, match="different shapes"):
        Circuit(shape=GPT2, model="a").check_comparable(Circuit(shape=GQA, model="b"))
    with pytest.raises(ValueError, match="schema_version"):
        Circuit.from_dict({**Circuit().to_dict(), "schema_version": 99})
