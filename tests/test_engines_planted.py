"""Planted circuits: every engine must single out exactly the hand-set components
(tests/planted.py: previous-token head a0.h0 -> induction/copy head a1.h0, six distractors)."""

from __future__ import annotations

import pytest
import torch

from circuits import metrics
from circuits.engines import detectors
from circuits.engines.af1 import all_for_one, knockout_curve
from circuits.engines.faithfulness import faithfulness
from circuits.engines.interventions import run_variants
from circuits.engines.patching import activation_patching
from circuits.engines.path_patching import path_patching
from circuits.engines.peeking import allowed_mask
from tests.planted import planted_prompts, write_planted_model

PLANTED = {(0, 0), (1, 0)}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from circuits.models import load_model

    model = load_model(write_planted_model(tmp_path_factory.mktemp("planted")))
    ps = planted_prompts(model.tokenizer, n=12)
    return model, ps


def _effect_heads(effect: torch.Tensor, thresh: float) -> set[tuple[int, int]]:
    return {(int(a), int(b)) for a, b in torch.nonzero(effect.abs() > thresh)}


def test_planted_model_solves_its_task(planted):
    model, ps = planted
    logits = model(ps.clean)
    assert metrics.accuracy(logits, ps) == 1.0
    assert metrics.logit_diff(logits, ps) > 10 > metrics.logit_diff(model(ps.corrupted), ps)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_head_patching_finds_exactly_the_planted_heads(planted, direction):
    model, ps = planted
    sc = activation_patching(model, ps, "z", direction=direction, progress=False)
    norm = sc.normalized()
    effect = norm if direction == "denoise" else 1 - norm
    assert _effect_heads(effect, 0.5) == PLANTED
    assert effect[torch.tensor([[(a, b) not in PLANTED for b in range(4)] for a in range(2)])].abs().max() < 1e-3
    mlp = activation_patching(model, ps, "mlp_out", direction=direction, progress=False)
    assert mlp.values.sub(sc.baseline["corrupted" if direction == "denoise" else "clean"]).abs().max() < 1e-4
    by_pos = activation_patching(model, ps, "z", direction=direction, positions=["PREV", "SRC", "END"],
                                 progress=False).normalized()
    eff = by_pos if direction == "denoise" else 1 - by_pos
    # the previous-token head matters at SRC (it writes x3 there), the induction head at END
    assert eff[0, 1, 0] > 0.99 and eff[1, 2, 0] > 0.99
    assert eff.abs().sum() == pytest.approx(2.0, abs=1e-2)


def test_path_patching_separates_direct_and_composed_paths(planted):
    model, ps = planted
    to_logits = path_patching(model, ps, ["logits"], direction="denoise", progress=False).normalized()
    assert _effect_heads(to_logits, 0.5) == {(1, 0)}  # the previous-token head has no direct path
    to_keys = path_patching(model, ps, ["a1.h0<k>"], direction="denoise", progress=False).normalized()
    assert _effect_heads(to_keys, 0.5) == {(0, 0)}
    to_queries = path_patching(model, ps, ["a1.h0<q>"], direction="denoise", progress=False).normalized()
    assert _effect_heads(to_queries, 0.01) == set()


def test_circuit_only_and_complement(planted):
    model, ps = planted
    both = faithfulness(model, ps, ["a0.h0", "a1.h0"], universe="heads+mlps")
    assert both.faithfulness == pytest.approx(1.0, abs=1e-3)
    assert both.complement_faithfulness == pytest.approx(0.0, abs=0.05)
    for half in (["a0.h0"], ["a1.h0"]):
        assert faithfulness(model, ps, half).faithfulness < 0.1
    distractors = [f"a{layer}.h{h}" for layer in range(2) for h in range(1, 4)]
    assert faithfulness(model, ps, distractors).complement_faithfulness == pytest.approx(1.0, abs=1e-3)


def test_detectors_name_the_planted_roles(planted):
    model, ps = planted
    prev = detectors.previous_token_scores(model, ps.clean).values
    ind = detectors.induction_scores(model, ps.clean).values
    assert prev.argmax() == 0 and prev[0, 0] > 0.99
    assert ind.flatten().argmax() == 4 and ind[1, 0] > 0.99
    copy = detectors.copy_scores(model, ps, positions=["SRC"], top_k=1).values
    assert copy[1, 0] == 1.0 and copy.flatten()[torch.arange(8) != 4].max() == 0.0
    sink = detectors.sink_scores(model, ps.clean).values
    n = ps.clean.shape[1]
    assert sink[0, 0] == pytest.approx(1 / (n - 1), abs=1e-3)  # only query 1 reads BOS (its previous token)
    uniform = sum(1 / (q + 1) for q in range(1, n)) / (n - 1)  # distractors attend uniformly
    assert sink[0, 1] == pytest.approx(uniform, abs=1e-3)
    toks = [ps.clean[i] for i in range(4)]
    ret = detectors.retrieval_scores(model, toks, [(1, 8)] * 4, n_steps=3).values
    assert ret.flatten().argmax() == 4 and ret[1, 0] > 0
    for fn in (detectors.previous_token_scores, detectors.induction_scores, detectors.duplicate_token_scores,
               detectors.sink_scores):  # a PromptSet is read as its clean prompts and their lengths
        assert torch.equal(fn(model, ps).values, fn(model, ps.clean, ps.lengths).values)


def test_peeking_masks_and_knockouts(planted):
    model, ps = planted
    m = allowed_mask(ps, "transfer", bos=False)
    end = int(ps.positions["END"][0])
    assert m[0, end].all() and m[0, 3].sum() == 1 and m[0, 3, 3]
    curve = knockout_curve(model, ps, bos=False)
    acc = dict(zip(curve.layers, curve.accuracy))
    assert acc[-1] == 1.0 and acc[0] == 1.0 and acc[1] == 0.0  # END's reads matter only in layer 1
    # self-peeking everywhere in layer 0 removes the previous-token information
    logits = run_variants(model, ps.clean, ps.positions["END"], [[]], schedules=[{0: "self"}], ps=ps, bos=False)
    assert metrics.accuracy(logits[0], ps) == 0.0
    per_head = run_variants(model, ps.clean, ps.positions["END"], [[], []], ps=ps, bos=False,
                            schedules=[{0: {1: "self", 2: "self"}}, {0: {0: "self"}}])
    assert metrics.accuracy(per_head[0], ps) == 1.0 and metrics.accuracy(per_head[1], ps) == 0.0
    ref = planted_prompts(model.tokenizer, n=400, seed=1)
    res = all_for_one(model, ps, tau=0.9, bos=False, reference=ref)
    assert res.stage1[0]["faithfulness"] == pytest.approx(1.0)  # CAMA of embeddings is the identity
    assert res.stage1[1]["faithfulness"] < 0.5  # previous-token information moved between tokens in layer 0
    assert res.wait == 0 and res.wait_trivial and not res.tau_met["wait"]
    # the planted task needs every token to read its predecessor in layer 0, which the paper's transfer
    # forbids (non-last tokens self-peek): no transfer length reaches tau, and the result says so
    assert not res.tau_met["transfer"] and any("not an AF1 subgraph" in w for w in res.warnings)
    assert res.faithfulness == max(r["faithfulness"] for r in res.stage2 if r["transfer"] > 0)
    assert len(res.per_example["af1"]) == len(ps) and type(res).from_dict(res.to_dict()) == res
    # the variant in which non-last tokens read normally: END must read in layer 1 (the induction head)
    alt = all_for_one(model, ps, tau=0.9, bos=False, reference=ref, others="full", prune_heads=False)
    assert alt.tau_met["transfer"] and alt.transfer == 2 and alt.faithfulness == pytest.approx(1.0)
    assert alt.ci["faithfulness"] == pytest.approx([1.0, 1.0])


def test_peeking_errors(planted):
    model, ps = planted
    with pytest.raises(ValueError, match="peeking mode"):
        allowed_mask(ps, "sideways")
    with pytest.raises(ValueError, match="layers"):
        run_variants(model, ps.clean, ps.positions["END"], [[]], schedules=[{7: "self"}], ps=ps)
    with pytest.raises(ValueError, match="heads"):
        run_variants(model, ps.clean, ps.positions["END"], [[]], schedules=[{0: {9: "self"}}], ps=ps)
