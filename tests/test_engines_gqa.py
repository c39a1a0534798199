"""Grouped-query attention (Llama and Qwen2 shapes, 4 query / 2 KV heads) through every engine."""

from __future__ import annotations

import pytest
import torch

from circuits.engines import detectors
from circuits.engines.af1 import all_for_one, knockout_curve
from circuits.engines.faithfulness import faithfulness
from circuits.engines.patching import activation_patching
from circuits.engines.path_patching import path_patching
from circuits.tasks import build_task


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gqa_models_run_every_engine(arch, engine_models):
    model = engine_models(arch)
    assert model.cfg.n_key_value_heads == 2 and model.cfg.n_heads == 4
    ps = build_task("ioi", model.tokenizer, n=6, seed=1)
    k = activation_patching(model, ps, "k", progress=False)
    assert k.shape == (2, 2)  # KV groups, not query heads
    pp = path_patching(model, ps, ["a1.h3<v>"], progress=False)
    assert torch.isfinite(pp.values[0]).all()
    f = faithfulness(model, ps, [f"a{layer}.h{h}" for layer in range(2) for h in range(4)])
    assert f.faithfulness == pytest.approx(1.0, abs=1e-4) and f.complement == pytest.approx(f.empty, abs=1e-5)
    g = faithfulness(model, ps, ["a1.h0", "a1.h1"], universe="heads+mlps")
    assert abs(g.full - g.empty) > 1e-3 and g.circuit != pytest.approx(g.full, abs=1e-4)
    curve = knockout_curve(model, ps)
    assert curve.layers == [-1, 0, 1] and all(0 <= a <= 1 for a in curve.accuracy)
    res = all_for_one(model, ps, tau=0.5, prune_heads=True) if curve.accuracy[0] > 0 else None
    if res is not None:
        assert 0 <= res.wait < 2 and res.stage1[0]["faithfulness"] == pytest.approx(1.0, abs=1e-6)
    for fn in (detectors.previous_token_scores, detectors.induction_scores, detectors.duplicate_token_scores,
               detectors.sink_scores):
        s = fn(model, ps.clean, ps.lengths).values
        assert s.shape == (2, 4) and (s >= -1e-6).all() and (s <= 1 + 1e-6).all()
    copy = detectors.copy_scores(model, ps, ["IO", "S1"])
    # heads of one KV group share W_V but not W_O: the OV circuits differ per query head
    assert copy.values.shape == (2, 4)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gqa_copy_score_uses_the_group_value_weights(arch, engine_models):
    """Reference: OV through the HF modules themselves (v_proj of the head's KV group, o_proj columns)."""
    model = engine_models(arch)
    ps = build_task("ioi", model.tokenizer, n=6, seed=1)
    hf = model.original_model if hasattr(model, "original_model") else None
    if hf is None:
        pytest.skip("bridge does not expose the HF model")
    _, cache = model.run_with_cache(ps.clean)
    rows = torch.arange(len(ps))
    x = cache["blocks.0.hook_resid_post"][rows, ps.positions["IO"]]
    layer = hf.model.layers[1]
    d_head = model.cfg.d_head
    for h in range(4):
        g = h // 2
        v = layer.self_attn.v_proj(layer.input_layernorm(x))[:, g * d_head:(g + 1) * d_head]
        o = v @ layer.self_attn.o_proj.weight[:, h * d_head:(h + 1) * d_head].T
        logits = hf.lm_head(hf.model.norm(o))
        want = (logits.topk(5, -1).indices == ps.clean[rows, ps.positions["IO"]][:, None]).any(-1).float().mean()
        got = detectors.copy_scores(model, ps, ["IO"]).values[1, h]
        assert float(got) == pytest.approx(float(want))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gqa_models_run_attribution_and_discovery(arch, engine_models):
    from circuits import metrics
    from circuits.engines.agreement import agreement_report
    from circuits.engines.attribution import attribute_edges
    from circuits.engines.discovery import acdc, select_topn
    from circuits.engines.edge_patching import evaluate_edge_circuits
    from circuits.engines.mib import faithfulness_curve

    model = engine_models(arch)
    ps = build_task("ioi", model.tokenizer, n=5, seed=2)
    for method in ("eap", "eap-ig-inputs", "eap-ig-activations"):
        s = attribute_edges(model, ps, method=method, steps=2)
        assert s.graph.gqa and torch.isfinite(s.scores).all()
    g = s.graph
    vals = evaluate_edge_circuits(model, ps, [g.mask, torch.zeros_like(g.mask)])
    torch.testing.assert_close(vals[0], metrics.logit_diff(model(ps.clean), ps, reduce="none"), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vals[1], metrics.logit_diff(model(ps.corrupted), ps, reduce="none"),
                               atol=1e-5, rtol=1e-5)
    curve = faithfulness_curve(model, ps, s)
    assert curve.faithfulness[-1] == pytest.approx(1.0, abs=1e-4)
    circ = acdc(model, ps, 0.01, candidates=select_topn(g, s.scores, 15, do_prune=False), progress=False)
    assert all("->" in e for e in circ.edges)
    rep = agreement_report(model, ps, steps=2, strict=False, max_edges=40)
    assert len(rep.edge.names) == 40 and -1 <= rep.edge.pearson <= 1
    assert type(rep).from_dict(rep.to_dict()) == rep


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_one_naming_under_gqa_heads_and_groups_name_the_same_patch(arch, engine_models):
    """A head's key reader and its KV group's reader are the same edge and the same path-patching receiver."""
    from circuits.engines.edges import edge_graph

    model = engine_models(arch)
    g = edge_graph(model)
    assert g.index("a0.h1", "a1.h2<k>") == g.index("a0.h1", "a1.g1<k>") == g.index("a0.h1", "a1.h3<k>")
    assert g.index("m0", "a1.h0<v>") == g.index("m0", "a1.g0<v>")
    assert g.canonical_reader("a1.h2<q>") == "a1.h2<q>"
    ps = build_task("ioi", model.tokenizer, n=6, seed=1)
    by_group = path_patching(model, ps, ["a1.g1<k>"], progress=False)
    by_head = path_patching(model, ps, ["a1.h3<k>"], progress=False)
    assert torch.allclose(by_group.values, by_head.values, atol=1e-6)
    assert by_group.settings["kv_groups_patched"] == by_head.settings["kv_groups_patched"] == ["a1.g1<k>"]
    assert path_patching(model, ps, ["a1.h3<q>"], progress=False).settings["kv_groups_patched"] == []
