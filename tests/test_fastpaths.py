"""Every fast path is on, or off with a stated reason; the record is what results report."""

from __future__ import annotations

import logging

import pytest
import torch

from circuits.engines import fastpaths, forward
from circuits.engines.patching import activation_patching
from circuits.engines.path_patching import path_patching
from circuits.tasks import build_task
from tests.conftest import ENGINE_ARCHS, write_tiny_model


@pytest.fixture
def fresh_gpt2(tmp_path, word_tokenizer):
    """A model of its own: these tests change its record and its hooks."""
    from circuits.models import load_model

    return load_model(write_tiny_model(tmp_path, "gpt2", word_tokenizer, seed=4), device="cpu")


@pytest.mark.parametrize("arch", ENGINE_ARCHS)
def test_patching_reports_the_record_and_its_positions_saved(arch, engine_models):
    model = engine_models(arch)
    ps = build_task("colored_objects", model.tokenizer, n=4, seed=0)
    scores = activation_patching(model, ps, "z", progress=False)
    record = scores.settings["fast_paths"]
    assert record == fastpaths.report(model)
    for name in ("end_only_last_mlp", "block_replay", "prefix_skip"):
        assert record[name]["on"] is True, record[name]
        assert "max difference" in record[name]["reason"]
    assert scores.settings["positions_not_recomputed"] >= ps.clean.shape[1] // 2


def test_a_failed_check_turns_the_path_off_with_its_reason_and_a_warning(fresh_gpt2, caplog):
    """A last MLP that mixes positions cannot run at END alone: the check sees it, logs it,
    and END logits still equal a full forward."""
    model = fresh_gpt2
    mlp = model.blocks[-1].mlp
    handle = mlp.register_forward_hook(lambda mod, args, out: out + out.mean(1, keepdim=True))
    ps = build_task("ioi", model.tokenizer, n=4, seed=0)
    end = ps.positions["END"]
    try:
        with caplog.at_level(logging.WARNING, logger="circuits.engines.fastpaths"):
            got = forward.end_logits(model, ps.clean, end)
        with torch.no_grad():
            full = model(ps.clean)[torch.arange(len(ps)), end]
    finally:
        handle.remove()
    entry = fastpaths.get(model, "end_only_last_mlp")
    assert entry is not None and not entry.on and "differs" in entry.reason
    assert any("end_only_last_mlp OFF" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)
    assert "OFF (END residual differs" in fastpaths.summary(model)


def test_an_interrupted_check_records_nothing(fresh_gpt2):
    """Ctrl-C inside a model's first check must not leave the path marked verified."""
    model = fresh_gpt2
    ps = build_task("ioi", model.tokenizer, n=3, seed=0)

    def interrupt(module, args):
        raise KeyboardInterrupt

    handle = model.blocks[-1].mlp.register_forward_pre_hook(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            forward.end_logits(model, ps.clean, ps.positions["END"])
    finally:
        handle.remove()
    assert fastpaths.get(model, "end_only_last_mlp") is None
    assert fastpaths.report(model)["end_only_last_mlp"] == {"on": None, "reason": "not checked yet"}
    forward.end_logits(model, ps.clean, ps.positions["END"])
    assert fastpaths.is_on(model, "end_only_last_mlp")


@pytest.mark.parametrize("arch, reason", [("llama", "rotary"), ("neox", "hook_resid_mid")])
def test_path_patching_shortcuts_say_why_they_stand_down(arch, reason, engine_models):
    model = engine_models(arch)
    ps = build_task("ioi", model.tokenizer, n=4, seed=2)
    got = path_patching(model, ps, [(1, 1, "q"), (1, 2, "v")], freeze_mlps=True, progress=False)
    record = got.settings["fast_paths"]
    assert record["path_direct_shortcut"]["on"] is True
    assert record["path_one_layer_receivers"]["on"] is False
    assert reason in record["path_one_layer_receivers"]["reason"]
    assert not got.settings["one_layer_shortcut"]


def test_unknown_fast_path_names_are_refused(fresh_gpt2):
    with pytest.raises(KeyError, match="unknown fast path 'end_mlp'"):
        fastpaths.record(fresh_gpt2, "end_mlp", True, "typo")
