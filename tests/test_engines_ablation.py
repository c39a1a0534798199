"""Ablations (zero, mean, resample, CAMA) against hand-computed references, and
circuit evaluation (circuit-only, complement, faithfulness, completeness, minimality)."""

from __future__ import annotations

import pytest
import torch

from circuits.engines.ablation import Ablation
from circuits.engines.faithfulness import completeness, evaluate_ablated, faithfulness, minimality
from circuits.names import Node, parse_node
from circuits.tasks import build_task
from tests.reference_engines import metric_full

Z = "blocks.{}.attn.hook_z"


def _run_replacing(model, ps, name, head, value):
    def hook(act, hook):
        act = act.clone()
        if head is None:
            act[:] = value
        else:
            act[:, :, head] = value[:, :, head] if value.ndim == act.ndim else value
        return act
    return metric_full(model, ps.clean, ps, [(name, hook)])


@pytest.fixture(scope="module")
def setup(engine_models):
    model = engine_models("llama")
    ps = build_task("ioi", model.tokenizer, n=8, seed=4)
    _, ref_cache = model.run_with_cache(ps.corrupted)
    return model, ps, ref_cache


def test_zero_and_mean_ablation_match_hand_computed(setup):
    model, ps, ref_cache = setup
    got = evaluate_ablated(model, ps, [[(Node("head", 1, 2), "all")], [(Node("mlp", 0), "all")]],
                           ablation=Ablation("zero"))
    zero = torch.zeros_like(ref_cache[Z.format(1)])
    torch.testing.assert_close(got[0], _run_replacing(model, ps, Z.format(1), 2, zero), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], _run_replacing(model, ps, "blocks.0.hook_mlp_out", None, 0.0),
                               atol=1e-5, rtol=1e-5)
    # mean over the corrupted prompts' real tokens, per position
    acts, mask = ref_cache[Z.format(0)], ps.attention_mask
    mean = torch.stack([acts[mask[:, p], p].mean(0) if mask[:, p].any() else acts[mask].mean(0)
                        for p in range(acts.shape[1])])
    got = evaluate_ablated(model, ps, [[(Node("head", 0, 1), "all")]], ablation=Ablation("mean"))
    ref = _run_replacing(model, ps, Z.format(0), 1, mean[None].expand_as(acts))
    torch.testing.assert_close(got[0], ref, atol=1e-5, rtol=1e-5)
    flat = evaluate_ablated(model, ps, [[(Node("head", 0, 1), "all")]], ablation=Ablation("mean", per_position=False))
    ref = _run_replacing(model, ps, Z.format(0), 1, acts[mask].mean(0).expand_as(acts).clone())
    torch.testing.assert_close(flat[0], ref, atol=1e-5, rtol=1e-5)


def test_group_means_and_resample(setup):
    model, ps, ref_cache = setup
    acts = ref_cache[Z.format(1)]
    by_group = torch.zeros_like(acts)
    for g in ps.groups.unique():
        rows = ps.groups == g
        by_group[rows] = acts[rows].mean(0)  # a template group shares one length
    got = evaluate_ablated(model, ps, [[(Node("head", 1, 0), "all")]], ablation=Ablation("mean", by_group=True))
    torch.testing.assert_close(got[0], _run_replacing(model, ps, Z.format(1), 0, by_group), atol=1e-5, rtol=1e-5)
    one = ps.subset([3])
    got = evaluate_ablated(model, ps.subset(ps.lengths == one.lengths[0]), [[(Node("head", 1, 0), "all")]],
                           ablation=Ablation("resample", reference=one))
    same = ps.subset(ps.lengths == one.lengths[0])
    ref = _run_replacing(model, same, Z.format(1), 0, ref_cache[Z.format(1)][3:4].expand(len(same), -1, -1, -1))
    torch.testing.assert_close(got[0], ref, atol=1e-5, rtol=1e-5)


def test_cama_matches_brute_force(setup):
    model, ps, _ = setup
    ref_ps = build_task("ioi", model.tokenizer, n=40, seed=9)
    _, c = model.run_with_cache(ref_ps.clean)
    acts, rt, rmask = c["blocks.1.hook_resid_pre"], ref_ps.clean, ref_ps.attention_mask
    glob = acts[rmask].mean(0)
    want = torch.zeros(len(ps), ps.clean.shape[1], acts.shape[-1])
    for i in range(len(ps)):
        for t in range(ps.clean.shape[1]):
            same = [j for j in range(len(ref_ps)) if t < rt.shape[1] and rmask[j, t] and rt[j, t] == ps.clean[i, t]]
            if same:
                want[i, t] = acts[same, t].mean(0)
            else:
                real = [j for j in range(len(ref_ps)) if t < rt.shape[1] and rmask[j, t]]
                want[i, t] = acts[real, t].mean(0) if real else glob
    got = evaluate_ablated(model, ps, [[(Node("resid", 1), "all")]],
                           ablation=Ablation("cama", reference=ref_ps, reference_tokens="clean"))
    ref = _run_replacing(model, ps, "blocks.1.hook_resid_pre", None, want)
    torch.testing.assert_close(got[0], ref, atol=1e-5, rtol=1e-5)


def test_faithfulness_extremes_and_positions(setup):
    model, ps, _ = setup
    heads = [f"a{layer}.h{h}" for layer in range(2) for h in range(4)]
    full = faithfulness(model, ps, heads)
    assert full.faithfulness == pytest.approx(1.0, abs=1e-5)
    assert full.complement == pytest.approx(full.empty, abs=1e-5)
    empty = faithfulness(model, ps, [])
    assert empty.faithfulness == pytest.approx(0.0, abs=1e-5)
    assert empty.complement == pytest.approx(empty.full, abs=1e-5)
    assert full.full != pytest.approx(full.empty, abs=1e-3)  # ablation changes the metric
    # a head kept only at END == every other head ablated everywhere and this one everywhere but END
    one = faithfulness(model, ps, ["a1.h3@END"])
    mean = Ablation("mean")
    manual = evaluate_ablated(model, ps, [[(parse_node(n), "all") for n in heads if n != "a1.h3"] +
                                          [(parse_node("a1.h3"), "except:END")]], ablation=mean)
    assert one.circuit == pytest.approx(float(manual.mean()), abs=1e-5)
    assert one.to_dict()["settings"]["circuit"] == ["a1.h3@END"]
    lo, hi = one.ci["faithfulness"]
    assert lo <= hi


def test_completeness_minimality_records(setup):
    model, ps, _ = setup
    circ = ["a0.h1", "a1.h2", "a1.h3"]
    comp = completeness(model, ps, circ, classes={"late": ["a1.h2", "a1.h3"]}, n_random=3)
    assert {r.kind for r in comp.checks} >= {"empty", "class:late", "random"}
    f = faithfulness(model, ps, circ)
    empty_k = next(r for r in comp.checks if r.kind == "empty")
    assert empty_k.F_C_minus_K == pytest.approx(f.circuit, abs=1e-5)
    assert empty_k.F_M_minus_K == pytest.approx(f.full, abs=1e-5)
    assert comp.worst.gap == max(r.gap for r in comp.checks)
    mini = minimality(model, ps, circ, n_random=2)
    assert set(mini.nodes) == set(circ) and all(v.score >= 0 for v in mini.nodes.values())
    # plain data: JSON out and back in
    assert type(comp).from_dict(comp.to_dict()) == comp
    assert type(mini).from_dict(mini.to_dict()) == mini
    assert type(f).from_dict(f.to_dict()) == f


def test_ablation_errors(setup):
    model, ps, _ = setup
    with pytest.raises(ValueError, match="method"):
        Ablation("gaussian")
    with pytest.raises(ValueError, match="bad node name"):
        faithfulness(model, ps, ["head3"])
    with pytest.raises(ValueError, match="head 9 out of range"):
        faithfulness(model, ps, ["a1.h9"])
    with pytest.raises(ValueError, match="not in the universe"):
        faithfulness(model, ps, ["m1"], universe="heads")
    with pytest.raises(ValueError, match="not named"):
        faithfulness(model, ps, ["a1.h1@NOWHERE"])


def test_corrupted_ablation_is_noising_patching(setup):
    from circuits.engines.patching import activation_patching

    model, ps, _ = setup
    got = evaluate_ablated(model, ps, [[(Node("head", 1, 2), "all")], [(Node("mlp", 0), "at:END")]],
                           ablation=Ablation("corrupted"))
    heads = activation_patching(model, ps, "z", direction="noise", progress=False)
    mlps = activation_patching(model, ps, "mlp_out", direction="noise", positions=["END"], progress=False)
    torch.testing.assert_close(got[0], heads.per_example[1, 2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], mlps.per_example[0, 0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="own corrupted pair"):
        evaluate_ablated(model, ps, [[(Node("head", 1, 2), "all")]],
                         ablation=Ablation("corrupted", reference=ps.subset([0, 1])))


def test_the_universe_follows_the_circuit(setup):
    """A circuit holding an MLP is evaluated against every head and MLP; a head-only one against the heads."""
    model, ps, _ = setup
    f = faithfulness(model, ps, ["m1", "a1.h0"])
    assert f.settings["universe"] == "heads+mlps"
    assert f.faithfulness == pytest.approx(faithfulness(model, ps, ["m1", "a1.h0"], universe="heads+mlps").faithfulness)
    assert faithfulness(model, ps, ["a1.h0"]).settings["universe"] == "heads"
