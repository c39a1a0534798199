"""IOI analysis: load a model, build IOI prompts, measure the behaviour.

This first version records the model's baseline behaviour on IOI (clean and
corrupted logit difference, accuracy) with full provenance; head patching,
path patching, the circuit and faithfulness are added by the exact-engines work.
Writes results/ioi/<model>/ioi.json atomically.
"""

from __future__ import annotations

import os
import platform
import time

import torch


def safe_name(spec: str) -> str:
    return spec.replace(":", "_").replace("/", "_").replace("@", "_")


@torch.no_grad()
def main(model: str = "zoo:toyworld", n: int = 64, seed: int = 0, device: str | None = None,
         out: str = "results") -> int:
    import circuits
    from circuits import metrics
    from circuits.io import atomic_write_json
    from circuits.models import load_model, model_info
    from circuits.tasks import build_task

    t0 = time.time()
    m = load_model(model, device=device)
    rows = {}
    for corruption in ("abc", "s2_io"):
        ps = build_task("ioi", m.tokenizer, n=n, seed=seed, corruption=corruption).to(m.cfg.device)
        clean = m(ps.clean)
        corr = m(ps.corrupted)
        rows[corruption] = {
            "logit_diff_clean": float(metrics.logit_diff(clean, ps)),
            "logit_diff_corrupted": float(metrics.logit_diff(corr, ps)),
            "accuracy_clean": float(metrics.accuracy(clean, ps)),
            "prompts": ps.describe(),
        }
    result = {
        "analysis": "ioi",
        "model": model_info(m),
        "settings": {"n": n, "seed": seed},
        "baseline": rows,
        "versions": {"circuits": circuits.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "seconds": round(time.time() - t0, 2),
    }
    path = os.path.join(out, "ioi", safe_name(model), "ioi.json")
    atomic_write_json(path, result)
    print(f"{'corruption':12s} {'LD clean':>9s} {'LD corr':>9s} {'acc':>6s}")
    for k, r in rows.items():
        print(f"{k:12s} {r['logit_diff_clean']:9.3f} {r['logit_diff_corrupted']:9.3f} {r['accuracy_clean']:6.2f}")
    print(f"wrote {path}")
    return 0
