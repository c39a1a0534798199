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

The search reports what it could not find: a wait of 0 is trivial (CAMA of the
embeddings is the identity), and a transfer length that never reaches tau is
reported as the best one seen, flagged (``tau_met``, ``warnings``), with per-prompt
values and a bootstrap interval. ``others="full"`` is a variant in which the
non-last tokens keep their normal attention (only the last token is restricted).
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
from circuits.metrics import bootstrap_ratio
from circuits.prompts import PromptSet
from circuits.records import Record

OTHERS = ("self", "full")


def af1_schedule(n_layers: int, wait: int, transfer: int, pruned: tuple[tuple[int, int], ...] = (),
                 n_heads: int | None = None, others: str = "self") -> dict[int, Any]:
    """Peeking schedule: full before ``wait``, transfer for ``transfer`` layers, the last token alone after.

    ``others="self"`` (the paper's): every other token self-peeks from ``wait`` on.
    ``others="full"``: every other token keeps its normal attention, and only the last
    token is restricted (full in the transfer layers, itself after), so partial results
    that other positions compute (a running sum at an operand) stay available.
    ``pruned`` heads (layer, head) of the transfer layers read like the last token after
    the transfer.
    """
    if others not in OTHERS:
        raise ValueError(f"others must be one of {OTHERS}, got {others!r}")
    during, after = ("transfer", "self") if others == "self" else ("full", "knockout")
    sched: dict[int, Any] = {}
    for layer in range(wait, n_layers):
        if layer < wait + transfer:
            gone = [h for (pl, h) in pruned if pl == layer]
            sched[layer] = {h: (after if h in gone else during) for h in range(n_heads)} if gone else during
        else:
            sched[layer] = after
    return sched


@dataclass
class AF1Result(Record):
    """All-for-One's result: the wait and transfer layers found, accuracies and metrics with the
    peeking schedule, the search stages, the pruned heads, and whether each stage met tau.

    A wait of 0 is trivial, not a finding: CAMA of layer 0's input (the embeddings)
    is the identity, so it always keeps the full accuracy (``wait_trivial``). When no
    transfer length meets tau, ``transfer`` is the most faithful one seen and
    ``tau_met["transfer"]`` is False; the result is then a best effort, not an AF1
    subgraph (``warnings`` says so).
    """

    wait: int
    transfer: int
    accuracy_full: float
    accuracy: float
    faithfulness: float  # accuracy relative to the full model
    metric_full: float
    metric: float
    metric_empty: float  # CAMA at wait, no transfer at all
    normalized_faithfulness: float | None  # (metric - empty) / (full - empty); None: undefined
    stage1: list[dict[str, float]] = field(default_factory=list)
    stage2: list[dict[str, float]] = field(default_factory=list)
    pruned_heads: list[list[int]] = field(default_factory=list)
    kept_heads: list[list[int]] = field(default_factory=list)
    accuracy_pruned: float | None = None
    wait_trivial: bool = False
    tau_met: dict[str, bool] = field(default_factory=dict)  # {"wait", "transfer"}
    ci: dict[str, list[float] | None] = field(default_factory=dict)  # 95% bootstrap interval of faithfulness
    per_example: dict[str, list[float]] = field(default_factory=dict)  # accuracy (0/1) per prompt
    warnings: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)


def _acc(logits: Tensor, ps: PromptSet) -> Tensor:
    return metrics.accuracy(logits, ps, reduce="none").float()


@torch.no_grad()
def all_for_one(model: Any, ps: PromptSet, *, reference: PromptSet | None = None, tau: float = 0.9,
                metric: str | Metric = "logit_diff", bos: bool = True, prune_heads: bool = True,
                others: str = "self", memory_budget: int | None = None) -> AF1Result:
    """Run the three stages (and head pruning) on ``ps``'s clean prompts.

    ``reference`` supplies the CAMA means (default: ``ps`` itself; a larger
    fresh sample of the same task is better). ``others``: what the non-last tokens
    may read from the wait on (see :func:`af1_schedule`). Accuracies are top-1 at END.
    """
    if not 0 < tau <= 1:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    if others not in OTHERS:
        raise ValueError(f"others must be one of {OTHERS}, got {others!r}")
    run_ = EngineRun(model, ps, metric, full_vocabulary=True)  # accuracy reads every logit
    ps, metric_name = run_.ps, run_.metric.name
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    site = SITES["resid_pre"]
    cama = ablation_values(model, ps, ps.clean, [(site, layer) for layer in range(n_layers)],
                           Ablation("cama", reference=reference, reference_tokens="clean"))
    end = ps.positions["END"]

    def run(variants: list[tuple[int | None, dict]]) -> tuple[Tensor, Tensor]:
        """Per-prompt accuracy and metric [variants, b] of each (CAMA depth, schedule)."""
        edits = [[] if w is None else [Edit(site, w, cama[hook_name(site, w)])] for w, _ in variants]
        logits = run_variants(model, ps.clean, end, edits, memory_budget, schedules=[s for _, s in variants],
                              ps=ps, bos=bos)
        return (torch.stack([_acc(lg, ps) for lg in logits]).cpu(),
                torch.stack([run_.evaluate(lg) for lg in logits]).cpu())

    def schedule(wait: int, transfer: int, pruned: tuple = ()) -> dict:
        return af1_schedule(n_layers, wait, transfer, pruned, n_heads, others)

    warnings: list[str] = []
    # stage 1: CAMA at each depth
    acc1, m1 = run([(None, {})] + [(w, {}) for w in range(n_layers)])
    full_rows, acc_full, m_full = acc1[0], float(acc1[0].mean()), float(m1[0].mean())
    if acc_full == 0:
        raise ValueError("the full model gets no prompt right; AF1 faithfulness is undefined")
    stage1 = [{"wait": w, "accuracy": float(acc1[w + 1].mean()), "faithfulness": float(acc1[w + 1].mean()) / acc_full}
              for w in range(n_layers)]
    ok = [r["wait"] for r in stage1 if r["faithfulness"] >= tau]
    wait = max(ok) if ok else 0
    if wait == 0:
        warnings.append("no waiting period: CAMA after layer 0 already loses the task (a wait of 0 is trivial: "
                        "CAMA of the embeddings is the identity)")

    # stage 2: transfer layers after the wait
    lengths = list(range(0, n_layers - wait + 1))
    acc2, m2 = run([(wait, schedule(wait, t)) for t in lengths])
    stage2 = [{"transfer": t, "accuracy": float(acc2[i].mean()), "faithfulness": float(acc2[i].mean()) / acc_full}
              for i, t in enumerate(lengths)]
    ok2 = [r["transfer"] for r in stage2 if r["faithfulness"] >= tau and r["transfer"] > 0]
    if ok2:
        transfer = min(ok2)
    else:
        best = max((r for r in stage2 if r["transfer"] > 0), key=lambda r: r["faithfulness"])
        transfer = best["transfer"]
        warnings.append(f"no transfer length reaches tau = {tau}: the most faithful one seen ({transfer} layers, "
                        f"faithfulness {best['faithfulness']:.2f}) is reported; this is not an AF1 subgraph")
    i_t = lengths.index(transfer)
    af1_rows = acc2[i_t]
    m_empty, m_af1 = float(m2[0].mean()), float(m2[i_t].mean())

    # per-head pruning inside the transfer layers (greedy, least important first)
    pruned: list[tuple[int, int]] = []
    acc_pruned = float(af1_rows.mean())
    if prune_heads and ok2:
        candidates = [(layer, h) for layer in range(wait, wait + transfer) for h in range(n_heads)]
        while candidates:
            trial = [tuple(pruned + [c]) for c in candidates]
            accs, _ = run([(wait, schedule(wait, transfer, t)) for t in trial])
            means = accs.mean(1)
            best_i = int(torch.argmax(means))
            if float(means[best_i]) / acc_full < tau:
                break
            pruned.append(candidates.pop(best_i))
            acc_pruned = float(means[best_i])
    kept = [[layer, h] for layer in range(wait, wait + transfer) for h in range(n_heads) if (layer, h) not in pruned]
    den = m_full - m_empty
    return AF1Result(
        wait, transfer, acc_full, float(af1_rows.mean()), float(af1_rows.mean()) / acc_full, m_full, m_af1, m_empty,
        (m_af1 - m_empty) / den if abs(den) > 1e-8 else None, stage1, stage2,
        [list(p) for p in pruned], kept, acc_pruned,
        wait_trivial=wait == 0, tau_met={"wait": bool(ok) and wait > 0, "transfer": bool(ok2)},
        ci={"faithfulness": bootstrap_ratio(af1_rows, full_rows)},
        per_example={"full": full_rows.tolist(), "af1": af1_rows.tolist()}, warnings=warnings,
        settings={"engine": "all_for_one", "tau": tau, "metric": metric_name, "bos": bos, "others": others,
                  **model_settings(model), "n_prompts": len(ps),
                  "reference": "prompts" if reference is None else f"{len(reference)} prompts"})


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
