"""Recall vs reasoning on any model: ``python -m analyses.recall_reasoning`` (memorized facts vs in-context two-hop).

The paper's protocol details are not recoverable; this is the toolkit's default protocol (the
JSON's ``settings.protocol`` says so too). Steps, each a function that returns data so that a
notebook can run them cell by cell:

1. :func:`prompts` - task ``recall`` ("Milo lives in" -> a memorized city; corruption: another
   entity) and task ``reasoning`` (item -> container -> city with a distractor chain, the clean
   prompt asks about one of two items, the corrupted about the other). Zoo models use their
   recorded task options and held-out combinations (split "test"); other models the defaults,
   real-world capitals for recall, and split "all". A task whose clean accuracy is below
   ``floor`` stops the analysis (:class:`ModelFailsTask`); only correctly answered items are kept
   (at least ``min_items`` per task), split (seeded) into a selection and an evaluation half;
2. :func:`layer_restoration` - denoising activation patching of resid_post at END, normalized
   (LD_patched - LD_corr) / (LD_clean - LD_corr), per layer and task (all kept items);
3. :func:`head_effects` - on the selection half, the relative drop of the mean logit difference
   Delta(c) = (LD_full - LD_ablated(c)) / LD_full for every head, every layer's heads together and
   every MLP, under mean ablation (per position and template, over the task's own corrupted
   prompts) and zero ablation;
4. :func:`specialisation` - SI(c) = (Delta_recall - Delta_reason) / (|Delta_recall| + |Delta_reason| + eps)
   and a label: "recall" (SI > theta and Delta_recall > delta), "reasoning" (SI < -theta and
   Delta_reason > delta), "mixed" (both Delta > delta, |SI| <= theta) or "none";
5. :func:`choose_circuits` - R (Q): heads ranked by max(+-SI, 0) * max(Delta_own, 0) under mean
   ablation; k in 1..k_max chosen on the selection half to maximise own-task minus other-task drop;
6. :func:`dissociation` - on the evaluation half, accuracy and mean LD of each task with R and with
   Q ablated, each against ``n_controls`` seeded draws of as many random heads outside the circuit
   (control mean and 95% interval; does the circuit's drop exceed the upper bound?);
7. :func:`neuron_check` - MLP neurons at END: selectivity (mu_recall - mu_reason) / pooled std on the
   selection half; the top-k of each sign mean-ablated at END on the evaluation half, next to
   random neuron sets and the head-level effects;
8. :func:`figures` - the layer-wise profile, head-effect heatmaps, the 2x2 with control intervals
   and the restoration curves.

:func:`run` chains them; :func:`main` writes results/recall_reasoning/<model>/ (recall_reasoning.json
and the figures as PDF + PNG, as a unit) and prints a summary.

JSON keys (besides schema_version, analysis, provenance): ``settings`` (protocol and parameters);
``prompts`` (per task: built, accuracy, counterfactual accuracy, kept, dropped, selection and
evaluation sizes); ``layer_restoration`` (per task: normalized [layer], values, baseline);
``head_effects`` (per ablation kind and task: full LD and Delta [layer][head]); ``layer_effects``
(per kind and task: Delta of each layer's heads [layer] and of each MLP [layer]);
``specialisation`` (per kind: SI and labels for heads [layer][head], layer heads [layer], MLPs
[layer]); ``circuits`` (R and Q: heads, k, candidates with scores, selection-half drops per k);
``dissociation`` (per circuit and task: accuracy, LD, drops, control intervals, exceeds flags;
``double_dissociation``); ``neurons`` (top selective neurons, their effects and controls, the
head-level drops beside them); ``figures`` (file names); ``seconds``.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from analyses.common import run_analysis, safe_name, save_figures
from circuits.cli import ModelFailsTask

TASKS = ("recall", "reasoning")
KINDS = ("mean", "zero")
LABELS = ("recall", "reasoning", "mixed", "none")
FLOOR, MIN_ITEMS, THETA, DELTA, EPS = 0.8, 16, 0.5, 0.05, 1e-6
K_MAX, N_CONTROLS, N_NEURONS, N_NEURON_CONTROLS = 8, 50, 32, 20
PROTOCOL = ("the toolkit's default recall-vs-reasoning protocol (the paper's details are not recoverable): "
            "single-head and per-layer ablation effects on the relative logit difference, a specialisation "
            "index, circuits chosen on a selection half and evaluated on a held-out half against "
            "size-matched random controls, and an MLP-neuron check at END")


@dataclass
class TaskSet:
    """One task's prompts: as built, the correctly answered ones, and their two halves."""

    built: Any
    kept: Any
    selection: Any
    evaluation: Any
    info: dict[str, Any]


def task_options(spec: str) -> dict[str, dict[str, Any]]:
    """Options per task: a zoo model's recorded ones; for other models recall asks real-world capitals."""
    from circuits.zoo import task_options as zoo_options

    if spec.startswith("zoo:"):
        rec = zoo_options(spec)
        return {t: dict(rec.get(t, {})) for t in TASKS}
    return {"recall": {"facts": "world"}, "reasoning": {}}


@torch.no_grad()
def prompts(model: Any, spec: str, n: int, seed: int, floor: float = FLOOR, min_items: int = MIN_ITEMS,
            keep: str = "correct") -> dict[str, TaskSet]:
    """Both tasks' prompts, checked against ``floor`` and ``min_items``, halved with ``seed``.

    ``keep``: "correct" (the protocol) or "all" (every built item; for tests and debugging only).
    """
    from circuits import metrics
    from circuits.engines.forward import end_logits
    from circuits.tasks import build_task

    if keep not in ("correct", "all"):
        raise ValueError(f"keep must be 'correct' or 'all', got {keep!r}")
    split = "test" if spec.startswith("zoo:") else "all"
    out, failing = {}, []
    for i, (task, opts) in enumerate(task_options(spec).items()):
        ps = build_task(task, model.tokenizer, n=n, seed=seed, split=split, **opts).to(model.cfg.device)
        clean = end_logits(model, ps.clean, ps.positions["END"])
        corr = end_logits(model, ps.corrupted, ps.positions["END"])
        ok = metrics.accuracy(clean, ps, reduce="none").bool()
        acc = float(ok.float().mean())
        info = {"built": len(ps), "options": {**opts, "split": split}, "accuracy": acc,
                "counterfactual_accuracy": float(metrics.counterfactual_accuracy(corr, ps))
                if ps.corrupted_answers is not None else None,
                "logit_diff_clean": float(metrics.logit_diff(clean, ps)),
                "logit_diff_corrupted": float(metrics.logit_diff(corr, ps))}
        if acc < floor:
            cf = info["counterfactual_accuracy"]
            failing.append(f"{task} (clean accuracy {acc:.2f} on {len(ps)} prompts"
                           + ("" if cf is None else f", counterfactual {cf:.2f}") + ")")
        idx = ok.nonzero().flatten().cpu() if keep == "correct" else torch.arange(len(ps))
        info |= {"kept": len(idx), "dropped": len(ps) - len(idx)}
        out[task] = (ps, idx, info, i)
    if failing:
        raise ModelFailsTask(f"{spec} fails {' and '.join(failing)}: below the accuracy floor {floor}, so there "
                             "is no mechanism to analyse (nothing is analysed on noise; --floor lowers the floor, "
                             "for debugging only)")
    sets = {}
    for task, (ps, idx, info, i) in out.items():
        if len(idx) < min_items:
            raise ValueError(f"only {len(idx)} of {len(ps)} {task} prompts are answered correctly; the analysis "
                             f"needs at least {min_items} per task for its halves and intervals (raise --n)")
        perm = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed * 1000 + i))]
        half = len(perm) // 2
        sel, ev = ps.subset(perm[:half].sort().values), ps.subset(perm[half:].sort().values)
        info |= {"selection": len(sel), "evaluation": len(ev), "describe": ps.describe()}
        sets[task] = TaskSet(ps, ps.subset(idx), sel, ev, info)
    return sets


def layer_restoration(model: Any, sets: dict[str, TaskSet], progress: bool = False) -> dict[str, Any]:
    """{task: Scores}: resid_post at END patched clean -> corrupted, per layer (kept items)."""
    from circuits.engines.patching import activation_patching

    return {t: activation_patching(model, s.kept, "resid_post", direction="denoise", positions=["END"],
                                   progress=progress) for t, s in sets.items()}


def question_read(scores: Any, fraction: float = 0.1) -> bool:
    """Do clean and corrupted runs differ by at least ``fraction`` of the clean LD? If not, the model
    ignores what the corruption changes and the normalized restoration divides by noise."""
    clean, corr = scores.baseline["clean"], scores.baseline["corrupted"]
    return bool(clean - corr >= fraction * abs(clean))


def relative_drop(full: torch.Tensor | float, ablated: torch.Tensor) -> torch.Tensor:
    """(full - ablated) / full of mean metric values (full: the unablated mean, not zero)."""
    from circuits.metrics import check_difference

    full = float(full)
    check_difference(full, 0.0, f"the unablated mean logit difference ({full:.4g})")
    return (full - ablated) / full


def _ablation(kind: str) -> Any:
    from circuits.engines.ablation import Ablation

    return Ablation("mean", by_group=True) if kind == "mean" else Ablation("zero")


def head_effects(model: Any, sets: dict[str, TaskSet], kinds: tuple[str, ...] = KINDS
                 ) -> dict[str, dict[str, dict[str, Any]]]:
    """{kind: {task: {"full", "heads" [L][H], "layer_heads" [L], "mlps" [L]}}}: relative LD drops on the
    selection half when each head, each layer's heads, each MLP is ablated (one batched call each);
    ``kinds``: ablation kinds, "mean" (the circuits' choice reads it) and "zero"."""
    from circuits.engines.faithfulness import evaluate_ablated

    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    heads = [[(f"a{la}.h{h}", "all")] for la in range(n_layers) for h in range(n_heads)]
    layers = [[(f"a{la}.h{h}", "all") for h in range(n_heads)] for la in range(n_layers)]
    mlps = [[(f"m{la}", "all")] for la in range(n_layers)]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for kind in kinds:
        out[kind] = {}
        for task, s in sets.items():
            ld = evaluate_ablated(model, s.selection, [[], *heads, *layers, *mlps], ablation=_ablation(kind)).mean(1)
            d = relative_drop(ld[0], ld[1:])
            nh = n_layers * n_heads
            out[kind][task] = {"full": float(ld[0]), "heads": d[:nh].reshape(n_layers, n_heads),
                               "layer_heads": d[nh:nh + n_layers], "mlps": d[nh + n_layers:]}
    return out


def specialisation_index(d_recall: torch.Tensor, d_reason: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """SI = (Delta_recall - Delta_reason) / (|Delta_recall| + |Delta_reason| + eps), in [-1, 1]."""
    d_recall, d_reason = torch.as_tensor(d_recall).double(), torch.as_tensor(d_reason).double()
    return ((d_recall - d_reason) / (d_recall.abs() + d_reason.abs() + eps)).float()


def label(d_recall: float, d_reason: float, si: float, theta: float = THETA, delta: float = DELTA) -> str:
    """One component's label from its effects and SI (see the module docstring, step 4)."""
    if si > theta and d_recall > delta:
        return "recall"
    if si < -theta and d_reason > delta:
        return "reasoning"
    if d_recall > delta and d_reason > delta and abs(si) <= theta:
        return "mixed"
    return "none"


def specialisation(effects: dict[str, Any], theta: float = THETA, delta: float = DELTA,
                   eps: float = EPS) -> dict[str, dict[str, dict[str, Any]]]:
    """{kind: {"heads" | "layer_heads" | "mlps": {"si": tensor, "labels": nested lists}}}."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for kind, by_task in effects.items():
        out[kind] = {}
        for part in ("heads", "layer_heads", "mlps"):
            a, b = by_task["recall"][part], by_task["reasoning"][part]
            si = specialisation_index(a, b, eps)
            flat = [label(float(x), float(y), float(z), theta, delta)
                    for x, y, z in zip(a.flatten(), b.flatten(), si.flatten())]
            labels = [flat[i:i + a.shape[-1]] for i in range(0, len(flat), a.shape[-1])] if a.ndim == 2 else flat
            out[kind][part] = {"si": si, "labels": labels}
    return out


def ranked_heads(si: torch.Tensor, own: torch.Tensor, sign: int) -> list[tuple[str, float]]:
    """Heads with score max(sign * SI, 0) * max(Delta_own, 0) > 0, best first: [(name, score)]."""
    score = (sign * si).clamp_min(0) * own.clamp_min(0)
    cells = [(float(score[la, h]), la, h) for la in range(score.shape[0]) for h in range(score.shape[1])]
    return [(f"a{la}.h{h}", s) for s, la, h in sorted(cells, key=lambda c: (-c[0], c[1], c[2])) if s > 0]


def _drops(model: Any, ps: Any, variants: list[list[str]], metric: str = "logit_diff") -> tuple[float, torch.Tensor]:
    """(full mean metric, mean metric of each variant of heads ablated, mean ablation)."""
    from circuits.engines.faithfulness import evaluate_ablated

    vals = evaluate_ablated(model, ps, [[], *[[(h, "all") for h in v] for v in variants]],
                            ablation=_ablation("mean"), metric=metric).mean(1)
    return float(vals[0]), vals[1:]


def choose_circuits(model: Any, sets: dict[str, TaskSet], special: dict[str, Any], effects: dict[str, Any],
                    k_max: int = K_MAX) -> dict[str, dict[str, Any]]:
    """{"R": ..., "Q": ...}: each circuit's heads, k, ranked candidates and selection-half drops per k."""
    si = special["mean"]["heads"]["si"]
    n_total = int(model.cfg.n_layers) * int(model.cfg.n_heads)
    out = {}
    for name, own, other, sign in (("R", "recall", "reasoning", 1), ("Q", "reasoning", "recall", -1)):
        ranked = ranked_heads(si, effects["mean"][own]["heads"], sign)
        ks = list(range(1, min(k_max, len(ranked), n_total // 3) + 1))  # controls: >= 2k heads to draw from
        per_k: list[dict[str, float]] = []
        if ks:
            variants = [[h for h, _ in ranked[:k]] for k in ks]
            f_own, v_own = _drops(model, sets[own].selection, variants)
            f_oth, v_oth = _drops(model, sets[other].selection, variants)
            d_own, d_oth = relative_drop(f_own, v_own), relative_drop(f_oth, v_oth)
            per_k = [{"k": k, "own_drop": float(a), "other_drop": float(b), "dissociation": float(a - b)}
                     for k, a, b in zip(ks, d_own, d_oth)]
        best = max(per_k, key=lambda r: (r["dissociation"], -r["k"])) if per_k else None
        k = best["k"] if best else 0
        out[name] = {"task": own, "heads": [h for h, _ in ranked[:k]], "k": k,
                     "candidates": [{"head": h, "score": s} for h, s in ranked], "selection": per_k}
    return out


def control_interval(values: torch.Tensor, level: float = 0.95) -> dict[str, float]:
    """Mean and central ``level`` interval (linear-interpolated quantiles) of control draws."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    q = torch.quantile(v, torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=torch.float64))
    return {"mean": float(v.mean()), "lo": float(q[0]), "hi": float(q[1]), "n": len(v)}


def beyond(value: float, interval: dict[str, float]) -> bool:
    """Does a circuit's drop exceed its controls' upper bound (strictly)?"""
    return float(value) > interval["hi"]


def control_sets(all_heads: list[str], circuit: list[str], n: int, seed: int) -> list[list[str]]:
    """``n`` seeded draws of len(circuit) heads outside the circuit."""
    rng = random.Random(seed)
    pool = [h for h in all_heads if h not in set(circuit)]
    return [sorted(rng.sample(pool, len(circuit))) for _ in range(n)]


def dissociation(model: Any, sets: dict[str, TaskSet], circuits: dict[str, Any], n_controls: int = N_CONTROLS,
                 seed: int = 0) -> dict[str, Any]:
    """The 2x2 on the evaluation half: {"full": {task}, "cells": {circuit: {task: ...}}, "double_dissociation"}."""
    heads = [f"a{la}.h{h}" for la in range(int(model.cfg.n_layers)) for h in range(int(model.cfg.n_heads))]
    ctrl = {c: control_sets(heads, v["heads"], n_controls, seed + i) for i, (c, v) in enumerate(circuits.items())}
    names = [c for c in circuits if circuits[c]["heads"]]
    variants = [circuits[c]["heads"] for c in names] + [h for c in names for h in ctrl[c]]
    full: dict[str, Any] = {}
    cells: dict[str, dict[str, Any]] = {c: {} for c in circuits}
    for task, s in sets.items():
        ld0, ld = _drops(model, s.evaluation, variants)
        acc0, acc = _drops(model, s.evaluation, variants, "accuracy")
        full[task] = {"logit_diff": ld0, "accuracy": acc0}
        ld_drop, acc_drop = relative_drop(ld0, ld), acc0 - acc
        for i, c in enumerate(names):
            lo = len(names) + i * n_controls
            cl, ca = control_interval(ld_drop[lo:lo + n_controls]), control_interval(acc_drop[lo:lo + n_controls])
            cells[c][task] = {"logit_diff": float(ld[i]), "accuracy": float(acc[i]), "ld_drop": float(ld_drop[i]),
                              "accuracy_drop": float(acc_drop[i]), "controls": {"ld_drop": cl, "accuracy_drop": ca},
                              "exceeds_controls": {"ld_drop": beyond(ld_drop[i], cl),
                                                   "accuracy_drop": beyond(acc_drop[i], ca)}}
    for c in circuits:
        if not circuits[c]["heads"]:
            cells[c] = None
    dd = all(cells[c] is not None for c in ("R", "Q")) and all(
        cells[c][own]["exceeds_controls"]["ld_drop"] and cells[c][own]["ld_drop"] > cells[c][oth]["ld_drop"]
        for c, own, oth in (("R", "recall", "reasoning"), ("Q", "reasoning", "recall")))
    return {"full": full, "cells": cells, "double_dissociation": dd, "n_controls": n_controls,
            "definition": "each circuit's own-task LD drop exceeds its controls' 95% upper bound and the "
                          "other task's drop"}


def neuron_check(model: Any, sets: dict[str, TaskSet], dis: dict[str, Any], k: int = N_NEURONS,
                 n_controls: int = N_NEURON_CONTROLS, seed: int = 0) -> dict[str, Any]:
    """Top recall- and reasoning-selective MLP neurons at END (selection half), mean-ablated at END on the
    evaluation half, beside ``n_controls`` random neuron sets and the head circuits' drops."""
    from circuits.engines.neurons import (
        ablate_neurons,
        neuron_activations,
        selectivity,
        top_neurons,
    )

    acts = {t: neuron_activations(model, s.selection) for t, s in sets.items()}  # [L, b, d_mlp]
    sel = selectivity(acts["recall"], acts["reasoning"])  # [L, d_mlp]
    k = min(k, sel.numel() // 4)
    tops = {"recall": top_neurons(sel, k), "reasoning": top_neurons(sel, k, largest=False)}
    rng = random.Random(seed)
    chosen = set(tops["recall"]) | set(tops["reasoning"])
    pool = [(la, i) for la in range(sel.shape[0]) for i in range(sel.shape[1]) if (la, i) not in chosen]
    ctrl = [sorted(rng.sample(pool, k)) for _ in range(n_controls)]
    effects: dict[str, dict[str, Any]] = {"recall_neurons": {}, "reasoning_neurons": {}, "controls": {}}
    for task, s in sets.items():
        ld = ablate_neurons(model, s.evaluation, [[], tops["recall"], tops["reasoning"], *ctrl]).mean(1)
        acc = ablate_neurons(model, s.evaluation, [[], tops["recall"], tops["reasoning"]], metric="accuracy").mean(1)
        d = relative_drop(ld[0], ld[1:])
        for j, which in enumerate(("recall_neurons", "reasoning_neurons")):
            effects[which][task] = {"ld_drop": float(d[j]), "accuracy_drop": float(acc[0] - acc[1 + j])}
        effects["controls"][task] = control_interval(d[2:])
    cells = dis["cells"]
    return {"k": k, "position": "END", "values": "mean over the task's own corrupted prompts at END",
            "top": {t: [{"layer": la, "neuron": i, "selectivity": float(sel[la, i])} for la, i in v]
                    for t, v in tops.items()},
            "top_per_layer": {t: [sum(la == x for la, _ in v) for x in range(sel.shape[0])] for t, v in tops.items()},
            "effects": effects,
            "head_level": {c: None if cells[c] is None else {t: cells[c][t]["ld_drop"] for t in TASKS}
                           for c in ("R", "Q")}}


def figures(r: RRResult) -> dict[str, Any]:
    """{"layer_profile", "head_effects", "dissociation", "restoration"}: Figures (saved by :func:`write`)."""
    from circuits.figures import heatmaps, new_figure

    n_layers = int(r.model.cfg.n_layers)
    x = torch.arange(n_layers).numpy()
    prof = new_figure((9, 6))
    for row, kind in enumerate(KINDS):
        for col, (part, what) in enumerate((("layer_heads", "all heads of the layer"), ("mlps", "the MLP"))):
            ax = prof.add_subplot(2, 2, 2 * row + col + 1)
            for j, t in enumerate(TASKS):
                ax.bar(x + (j - 0.5) * 0.38, r.effects[kind][t][part].numpy(), 0.38, label=f"Δ {t}")
            ax.axhline(0, color="black", lw=0.5)
            ax.set_title(f"{kind} ablation of {what}", fontsize=9)
            ax.set_xlabel("layer")
            ax.set_ylabel("relative LD drop")
            tw = ax.twinx()
            tw.plot(x, r.special[kind][part]["si"].numpy(), "k.-", label="SI")
            tw.set_ylim(-1.05, 1.05)
            tw.set_ylabel("SI")
            if row == col == 0:
                ax.legend(fontsize=7, loc="upper left")
    prof.suptitle(f"Recall vs reasoning, layer profile ({r.spec_name})", fontsize=10)
    panels: dict[str, Any] = {}
    for kind in KINDS:  # SI where neither task moves by more than delta is noise: drawn grey
        e = r.effects[kind]
        panels |= {f"Δ {t} ({kind})": e[t]["heads"] for t in TASKS}
        small = (e["recall"]["heads"].abs() <= r.settings["delta"]) & (e["reasoning"]["heads"].abs() <= r.settings["delta"])
        panels[f"SI ({kind}; grey: both |Δ| ≤ δ)"] = r.special[kind]["heads"]["si"].masked_fill(small, float("nan"))
    heads = heatmaps(panels, ncols=3, cbar="relative LD drop / SI",
                     title=f"Single-head ablation ({r.spec_name}, selection half)")
    dis = new_figure((8, 3.4))
    for col, (key, what) in enumerate((("ld_drop", "relative LD drop"), ("accuracy_drop", "accuracy drop"))):
        ax = dis.add_subplot(1, 2, col + 1)
        for j, c in enumerate(("R", "Q")):
            cell = r.dissociation["cells"][c]
            if cell is None:
                continue
            pos = torch.arange(len(TASKS)).numpy() + (j - 0.5) * 0.38
            ax.bar(pos, [cell[t][key] for t in TASKS], 0.38, label=f"{c} ablated ({len(r.circuits[c]['heads'])} head(s))")
            ctl = [cell[t]["controls"][key] for t in TASKS]
            ax.errorbar(pos, [c_["mean"] for c_ in ctl], yerr=[[c_["mean"] - c_["lo"] for c_ in ctl],
                                                                [c_["hi"] - c_["mean"] for c_ in ctl]],
                        fmt="o", color="black", ms=3, capsize=3, label="random heads, 95%" if j == 0 else None)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_xticks(range(len(TASKS)), [f"on {t}" for t in TASKS])
        ax.set_ylabel(what)
        ax.legend(fontsize=7)
    dis.suptitle(f"Double dissociation (evaluation half, mean ablation; {r.spec_name})", fontsize=10)
    rest = new_figure((4.5, 3.2))
    ax = rest.add_subplot(1, 1, 1)
    for t, sc in r.restoration.items():
        ax.plot(x, sc.normalized()[:, 0].numpy(), "o-", label=t)
    ax.set_xlabel("layer (resid_post at END)")
    ax.set_ylabel("restored fraction of LD")
    ax.legend(fontsize=7)
    ax.set_title(f"Layer restoration ({r.spec_name})", fontsize=9)
    return {"layer_profile": prof, "head_effects": heads, "dissociation": dis, "restoration": rest}


def _plain(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


@dataclass
class RRResult:
    """Everything :func:`run` found, and the figures drawn from it."""

    model: Any
    spec_name: str
    n: int
    seed: int
    settings: dict[str, Any]
    sets: dict[str, TaskSet]
    restoration: dict[str, Any]
    effects: dict[str, Any]
    special: dict[str, Any]
    circuits: dict[str, Any]
    dissociation: dict[str, Any]
    neurons: dict[str, Any]
    figures: dict[str, Any]
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)

    def data(self) -> dict[str, Any]:
        """The numbers, as plain data for the result file."""
        return {
            "settings": self.settings,
            "prompts": {t: {k: v for k, v in s.info.items()} for t, s in self.sets.items()},
            "layer_restoration": {t: {"normalized": s.normalized()[:, 0].tolist(), "values": s.values[:, 0].tolist(),
                                      "baseline": s.baseline, "question_read": question_read(s)}
                                  for t, s in self.restoration.items()},
            "head_effects": {k: {t: {"full_logit_diff": e["full"], "delta": e["heads"].tolist()}
                                 for t, e in by.items()} for k, by in self.effects.items()},
            "layer_effects": {k: {t: {"heads": e["layer_heads"].tolist(), "mlp": e["mlps"].tolist()}
                                  for t, e in by.items()} for k, by in self.effects.items()},
            "specialisation": _plain(self.special),
            "circuits": self.circuits,
            "dissociation": self.dissociation,
            "neurons": self.neurons,
            "timings_s": self.timings, "seconds": round(self.seconds, 2),
        }


@torch.no_grad()
def run(spec: str = "zoo:toyworld", n: int = 128, seed: int = 0, device: str | None = None,
        floor: float = FLOOR, min_items: int = MIN_ITEMS, keep: str = "correct", theta: float = THETA,
        delta: float = DELTA, k_max: int = K_MAX, n_controls: int = N_CONTROLS, n_neurons: int = N_NEURONS,
        n_neuron_controls: int = N_NEURON_CONTROLS, progress: bool = False) -> RRResult:
    """Every step on ``spec`` (a model spec for ``circuits.models.load_model``)."""
    from circuits.models import load_model

    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor is an accuracy in [0, 1], got {floor!r}")
    if isinstance(min_items, bool) or not isinstance(min_items, int) or min_items < 4:
        raise ValueError(f"min_items must be an integer >= 4 (two halves of two), got {min_items!r}")
    t0 = time.time()
    timings: dict[str, float] = {}

    def timed(name: str, fn: Any, *args: Any) -> Any:
        t = time.time()
        out = fn(*args)
        timings[name] = round(time.time() - t, 2)
        if progress:
            print(f"[recall_reasoning] {name}: {timings[name]} s", flush=True)
        return out

    model = timed("load", load_model, spec, device)
    sets = timed("prompts", prompts, model, spec, n, seed, floor, min_items, keep)
    restoration = timed("layer_restoration", layer_restoration, model, sets)
    effects = timed("head_effects", head_effects, model, sets)
    special = specialisation(effects, theta, delta)
    circuits = timed("choose_circuits", choose_circuits, model, sets, special, effects, k_max)
    dis = timed("dissociation", dissociation, model, sets, circuits, n_controls, seed)
    neurons = timed("neuron_check", neuron_check, model, sets, dis, n_neurons, n_neuron_controls, seed)
    settings = {"protocol": PROTOCOL, "floor": floor, "min_items": min_items, "keep": keep, "theta": theta,
                "delta": delta, "eps": EPS, "k_max": k_max, "n_controls": n_controls, "n_neurons": neurons["k"],
                "metric": "logit_diff (relative drop (LD_full - LD_ablated) / LD_full); accuracy in the 2x2",
                "ablations": {k: _ablation(k).describe() for k in KINDS},
                "circuit_ablation": "mean", "restoration": "resid_post at END, denoising, normalized",
                "halves": "kept items split in two (seeded): selection (sweeps, choices), evaluation (2x2, neurons)",
                "task_options": {t: s.info["options"] for t, s in sets.items()}}
    r = RRResult(model, spec, n, seed, settings, sets, restoration, effects, special, circuits, dis, neurons, {}, 0.0)
    r.figures = timed("figures", figures, r)
    r.timings = timings
    r.seconds = time.time() - t0
    return r


def _f(x: float | None) -> str:
    return "  n/a" if x is None else f"{x:5.2f}"


def summary(r: RRResult) -> str:
    """The printed summary: prompts, per-layer profile, labelled heads, circuits, the 2x2 with controls, neurons."""
    lines = [f"recall vs reasoning on {r.spec_name} (n {r.n}, seed {r.seed}; {r.settings['keep']} items kept, "
             f"floor {r.settings['floor']})",
             f"{'task':10s} {'acc':>5s} {'cf acc':>6s} {'kept':>5s} {'drop':>5s} {'sel':>4s} {'eval':>4s}"]
    for t, s in r.sets.items():
        i = s.info
        lines.append(f"{t:10s} {i['accuracy']:5.2f} {_f(i['counterfactual_accuracy']):>6s} {i['kept']:5d} "
                     f"{i['dropped']:5d} {i['selection']:4d} {i['evaluation']:4d}")
    cols = f"{'Δh rec':>6s} {'Δh rea':>6s} {'SI':>5s}  {'Δm rec':>6s} {'Δm rea':>6s} {'SI':>5s}"
    lines += ["", f"{'':5s} {'restoration':^13s} | {'mean ablation (heads of layer; MLP)':^37s} | "
                  f"{'zero ablation':^37s}",
              f"{'layer':5s} {'rec':>6s} {'rea':>6s} | {cols} | {cols}"]
    for la in range(int(r.model.cfg.n_layers)):
        row = f"{la:5d} " + " ".join(f"{float(r.restoration[t].normalized()[la, 0]):6.2f}" for t in TASKS)
        for kind in KINDS:
            e, s = r.effects[kind], r.special[kind]
            row += " | " + "  ".join(f"{float(e['recall'][p][la]):6.2f} {float(e['reasoning'][p][la]):6.2f} "
                                     f"{float(s[p]['si'][la]):5.2f}" for p in ("layer_heads", "mlps"))
        lines.append(row)
    for t, sc in r.restoration.items():
        if not question_read(sc):
            lines.append(f"WARNING: {t}: LD clean {sc.baseline['clean']:.3f} vs corrupted {sc.baseline['corrupted']:.3f}: "
                         "the model ignores what the corruption changes; its restoration is noise")
    lines.append("")
    for kind in KINDS:
        labels = r.special[kind]["heads"]["labels"]
        named = {lab: [f"a{la}.h{h}" for la, row in enumerate(labels) for h, x in enumerate(row) if x == lab]
                 for lab in LABELS[:3]}
        lines.append(f"head labels ({kind} ablation): " + "; ".join(
            f"{lab} {', '.join(v) or '-'}" for lab, v in named.items()))
    for c, v in r.circuits.items():
        lines.append(f"circuit {c} ({v['task']}): k={v['k']} {', '.join(v['heads']) or '(no candidate heads)'}")
    lines += ["", f"{'ablated':8s} {'on':10s} {'LD drop':>8s} {'controls 95%':>15s} {'acc drop':>8s} "
                  f"{'controls 95%':>15s}  beyond controls"]
    for c in ("R", "Q"):
        cell = r.dissociation["cells"][c]
        for t in TASKS:
            if cell is None:
                lines.append(f"{c:8s} {t:10s} (empty circuit)")
                continue
            x = cell[t]
            cl, ca = x["controls"]["ld_drop"], x["controls"]["accuracy_drop"]
            beyond = [m for m, k in (("LD", "ld_drop"), ("accuracy", "accuracy_drop")) if x["exceeds_controls"][k]]
            lines.append(f"{c:8s} {t:10s} {x['ld_drop']:8.3f} {cl['lo']:7.3f}..{cl['hi']:6.3f} "
                         f"{x['accuracy_drop']:8.3f} {ca['lo']:7.3f}..{ca['hi']:6.3f}  {', '.join(beyond) or '-'}")
    lines.append(f"double dissociation: {r.dissociation['double_dissociation']} "
                 f"({r.dissociation['definition']})")
    ne, hl = r.neurons["effects"], r.neurons["head_level"]
    lines += ["", f"MLP neurons at END (top {r.neurons['k']} by selectivity, mean-ablated): relative LD drop"]
    for which in ("recall_neurons", "reasoning_neurons"):
        lines.append(f"  {which:18s} " + "  ".join(f"on {t} {ne[which][t]['ld_drop']:6.3f}" for t in TASKS))
    lines.append(f"  {'random neurons':18s} " + "  ".join(
        f"on {t} {ne['controls'][t]['lo']:.3f}..{ne['controls'][t]['hi']:.3f}" for t in TASKS))
    for c in ("R", "Q"):
        if hl[c] is not None:
            lines.append(f"  {'heads ' + c:18s} " + "  ".join(f"on {t} {hl[c][t]:6.3f}" for t in TASKS))
    return "\n".join(lines)


def write(r: RRResult, folder: str) -> list[str]:
    """recall_reasoning.json (with provenance) and the figures (PDF + PNG) into ``folder``; the paths."""
    from circuits.engines import fastpaths
    from circuits.models import model_info
    from circuits.results import provenance, write_result

    paths = save_figures(r.figures, folder)
    data = {**r.data(), "figures": [os.path.relpath(p, folder) for p in paths]}
    prov = provenance(model=model_info(r.model), task="recall+reasoning", seed=r.seed, n=r.n,
                      fast_paths=fastpaths.report(r.model))
    return [write_result(os.path.join(folder, "recall_reasoning.json"), "recall_reasoning", data, prov), *paths]


def main(argv: list[str] | None = None) -> int:
    """``python -m analyses.recall_reasoning [--model M] [--n N] [--seed S] [--device D] [--out DIR]``."""
    ap = argparse.ArgumentParser(prog="python -m analyses.recall_reasoning", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="zoo:toyworld")
    ap.add_argument("--n", type=int, default=128, help="prompts built per task (before dropping wrong answers)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device")
    ap.add_argument("--out", default="results")
    ap.add_argument("--floor", type=float, default=FLOOR, help="clean-accuracy floor per task (debugging only)")
    ap.add_argument("--min-items", type=int, default=MIN_ITEMS, help="correct items needed per task")
    ap.add_argument("--keep", choices=("correct", "all"), default="correct", help="'all': debugging only")
    args = ap.parse_args(argv)

    def analyse(folder: str) -> str:
        r = run(args.model, args.n, args.seed, args.device, args.floor, args.min_items, args.keep, progress=True)
        paths = write(r, folder)
        return summary(r) + f"\n\nrecall_reasoning.json and {len(paths) - 1} figure files in {r.seconds:.1f} s"

    return run_analysis(analyse, os.path.join(args.out, "recall_reasoning", safe_name(args.model)),
                        n=args.n, seed=args.seed)


if __name__ == "__main__":
    raise SystemExit(main())
