"""Path patching against Wang et al.'s four passes done literally, and against
transformer-lens's direct path patching."""

from __future__ import annotations

import pytest
import torch
import transformer_lens.patching as tlp

from circuits import metrics
from circuits.engines.path_patching import parse_receiver, path_patching, wang_effect
from circuits.tasks import build_task
from tests.conftest import ENGINE_ARCHS
from tests.reference_engines import naive_path_patch


@pytest.mark.parametrize("arch", ENGINE_ARCHS)
@pytest.mark.parametrize("freeze_mlps", [False, True])
@pytest.mark.parametrize("receivers", ["logits", [(1, 2, "q")], [(1, 0, "k"), (1, 3, "v")], [(1, 1, "q"), (1, 2, "k")]])
def test_path_patching_matches_four_pass_reference(arch, freeze_mlps, receivers, engine_models):
    model = engine_models(arch)
    ps = build_task("ioi", model.tokenizer, n=5, seed=2)
    recv = ["logits"] if receivers == "logits" else receivers
    got = path_patching(model, ps, recv, freeze_mlps=freeze_mlps, progress=False, memory_budget=2**20)
    assert got.settings["direct_shortcut"] == freeze_mlps  # the linear shortcut is what is being tested
    last = 2 if receivers == "logits" else 1
    for layer in range(last):
        for head in range(model.cfg.n_heads):
            ref = naive_path_patch(model, ps, (layer, head), receivers, "noise", freeze_mlps)
            torch.testing.assert_close(got.per_example[layer, head], ref, atol=1e-5, rtol=1e-5)
    # senders with no path to a layer-1 receiver: the unpatched value
    if receivers != "logits":
        torch.testing.assert_close(got.values[1], torch.full((model.cfg.n_heads,), got.baseline["base"]))
    assert (got.values[0] - got.baseline["base"]).abs().max() > 1e-3
    assert torch.isfinite(wang_effect(got)).all()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_direct_path_matches_transformer_lens(arch, engine_models):
    model = engine_models(arch)
    ps = build_task("ioi", model.tokenizer, n=5, seed=2)
    _, cc = model.run_with_cache(ps.clean)
    _, kc = model.run_with_cache(ps.corrupted)
    got = path_patching(model, ps, ["a1.h2<q>"], direction="denoise", freeze_mlps=True, progress=False)
    for head in range(model.cfg.n_heads):
        ref = tlp.get_act_patch_direct_path(model, ps.corrupted, cc, kc, lambda lg: metrics.logit_diff(lg, ps),
                                            0, head, "q", verbose=False)
        assert got.values[0, head].item() == pytest.approx(ref[1, 2].item(), abs=1e-4)


def test_path_patching_errors(engine_models):
    model = engine_models("gpt2")
    ps = build_task("ioi", model.tokenizer, n=3, seed=0)
    with pytest.raises(ValueError, match="bad receiver"):
        path_patching(model, ps, ["a1.h2"], progress=False)
    with pytest.raises(ValueError, match="head 9 out of range"):
        path_patching(model, ps, ["a1.h9<q>"], progress=False)
    with pytest.raises(ValueError, match="cannot be combined"):
        path_patching(model, ps, ["logits", "a1.h0<q>"], progress=False)
    with pytest.raises(ValueError, match="senders must be attention heads"):
        path_patching(model, ps, ["logits"], senders=["m0"], progress=False)
    assert parse_receiver("a3.h1<v>") == (3, 1, "v") and parse_receiver((2, 0, "k")) == (2, 0, "k")
