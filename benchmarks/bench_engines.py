"""Exact engines vs transformer-lens 4.3, timed in the same run (`make bench`).

Model: randomly initialised GPT-2 with GPT-2-small shapes (12 layers, 12 heads,
d_model 768, vocab 50257); 8 prompts x 16 tokens; logit-difference metric. The
corrupted prompts differ from the clean ones at two positions.

1. head-output patching at all positions vs ``get_act_patch_attn_head_out_all_pos``;
2. faithfulness of a 30-head circuit over 8 pairs (corrupted-input ablation) vs
   ``faithfulness`` of a 200-edge circuit, which takes one pair at a time;
3. path patching of every sender head to one receiver (a11.h0's query) vs
   ``get_act_patch_direct_path``: transformer-lens needs one forward pass per
   (sender, receiver) pair; its time for the 132 pairs is measured on the 12
   pairs from two layer-10 senders and scaled by forward passes (stated as such).

Prints ratios (transformer-lens time / ours) and writes results/bench/engines.json.
Numbers match between the two systems (checked and printed) before any time counts.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

SHAPES = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=64)


def gpt2_small_random(seed: int = 0, shapes: dict | None = None):
    from transformer_lens.model_bridge.sources import build_bridge_from_module
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(**(shapes or SHAPES))
    model = build_bridge_from_module(GPT2LMHeadModel(cfg).eval(), "GPT2LMHeadModel", hf_config=cfg)
    model.eval()
    return model


def random_prompts(vocab: int, n: int = 8, length: int = 16, seed: int = 0):
    from circuits.prompts import PromptSet

    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, vocab, (n, length), generator=g)
    corrupted = clean.clone()
    corrupted[:, [3, 9]] = torch.randint(1, vocab, (n, 2), generator=g)
    ans, wrong = torch.randint(1, vocab, (n,), generator=g), torch.randint(1, vocab, (n,), generator=g)
    full = lambda v: torch.full((n,), v)  # noqa: E731
    return PromptSet(task="bench", clean=clean, corrupted=corrupted, answers=ans, wrong_answers=wrong,
                     lengths=full(length), positions={"X": full(3), "END": full(length - 1)},
                     groups=torch.zeros(n, dtype=torch.long), pad_token_id=0, group_names=["bench"])


def timed(fn, repeat: int = 1):
    fn_out = None
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn_out = fn()
        best = min(best, time.perf_counter() - t)
    return fn_out, best


def matmul_gflops(seconds: float = 1.0) -> float:
    """This machine's float32 matmul rate (GFLOP/s) on block-sized products, measured now."""
    a, b = torch.randn(1536, 768), torch.randn(768, 3072)
    a @ b
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        a @ b
        n += 1
    return 2 * 1536 * 768 * 3072 * n / (time.perf_counter() - t) / 1e9


def head_patching_gflop(shapes: dict, batch: int, length: int, first_diff: int) -> dict[str, float]:
    """Matmul work (GFLOP) of head-output patching at all positions, three ways.

    A block costs 24 d^2 per token (projections 8 d^2, MLP 16 d^2) plus 4 P d
    (attention scores and mixing); the unembedding 2 d V per token.

    - ``tl``: transformer-lens, one full forward pass per head, every position unembedded.
    - ``ours``: blocks l..L-1 recomputed for a head of layer l on the tokens from
      ``first_diff`` on (earlier ones read from the base run's KV cache), the last
      block's MLP at END only, two answer logits at END; plus the clean and
      corrupted runs that record the caches.
    - ``lower_bound``: what any exact method must still do, granting every saving
      we know of: tokens before ``first_diff`` (the first position where clean and
      corrupted differ) never change; in layer l only the MLP's output projection
      (its input change is the head's rank-d_head write, cheap through the layer
      norm); later blocks in full on the changed tokens; the last block only its
      keys and values there, the rest at END; no unembedding.
    """
    d, n_layer, n_head, vocab = shapes["n_embd"], shapes["n_layer"], shapes["n_head"], shapes["vocab_size"]
    tokens, changed = batch * length, batch * (length - first_diff)
    block = (24 * d * d + 4 * length * d) * tokens
    tl = n_layer * n_head * (n_layer * block + 2 * d * vocab * tokens)
    restarts = n_head * sum(n_layer - layer for layer in range(n_layer))
    suffix_block = (24 * d * d + 4 * length * d) * changed

    def end_only_saving(rows: int) -> int:  # last MLP at END only, two answer logits unembedded
        return 16 * d * d * (rows - batch) - 2 * d * 2 * batch

    ours = (restarts * suffix_block - n_layer * n_head * end_only_saving(changed)
            + 2 * (n_layer * block - end_only_saving(tokens)))
    bound = 0
    for layer in range(n_layer):
        if layer == n_layer - 1:
            bound += 8 * d * d * batch
        else:
            middle = n_layer - 2 - layer
            bound += (8 + 24 * middle + 4) * d * d * changed + 20 * d * d * batch
    return {"tl": tl / 1e9, "ours": ours / 1e9, "lower_bound": n_head * bound / 1e9}


def bench_head_patching(model, ps, metric_tl):
    import transformer_lens.patching as tlp

    from circuits.engines.patching import activation_patching, shared_prefix

    _, cache = model.run_with_cache(ps.clean)
    ref, t_tl = timed(lambda: tlp.get_act_patch_attn_head_out_all_pos(model, ps.corrupted, cache, metric_tl))
    ours, t_ours = timed(lambda: activation_patching(model, ps, "z", progress=False))
    diff = float((ours.values - ref.cpu()).abs().max())
    shapes = {k: getattr(model.cfg, k2) for k, k2 in
              (("n_embd", "d_model"), ("n_layer", "n_layers"), ("n_head", "n_heads"), ("vocab_size", "d_vocab"))}
    first_diff = shared_prefix(ps.clean, ps.corrupted, ps.positions["END"])
    work = head_patching_gflop(shapes, *ps.clean.shape, first_diff)
    peak = matmul_gflops()
    return {"tl_seconds": t_tl, "ours_seconds": t_ours, "ratio": t_tl / t_ours, "max_abs_diff": diff,
            "target_ratio": 20, "tl_gflop": work["tl"], "ours_gflop": work["ours"],
            "exact_lower_bound_gflop": work["lower_bound"], "tl_gflop_per_s": work["tl"] / t_tl,
            "ours_gflop_per_s": work["ours"] / t_ours, "matmul_peak_gflop_per_s": peak,
            "best_exact_ratio_at_peak": t_tl / (work["lower_bound"] / peak)}


def bench_faithfulness(model, ps, metric_one):
    from transformer_lens.tools.analysis.attribution_patching import (
        FaithfulnessConfig,
        Node,
        faithfulness,
    )

    from circuits.engines.ablation import Ablation
    from circuits.engines.faithfulness import faithfulness as ours_faith

    end = ps.clean.shape[1] - 1
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    logits = Node("logits", end, n_layers - 1)
    edges = [(Node("attn_head_out", end, layer, h), logits) for layer in range(n_layers) for h in range(n_heads)]
    edges += [(Node("mlp_out", end, layer), logits) for layer in range(n_layers)]
    edges += [(Node("attn_head_out", end, 0, h), Node("q_input", end, 1, h2)) for h in range(n_heads)
              for h2 in range(n_heads)][: max(0, 200 - len(edges))]
    _, t_tl = timed(lambda: faithfulness(model, ps.clean[:1], ps.corrupted[:1], metric_one, edges,
                                         FaithfulnessConfig("corrupt")))
    heads = [f"a{layer}.h{h}" for layer in range(n_layers) for h in range(n_heads)][::5][:30]
    res, t_ours = timed(lambda: ours_faith(model, ps, heads, ablation=Ablation("corrupted")), repeat=2)
    per_tl, per_ours = t_tl, t_ours / len(ps)
    return {"tl_seconds_per_pair": per_tl, "ours_seconds_total": t_ours, "pairs": len(ps),
            "ours_seconds_per_pair": per_ours, "ratio_per_pair": per_tl / per_ours, "tl_circuit": f"{len(edges)} edges",
            "ours_circuit": "30 heads", "ours_faithfulness": res.faithfulness, "target_ratio": 100}


def bench_path_patching(model, ps, metric_tl):
    import transformer_lens.patching as tlp

    from circuits.engines.path_patching import path_patching

    _, cc = model.run_with_cache(ps.clean)
    _, kc = model.run_with_cache(ps.corrupted)
    last = model.cfg.n_layers - 1
    tl_vals, t0 = [], time.perf_counter()
    for src_head in (0, 1):
        tl_vals.append(tlp.get_act_patch_direct_path(model, ps.corrupted, cc, kc, metric_tl, last - 1, src_head, "q",
                                                     verbose=False)[last, 0])
    t_measured = time.perf_counter() - t0
    per_forward = t_measured / (2 * model.cfg.n_heads)  # each call: one forward per head of the last layer
    n_pairs = last * model.cfg.n_heads  # senders in layers 0..last-1, one receiver
    ours, t_ours = timed(lambda: path_patching(model, ps, [f"a{last}.h0<q>"], direction="denoise", freeze_mlps=True,
                                               progress=False))
    diff = max(abs(float(ours.values[last - 1, h]) - float(v)) for h, v in enumerate(tl_vals))
    t_tl = per_forward * n_pairs
    return {"tl_seconds_extrapolated": t_tl, "tl_seconds_per_forward": per_forward,
            "tl_forwards_measured": 2 * model.cfg.n_heads, "pairs": n_pairs, "ours_seconds": t_ours,
            "ratio": t_tl / t_ours, "max_abs_diff": diff, "target_ratio": 20,
            "direct_shortcut": ours.settings.get("direct_shortcut")}


def setup(argv: list[str] | None, description: str, default_out: str):
    """(args, shapes, model, prompts) shared by the benchmark scripts: ``--out`` and ``--small``."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", default=default_out)
    ap.add_argument("--small", action="store_true", help="a 2-layer model (a smoke run, not a benchmark)")
    args = ap.parse_args(argv)
    shapes = dict(SHAPES, n_layer=2, n_head=4, n_embd=64, vocab_size=500) if args.small else SHAPES
    return args, shapes, gpt2_small_random(shapes=shapes), random_prompts(shapes["vocab_size"])


def main(argv: list[str] | None = None) -> int:
    from circuits import metrics
    from circuits.engines import fastpaths
    from circuits.io import atomic_write_json

    args, shapes, model, ps = setup(argv, __doc__.splitlines()[0], "results/bench/engines.json")
    metric_tl = lambda lg: metrics.logit_diff(lg, ps)  # noqa: E731
    metric_one = lambda lg: metrics.logit_diff(lg, ps.subset([0]))  # noqa: E731
    out = {"model": "random GPT-2 " + ("(small smoke shapes)" if args.small else "small shapes"),
           "shapes": shapes, "batch": list(ps.clean.shape), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine()}
    for name, fn, arg in (("head_patching_all_pos", bench_head_patching, metric_tl),
                          ("faithfulness", bench_faithfulness, metric_one),
                          ("path_patching_one_receiver", bench_path_patching, metric_tl)):
        print(f"[bench] {name} ...", flush=True)
        out[name] = fn(model, ps, arg)
        r = out[name]
        ratio = r.get("ratio", r.get("ratio_per_pair"))
        print(f"[bench] {name}: ratio {ratio:.1f}x (target {r['target_ratio']}x) "
              f"{json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()})}", flush=True)
    out["fast_paths"] = fastpaths.report(model)
    atomic_write_json(args.out, out)
    print(f"\n{'benchmark':30s} {'transformer-lens':>17s} {'ours':>10s} {'ratio':>8s} {'target':>7s}")
    hp, fa, pp = out["head_patching_all_pos"], out["faithfulness"], out["path_patching_one_receiver"]
    print(f"{'head patching, all pos':30s} {hp['tl_seconds']:16.2f}s {hp['ours_seconds']:9.2f}s "
          f"{hp['ratio']:7.1f}x {20:6d}x")
    print(f"{'faithfulness, per pair':30s} {fa['tl_seconds_per_pair']:16.2f}s {fa['ours_seconds_per_pair']:9.3f}s "
          f"{fa['ratio_per_pair']:7.1f}x {100:6d}x")
    print(f"{'path patching, 1 receiver':30s} {pp['tl_seconds_extrapolated']:15.2f}s* {pp['ours_seconds']:9.2f}s "
          f"{pp['ratio']:7.1f}x {20:6d}x")
    print("* transformer-lens time scaled from measured forward passes (see the module docstring)")
    print(f"fast paths: {fastpaths.summary(model)}")
    print(f"head patching work: transformer-lens {hp['tl_gflop']:.0f} GFLOP at {hp['tl_gflop_per_s']:.0f} GFLOP/s, "
          f"ours {hp['ours_gflop']:.0f} GFLOP at {hp['ours_gflop_per_s']:.0f} GFLOP/s; any exact method "
          f">= {hp['exact_lower_bound_gflop']:.0f} GFLOP, so at this machine's matmul peak "
          f"({hp['matmul_peak_gflop_per_s']:.0f} GFLOP/s) none beats {hp['best_exact_ratio_at_peak']:.1f}x")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
