"""Edge-level evaluation, discovery and MIB metrics: planted edges recovered, exact identities
between engines, CPR/CMD as MIB computes them."""

from __future__ import annotations

import pytest
import torch

from circuits import metrics
from circuits.engines.ablation import Ablation
from circuits.engines.attribution import attribute_edges
from circuits.engines.discovery import (
    acdc,
    bootstrap_stability,
    circuit_from_mask,
    circuit_mask,
    jaccard,
    prune,
    select_greedy,
    select_threshold,
    select_topn,
)
from circuits.engines.edge_patching import evaluate_edge_circuits
from circuits.engines.edges import edge_graph
from circuits.engines.faithfulness import evaluate_ablated
from circuits.engines.mib import area_under, faithfulness_curve
from circuits.engines.path_patching import path_patching
from circuits.names import Node
from circuits.tasks import build_task
from tests.planted import planted_prompts, write_planted_model

# what separates the planted model's clean and corrupted prompts (see tests/planted.py)
PLANTED_EDGES = {"input->a0.h0<v>", "a0.h0->a1.h0<k>", "a1.h0->logits"}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from circuits.models import load_model

    model = load_model(write_planted_model(tmp_path_factory.mktemp("planted-d")))
    return model, planted_prompts(model.tokenizer, n=12)


def _prf(found: set[str], truth: set[str]) -> tuple[float, float]:
    tp = len(found & truth)
    return tp / max(1, len(found)), tp / len(truth)


@pytest.mark.parametrize("method", ["eap-ig-inputs", "eap-ig-activations"])
def test_eap_ig_top_edges_are_the_planted_edges(planted, method):
    model, ps = planted
    ranked = attribute_edges(model, ps, method=method, steps=10).ranked()
    top = {name for name, _ in ranked[:3]}
    assert _prf(top, PLANTED_EDGES) == (1.0, 1.0)
    assert abs(ranked[3][1]) < 0.01 * abs(ranked[2][1])  # a clear gap to the rest


def test_plain_eap_misses_the_saturated_key_edge(planted):
    """Attention saturation: first-order EAP underrates the key edge; EAP-IG does not (AtP* failure mode)."""
    model, ps = planted
    eap = attribute_edges(model, ps)
    assert abs(eap.score("a0.h0", "a1.h0<k>")) < 0.01 * abs(eap.score("a1.h0", "logits"))


@pytest.mark.parametrize("objective,tau", [("kl", 0.05), ("logit_diff", 0.5)])
def test_acdc_recovers_the_planted_edges(planted, objective, tau):
    model, ps = planted
    circ = acdc(model, ps, tau, objective=objective, progress=False)
    assert _prf(set(circ.edges), PLANTED_EDGES) == (1.0, 1.0)
    assert circ.settings["log"] and len(circ.to_dict()["edges"]) == 3


def test_acdc_on_eap_preselected_edges(planted):
    model, ps = planted
    scores = attribute_edges(model, ps, method="eap-ig-inputs", steps=5)
    cand = select_topn(scores.graph, scores.scores, 20, do_prune=False)
    circ = acdc(model, ps, 0.05, candidates=cand, progress=False)
    assert set(circ.edges) == PLANTED_EDGES and circ.settings["candidates"] == 20


def test_edge_engine_agrees_with_path_patching_and_node_ablation(engine_models):
    model = engine_models("gpt2")
    ps = build_task("ioi", model.tokenizer, n=6, seed=5)
    g = edge_graph(model)
    one = g.mask.clone()
    one[g.index("a0.h2", "a1.h1<q>")] = False  # only this edge carries the corrupted value
    heads = g.mask.clone()
    heads[g.writer_index["a0.h3"]] = False  # every edge out of a0.h3 == ablating the node
    vals = evaluate_edge_circuits(model, ps, [g.mask, torch.zeros_like(g.mask), one, heads])
    pp = path_patching(model, ps, ["a1.h1<q>"], freeze_mlps=True, progress=False)
    torch.testing.assert_close(vals[2], pp.per_example[0, 2], atol=1e-5, rtol=1e-5)
    node = evaluate_ablated(model, ps, [[(Node("head", 0, 3), "all")]], ablation=Ablation("corrupted"))
    torch.testing.assert_close(vals[3], node[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vals[0], metrics.logit_diff(model(ps.clean), ps, reduce="none"), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vals[1], metrics.logit_diff(model(ps.corrupted), ps, reduce="none"),
                               atol=1e-5, rtol=1e-5)
    mean = evaluate_edge_circuits(model, ps, [torch.zeros_like(g.mask)], ablation="mean")
    assert not torch.allclose(mean[0], vals[1])


def test_selection_and_pruning(planted):
    model, ps = planted
    s = attribute_edges(model, ps, method="eap-ig-inputs", steps=5)
    g = s.graph
    top = select_topn(g, s.scores, 3)
    assert {f"{g.writers[w]}->{g.readers[r]}" for w, r in torch.nonzero(top)} == PLANTED_EDGES
    assert torch.equal(select_greedy(g, s.scores, 3), top)
    assert torch.equal(select_threshold(g, s.scores, 1.0), top)
    dangling = torch.zeros_like(g.mask)
    dangling[g.index("input", "a0.h1<q>")] = True  # a0.h1 feeds nothing: pruned away
    dangling[g.index("a1.h0", "logits")] = True  # a1.h0 is fed by nothing: pruned too
    assert prune(g, dangling).sum() == 0
    circ = circuit_from_mask(g, top, s.scores, method="test")
    assert torch.equal(circuit_mask(circ, g), top) and "a0.h0" in circ.nodes and circ.method == "test"
    assert all(circ.edges[e] == float(s.scores[g.index(*e.split("->"))]) for e in circ.edges)
    with pytest.raises(ValueError, match="n must be"):
        select_topn(g, s.scores, g.n_edges + 1)
    assert jaccard(top, top) == 1.0 and jaccard(top, torch.zeros_like(top)) == 0.0
    stab = bootstrap_stability(ps, lambda p: select_topn(g, attribute_edges(model, p, method="eap-ig-inputs",
                                                                           steps=3).scores, 3), n_boot=2)
    assert stab.mean == 1.0 and stab.jaccard == [1.0, 1.0]


def test_mib_area_matches_hand_computation():
    x = [0.001, 0.01, 0.1, 1.0]
    f = [0.0, 0.5, 1.0, 1.0]
    cpr, cmd = area_under(x, f)
    assert cpr == pytest.approx(0.009 * 0.25 + 0.09 * 0.75 + 0.9 * 1.0)
    assert cmd == pytest.approx(0.009 * 0.75 + 0.09 * 0.25)
    lcpr, _ = area_under(x, f, log_scale=True)
    import math
    step = math.log(10)
    assert lcpr == pytest.approx(step * (0.25 + 0.75 + 1.0))


def test_faithfulness_curve_on_planted_model(planted):
    model, ps = planted
    s = attribute_edges(model, ps, method="eap-ig-inputs", steps=5)
    cur = faithfulness_curve(model, ps, s)
    assert cur.faithfulness[-1] == pytest.approx(1.0, abs=1e-5)  # 100% of edges = the model
    kept3 = [i for i, k in enumerate(cur.n_edges_kept) if k >= 3]
    assert all(cur.faithfulness[i] == pytest.approx(1.0, abs=1e-3) for i in kept3)
    assert cur.cpr == pytest.approx(area_under(cur.percentages, cur.faithfulness)[0])
    assert 0 < cur.cmd < 0.1
    assert type(cur).from_dict(cur.to_dict()) == cur


def test_edge_engine_refuses_a_model_whose_queries_are_not_ln1_then_w_q(tmp_path, word_tokenizer):
    """Edge-level evaluation computes readers' inputs by hand; a q changed after W_Q (here by a
    hook, as QK-norm would) must be refused by name, not evaluated wrongly. (The check runs once per
    model, so the model is a fresh one.)"""
    from circuits.engines.sites import hook_at
    from circuits.models import load_model
    from tests.conftest import write_tiny_model

    model = load_model(write_tiny_model(tmp_path, "gpt2", word_tokenizer), device="cpu")
    ps = build_task("ioi", model.tokenizer, n=3, seed=0)
    g = edge_graph(model)
    with model.hooks(fwd_hooks=[(hook_at("q", 1), lambda q, hook: q * 1.5)]):
        with pytest.raises(ValueError, match="does not reproduce layer 1's hook_q"):
            evaluate_edge_circuits(model, ps, [g.mask])


def test_a_tau_sweep_gives_exactly_the_circuits_of_single_calls(planted):
    """Each tau of a sweep runs ACDC's own greedy pass; sharing forward passes and cached circuit
    states must not change a single decision."""
    model, ps = planted
    taus = [0.0, 0.01, 0.05, 0.2, 1.0, 5.0]
    sweep = acdc(model, ps, taus, progress=False)
    assert list(sweep) == taus
    for t in taus:
        single = acdc(model, ps, t, progress=False)
        assert set(sweep[t].edges) == set(single.edges), t
        assert sweep[t].settings["final_objective"] == pytest.approx(single.settings["final_objective"], abs=1e-6)
    # larger thresholds keep fewer edges here, and the shared passes evaluated fewer states than the taus' logs
    sizes = [len(sweep[t].edges) for t in taus]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
    assert sweep[taus[0]].settings["evaluations"] < sum(len(sweep[t].settings["log"]) for t in taus)


def test_a_relative_tau_is_a_fraction_of_the_objectives_range(planted):
    model, ps = planted
    c = acdc(model, ps, 0.05, objective="logit_diff", tau_relative=True, progress=False)
    s = c.settings
    assert s["tau_abs"] == pytest.approx(0.05 * abs(s["objective_empty"] - s["objective_full"]))
    assert set(c.edges) == set(acdc(model, ps, s["tau_abs"], objective="logit_diff", progress=False).edges)
