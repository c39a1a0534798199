"""The shared forward pass: END logits equal a plain full forward on every architecture."""

from __future__ import annotations

import pytest
import torch

from circuits.engines import fastpaths, forward
from circuits.engines.replay import BlockReplay
from circuits.engines.sites import hook_at
from tests.conftest import ARCHS


@pytest.mark.parametrize("arch", ARCHS)
def test_end_logits_match_full_forward(arch, loaded_models):
    """The END-only last MLP (and restricted unembedding) leaves END logits exact, with padding."""
    from circuits.tasks import build_task

    model = loaded_models(arch)
    ps = build_task("colored_objects", model.tokenizer, n=6, seed=0, n_objects=[2, 3, 4])
    assert len(set(ps.lengths.tolist())) > 1  # END differs between rows
    end = ps.positions["END"]
    with torch.no_grad():
        full = model(ps.clean, return_type="logits")[torch.arange(len(ps)), end]
        ours = forward.end_logits(model, ps.clean, end)
    assert fastpaths.report(model)["end_only_last_mlp"]["on"] is True, fastpaths.report(model)
    torch.testing.assert_close(ours, full, atol=1e-5, rtol=1e-5)
    # replayed from a middle layer, tiled twice: the same numbers
    replay = BlockReplay(model, ps.clean, end)
    assert replay.ok
    torch.testing.assert_close(replay.end_logits_from(1, 2), full.repeat(2, 1), atol=1e-5, rtol=1e-5)


def test_end_only_mlp_stands_aside_for_hooks_on_the_last_mlp(loaded_models):
    """A hook that reads the last MLP's output sees every position, not zeros."""
    from circuits.tasks import build_task

    model = loaded_models("gpt2")
    ps = build_task("ioi", model.tokenizer, n=4, seed=0)
    last = model.cfg.n_layers - 1
    seen = {}

    def grab(x, hook):
        seen["mlp_out"] = x.detach().clone()

    _, cache = model.run_with_cache(ps.clean)
    forward.end_logits(model, ps.clean, ps.positions["END"], [(hook_at("mlp_out", last), grab)])
    torch.testing.assert_close(seen["mlp_out"], cache[hook_at("mlp_out", last)])
    assert seen["mlp_out"][:, 0].abs().sum() > 0


def test_first_replay_on_a_fresh_model_records_each_block_once(loaded_models):
    """The once-per-model checks run their own forwards; they must not leak into the recording."""
    from circuits.tasks import build_task

    model = loaded_models("llama")
    fastpaths.forget(model)
    ps = build_task("ioi", model.tokenizer, n=3, seed=1)
    replay = BlockReplay(model, ps.clean, ps.positions["END"])
    assert len(replay.calls) == model.cfg.n_layers
    record = fastpaths.report(model)
    assert replay.ok and record["block_replay"]["on"] is True and record["end_only_last_mlp"]["on"] is True
