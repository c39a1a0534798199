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
@pytest.mark.parametrize("receivers", ["logits", [(1, 2, "q")], [(1, 0, "k"), (1, 3, "v")], [(1, 1, "q"), (1, 2, "k")],
                                       [(1, 0, "k"), (1, 3, "v"), (1, 3, "q")]])
def test_path_patching_matches_four_pass_reference(arch, freeze_mlps, receivers, engine_models):
    model = engine_models(arch)
    ps = build_task("ioi", model.tokenizer, n=5, seed=2)
    recv = ["logits"] if receivers == "logits" else receivers
    got = path_patching(model, ps, recv, freeze_mlps=freeze_mlps, progress=False, memory_budget=2**20)
    assert got.settings["direct_shortcut"] == freeze_mlps  # the linear shortcut is what is being tested
    if arch == "gpt2" and receivers != "logits":  # receivers in one layer: their outputs by hand
        assert got.settings["one_layer_shortcut"] == freeze_mlps
    last = 2 if receivers == "logits" else receivers[0][0]
    for layer in range(last):
        for head in range(model.cfg.n_heads):
            ref = naive_path_patch(model, ps, (layer, head), receivers, "noise", freeze_mlps)
            torch.testing.assert_close(got.per_example[layer, head], ref, atol=1e-5, rtol=1e-5)
    # senders with no path to the receivers' layer: the unpatched value
    if receivers != "logits":
        torch.testing.assert_close(got.values[last], torch.full((model.cfg.n_heads,), got.baseline["base"]))
    assert (got.values[0] - got.baseline["base"]).abs().max() > 1e-3
    assert torch.isfinite(wang_effect(got)).all()


@pytest.mark.parametrize("arch", ENGINE_ARCHS)
@pytest.mark.parametrize("freeze_mlps", [False, True])
@pytest.mark.parametrize("receivers", ["logits", [(1, 2, "q")], [(1, 0, "k"), (1, 3, "v")]])
def test_mlp_senders_match_the_four_pass_reference(arch, freeze_mlps, receivers, engine_models):
    """An MLP -> head (or -> logits) path, traced like a head's: the sender's output patched, all attention
    frozen; scores on one ``sender`` axis in the order given."""
    model = engine_models(arch)
    ps = build_task("ioi", model.tokenizer, n=5, seed=2)
    recv = ["logits"] if receivers == "logits" else receivers
    senders = ["m0", "a0.h1", "m1"]
    got = path_patching(model, ps, recv, senders=senders, freeze_mlps=freeze_mlps, progress=False)
    assert got.axes == ("sender",) and got.labels["sender"] == senders
    refs = [naive_path_patch(model, ps, ("mlp", 0), receivers, "noise", freeze_mlps),
            naive_path_patch(model, ps, (0, 1), receivers, "noise", freeze_mlps)]
    for i, ref in enumerate(refs):
        torch.testing.assert_close(got.per_example[i], ref, atol=1e-5, rtol=1e-5)
    if receivers == "logits":
        torch.testing.assert_close(got.per_example[2], naive_path_patch(model, ps, ("mlp", 1), receivers, "noise",
                                                                        freeze_mlps), atol=1e-5, rtol=1e-5)
    else:  # m1 comes after the layer-1 receivers: no path, the base value
        assert got.values[2] == pytest.approx(got.baseline["base"])
    assert abs(got.values[0] - got.baseline["base"]) > 1e-4
    at = path_patching(model, ps, recv, senders=["m0"], sender_position="END", progress=False)
    ref = naive_path_patch(model, ps, ("mlp", 0), receivers, "noise", False, sender_position="END")
    torch.testing.assert_close(at.per_example[0], ref, atol=1e-5, rtol=1e-5)


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
    with pytest.raises(ValueError, match="senders must be attention heads or MLPs"):
        path_patching(model, ps, ["logits"], senders=["r1"], progress=False)
    with pytest.raises(ValueError, match="sender_position"):
        path_patching(model, ps, ["logits"], senders=["a0.h1@END"], progress=False)
    assert parse_receiver("a3.h1<v>") == (3, 1, "v") and parse_receiver((2, 0, "k")) == (2, 0, "k")


@pytest.fixture(scope="module")
def four_layer_gpt2(engine_models, tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    from circuits.models import load_model

    tok = engine_models("gpt2").tokenizer
    torch.manual_seed(5)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=4, n_head=4, n_positions=64, initializer_range=0.3,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    path = tmp_path_factory.mktemp("gpt2-4layer")
    GPT2LMHeadModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return load_model(str(path))


def test_receivers_in_several_layers_with_senders_between(four_layer_gpt2):
    """Receivers in layers 1 and 3, senders in layers 0-2: a layer-2 sender has no path to the
    layer-1 receiver, which must keep its base input (the chunk restarts at layer 2)."""
    model = four_layer_gpt2
    ps = build_task("ioi", model.tokenizer, n=4, seed=1)
    receivers = [(1, 0, "q"), (3, 3, "k")]
    got = path_patching(model, ps, receivers, progress=False, memory_budget=2**18)
    for layer in (0, 1, 2):
        for head in range(model.cfg.n_heads):
            ref = naive_path_patch(model, ps, (layer, head), receivers)
            torch.testing.assert_close(got.per_example[layer, head], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layer", [2, 3])  # a middle layer (later blocks replayed) and the last (END only)
@pytest.mark.parametrize("positions", [(None, None), ("S2", "S2"), (None, "END")])
def test_one_layer_receivers_and_positions(four_layer_gpt2, layer, positions):
    """Receivers in one layer are computed by hand (their heads only); with sender and receiver
    positions, against the four literal passes. Padded prompts: END differs per row."""
    model = four_layer_gpt2
    ps = build_task("ioi", model.tokenizer, n=6, seed=1)
    s_pos, r_pos = positions
    receivers = [(layer, 0, "q"), (layer, 2, "v"), (layer, 3, "k")]
    got = path_patching(model, ps, receivers, freeze_mlps=True, sender_position=s_pos, receiver_position=r_pos,
                        progress=False, memory_budget=2**18)
    assert got.settings["direct_shortcut"] and got.settings["one_layer_shortcut"]
    for sender_layer in range(layer):
        for head in range(model.cfg.n_heads):
            ref = naive_path_patch(model, ps, (sender_layer, head), receivers, "noise", True, s_pos, r_pos)
            torch.testing.assert_close(got.per_example[sender_layer, head], ref, atol=1e-5, rtol=1e-5)
    assert (got.values[:layer] - got.baseline["base"]).abs().max() > 1e-3


def test_path_patching_parallel_attention(engine_models):
    """GPT-NeoX (attention and MLP in parallel, no resid_mid hook): the one-layer shortcut stands
    down and the generic passes give Wang et al.'s values."""
    model = engine_models("neox")
    ps = build_task("ioi", model.tokenizer, n=4, seed=2)
    receivers = [(1, 1, "q"), (1, 2, "v")]
    got = path_patching(model, ps, receivers, freeze_mlps=True, progress=False)
    assert not got.settings["one_layer_shortcut"]
    for head in range(model.cfg.n_heads):
        ref = naive_path_patch(model, ps, (0, head), receivers, "noise", True)
        torch.testing.assert_close(got.per_example[0, head], ref, atol=1e-5, rtol=1e-5)
