"""EAP / EAP-IG: every edge class against a one-edge-at-a-time reference, IG identities,
node scores = sums of edge scores, GQA groups kept."""

from __future__ import annotations

import pytest
import torch

from circuits.engines.attribution import attribute_edges, attribute_nodes
from circuits.engines.edges import edge_graph
from circuits.tasks import build_task
from tests.conftest import ENGINE_ARCHS
from tests.reference_engines import reader_gradient, writer_delta


@pytest.mark.parametrize("arch", ENGINE_ARCHS)
def test_eap_matches_one_edge_at_a_time_reference(arch, engine_models):
    model = engine_models(arch)
    ps = build_task("ioi", model.tokenizer, n=5, seed=3)
    got = attribute_edges(model, ps)
    g = got.graph
    kv = "g0" if g.gqa else "h0"
    # one edge of every class: input/head/MLP writers x q/k/v/MLP/logits readers
    edges = [("input", "a0.h1<q>"), ("input", f"a1.{kv}<k>"), ("a0.h2", f"a1.{kv.replace('0', '1')}<v>"),
             ("a0.h3", "a1.h2<q>"), ("m0", "a1.h0<q>"), ("a0.h0", "m0"), ("input", "m1"), ("m0", "m1"),
             ("a1.h3", "logits"), ("m1", "logits"), ("input", "logits")]
    for w, r in edges:
        ref = float((writer_delta(model, ps, w) * reader_gradient(model, ps, r)).detach().sum() / len(ps))
        assert got.score(w, r) == pytest.approx(ref, abs=1e-5, rel=1e-4), (w, r)
    assert max(abs(s) for _, s in got.ranked()[:5]) > 1e-3  # scores are not all ~0


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_ig_identities_and_node_sums(arch, engine_models):
    model = engine_models(arch)
    ps = build_task("ioi", model.tokenizer, n=5, seed=3)
    eap = attribute_edges(model, ps, per_position=True)
    for method in ("eap-ig-inputs", "eap-ig-activations"):
        one = attribute_edges(model, ps, method=method, steps=1, rule="right")  # the clean point alone
        torch.testing.assert_close(one.scores, eap.scores, atol=1e-6, rtol=1e-5)
        five = attribute_edges(model, ps, method=method, steps=5)
        assert not torch.allclose(five.scores, eap.scores)
        assert five.settings["steps"] == 5
    torch.testing.assert_close(eap.per_position.sum(0), eap.scores, atol=1e-6, rtol=1e-5)
    nodes = attribute_nodes(model, ps)
    g = eap.graph
    for layer in range(g.n_layers):
        for h in range(g.n_heads):
            total = float(eap.scores[g.writer_index[f"a{layer}.h{h}"]].sum())
            assert float(nodes["heads"].values[layer, h]) == pytest.approx(total, abs=1e-5, rel=1e-4)
        assert float(nodes["mlps"].values[layer]) == pytest.approx(
            float(eap.scores[g.writer_index[f"m{layer}"]].sum()), abs=1e-5, rel=1e-4)


def test_edge_graph_shapes_and_names(engine_models, loaded_models):
    g = edge_graph(engine_models("gpt2"))
    assert g.writers[:2] == ["input", "a0.h0"] and g.readers[-1] == "logits"
    assert g.n_edges == int(g.mask.sum()) and ("a0.h1", "a1.h2<k>") in g.edges()
    with pytest.raises(ValueError, match="not an edge"):
        g.index("a1.h0", "a0.h1<q>")
    with pytest.raises(ValueError, match="unknown reader"):
        g.index("a0.h0", "a1.h9<q>")
    gq = edge_graph(engine_models("llama"))
    assert gq.gqa and "a1.g1<k>" in gq.readers and "a1.h3<k>" not in gq.readers
    neox = edge_graph(loaded_models("neox"))
    assert neox.parallel_attn_mlp and not neox.mask[neox.writer_index["a0.h0"], neox.reader_index["m0"]]


def test_attribution_errors(engine_models):
    model = engine_models("gpt2")
    ps = build_task("ioi", model.tokenizer, n=3, seed=0)
    with pytest.raises(ValueError, match="method"):
        attribute_edges(model, ps, method="ig")
    with pytest.raises(ValueError, match="steps"):
        attribute_edges(model, ps, method="eap-ig-inputs", steps=0)


def test_integration_rules_place_their_points_and_weights():
    from circuits.engines.attribution import ig_points

    assert ig_points("left", 4) == [(0.0, 0.25), (0.25, 0.25), (0.5, 0.25), (0.75, 0.25)]
    assert ig_points("right", 2) == [(0.5, 0.5), (1.0, 0.5)]
    assert ig_points("midpoint", 2) == [(0.25, 0.5), (0.75, 0.5)]
    assert ig_points("trapezoid", 2) == [(0.0, 0.25), (0.5, 0.5), (1.0, 0.25)]
    with pytest.raises(ValueError, match="rule must be one of"):
        ig_points("simpson", 2)


@pytest.mark.parametrize("method", ["eap-ig-inputs", "eap-ig-activations"])
def test_completeness_gap_closes_with_more_steps_and_auto_says_when(method, engine_models):
    """Integrated gradients sum to M(clean) - M(corrupted) in the limit: the reported gap shrinks as
    the steps grow, and steps='auto' stops at the first step count within the tolerance."""
    model = engine_models("gpt2")
    ps = build_task("ioi", model.tokenizer, n=6, seed=1)
    gaps = [attribute_edges(model, ps, method=method, steps=k).settings["completeness"]["gap"] for k in (1, 4, 32)]
    assert gaps[2] < gaps[0] and gaps[2] < 0.05
    auto = attribute_edges(model, ps, method=method, steps="auto", tolerance=0.1)
    history = auto.settings["auto_steps"]["history"]
    assert auto.settings["completeness"]["converged"] == (history[-1]["gap"] <= 0.1)
    assert all(h["gap"] > 0.1 for h in history[:-1]) and auto.settings["steps"] == history[-1]["steps"]


def test_effect_has_one_sign_convention_for_patching_and_attribution(engine_models):
    """Noising, denoising and attribution agree on which heads carry the clean behaviour: effect() is 0
    for nothing and positive for a component that matters, whatever the direction."""
    from circuits.engines.attribution import attribute_nodes
    from circuits.engines.patching import activation_patching
    from circuits.scores import Scores
    from circuits.tasks import build_task

    model = engine_models("gpt2")
    ps = build_task("ioi", model.tokenizer, n=8, seed=2)
    noise = activation_patching(model, ps, "z", direction="noise", progress=False)
    denoise = activation_patching(model, ps, "z", direction="denoise", progress=False)
    attr = attribute_nodes(model, ps)["heads"]
    assert torch.allclose(noise.effect(), 1 - noise.normalized())
    assert torch.allclose(denoise.effect(), denoise.normalized())
    gap = attr.baseline["clean"] - attr.baseline["corrupted"]
    assert attr.baseline["clean"] == pytest.approx(noise.baseline["clean"], abs=1e-4)
    assert torch.allclose(attr.effect(), attr.values / gap)
    top = int(noise.effect().abs().flatten().argmax())
    assert float(attr.effect().flatten()[top]) * float(noise.effect().flatten()[top]) > 0  # same sign
    with pytest.raises(ValueError, match="direction"):
        Scores(torch.zeros(2), ("layer",)).effect()


def test_edge_scores_from_named_values_round_trip(engine_models):
    from circuits.engines.attribution import EdgeScores

    model = engine_models("llama")  # GQA: a head's k/v reader names its group's edge
    ps = build_task("ioi", model.tokenizer, n=3, seed=0)
    got = attribute_edges(model, ps)
    again = EdgeScores.from_named(got.graph, dict(got.ranked()), {"method": "copy"})
    torch.testing.assert_close(again.scores, got.scores * got.graph.mask)
    assert again.settings == {"method": "copy"} and again.ranked() == got.ranked()
    w = "a0.h0"
    r = next(x for x in got.graph.readers if x.startswith("a1.") and x.endswith("<k>"))
    one = EdgeScores.from_named(got.graph, {f"{w}->{r}": 2.5})
    assert one.ranked()[0] == (f"{w}->{r}", 2.5) and float(one.scores.abs().sum()) == 2.5
    with pytest.raises(ValueError, match="unknown reader"):
        EdgeScores.from_named(got.graph, {"a0.h0->a1.h9<q>": 1.0})


def test_activations_variant_in_chunks_of_writer_groups_gives_the_same_scores(engine_models, monkeypatch):
    """The activations variant integrates each writer group in its own rows; under a small memory budget
    the groups run a few per gradient pass (GPT-2 small at 5 steps took > 23 GB in one pass)."""
    from circuits.engines import attribution

    model = engine_models("gpt2")
    ps = build_task("ioi", model.tokenizer, n=4, seed=1)
    whole = attribute_edges(model, ps, method="eap-ig-activations", steps=3, per_position=True)
    graph = whole.graph
    n_groups = 1 + 2 * graph.n_layers
    assert attribution._groups_per_pass(model, ps, graph, n_groups) == n_groups  # tiny model: one pass
    assert attribution._groups_per_pass(model, ps, graph, n_groups, memory_budget=1) == 1
    monkeypatch.setattr(attribution, "_groups_per_pass", lambda *a, **k: 2)
    chunked = attribute_edges(model, ps, method="eap-ig-activations", steps=3, per_position=True)
    torch.testing.assert_close(chunked.scores, whole.scores, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(chunked.per_position, whole.per_position, atol=1e-5, rtol=1e-4)
    assert chunked.settings["completeness"]["gap"] == pytest.approx(whole.settings["completeness"]["gap"], abs=1e-5)
