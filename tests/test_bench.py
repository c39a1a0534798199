"""The benchmark's work model (GFLOP of head patching) against torch's own FLOP counter."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_engines  # noqa: E402

SMALL = dict(bench_engines.SHAPES, n_layer=3, n_head=4, n_embd=64, vocab_size=500)


def counted_gflop(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


@pytest.fixture(scope="module")
def small():
    return bench_engines.gpt2_small_random(shapes=SMALL), bench_engines.random_prompts(SMALL["vocab_size"])


def test_work_model_counts_what_both_systems_run(small):
    import transformer_lens.patching as tlp

    from circuits import metrics
    from circuits.engines.patching import activation_patching, shared_prefix

    model, ps = small
    first_diff = shared_prefix(ps.clean, ps.corrupted, ps.positions["END"])
    work = bench_engines.head_patching_gflop(SMALL, *ps.clean.shape, first_diff)
    _, cache = model.run_with_cache(ps.clean)
    tl = counted_gflop(lambda: tlp.get_act_patch_attn_head_out_all_pos(
        model, ps.corrupted, cache, lambda lg: metrics.logit_diff(lg, ps)))
    activation_patching(model, ps, "z", progress=False)  # one-off per-model checks are not counted
    ours = counted_gflop(lambda: activation_patching(model, ps, "z", progress=False))
    assert tl == pytest.approx(work["tl"], rel=1e-6)
    assert ours == pytest.approx(work["ours"], rel=1e-3)
    assert work["lower_bound"] < work["ours"] < work["tl"]


def test_lower_bound_shrinks_with_later_first_difference():
    early = bench_engines.head_patching_gflop(SMALL, 8, 16, 0)["lower_bound"]
    late = bench_engines.head_patching_gflop(SMALL, 8, 16, 12)["lower_bound"]
    assert late < early
