"""Attribution and MIB evaluation vs transformer-lens 4.3, timed in the same run (`make bench`).

Same random GPT-2-small-shaped model and 8 x 16 prompt batch as bench_engines.py.

1. EAP over all edges vs ``attribution_patch(granularity="edge")`` (position-resolved,
   one pair at a time): target >= 2x faster;
2. EAP-IG (inputs) with 5 steps vs our own EAP: target <= 5x the time;
3. the MIB faithfulness curve (10 edge fractions, plus the full and empty circuits)
   in plain forward-pass equivalents per fraction: target <= 10;
4. an ACDC sweep of 20 taus on EAP-IG's top edges against 20 single-tau calls of the
   previous implementation (every trial re-prepared the edge evaluation: ablated writers
   and reader check; timed on 2 taus and scaled by 10), identical circuits required:
   target >= 10x; and the time per tau in forward passes;
5. the completeness gap of EAP-IG (inputs, activations) at the bench's step counts.

Prints the ratios and writes results/bench/attribution.json.
"""

from __future__ import annotations

import json
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_engines import setup, timed  # noqa: E402


def acdc_previous(model, ps, tau, candidates):
    """ACDC as the previous implementation ran it (KL objective): every trial circuit through a fresh
    ``evaluate_edge_circuits`` call, which prepares the ablated writers again. Returns the kept edges."""
    import torch

    from circuits.engines.discovery import prune
    from circuits.engines.edge_patching import evaluate_edge_circuits
    from circuits.engines.edges import edge_graph
    from circuits.metrics import kl_rows

    graph = edge_graph(model)
    mask = candidates.bool() & graph.mask
    clean = evaluate_edge_circuits(model, ps, [graph.mask], return_logits=True)[0]

    def value(m):
        return float(kl_rows(evaluate_edge_circuits(model, ps, [m], return_logits=True)[0], clean).mean())

    current = value(mask)
    order = sorted(range(len(graph.readers)), key=lambda r: -graph.reader_layer(graph.readers[r]))
    for r in order:
        for w in sorted(torch.nonzero(mask[:, r]).flatten().tolist(), key=lambda w: -graph.writer_layer(graph.writers[w])):
            trial = mask.clone()
            trial[w, r] = False
            v = value(trial)
            if abs(v - current) < tau:
                mask, current = trial, v
    mask = prune(graph, mask)
    return [graph.edge(int(w), int(r)) for w, r in torch.nonzero(mask & graph.mask)]


def main(argv: list[str] | None = None) -> int:
    from transformer_lens.tools.analysis.attribution_patching import (
        EdgeAttributionConfig,
        attribution_patch,
    )

    from circuits import metrics
    from circuits.engines import fastpaths
    from circuits.engines.attribution import attribute_edges
    from circuits.engines.discovery import acdc, select_topn
    from circuits.engines.mib import faithfulness_curve
    from circuits.io import atomic_write_json

    args, shapes, model, ps = setup(argv, __doc__.splitlines()[0], "results/bench/attribution.json")
    out = {"model": "random GPT-2 " + ("(small smoke shapes)" if args.small else "small shapes"),
           "shapes": shapes, "batch": list(ps.clean.shape), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "python": platform.python_version()}

    print("[bench] transformer-lens edge attribution_patch ...", flush=True)
    t_tl = 0.0
    for i in range(len(ps)):  # one call per pair: each call's metric reads that pair's answers
        pair = ps.subset([i])
        _, t = timed(lambda pair=pair, i=i: attribution_patch(
            model, ps.clean[i:i + 1], ps.corrupted[i:i + 1], lambda lg: metrics.logit_diff(lg, pair),
            EdgeAttributionConfig(granularity="edge")))
        t_tl += t
    eap, t_eap = timed(lambda: attribute_edges(model, ps, method="eap"), repeat=2)
    ig, t_ig = timed(lambda: attribute_edges(model, ps, method="eap-ig-inputs", steps=5), repeat=2)
    print("[bench] MIB curve ...", flush=True)
    _, t_fwd = timed(lambda: model(ps.clean), repeat=3)
    curve, t_curve = timed(lambda: faithfulness_curve(model, ps, ig))
    out["eap_vs_transformer_lens"] = {"tl_seconds": t_tl, "ours_seconds": t_eap, "ratio": t_tl / t_eap,
                                      "target_ratio": 2, "ours_edges": eap.graph.n_edges,
                                      "tl_note": "position-resolved edges, one pair per call (8 calls)"}
    out["eap_ig5_vs_eap"] = {"eap_seconds": t_eap, "eap_ig_seconds": t_ig, "ratio": t_ig / t_eap, "target_max": 5}
    per_fraction = t_curve / t_fwd / len(curve.percentages)
    out["mib_curve"] = {"seconds": t_curve, "forward_seconds": t_fwd, "fractions": len(curve.percentages),
                        "forward_equivalents_per_fraction": per_fraction, "target_max": 10,
                        "cpr": curve.cpr, "cmd": curve.cmd}
    print("[bench] ACDC sweep ...", flush=True)
    cand = select_topn(ig.graph, ig.scores, 60, do_prune=False)
    taus = [round(0.002 * 1.35 ** i, 6) for i in range(20)]
    sweep, t_sweep = timed(lambda: acdc(model, ps, taus, candidates=cand, progress=False))
    t_single = 0.0
    for t in taus[4:16:6]:  # two taus, through the previous per-trial evaluation
        old, dt = timed(lambda t=t: acdc_previous(model, ps, t, cand))
        t_single += dt
        if set(old) != set(sweep[t].edges):
            raise RuntimeError(f"the sweep's circuit at tau {t} differs from a single call's")
    t_20 = t_single / 2 * len(taus)
    out["acdc_sweep"] = {"taus": len(taus), "candidates": int(cand.sum()), "sweep_seconds": t_sweep,
                         "previous_20_single_seconds_scaled": t_20, "ratio": t_20 / t_sweep, "target_ratio": 10,
                         "seconds_per_tau": t_sweep / len(taus), "forwards_per_tau": t_sweep / len(taus) / t_fwd,
                         "evaluations": sweep[taus[0]].settings["evaluations"],
                         "edges_per_tau": [len(sweep[t].edges) for t in taus]}
    gaps = {}
    for method in ("eap-ig-inputs", "eap-ig-activations"):
        for k in (5, 10):
            gaps[f"{method} {k} steps"] = attribute_edges(model, ps, method=method, steps=k).settings["completeness"]["gap"]
    out["ig_completeness_gap"] = gaps
    out["fast_paths"] = fastpaths.report(model)
    atomic_write_json(args.out, out)
    print(f"fast paths: {fastpaths.summary(model)}")
    print(json.dumps({k: v for k, v in out.items() if isinstance(v, dict)}, indent=1))
    print(f"\n{'benchmark':48s} {'value':>10s} {'target':>10s}")
    print(f"{'EAP speed-up over transformer-lens':48s} {t_tl / t_eap:9.1f}x {'>= 2x':>10s}")
    print(f"{'EAP-IG (5 steps) / EAP time':48s} {t_ig / t_eap:9.1f}x {'<= 5x':>10s}")
    print(f"{'MIB curve, forwards per fraction':48s} {per_fraction:10.2f} {'<= 10':>10s}")
    a = out["acdc_sweep"]
    print(f"{'ACDC 20-tau sweep vs 20 single calls':48s} {a['ratio']:9.1f}x {'>= 10x':>10s}")
    print(f"{'ACDC sweep, forwards per tau':48s} {a['forwards_per_tau']:10.1f}")
    for name, g in gaps.items():
        print(f"{'IG completeness gap, ' + name:48s} {'undefined' if g is None else format(g, '.3f'):>10s}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
