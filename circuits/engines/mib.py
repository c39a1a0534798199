"""MIB-standard circuit evaluation: faithfulness curves, CPR and CMD.

For each edge fraction p in {0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100}% the
circuit is the top int(p * n_edges) edges (by |score|, or greedy), pruned; its
faithfulness is f = (m(C) - m(empty)) / (m(full) - m(empty)). As in MIB's
``evaluate_area_under_curve``: CPR is the trapezoid area under f over the
fractions (0.001 .. 1, linear x unless ``log_scale``), CMD the trapezoid area of
|1 - f|. All circuits and the empty one share tiled forward passes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from circuits.engines.attribution import EdgeScores
from circuits.engines.common import Metric, resolve_metric
from circuits.engines.discovery import select_greedy, select_topn
from circuits.engines.edge_patching import evaluate_edge_circuits
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
                       log_scale: bool = False, memory_budget: int | None = None) -> FaithfulnessCurve:
    """Faithfulness at each edge fraction plus CPR / CMD (see the module docstring)."""
    if selection not in ("topn", "greedy"):
        raise ValueError(f"selection must be 'topn' or 'greedy', got {selection!r}")
    metric_name = resolve_metric(metric).name
    graph = scores.graph
    pick = select_topn if selection == "topn" else select_greedy
    masks = [pick(graph, scores.scores, int(p * graph.n_edges), absolute=absolute) for p in percentages]
    empty = torch.zeros_like(graph.mask)
    vals = evaluate_edge_circuits(model, ps, [graph.mask, empty, *masks], ablation=ablation, reference=reference,
                                  metric=metric, memory_budget=memory_budget).mean(1)
    m_full, m_empty = float(vals[0]), float(vals[1])
    check_difference(m_full, m_empty, f"the full model's metric minus the empty circuit's ({m_full:.4g} - "
                                      f"{m_empty:.4g}: clean and corrupted prompts behave alike)")
    f = [(float(v) - m_empty) / (m_full - m_empty) for v in vals[2:]]
    cpr, cmd = area_under(list(percentages), f, log_scale)
    return FaithfulnessCurve(
        list(percentages), [int(p * graph.n_edges) for p in percentages], [int(m.sum()) for m in masks], f, cpr,
        cmd, sum(f) / len(f), m_full, m_empty, graph.n_edges,
        {"ablation": ablation, "metric": metric_name, "selection": selection, "absolute": absolute,
         "log_scale": log_scale, "method": scores.settings.get("method"), "n_prompts": len(ps)})
