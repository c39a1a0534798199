"""The All-for-One (AF1) three-stage search for the last-token subgraph (Mamidanna et al. 2025).

1. **Waiting.** For each depth L, replace every token's residual entering layer L
   by its context-aware mean (CAMA): no input-specific information that moved
   between tokens before L survives. L_wait = the largest L that keeps
   accuracy >= tau x full accuracy.
2. **Transfer.** With CAMA at L_wait, let only the last token read other
   positions in layers [L_wait, L_wait + L_tr) and make every query self-peek
   after that. L_tr = the fewest such layers that keep accuracy >= tau.
3. **Computation.** After the transfer layers the last token computes alone.

Then heads of the transfer layers are pruned greedily: a pruned head's last
token self-peeks too, as long as accuracy stays >= tau x full accuracy.
Layer and count conventions: 0-indexed layers, counts for the stage lengths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from circuits import metrics
from circuits.engines.ablation import Ablation, ablation_values
from circuits.engines.common import EngineRun, Metric, model_settings
from circuits.engines.interventions import Edit, run_variants
from circuits.engines.sites import SITES, hook_name
from circuits.prompts import PromptSet
from circuits.records import Record


def af1_schedule(n_layers: int, wait: int, transfer: int, pruned: tuple[tuple[int, int], ...] = (),
                 n_heads: int | None = None) -> dict[int, Any]:
    """Peeking schedule: full before ``wait``, transfer for ``transfer`` layers, self after.

    ``pruned`` heads (layer, head) of the transfer layers self-peek at the last token too.
    """
    sched: dict[int, Any] = {}
    for layer in range(wait, n_layers):
        if layer < wait + transfer:
            gone = [h for (pl, h) in pruned if pl == layer]
            sched[layer] = {h: ("self" if h in gone else "transfer") for h in range(n_heads)} if gone else "transfer"
        else:
            sched[layer] = "self"
    return sched


@dataclass
class AF1Result(Record):
    """All-for-One's result: the wait and transfer layers found, accuracies and metrics with the
    peeking schedule, the search stages and the pruned heads."""

    wait: int
    transfer: int
    accuracy_full: float
    accuracy: float
    faithfulness: float  # accuracy relative to the full model
    metric_full: float
    metric: float
    metric_empty: float  # CAMA at wait, no transfer at all
    normalized_faithfulness: float
    stage1: list[dict[str, float]] = field(default_factory=list)
    stage2: list[dict[str, float]] = field(default_factory=list)
    pruned_heads: list[list[int]] = field(default_factory=list)
    kept_heads: list[list[int]] = field(default_factory=list)
    accuracy_pruned: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def _acc(logits: Tensor, ps: PromptSet) -> Tensor:
    return metrics.accuracy(logits, ps, reduce="none").float()


@torch.no_grad()
def all_for_one(model: Any, ps: PromptSet, *, reference: PromptSet | None = None, tau: float = 0.9,
                metric: str | Metric = "logit_diff", bos: bool = True, prune_heads: bool = True,
                memory_budget: int | None = None) -> AF1Result:
    """Run the three stages (and head pruning) on ``ps``'s clean prompts.

    ``reference`` supplies the CAMA means (default: ``ps`` itself; a larger
    fresh sample of the same task is better). Accuracies are top-1 at END.
    """
    if not 0 < tau <= 1:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    run_ = EngineRun(model, ps, metric, full_vocabulary=True)  # accuracy reads every logit
    ps, metric_name = run_.ps, run_.metric.name
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    site = SITES["resid_pre"]
    cama = ablation_values(model, ps, ps.clean, [(site, layer) for layer in range(n_layers)],
                           Ablation("cama", reference=reference, reference_tokens="clean"))
    end = ps.positions["END"]

    def run(variants: list[tuple[int | None, dict]]) -> tuple[Tensor, Tensor]:
        edits = [[] if w is None else [Edit(site, w, cama[hook_name(site, w)])] for w, _ in variants]
        logits = run_variants(model, ps.clean, end, edits, memory_budget, schedules=[s for _, s in variants],
                              ps=ps, bos=bos)
        return (torch.stack([_acc(lg, ps).mean() for lg in logits]),
                torch.stack([run_.evaluate(lg).mean() for lg in logits]))

    # stage 1: CAMA at each depth
    acc1, m1 = run([(None, {})] + [(w, {}) for w in range(n_layers)])
    acc_full, m_full = float(acc1[0]), float(m1[0])
    if acc_full == 0:
        raise ValueError("the full model gets no prompt right; AF1 faithfulness is undefined")
    stage1 = [{"wait": w, "accuracy": float(acc1[w + 1]), "faithfulness": float(acc1[w + 1]) / acc_full}
              for w in range(n_layers)]
    ok = [r["wait"] for r in stage1 if r["faithfulness"] >= tau]
    wait = max(ok) if ok else 0

    # stage 2: transfer layers after the wait
    lengths = list(range(0, n_layers - wait + 1))
    acc2, m2 = run([(wait, af1_schedule(n_layers, wait, t)) for t in lengths])
    stage2 = [{"transfer": t, "accuracy": float(acc2[i]), "faithfulness": float(acc2[i]) / acc_full}
              for i, t in enumerate(lengths)]
    ok2 = [r["transfer"] for r in stage2 if r["faithfulness"] >= tau and r["transfer"] > 0]
    transfer = min(ok2) if ok2 else n_layers - wait
    i_t = lengths.index(transfer)
    m_empty, m_af1 = float(m2[0]), float(m2[i_t])

    # per-head pruning inside the transfer layers (greedy, least important first)
    pruned: list[tuple[int, int]] = []
    acc_pruned = float(acc2[i_t])
    if prune_heads:
        candidates = [(layer, h) for layer in range(wait, wait + transfer) for h in range(n_heads)]
        while candidates:
            trial = [tuple(pruned + [c]) for c in candidates]
            accs, _ = run([(wait, af1_schedule(n_layers, wait, transfer, t, n_heads)) for t in trial])
            best = int(torch.argmax(accs))
            if float(accs[best]) / acc_full < tau:
                break
            pruned.append(candidates.pop(best))
            acc_pruned = float(accs[best])
    kept = [[layer, h] for layer in range(wait, wait + transfer) for h in range(n_heads) if (layer, h) not in pruned]
    den = m_full - m_empty
    return AF1Result(
        wait, transfer, acc_full, float(acc2[i_t]), float(acc2[i_t]) / acc_full, m_full, m_af1, m_empty,
        (m_af1 - m_empty) / den if den else float("nan"), stage1, stage2,
        [list(p) for p in pruned], kept, acc_pruned,
        {"engine": "all_for_one", "tau": tau, "metric": metric_name, "bos": bos, **model_settings(model),
         "n_prompts": len(ps), "reference": "prompts" if reference is None else f"{len(reference)} prompts"})


@dataclass
class KnockoutCurve(Record):
    """AF1's necessity test: accuracy and metric when END may not read other tokens in one layer."""

    layers: list[int]  # -1: no knockout (the full model), then each layer
    accuracy: list[float]  # top-1 accuracy at END
    metric: list[float]  # mean metric
    settings: dict[str, Any] = field(default_factory=dict)


def knockout_curve(model: Any, ps: PromptSet, *, bos: bool = True, metric: str | Metric = "logit_diff",
                   memory_budget: int | None = None) -> KnockoutCurve:
    """AF1's necessity test: END may not read other tokens, one layer at a time (layer -1: no knockout)."""
    run_ = EngineRun(model, ps, metric, full_vocabulary=True)  # accuracy reads every logit
    ps = run_.ps
    n_layers = int(model.cfg.n_layers)
    scheds = [{}] + [{layer: "knockout"} for layer in range(n_layers)]
    logits = run_variants(model, ps.clean, ps.positions["END"], [[] for _ in scheds], memory_budget,
                          schedules=scheds, ps=ps, bos=bos)
    return KnockoutCurve(list(range(-1, n_layers)), [float(_acc(lg, ps).mean()) for lg in logits],
                         [float(run_.evaluate(lg).mean()) for lg in logits],
                         {"engine": "knockout_curve", "bos": bos, "metric": run_.metric.name, **model_settings(model),
                          "n_prompts": len(ps)})
