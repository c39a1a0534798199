"""Attribution and MIB evaluation vs transformer-lens 4.3, timed in the same run (`make bench`).

Same random GPT-2-small-shaped model and 8 x 16 prompt batch as bench_engines.py.

1. EAP over all edges vs ``attribution_patch(granularity="edge")`` (position-resolved,
   one pair at a time): target >= 2x faster;
2. EAP-IG (inputs) with 5 steps vs our own EAP: target <= 5x the time;
3. the MIB faithfulness curve (10 edge fractions, plus the full and empty circuits)
   in plain forward-pass equivalents per fraction: target <= 10.

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


def main(argv: list[str] | None = None) -> int:
    from transformer_lens.tools.analysis.attribution_patching import (
        EdgeAttributionConfig,
        attribution_patch,
    )

    from circuits import metrics
    from circuits.engines import fastpaths
    from circuits.engines.attribution import attribute_edges
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
    out["fast_paths"] = fastpaths.report(model)
    atomic_write_json(args.out, out)
    print(f"fast paths: {fastpaths.summary(model)}")
    print(json.dumps({k: v for k, v in out.items() if isinstance(v, dict)}, indent=1))
    print(f"\n{'benchmark':34s} {'value':>10s} {'target':>10s}")
    print(f"{'EAP speed-up over transformer-lens':34s} {t_tl / t_eap:9.1f}x {'>= 2x':>10s}")
    print(f"{'EAP-IG (5 steps) / EAP time':34s} {t_ig / t_eap:9.1f}x {'<= 5x':>10s}")
    print(f"{'MIB curve, forwards per fraction':34s} {per_fraction:10.2f} {'<= 10':>10s}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
