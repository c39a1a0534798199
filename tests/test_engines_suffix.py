"""Patching that skips the shared prefix: positions before the first clean/corrupted
difference are read from the base run's KV cache instead of being recomputed.
It must give what full recomputation gives, on every engine architecture."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from circuits.engines import patching
from circuits.engines.patching import activation_patching, shared_prefix
from circuits.engines.replay import BlockReplay
from tests.conftest import ENGINE_ARCHS

SITES = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z", "q", "k", "v", "pattern"]


@pytest.fixture(scope="module")
def late(engine_models):
    """Colored objects: clean and corrupted differ only in the question, near the end."""
    from circuits.tasks import build_task

    return lambda arch: build_task("colored_objects", engine_models(arch).tokenizer, n=4, seed=0)


def test_shared_prefix_stops_at_the_first_difference_and_the_earliest_end():
    base = torch.tensor([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]])
    source = torch.tensor([[1, 2, 3, 9, 5], [1, 2, 8, 4, 5]])
    assert shared_prefix(base, source, torch.tensor([4, 4])) == 2
    assert shared_prefix(base, base.clone(), torch.tensor([4, 3])) == 3
    assert shared_prefix(base, source, torch.tensor([1, 4])) == 1


@pytest.mark.parametrize("arch", ENGINE_ARCHS)
def test_every_engine_arch_can_skip_the_prefix(arch, engine_models, late):
    model, ps = engine_models(arch), late(arch)
    skip = shared_prefix(ps.corrupted, ps.clean, ps.positions["END"])
    assert skip >= ps.clean.shape[1] // 2
    assert BlockReplay(model, ps.corrupted, ps.positions["END"]).supports_skip(skip)


def _both_ways(model, ps, site, monkeypatch, **kw):
    """(skipping the shared prefix, recomputing everything): Scores and FLOPs of each."""
    with FlopCounterMode(display=False) as fast_flops:
        fast = activation_patching(model, ps, site, progress=False, **kw)
    with monkeypatch.context() as m:
        m.setattr(patching, "shared_prefix", lambda *a: 0)
        with FlopCounterMode(display=False) as full_flops:
            full = activation_patching(model, ps, site, progress=False, **kw)
    return fast, full, fast_flops.get_total_flops(), full_flops.get_total_flops()


@pytest.mark.parametrize("arch", ENGINE_ARCHS)
@pytest.mark.parametrize("site", SITES)
def test_skipping_the_prefix_changes_no_number(arch, site, engine_models, late, monkeypatch):
    model, ps = engine_models(arch), late(arch)
    for positions, direction in ((None, "noise"), ("each", "denoise")):
        fast, full, _, _ = _both_ways(model, ps, site, monkeypatch, positions=positions, direction=direction)
        torch.testing.assert_close(fast.per_example, full.per_example, atol=1e-5, rtol=1e-5)
    assert (full.values - full.baseline["corrupted"]).abs().max() > 1e-3  # the patches do something


@pytest.mark.parametrize("arch", ENGINE_ARCHS)
def test_skipping_the_prefix_saves_most_of_the_work(arch, engine_models, late, monkeypatch):
    model, ps = engine_models(arch), late(arch)
    fast, full, fast_flops, full_flops = _both_ways(model, ps, "z", monkeypatch, memory_budget=2**20)
    torch.testing.assert_close(fast.per_example, full.per_example, atol=1e-5, rtol=1e-5)
    assert fast_flops < 0.5 * full_flops
