"""MIB-standard circuit evaluation: faithfulness curves, CPR and CMD.

For each edge fraction p in {0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100}% the
circuit is the top int(p * n_edges) edges (by |score|, or greedy), pruned; its
faithfulness is f = (m(C) - m(empty)) / (m(full) - m(empty)). As in MIB's
``evaluate_area_under_curve``: CPR is the trapezoid area under f over the
fractions (0.001 .. 1, linear x unless ``log_scale``), CMD the trapezoid area of
|1 - f|. All circuits and the empty one share tiled forward passes.

:func:`exact_reference_curve` is what the curves are read against: how faithful a circuit of
each size can be made by greedy pruning with exact edge patching (ACDC-style, without any
first-order approximation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from circuits.engines.attribution import EdgeScores
from circuits.engines.common import Metric, resolve_metric
from circuits.engines.discovery import prune, select_greedy, select_topn
from circuits.engines.edge_patching import EdgeEvaluator, evaluate_edge_circuits
from circuits.engines.edges import edge_graph
from circuits.metrics import check_difference
from circuits.prompts import PromptSet
from circuits.records import Record

PERCENTAGES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass
class FaithfulnessCurve(Record):
    """MIB's faithfulness curve of one method: f at each fraction of the edges kept, and its areas."""

    percentages: list[float]  # fractions of the edges kept (0..1)
    n_edges_requested: list[int]
    n_edges_kept: list[int]  # after pruning dangling edges
    faithfulness: list[float]  # (m(C) - m(empty)) / (m(M) - m(empty)) at each fraction
    cpr: float  # area under f (higher: more faithful small circuits)
    cmd: float  # area under |1 - f| (lower is better)
    average: float  # mean f over the fractions
    m_full: float  # the metric with every edge kept
    m_empty: float  # the metric with every edge ablated
    total_edges: int
    settings: dict[str, Any] = field(default_factory=dict)


def area_under(x: Sequence[float], f: Sequence[float], log_scale: bool = False) -> tuple[float, float]:
    """(CPR, CMD): trapezoid areas of f and of |1 - f| over x, exactly as MIB computes them."""
    if len(x) != len(f) or len(x) < 2:
        raise ValueError("area_under needs two equally long sequences of at least 2 points")
    cpr = cmd = 0.0
    for i in range(len(f) - 1):
        x1, x2 = (math.log(x[i]), math.log(x[i + 1])) if log_scale else (x[i], x[i + 1])
        cmd += (x2 - x1) * (abs(1.0 - f[i]) + abs(1.0 - f[i + 1])) / 2
        cpr += (x2 - x1) * (f[i] + f[i + 1]) / 2
    return cpr, cmd


def faithfulness_curve(model: Any, ps: PromptSet, scores: EdgeScores, *, ablation: str = "corrupted",
                       reference: PromptSet | None = None, metric: str | Metric = "logit_diff",
                       selection: str = "topn", absolute: bool = True, percentages: Sequence[float] = PERCENTAGES,
                       log_scale: bool = False, memory_budget: int | None = None,
                       per_position: bool = False) -> FaithfulnessCurve:
    """Faithfulness at each edge fraction plus CPR / CMD (see the module docstring).

    ``per_position``: circuits of (edge, token position) pairs, the top ones by the scores'
    ``per_position`` [P, W, R] (attribute_edges(..., per_position=True)); the fractions are of the
    P x n_edges pairs, and nothing is pruned (``n_edges_kept`` counts pairs; ``settings["distinct_edges"]``
    how many edges each circuit holds at one position at least, ``settings["positions"]`` P).
    """
    if selection not in ("topn", "greedy"):
        raise ValueError(f"selection must be 'topn' or 'greedy', got {selection!r}")
    metric_name = resolve_metric(metric).name
    graph = scores.graph
    full, empty = graph.mask, torch.zeros_like(graph.mask)
    if per_position:
        if scores.per_position is None:
            raise ValueError("per_position=True needs position-resolved scores: attribute_edges(..., per_position=True)")
        if selection != "topn":
            raise ValueError("per-position circuits are selected top-n only (greedy pruning is per edge)")
        n_pos = scores.per_position.shape[0]
        full = graph.mask[None].expand(n_pos, *graph.mask.shape).clone()
        empty = torch.zeros_like(full)
        ranked = (scores.per_position.abs() if absolute else scores.per_position).float().masked_fill(~full, -math.inf)
        order = torch.argsort(ranked.flatten(), descending=True)
        total = int(full.sum())
        masks = []
        for p in percentages:
            m = torch.zeros_like(full)
            m.view(-1)[order[:int(p * total)]] = True
            masks.append(m)
    else:
        pick = select_topn if selection == "topn" else select_greedy
        masks = [pick(graph, scores.scores, int(p * graph.n_edges), absolute=absolute) for p in percentages]
        total = graph.n_edges
    vals = evaluate_edge_circuits(model, ps, [full, empty, *masks], ablation=ablation, reference=reference,
                                  metric=metric, memory_budget=memory_budget).mean(1)
    m_full, m_empty = float(vals[0]), float(vals[1])
    check_difference(m_full, m_empty, f"the full model's metric minus the empty circuit's ({m_full:.4g} - "
                                      f"{m_empty:.4g}: clean and corrupted prompts behave alike)")
    f = [(float(v) - m_empty) / (m_full - m_empty) for v in vals[2:]]
    cpr, cmd = area_under(list(percentages), f, log_scale)
    return FaithfulnessCurve(
        list(percentages), [int(p * total) for p in percentages], [int(m.sum()) for m in masks], f, cpr,
        cmd, sum(f) / len(f), m_full, m_empty, total,
        {"ablation": ablation, "metric": metric_name, "selection": selection, "absolute": absolute,
         "log_scale": log_scale, "method": scores.settings.get("method"), "n_prompts": len(ps),
         "per_position": per_position,
         **({"positions": int(full.shape[0]), "distinct_edges": [int(m.any(0).sum()) for m in masks]}
            if per_position else {})})


@torch.no_grad()
def exact_reference_curve(model: Any, ps: PromptSet, *, ablation: str = "corrupted",
                          reference: PromptSet | None = None, metric: str | Metric = "logit_diff", keep: float = 0.8,
                          tolerance: float = 0.02, percentages: Sequence[float] = PERCENTAGES, log_scale: bool = False,
                          memory_budget: int | None = None, progress: bool = True) -> FaithfulnessCurve:
    """How faithful a circuit of each size can be made: greedy edge pruning with exact edge patching.

    Every value is exact (batched edge patching, ablation as for the MIB curves). The kept edges are
    ranked by how close to 1 their single removal from the current circuit leaves f. Each step removes
    the longest prefix of that ranking, of the ``1 - keep`` share of the kept edges or a halving of it,
    whose joint removal (dangling edges dropped) moves f away from 1 by at most ``tolerance``, and
    records the circuit; when no prefix qualifies the ranking is recomputed for the current circuit,
    and if even its best single edge does not qualify, that edge is removed anyway (the circuit must
    shrink). Until no edge is left. At each fraction p the reference is the recorded circuit of at most
    int(p * n_edges) edges whose f is closest to 1. Greedy, so a lower bound on the best circuit of each
    size, not the optimum (a method may beat it).

    ``settings``: ``path`` ([edges kept, f] per round), ``evaluations``, ``keep``, and ``smallest``:
    the smallest recorded circuit with f >= 0.8 (its edges, size and f), or None.
    """
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep < 1:
        raise ValueError(f"keep (the share of the edges each pruning round keeps) must be in (0, 1), got {keep!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < 1:
        raise ValueError(f"tolerance (how far one pruning step may move f from 1) must be in [0, 1), got {tolerance!r}")
    graph = edge_graph(model)
    ev = EdgeEvaluator(model, ps, ablation=ablation, reference=reference, metric=metric, memory_budget=memory_budget)
    m_full, m_empty = ev.metric([graph.mask, torch.zeros_like(graph.mask)]).mean(1).tolist()
    check_difference(m_full, m_empty, f"the full model's metric minus the empty circuit's ({m_full:.4g} - "
                                      f"{m_empty:.4g}: clean and corrupted prompts behave alike)")

    def faith(circuits: list[torch.Tensor]) -> list[float]:
        return [(v - m_empty) / (m_full - m_empty) for v in ev.metric(circuits).mean(1).tolist()]

    mask, evaluations = prune(graph, graph.mask), 2
    path: list[tuple[int, float, torch.Tensor]] = [(int(mask.sum()), faith([mask])[0], mask)]
    f_cur, order, fresh = path[0][1], [], False
    bar = tqdm(total=int(mask.sum()), desc="exact reference", disable=not progress, leave=False)
    while mask.any():
        live = [e for e in order if mask[e[0], e[1]]]
        if not live:  # rank the kept edges by their exact single removal from the current circuit
            edges = torch.nonzero(mask).tolist()
            f = faith([prune(graph, _without(mask, [e])) for e in edges])
            evaluations += len(edges)
            order, fresh = [e for _, e in sorted(zip(f, edges), key=lambda t: abs(1.0 - t[0]))], True
            continue
        sizes = sorted({max(1, round((1 - keep) * len(live)) >> i) for i in range(64)}, reverse=True)
        trials = [prune(graph, _without(mask, live[:k])) for k in sizes]
        f = faith(trials)
        evaluations += len(trials)
        ok = [i for i, x in enumerate(f) if abs(1.0 - x) <= abs(1.0 - f_cur) + tolerance]
        if ok or fresh:  # the largest prefix that costs at most ``tolerance``; else the best single edge
            i = ok[0] if ok else len(sizes) - 1
            bar.update(int(mask.sum()) - int(trials[i].sum()))
            mask, f_cur, fresh = trials[i], f[i], False
            path.append((int(mask.sum()), f_cur, mask))
        else:  # the ranking is stale: refresh it
            order = []
    bar.close()
    requested = [int(p * graph.n_edges) for p in percentages]
    chosen = [min((pt for pt in path if pt[0] <= n), key=lambda pt: abs(1.0 - pt[1])) for n in requested]
    faithfulness = [pt[1] for pt in chosen]
    cpr, cmd = area_under(list(percentages), faithfulness, log_scale)
    good = [pt for pt in path if pt[1] >= 0.8]
    small = min(good, key=lambda pt: pt[0]) if good else None
    smallest = None if small is None else {
        "n_edges": small[0], "faithfulness": small[1], "fraction": small[0] / graph.n_edges,
        "edges": [graph.edge(w, r) for w, r in torch.nonzero(small[2]).tolist()]}
    return FaithfulnessCurve(
        list(percentages), requested, [pt[0] for pt in chosen], faithfulness, cpr, cmd,
        sum(faithfulness) / len(faithfulness), m_full, m_empty, graph.n_edges,
        {"ablation": ablation, "metric": resolve_metric(metric).name, "selection": "exact-greedy",
         "method": "exact-greedy", "keep": keep, "log_scale": log_scale, "n_prompts": len(ps),
         "tolerance": tolerance, "evaluations": evaluations, "path": [[n, f] for n, f, _ in path], "smallest": smallest})


def _without(mask: torch.Tensor, edges: list[list[int]]) -> torch.Tensor:
    """``mask`` with the (writer, reader) ``edges`` removed (a copy)."""
    out = mask.clone()
    for w, r in edges:
        out[w, r] = False
    return out
