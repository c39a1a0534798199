"""Circuit discovery on a task: ``python -m analyses.discover`` (``make discover TASK=ioi MODEL=...``).

Steps, each a function that returns data (a notebook can run them cell by cell):

1. :func:`prompts` - the task's prompts (a zoo model's own task options, read from its recipe.json);
2. :func:`attribute` - edge scores with EAP, EAP-IG (inputs) and EAP-IG (activations);
3. :func:`run_acdc` - ACDC (KL objective) on the edges EAP-IG pre-selects;
4. :func:`curves` - MIB evaluation of each method: faithfulness at 0.1 .. 100% of the edges,
   CPR and CMD (ablation by the corrupted input); :func:`reference` - the exact greedy pruning
   curve they are read against (each method's CPR as a fraction of its CPR);
5. :func:`pick_circuit` - the EAP-IG circuit: the smallest MIB fraction whose faithfulness
   reaches 0.8 (else the most faithful one); :func:`stability` - it and the ACDC circuit
   with their edge Jaccard over bootstrap resamples of the prompts;
6. the agreement report (``circuits.engines.agreement``): EAP-IG against exact patching;
   :func:`single_edge_curve` - the MIB curve of the edges ranked by that report's exact
   single-edge effects (what a perfect per-edge attribution reaches) and their additivity;
7. :func:`figures` - the MIB curves and the EAP-IG circuit.

:func:`main` writes results/discover/<task>/<model>/ (discover.json, eap_ig_circuit.json,
curves and circuit figures, as a unit) and prints a summary table.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from analyses.common import run_analysis, safe_name, save_figures

METHODS = (("EAP", "eap"), ("EAP-IG-inputs", "eap-ig-inputs"), ("EAP-IG-activations", "eap-ig-activations"))
PER_POSITION = "EAP-IG-inputs per position"  # the same scores, circuits of (edge, token position) pairs
SINGLE_EDGE = "exact single edges"  # edges ranked by their exact effect alone: the best additive attribution
VERIFY = 5  # each method's top heads checked against exact activation patching (sign and size)


def prompts(model: Any, spec: str, task: str, n: int, seed: int) -> tuple[Any, str, dict[str, Any]]:
    """(PromptSet, metric name, task options): a zoo model's prompts use the task options its recipe
    records and held-out combinations (split "test"); the metric is the candidate probability
    difference for tasks with answer sets, else the logit difference."""
    from circuits.tasks import build_task
    from circuits.zoo import task_options

    split = "test" if spec.startswith("zoo:") else "all"
    options = dict(task_options(spec).get(task, {}))
    ps = build_task(task, model.tokenizer, n=n, seed=seed, split=split, **options).to(model.cfg.device)
    return ps, ("candidate_prob_diff" if ps.answer_candidates is not None else "logit_diff"), options


def attribute(model: Any, ps: Any, steps: int, metric: str, timings: dict[str, float]) -> dict[str, Any]:
    """{method label: EdgeScores} for EAP (1 step) and both EAP-IG variants (``steps``)."""
    from circuits.engines.attribution import attribute_edges

    scores = {}
    for name, method in METHODS:
        t = time.time()
        scores[name] = attribute_edges(model, ps, method=method, steps=1 if method == "eap" else steps, metric=metric,
                                       verify=VERIFY, per_position=method == "eap-ig-inputs")
        timings[name] = round(time.time() - t, 2)
        print(f"[discover] {name}: {timings[name]} s", flush=True)
    return scores


def candidates(ig: Any) -> Any:
    """ACDC's search space: the top tenth of the edges by |EAP-IG score| (at least 10)."""
    from circuits.engines.discovery import select_topn

    return select_topn(ig.graph, ig.scores, max(10, ig.graph.n_edges // 10), do_prune=False)


def run_acdc(model: Any, ps: Any, ig: Any, tau: float, progress: bool = True) -> tuple[Any, Any]:
    """(ACDC's Circuit on the EAP-IG candidates, EdgeScores ranking its kept edges first and the
    removed ones by the change their removal made)."""
    from circuits.engines.attribution import EdgeScores
    from circuits.engines.discovery import acdc

    graph = ig.graph
    ac = acdc(model, ps, tau, candidates=candidates(ig), progress=progress)
    ranking = torch.zeros_like(ig.scores)
    for rec in ac.settings["log"]:
        ranking[graph.index(*graph_edge(rec["edge"]))] = abs(rec["after"] - rec["before"])
    for e in ac.edges:  # kept edges rank above every removed one
        ranking[graph.index(*graph_edge(e))] += 1e3
    return ac, EdgeScores(graph, ranking, None, {"method": "acdc", "tau": tau})


def graph_edge(name: str) -> tuple[str, str]:
    """(writer, reader) names of an edge name."""
    from circuits.names import parse_edge

    w, r = parse_edge(name)
    return w.name, r.name


def curves(model: Any, ps: Any, scores: dict[str, Any], metric: str, timings: dict[str, float]) -> dict[str, Any]:
    """{method label: FaithfulnessCurve} (MIB, ablation by the corrupted input), and EAP-IG (inputs) per
    token position: circuits of (edge, position) pairs, the fractions of all such pairs."""
    from circuits.engines.mib import faithfulness_curve

    out = {}
    for name, sc in scores.items():
        t = time.time()
        out[name] = faithfulness_curve(model, ps, sc, metric=metric)
        timings[f"curve {name}"] = round(time.time() - t, 2)
        if sc.per_position is not None:
            t = time.time()
            out[PER_POSITION] = faithfulness_curve(model, ps, sc, metric=metric, per_position=True)
            timings[f"curve {PER_POSITION}"] = round(time.time() - t, 2)
    return out


def verify_positions(model: Any, ps: Any, ig: Any, metric: str) -> dict[str, Any]:
    """The top (head, position) pairs of EAP-IG (inputs) per position against exact patching at the position."""
    from circuits.engines.attribution import verify_position_nodes

    return verify_position_nodes(model, ps, ig, VERIFY, metric)


def reference(model: Any, ps: Any, metric: str, keep: float, timings: dict[str, float], progress: bool = True) -> Any:
    """The exact reference (circuits.engines.mib.exact_reference_curve): greedy pruning with exact edge
    patching, removing ``1 - keep`` of the kept edges per round."""
    from circuits.engines.mib import exact_reference_curve

    t = time.time()
    ref = exact_reference_curve(model, ps, metric=metric, keep=keep, progress=progress)
    timings["exact reference"] = round(time.time() - t, 2)
    print(f"[discover] exact reference: {ref.settings['evaluations']} circuits, {timings['exact reference']} s",
          flush=True)
    return ref


def single_edge_curve(model: Any, ps: Any, graph: Any, agreement: Any, metric: str, timings: dict[str, float]
                      ) -> Any | None:
    """The MIB curve of the edges ranked by their exact effect alone (M(full) - M(full without the edge),
    from the agreement report's edge sweep): what a perfect per-edge attribution would select. Its
    settings["additivity"] is the sum of those effects over M(full) - M(empty) (1 if the edges' effects
    added up). None where the sweep did not cover every edge (agreement_report's max_edges)."""
    from circuits.engines.attribution import EdgeScores
    from circuits.engines.mib import faithfulness_curve

    if len(agreement.edge.names) < graph.n_edges:
        print(f"[discover] {SINGLE_EDGE}: skipped, the exact sweep covered {len(agreement.edge.names)} of "
              f"{graph.n_edges} edges", flush=True)
        return None
    t = time.time()
    exact = dict(zip(agreement.edge.names, agreement.edge.exact))
    curve = faithfulness_curve(model, ps, EdgeScores.from_named(graph, exact, {"method": SINGLE_EDGE}), metric=metric)
    gap = curve.m_full - curve.m_empty
    curve.settings["additivity"] = None if gap == 0 else sum(exact.values()) / gap
    top = max(abs(v) for v in exact.values())
    curve.settings["edges_above_1pct"] = sum(abs(v) > 0.01 * top for v in exact.values())
    timings[f"curve {SINGLE_EDGE}"] = round(time.time() - t, 2)
    return curve


def of_reference(curve: Any, ref: Any) -> float | None:
    """A curve's CPR as a fraction of the exact reference's (None, undefined, if the reference's is 0)."""
    return None if ref.cpr == 0 else curve.cpr / ref.cpr


def pick_circuit(ig: Any, curve: Any, **settings: Any) -> Any:
    """The EAP-IG circuit: the smallest curve fraction with f >= 0.8, else the most faithful one."""
    from circuits.engines.discovery import circuit_from_mask, select_topn

    f = curve.faithfulness
    good = [i for i, x in enumerate(f) if x >= 0.8]
    i = good[0] if good else max(range(len(f)), key=lambda j: f[j])
    n_top = curve.n_edges_requested[i]
    return circuit_from_mask(ig.graph, select_topn(ig.graph, ig.scores, n_top), ig.scores, method="eap-ig-inputs",
                                 n_top=n_top, fraction=curve.percentages[i], faithfulness=f[i], **settings)


def stability(model: Any, ps: Any, ig: Any, circuit: Any, steps: int, metric: str, tau: float, n_boot: int,
              seed: int) -> dict[str, Any]:
    """{"eap_ig": Stability of the EAP-IG top-n circuit, "acdc": Stability of ACDC} over bootstrap
    resamples of the prompts (ACDC: at most 2 resamples, it is the slow one)."""
    from circuits.engines.attribution import attribute_edges
    from circuits.engines.discovery import acdc, bootstrap_stability, circuit_mask, select_topn

    graph, n_top, cand = ig.graph, circuit.settings["n_top"], candidates(ig)
    ig_stab = bootstrap_stability(ps, lambda p: select_topn(graph, attribute_edges(
        model, p, method="eap-ig-inputs", steps=steps, metric=metric).scores, n_top), n_boot=n_boot, seed=seed)
    acdc_stab = bootstrap_stability(ps, lambda p: circuit_mask(acdc(model, p, tau, candidates=cand, progress=False),
                                                               graph),
                                    n_boot=min(n_boot, 2), seed=seed)
    return {"eap_ig": ig_stab, "acdc": acdc_stab}


def figures(curve_set: dict[str, Any], ig: Any, circuit: Any, title: str, ref: Any = None) -> dict[str, Any]:
    """{"curves": the MIB curves (and the exact reference), "circuit": the EAP-IG circuit with its edge scores}."""
    from circuits.figures import circuit_figure, faithfulness_curves

    graph = ig.graph
    weighted = [(*graph_edge(e), score) for e, score in circuit.edges.items()]
    def label(k: str) -> str:  # the per-position curve's x is the share of (edge, position) pairs
        return f"{k} (x: % of pairs)" if k == PER_POSITION else k

    return {"curves": faithfulness_curves({label(k): c.to_dict() for k, c in curve_set.items()},
                                          title=f"MIB faithfulness, {title}",
                                          reference=None if ref is None else ref.to_dict()),
            "circuit": circuit_figure({}, weighted, graph.n_layers, title=f"EAP-IG circuit ({len(circuit.edges)} "
                                      f"edges, f = {circuit.settings['faithfulness']:.2f})")}


@dataclass
class DiscoverResult:
    """Everything :func:`run` found, and the figures drawn from it."""

    model: Any
    spec: str
    task: str
    n: int
    seed: int
    ps: Any
    metric: str
    options: dict[str, Any]
    steps: int
    tau: float
    scores: dict[str, Any]
    acdc: Any
    curves: dict[str, Any]
    reference: Any
    circuit: Any
    stability: dict[str, Any]
    agreement: Any
    figures: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def data(self) -> dict[str, Any]:
        """The numbers, as plain data for the result file."""
        graph = self.scores["EAP-IG-inputs"].graph
        return {
            "settings": {"split": self.ps.provenance["options"]["split"], "task_options": self.options,
                         "metric": self.metric, "steps": self.steps, "acdc_tau": self.tau,
                         "acdc_candidates": max(10, graph.n_edges // 10), "ablation": "corrupted"},
            "prompts": self.ps.describe(),
            "mib": {k: c.to_dict() for k, c in self.curves.items()},
            "exact_reference": self.reference.to_dict(),
            "cpr_of_reference": {k: of_reference(c, self.reference) for k, c in self.curves.items()},
            "acdc": {**self.acdc.to_dict(), "stability": self.stability["acdc"].to_dict()},
            "eap_ig_circuit": {**self.circuit.to_dict(), "stability": self.stability["eap_ig"].to_dict()},
            "agreement": self.agreement.to_dict(),
            "top_edges": {k: s.ranked()[:20] for k, s in self.scores.items() if k != "ACDC"},
            "checks": {k: {"verification": s.settings.get("verification"), "completeness": s.settings.get("completeness"),
                           "position_verification": s.settings.get("position_verification")}
                       for k, s in self.scores.items() if k != "ACDC"},
            "timings_s": self.timings, "seconds": round(self.seconds, 2),
        }


def run(spec: str = "zoo:toyworld", task: str = "ioi", n: int = 32, seed: int = 0, device: str | None = None,
        steps: int = 5, tau: float = 0.02, n_boot: int = 3, progress: bool = True, keep: float = 0.8
        ) -> DiscoverResult:
    """Every step on ``spec``; ``tau`` (ACDC threshold, nats of KL), ``steps`` and ``keep`` (the exact
    reference's pruning rate) are checked first."""
    from circuits.engines.agreement import agreement_report
    from circuits.engines.discovery import check_tau
    from circuits.models import load_model
    from circuits.tasks import get_task

    get_task(task)
    check_tau(tau)
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep < 1:
        raise ValueError(f"keep (the share of the edges each exact-reference round keeps) must be in (0, 1), "
                         f"got {keep!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps (EAP-IG integration steps) must be a positive integer, got {steps!r}")
    t0 = time.time()
    timings: dict[str, float] = {}
    model = load_model(spec, device=device)
    ps, metric, options = prompts(model, spec, task, n, seed)
    scores = attribute(model, ps, steps, metric, timings)
    ig = scores["EAP-IG-inputs"]
    t = time.time()
    ig.settings["position_verification"] = verify_positions(model, ps, ig, metric)
    timings["position verification"] = round(time.time() - t, 2)
    t = time.time()
    ac, scores["ACDC"] = run_acdc(model, ps, ig, tau, progress)
    timings["ACDC"] = round(time.time() - t, 2)
    print(f"[discover] ACDC: {len(ac.edges)} edges, {timings['ACDC']} s", flush=True)
    curve_set = curves(model, ps, scores, metric, timings)
    ref = reference(model, ps, metric, keep, timings, progress)
    circuit = pick_circuit(ig, curve_set["EAP-IG-inputs"], steps=steps, task=task, model=spec)
    t = time.time()
    stab = stability(model, ps, ig, circuit, steps, metric, tau, n_boot, seed)
    timings["stability"] = round(time.time() - t, 2)
    t = time.time()
    agreement = agreement_report(model, ps, method="eap-ig-inputs", steps=steps, metric=metric, strict=False)
    timings["agreement"] = round(time.time() - t, 2)
    single = single_edge_curve(model, ps, ig.graph, agreement, metric, timings)
    if single is not None:
        curve_set[SINGLE_EDGE] = single
    figs = figures(curve_set, ig, circuit, f"{task} on {spec}", ref)
    return DiscoverResult(model, spec, task, n, seed, ps, metric, options, steps, tau, scores, ac, curve_set, ref,
                          circuit, stab, agreement, figs, timings, time.time() - t0)


def _number(x: float | None) -> str:
    return "undefined" if x is None else f"{x:.3f}"


def summary(r: DiscoverResult) -> str:
    """The printed summary: MIB curves, the circuits and their stability, the agreement report."""
    graph = r.scores["EAP-IG-inputs"].graph
    lines = [f"circuit discovery: {r.task} on {r.spec} ({len(r.ps)} prompts, {graph.n_edges} edges)",
             f"{'method':20s} {'CPR':>6s} {'of ref':>6s} {'CMD':>6s}  faithfulness at 0.1 .. 100% of edges"]
    ref = r.reference
    for name, c in r.curves.items():
        frac = of_reference(c, ref)
        lines.append(f"{name:20s} {c.cpr:6.3f} {'undef' if frac is None else f'{frac:.2f}':>6s} {c.cmd:6.3f}  "
                     + " ".join(f"{f:5.2f}" for f in c.faithfulness))
    lines.append(f"{'exact reference':20s} {ref.cpr:6.3f} {'1.00':>6s} {ref.cmd:6.3f}  "
                 + " ".join(f"{f:5.2f}" for f in ref.faithfulness))
    small = ref.settings["smallest"]
    lines.append(f"exact reference: greedy pruning with exact edge patching, {100 * (1 - ref.settings['keep']):.0f}% "
                 f"of the kept edges per round, {ref.settings['evaluations']} circuits evaluated; "
                 + ("no circuit reached f = 0.8" if small is None else
                    f"smallest circuit with f >= 0.8: {small['n_edges']} edges ({100 * small['fraction']:.1f}%), "
                    f"f = {small['faithfulness']:.3f}"))
    pp = r.curves.get(PER_POSITION)
    if pp is not None:
        at = ", ".join(f"{100 * p:g}%: f {f:.2f}, {d} edges ({100 * d / graph.n_edges:.0f}%)" for p, f, d in
                       zip(pp.percentages, pp.faithfulness, pp.settings["distinct_edges"]) if 0.05 <= p <= 0.5)
        lines.append(f"{PER_POSITION}: fractions of the {pp.total_edges} (edge, position) pairs "
                     f"({pp.settings['positions']} positions), so its 'of ref' compares unlike units; "
                     f"distinct edges held at {at}")
    se = r.curves.get(SINGLE_EDGE)
    if se is not None:
        add = se.settings["additivity"]
        lines.append(f"{SINGLE_EDGE}: ranked by each edge's exact effect alone (a perfect per-edge attribution); "
                     f"those effects sum to {'undefined' if add is None else f'{add:.2f}'} times the full-minus-empty "
                     f"gap (1 if they added up); {se.settings['edges_above_1pct']} of {graph.n_edges} edges have an "
                     f"effect above 1% of the largest")
    ig_stab, ac_stab, c = r.stability["eap_ig"], r.stability["acdc"], r.circuit
    lines += ["", f"EAP-IG circuit: {len(c.edges)} edges at {100 * c.settings['fraction']:.1f}% "
                  f"(f = {c.settings['faithfulness']:.3f}); bootstrap edge Jaccard {ig_stab.mean:.2f} "
                  f"(min {ig_stab.min:.2f}, {ig_stab.n_boot} resamples)",
              f"ACDC (tau {r.tau}, KL): {len(r.acdc.edges)} edges; bootstrap edge Jaccard {ac_stab.mean:.2f} "
              f"({ac_stab.n_boot} resamples)"]
    for name, sc in r.scores.items():
        v = sc.settings.get("verification")
        comp = sc.settings.get("completeness", {})
        if v is not None:
            flagged = ", ".join(f"{f['node']} ({f['attribution']:+.2f} vs exact {f['exact']:+.2f})" for f in v["flagged"])
            lines.append(f"{name}: top {len(v['checked'])} heads checked against exact patching, "
                         f"{len(v['flagged'])} flagged{': ' + flagged if flagged else ''}; completeness gap "
                         f"{_number(comp.get('gap'))}")
        pv = sc.settings.get("position_verification")
        if pv is not None:
            flagged = ", ".join(f"{f['node']}@{f['position']} ({f['attribution']:+.2f} vs exact {f['exact']:+.2f})"
                                for f in pv["flagged"])
            lines.append(f"{PER_POSITION}: top {len(pv['checked'])} (head, position) pairs checked against exact "
                         f"patching at the position, {len(pv['flagged'])} flagged{': ' + flagged if flagged else ''}")
    a = r.agreement
    lines.append(f"agreement with exact patching: nodes (first-order attribution patching) pearson "
                 f"{_number(a.node.pearson)} spearman {_number(a.node.spearman)}; nodes (EAP-IG-inputs, sums of "
                 f"their edges) pearson {_number(a.node_from_edges.pearson)} spearman "
                 f"{_number(a.node_from_edges.spearman)}; edges pearson {_number(a.edge.pearson)} spearman "
                 f"{_number(a.edge.spearman)} ({len(a.edge.names)} edges)")
    for kind, level in (("node (first order)", a.node), ("node (EAP-IG-inputs)", a.node_from_edges),
                        ("edge", a.edge)):
        if level.sign_disagreements_top:
            lines.append(f"  WARNING: {kind} sign disagreements on top components: {level.sign_disagreements_top}")
    return "\n".join(lines)


def write(r: DiscoverResult, folder: str) -> list[str]:
    """discover.json (with provenance), eap_ig_circuit.json and the figures into ``folder``."""
    from circuits.engines import fastpaths
    from circuits.io import atomic_write_json
    from circuits.models import model_info
    from circuits.results import provenance, write_result

    paths = save_figures(r.figures, folder)
    circuit_path = os.path.join(folder, "eap_ig_circuit.json")
    atomic_write_json(circuit_path, {**r.circuit.to_dict(), "stability": r.stability["eap_ig"].to_dict()})
    data = {**r.data(), "figures": [os.path.relpath(p, folder) for p in paths]}
    prov = provenance(model=model_info(r.model), task=r.task, seed=r.seed, n=r.n,
                      fast_paths=fastpaths.report(r.model))
    return [write_result(os.path.join(folder, "discover.json"), "discover", data, prov), circuit_path, *paths]


def main(argv: list[str] | None = None) -> int:
    """``python -m analyses.discover [--task T] [--model M] [--n N] [--seed S] [--steps K] [--tau X] ...``."""
    ap = argparse.ArgumentParser(prog="python -m analyses.discover", description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="ioi")
    ap.add_argument("--model", default="zoo:toyworld")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=5, help="EAP-IG integration steps")
    ap.add_argument("--tau", type=float, default=0.02, help="ACDC threshold (KL, nats)")
    ap.add_argument("--n-boot", type=int, default=3, help="bootstrap resamples for circuit stability")
    ap.add_argument("--keep", type=float, default=0.8,
                    help="exact reference: share of the kept edges each greedy pruning round keeps")
    ap.add_argument("--device")
    ap.add_argument("--out", default="results")
    args = ap.parse_args(argv)

    def analyse(folder: str) -> str:
        r = run(args.model, args.task, args.n, args.seed, args.device, args.steps, args.tau, args.n_boot,
                keep=args.keep)
        write(r, folder)
        return summary(r) + f"\n\ndiscover.json in {r.seconds:.1f} s"

    return run_analysis(analyse, os.path.join(args.out, "discover", args.task, safe_name(args.model)),
                        n=args.n, seed=args.seed)


if __name__ == "__main__":
    raise SystemExit(main())
