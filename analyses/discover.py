"""Circuit discovery on a task (`make discover TASK=ioi MODEL=...`).

1. edge scores with EAP, EAP-IG (inputs) and EAP-IG (activations);
2. ACDC (KL objective) on the edges EAP-IG pre-selects;
3. MIB evaluation of each method: faithfulness at 0.1 .. 100% of the edges,
   CPR and CMD (ablation by the corrupted input);
4. the EAP-IG circuit: the smallest MIB fraction whose faithfulness reaches 0.8
   (else the most faithful one); it and the ACDC circuit come with their edge
   Jaccard over bootstrap resamples of the prompts;
5. the agreement report: EAP-IG against exact patching, node and edge level.

Writes results/discover/<task>/<model>/: discover.json, eap_ig_circuit.json,
curves.pdf/png, circuit.pdf/png; prints a summary table.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from analyses.common import safe_name, versions


def main(task: str = "ioi", model: str = "zoo:toyworld", n: int = 32, seed: int = 0, device: str | None = None,
         out: str = "results", steps: int = 5, tau: float = 0.02, n_boot: int = 3) -> int:
    """Run the analysis; results/discover/<task>/<model>/ is replaced as a unit when the run succeeds."""
    from circuits.engines.discovery import check_tau
    from circuits.io import run_folder
    from circuits.tasks import get_task
    from circuits.tasks.base import check_n, check_seed

    get_task(task)  # clear errors for bad settings, before anything is loaded or computed
    check_n(n)
    check_seed(seed)
    check_tau(tau)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps (EAP-IG integration steps) must be a positive integer, got {steps!r}")
    final = os.path.join(out, "discover", task, safe_name(model))
    with run_folder(final) as stage:  # fails here, before any compute, if ``out`` is not writable
        _run(task, model, n, seed, device, str(stage), steps, tau, n_boot)
    print(f"wrote {final}")
    return 0


def _run(task: str, model: str, n: int, seed: int, device: str | None, folder: str, steps: int, tau: float,
         n_boot: int) -> None:
    from circuits.engines import fastpaths
    from circuits.engines.agreement import agreement_report
    from circuits.engines.attribution import EdgeScores, attribute_edges
    from circuits.engines.discovery import acdc, bootstrap_stability, select_topn
    from circuits.engines.mib import faithfulness_curve
    from circuits.figures import circuit_figure, faithfulness_curves, save_figure
    from circuits.io import atomic_write_json
    from circuits.models import load_model, model_info
    from circuits.tasks import build_task

    t0 = time.time()
    m = load_model(model, device=device)
    split = "test" if model.startswith("zoo:") else "all"
    options: dict[str, Any] = {}
    if model.startswith("zoo:toyworld"):
        from circuits.zoo.toyworld import EVAL_TASKS

        options = dict(EVAL_TASKS.get(task, {}))
    ps = build_task(task, m.tokenizer, n=n, seed=seed, split=split, **options).to(m.cfg.device)
    metric = "candidate_prob_diff" if ps.answer_candidates is not None else "logit_diff"

    timings: dict[str, float] = {}
    scores: dict[str, EdgeScores] = {}
    for name, method, k in (("EAP", "eap", 1), ("EAP-IG-inputs", "eap-ig-inputs", steps),
                            ("EAP-IG-activations", "eap-ig-activations", steps)):
        t = time.time()
        scores[name] = attribute_edges(m, ps, method=method, steps=k, metric=metric)
        timings[name] = round(time.time() - t, 2)
        print(f"[discover] {name}: {timings[name]} s", flush=True)
    ig = scores["EAP-IG-inputs"]
    graph = ig.graph

    t = time.time()
    n_cand = max(10, graph.n_edges // 10)
    cand = select_topn(graph, ig.scores, n_cand, do_prune=False)
    ac = acdc(m, ps, tau, candidates=cand, progress=True)
    acdc_scores = torch.zeros_like(ig.scores)
    for rec in ac.log:
        w, r = graph.index(*rec["edge"].split("->"))
        acdc_scores[w, r] = abs(rec["after"] - rec["before"])
    for e in ac.edges:  # kept edges rank above every removed one
        w, r = graph.index(*e.split("->"))
        acdc_scores[w, r] += 1e3
    scores["ACDC"] = EdgeScores(graph, acdc_scores, None, {"method": "acdc", "tau": tau})
    timings["ACDC"] = round(time.time() - t, 2)
    print(f"[discover] ACDC: {len(ac.edges)} edges, {timings['ACDC']} s", flush=True)

    curves = {}
    for name, sc in scores.items():
        t = time.time()
        curves[name] = faithfulness_curve(m, ps, sc, metric=metric)
        timings[f"curve {name}"] = round(time.time() - t, 2)
    figs = save_figure(faithfulness_curves(curves, title=f"MIB faithfulness, {task} on {model}"),
                       os.path.join(folder, "curves"))

    ig_curve = curves["EAP-IG-inputs"]
    good = [i for i, f in enumerate(ig_curve["faithfulness"]) if f >= 0.8]
    pick = good[0] if good else max(range(len(ig_curve["faithfulness"])), key=lambda i: ig_curve["faithfulness"][i])
    n_top = ig_curve["n_edges_requested"][pick]
    circuit_mask = select_topn(graph, ig.scores, n_top)
    from circuits.engines.discovery import EdgeCircuit

    circuit = EdgeCircuit.from_mask(graph, circuit_mask, method="eap-ig-inputs", steps=steps, n_top=n_top,
                                    fraction=ig_curve["percentages"][pick],
                                    faithfulness=ig_curve["faithfulness"][pick], task=task, model=model)
    t = time.time()
    stability = bootstrap_stability(ps, lambda p: select_topn(graph, attribute_edges(
        m, p, method="eap-ig-inputs", steps=steps, metric=metric).scores, n_top), n_boot=n_boot, seed=seed)
    timings["stability"] = round(time.time() - t, 2)
    circuit.settings["stability"] = stability
    weighted = [(graph.writers[w], graph.readers[r], float(ig.scores[w, r])) for w, r in circuit_mask.nonzero().tolist()]
    figs += save_figure(circuit_figure({}, weighted, graph.n_layers, title=f"EAP-IG circuit ({len(circuit.edges)} "
                                       f"edges, f = {circuit.settings['faithfulness']:.2f})"),
                        os.path.join(folder, "circuit"))
    t = time.time()
    acdc_stability = bootstrap_stability(ps, lambda p: acdc(m, p, tau, candidates=cand, progress=False).mask(graph),
                                         n_boot=min(n_boot, 2), seed=seed)
    ac.settings["stability"] = acdc_stability
    timings["acdc stability"] = round(time.time() - t, 2)
    t = time.time()
    agreement = agreement_report(m, ps, method="eap-ig-inputs", steps=steps, metric=metric, strict=False)
    timings["agreement"] = round(time.time() - t, 2)

    atomic_write_json(os.path.join(folder, "eap_ig_circuit.json"), circuit.to_dict())
    result = {
        "analysis": "discover", "task": task, "model": model_info(m),
        "settings": {"n": n, "seed": seed, "split": split, "task_options": options, "metric": metric,
                     "steps": steps, "acdc_tau": tau, "acdc_candidates": n_cand, "ablation": "corrupted"},
        "prompts": ps.describe(),
        "mib": curves,
        "acdc": ac.to_dict(), "eap_ig_circuit": circuit.to_dict(), "agreement": agreement,
        "top_edges": {k: s.ranked()[:20] for k, s in scores.items() if k != "ACDC"},
        "timings_s": timings, "figures": [os.path.relpath(f, folder) for f in figs],
        "versions": versions(), "fast_paths": fastpaths.report(m),
        "seconds": round(time.time() - t0, 2),
    }
    path = os.path.join(folder, "discover.json")
    atomic_write_json(path, result)

    print(f"\ncircuit discovery: {task} on {model} ({len(ps)} prompts, {graph.n_edges} edges)")
    print(f"{'method':20s} {'CPR':>6s} {'CMD':>6s}  faithfulness at 0.1 .. 100% of edges")
    for name, c in curves.items():
        print(f"{name:20s} {c['cpr']:6.3f} {c['cmd']:6.3f}  " + " ".join(f"{f:5.2f}" for f in c["faithfulness"]))
    print(f"\nEAP-IG circuit: {len(circuit.edges)} edges at {100 * circuit.settings['fraction']:.1f}% "
          f"(f = {circuit.settings['faithfulness']:.3f}); bootstrap edge Jaccard {stability['mean']:.2f} "
          f"(min {stability['min']:.2f}, {n_boot} resamples)")
    print(f"ACDC (tau {tau}, KL): {len(ac.edges)} edges; bootstrap edge Jaccard {acdc_stability['mean']:.2f} "
          f"({acdc_stability['n_boot']} resamples)")
    a = agreement
    print(f"agreement with exact patching: nodes pearson {a['node']['pearson']:.3f} spearman "
          f"{a['node']['spearman']:.3f}; edges pearson {a['edge']['pearson']:.3f} spearman "
          f"{a['edge']['spearman']:.3f} ({a['edge']['edges_compared']} edges)")
    for level in ("node", "edge"):
        if a[level]["sign_disagreements_top"]:
            print(f"  WARNING: {level} sign disagreements on top components: {a[level]['sign_disagreements_top']}")
    print(f"\n{os.path.basename(path)} in {time.time() - t0:.1f} s")
