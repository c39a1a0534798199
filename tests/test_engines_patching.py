"""Activation patching: every site against a naive one-forward-per-cell reference
(1e-5) and against transformer-lens's own patching functions (1e-4)."""

from __future__ import annotations

import pytest
import torch
import transformer_lens.patching as tlp

from circuits import metrics
from circuits.engines.patching import activation_patching
from circuits.scores import Scores
from tests.conftest import ENGINE_ARCHS
from tests.reference_engines import naive_patch

HOOKS = {"resid_pre": "blocks.{}.hook_resid_pre", "resid_mid": "blocks.{}.hook_resid_mid",
         "resid_post": "blocks.{}.hook_resid_post", "attn_out": "blocks.{}.hook_attn_out",
         "mlp_out": "blocks.{}.hook_mlp_out", "z": "blocks.{}.attn.hook_z", "q": "blocks.{}.attn.hook_q",
         "k": "blocks.{}.attn.hook_k", "v": "blocks.{}.attn.hook_v", "pattern": "blocks.{}.attn.hook_pattern"}


@pytest.fixture(scope="module")
def ioi(engine_models):
    from circuits.tasks import build_task

    return lambda arch: build_task("ioi", engine_models(arch).tokenizer, n=6, seed=0)


def _naive(model, ps, site, positions, direction):
    """Reference values shaped like the engine's (layer[, pos][, head])."""
    n_layers = model.cfg.n_layers
    n_heads = None
    if site in ("z", "q", "pattern"):
        n_heads = model.cfg.n_heads
    elif site in ("k", "v"):
        n_heads = getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads
    pos_list = [None] if positions is None else positions
    cells = [(layer, p, h) for layer in range(n_layers) for p in pos_list
             for h in ([None] if n_heads is None else range(n_heads))]

    def index(cell, act):
        layer, p, h = cell
        idx = [slice(None)] * act.ndim
        head_dim = 1 if site == "pattern" else 2
        pos_dim = 2 if site == "pattern" else 1
        if h is not None:
            idx[head_dim] = h
        if p is not None:
            rows = torch.arange(len(ps))
            idx[0] = rows
            idx[pos_dim] = ps.positions[p]
        return tuple(idx)

    vals = naive_patch(model, ps, lambda c: HOOKS[site].format(c[0]), index, direction, cells)
    shape = [n_layers] + ([len(pos_list)] if positions is not None else []) + ([n_heads] if n_heads else [])
    return vals.mean(-1).reshape(shape)


@pytest.mark.parametrize("arch", ENGINE_ARCHS)
@pytest.mark.parametrize("site", list(HOOKS))
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_every_site_matches_naive_reference(arch, site, direction, engine_models, ioi):
    model, ps = engine_models(arch), ioi(arch)
    for positions in (None, ["S1", "S2", "END"]):
        got = activation_patching(model, ps, site, direction=direction, positions=positions, progress=False,
                                  memory_budget=2**20)  # small budget: several chunks
        ref = _naive(model, ps, site, positions, direction)
        torch.testing.assert_close(got.values, ref, atol=1e-5, rtol=1e-5)
    # the patch moves the metric: the test could fail
    assert (got.values - got.baseline["clean" if direction == "noise" else "corrupted"]).abs().max() > 1e-3


TL_FUNCS = {
    ("resid_pre", "each"): tlp.get_act_patch_resid_pre,
    ("resid_mid", "each"): tlp.get_act_patch_resid_mid,
    ("attn_out", "each"): tlp.get_act_patch_attn_out,
    ("mlp_out", "each"): tlp.get_act_patch_mlp_out,
    ("z", None): tlp.get_act_patch_attn_head_out_all_pos,
    ("z", "each"): tlp.get_act_patch_attn_head_out_by_pos,
    ("q", None): tlp.get_act_patch_attn_head_q_all_pos,
    ("k", None): tlp.get_act_patch_attn_head_k_all_pos,
    ("v", None): tlp.get_act_patch_attn_head_v_all_pos,
    ("q", "each"): tlp.get_act_patch_attn_head_q_by_pos,
    ("pattern", None): tlp.get_act_patch_attn_head_pattern_all_pos,
    ("pattern", "each"): tlp.get_act_patch_attn_head_pattern_by_pos,
}


@pytest.mark.parametrize("arch", ENGINE_ARCHS)
@pytest.mark.parametrize("site,positions", list(TL_FUNCS))
def test_matches_transformer_lens_patching(arch, site, positions, engine_models, ioi):
    model, ps = engine_models(arch), ioi(arch)
    if site == "pattern" and positions == "each":
        ps = ps.subset(ps.lengths == ps.lengths[0])  # TL's dest-pos patching indexes absolute positions
    _, clean_cache = model.run_with_cache(ps.clean)
    ref = TL_FUNCS[(site, positions)](model, ps.corrupted, clean_cache, lambda lg: metrics.logit_diff(lg, ps))
    got = activation_patching(model, ps, site, positions=positions, progress=False)
    vals = got.values
    if site == "pattern" and positions == "each":
        vals = vals.transpose(1, 2)  # ours: (layer, pos, head); TL: (layer, head, dest_pos)
    torch.testing.assert_close(vals, ref.to(vals.dtype), atol=1e-4, rtol=1e-4)


def test_scores_ci_and_roundtrip(engine_models, ioi, tmp_path):
    model, ps = engine_models("gpt2"), ioi("gpt2")
    sc = activation_patching(model, ps, "z", progress=False)
    lo, hi = sc.ci(n_boot=200)
    assert (lo <= sc.values + 1e-6).all() and (sc.values <= hi + 1e-6).all()
    assert (hi - lo).max() > 0
    assert sc.top(1)[0][1] == pytest.approx(float(sc.values.abs().max()) * (1 if sc.values.flatten()[
        sc.values.abs().flatten().argmax()] > 0 else -1))
    back = Scores.load(sc.save(tmp_path / "s.json"))
    torch.testing.assert_close(back.values, sc.values)
    assert back.settings["site"] == "z" and back.axes == ("layer", "head")
    norm = sc.normalized()
    assert norm.shape == sc.values.shape


def test_patching_errors(engine_models, ioi):
    model, ps = engine_models("llama"), ioi("llama")
    with pytest.raises(ValueError, match="unknown site"):
        activation_patching(model, ps, "attn_weights", progress=False)
    with pytest.raises(ValueError, match="head 7 out of range"):
        activation_patching(model, ps, "z", heads=[7], progress=False)
    with pytest.raises(ValueError, match="KV groups 0..1"):
        activation_patching(model, ps, "k", heads=[3], progress=False)
    with pytest.raises(ValueError, match="layer 5 out of range"):
        activation_patching(model, ps, "z", layers=[5], progress=False)
    with pytest.raises(ValueError, match="direction"):
        activation_patching(model, ps, "z", direction="sideways", progress=False)
    with pytest.raises(ValueError, match="not named"):
        activation_patching(model, ps, "z", positions=["XYZ"], progress=False)
    with pytest.raises(ValueError, match="has no heads"):
        activation_patching(model, ps, "mlp_out", heads=[0], progress=False)
