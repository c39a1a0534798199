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
from circuits.engines.mib import area_under, exact_reference_curve, faithfulness_curve
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


def test_per_position_edge_circuits_agree_with_position_agnostic_ones_and_node_patching(engine_models):
    model = engine_models("gpt2")
    ps = build_task("ioi", model.tokenizer, n=12, seed=5)
    s2 = ps.positions["S2"]
    ps = ps.subset(s2 == s2[0])  # S2 at one absolute position, so a per-position mask can name it
    q, n_pos = int(s2[0]), ps.clean.shape[1]
    g = edge_graph(model)
    one = g.mask.clone()
    one[g.index("a0.h2", "a1.h1<q>")] = False
    everywhere = one[None].expand(n_pos, *one.shape).clone()  # the same circuit at every position
    at_s2 = g.mask[None].expand(n_pos, *g.mask.shape).clone()
    at_s2[q, g.writer_index["a0.h3"]] = False  # every edge out of a0.h3, at S2 only == the node patched at S2
    agnostic = evaluate_edge_circuits(model, ps, [g.mask, one])
    positional = evaluate_edge_circuits(model, ps, [everywhere, at_s2])
    torch.testing.assert_close(positional[0], agnostic[1], atol=1e-5, rtol=1e-5)
    node = evaluate_ablated(model, ps, [[(Node("head", 0, 3), "at:S2")]], ablation=Ablation("corrupted"))
    torch.testing.assert_close(positional[1], node[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(positional[1], agnostic[0], atol=1e-3)  # patching at S2 moves the metric
    with pytest.raises(ValueError, match="per token position"):
        evaluate_edge_circuits(model, ps, [g.mask[None].expand(n_pos + 1, *g.mask.shape)])
    with pytest.raises(ValueError, match="all be"):
        evaluate_edge_circuits(model, ps, [g.mask, everywhere])


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


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_exact_reference_finds_the_planted_circuit_and_bounds_the_attribution_curves(planted, keep):
    model, ps = planted
    ref = exact_reference_curve(model, ps, keep=keep, progress=False)
    g = edge_graph(model)
    small = ref.settings["smallest"]
    assert set(small["edges"]) == PLANTED_EDGES and small["faithfulness"] == pytest.approx(1.0, abs=1e-4)
    path = ref.settings["path"]
    assert path[0] == [g.n_edges, pytest.approx(1.0)] and path[-1] == [0, pytest.approx(0.0)]
    assert [n for n, _ in path] == sorted((n for n, _ in path), reverse=True)
    for n_req, n_kept, f in zip(ref.n_edges_requested, ref.n_edges_kept, ref.faithfulness):
        assert n_kept <= n_req
        assert f == pytest.approx(1.0, abs=1e-4) if n_req >= 3 else abs(f - 1) > 0.5  # 3 planted edges
    # attribution curves of this model are read against it: none is closer to 1 at any size
    cur = faithfulness_curve(model, ps, attribute_edges(model, ps, method="eap", steps=1))
    assert all(abs(1 - r) <= abs(1 - c) + 1e-4 for r, c in zip(ref.faithfulness, cur.faithfulness))
    assert ref.settings["evaluations"] < 3 * g.n_edges / (1 - keep)
    with pytest.raises(ValueError, match="keep"):
        exact_reference_curve(model, ps, keep=1.0)


def test_a_per_position_curve_finds_the_planted_edges_at_their_positions(planted):
    model, ps = planted
    s = attribute_edges(model, ps, method="eap-ig-inputs", steps=10, per_position=True)
    n_pos, total = ps.clean.shape[1], ps.clean.shape[1] * s.graph.n_edges
    cur = faithfulness_curve(model, ps, s, per_position=True, percentages=[2.05 / total, 3.05 / total, 1.0])
    assert cur.n_edges_kept == [2, 3, total] and cur.total_edges == n_pos * s.graph.n_edges
    # PREV's value, its key at SRC, and the induction head's output at END: three (edge, position) pairs
    assert cur.faithfulness[0] == pytest.approx(0.0, abs=1e-4) and cur.faithfulness[1] == pytest.approx(1.0, abs=1e-4)
    assert cur.faithfulness[2] == pytest.approx(1.0, abs=1e-5) and cur.settings["per_position"]
    assert cur.settings["distinct_edges"] == [2, 3, s.graph.n_edges] and cur.settings["positions"] == n_pos
    with pytest.raises(ValueError, match="position-resolved"):
        faithfulness_curve(model, ps, attribute_edges(model, ps, method="eap"), per_position=True)


def test_position_node_verification_is_exact_patching_at_the_position(planted):
    from circuits.engines.attribution import verify_position_nodes

    model, ps = planted
    s = attribute_edges(model, ps, method="eap-ig-inputs", steps=10, per_position=True)
    v = verify_position_nodes(model, ps, s, 3)
    top2 = {(r["node"], r["position"]) for r in v["checked"][:2]}
    assert top2 == {("a0.h0", 4), ("a1.h0", 10)}  # the previous-token head at SRC, the induction head at END
    full = metrics.logit_diff(model(ps.clean), ps).item()
    for row in v["checked"][:2]:  # the exact effect is the node patched at that position with its corrupted value
        name = "SRC" if row["position"] == 4 else "END"
        node = evaluate_ablated(model, ps, [[(Node("head", int(row["node"][1]), int(row["node"][4])), f"at:{name}")]],
                                ablation=Ablation("corrupted"))
        assert row["exact"] == pytest.approx(full - node[0].mean().item(), abs=1e-4)
    assert all(r["exact"] > 1 and r not in v["flagged"] for r in v["checked"][:2])
    with pytest.raises(ValueError, match="position-resolved"):
        verify_position_nodes(model, ps, attribute_edges(model, ps, method="eap"), 3)


def test_agreement_reports_the_methods_own_node_scores_next_to_first_order_node_attribution(planted):
    from circuits.engines.agreement import agreement_report

    model, ps = planted
    rep = agreement_report(model, ps, method="eap-ig-inputs", steps=10, strict=False)
    s = attribute_edges(model, ps, method="eap-ig-inputs", steps=10)
    mine = rep.node_from_edges
    assert mine.names == rep.node.names and mine.exact == rep.node.exact
    for name, a in zip(mine.names, mine.attribution):
        assert a == pytest.approx(float(s.scores[s.graph.writer_index[name]].sum()), abs=1e-4)
    # first-order node attribution misses the saturated upstream head; EAP-IG's own sums do not
    i, exact = mine.names.index("a0.h0"), mine.exact[mine.names.index("a0.h0")]
    assert exact > 10 and abs(rep.node.attribution[i]) < 0.01 * exact
    assert mine.attribution[i] == pytest.approx(exact, rel=0.1)
    assert mine.sign_disagreements_top == [] and mine.pearson > 0.99 > rep.node.pearson
    assert type(rep).from_dict(rep.to_dict()) == rep
