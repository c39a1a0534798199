"""Are circuits reused across tasks? (the circuit-reuse study, Merullo et al. 2024): ``python -m analyses.compare_tasks``.

Every task's circuit is found with one method and one setting, so that differences come from
the tasks and not from the method. Steps, each a function that returns data:

1. :func:`prompts` - each task as the model was trained on it (a zoo model's recorded options),
   with its clean accuracy and its counterfactual accuracy (the corrupted prompts scored against
   their own answers); a task below the floor on either is listed with the reason, not compared:
   a model that answers without reading the question has no circuit for that question;
2. :func:`head_scores` - head activation patching (``z``, noising: the corrupted run's head output
   at every position), as the fraction of the clean-minus-corrupted logit difference lost;
3. :func:`task_circuits` - each task's circuit: its top ``fraction`` of heads by |score|;
4. :func:`pairwise` - for the named pair (default IOI and Colored Objects): the top-k% overlap
   curve against its permutation null, the shared and task-specific heads;
5. :func:`cross_faithfulness` - every circuit evaluated on every task (mean ablation per template
   of every head outside it), against random circuits of the same size on that task;
6. :func:`similarity_of` - over all usable tasks: the Jaccard matrix of the circuits and its
   clustering;
7. :func:`figures`; :func:`write` also exports each circuit in every format of
   ``circuits export``.

:func:`main` writes results/compare_tasks/<model>/ as a unit and prints a summary.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import torch

from analyses.common import run_analysis, safe_name, save_figures
from circuits.cli import ModelFailsTask

FLOOR = 0.8  # clean and counterfactual accuracy below this: the task is not compared
FRACTION = 0.25  # a task's circuit: its top 25% of heads by |score|
PAIR = ("ioi", "colored_objects")
N_RANDOM = 20
MIN_N = 16
METHOD = ("head activation patching: z, noising (the corrupted run's head output at every position); score = "
          "fraction of the clean-minus-corrupted logit difference lost")
# IOI's default ABC corruption has no answer of its own; its audit uses the S2 := IO corruption
COUNTERFACTUAL_OPTIONS = {"ioi": {"corruption": "s2_io"}}


def all_tasks(spec: str) -> list[str]:
    """The tasks to compare: a zoo model's own tasks (its recipe), else every task of the suite."""
    from circuits.tasks import list_tasks
    from circuits.zoo import task_options

    own = list(task_options(spec))
    return own or list_tasks()


@torch.no_grad()
def _accuracies(model: Any, ps: Any) -> tuple[float, float | None]:
    from dataclasses import replace

    from circuits import metrics
    from circuits.engines.forward import end_logits

    acc = float(metrics.accuracy(end_logits(model, ps.clean, ps.positions["END"]), ps))
    if ps.corrupted_answers is None:
        return acc, None
    lg = end_logits(model, ps.corrupted, ps.positions["END"])
    return acc, float(metrics.counterfactual_accuracy(lg, replace(ps, clean=ps.corrupted)))


def prompts(model: Any, spec: str, tasks: list[str], n: int, seed: int, floor: float = FLOOR
            ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """({usable task: PromptSet}, {task: {options, accuracy, counterfactual_accuracy, usable, reason}})."""
    from circuits.tasks import build_task
    from circuits.zoo import task_options

    split = "test" if spec.startswith("zoo:") else "all"
    recorded = task_options(spec)
    usable, audit = {}, {}
    for task in tasks:
        options = recorded.get(task, {})
        ps = build_task(task, model.tokenizer, n=n, seed=seed, split=split, **options).to(model.cfg.device)
        acc, cf = _accuracies(model, ps)
        if cf is None and task in COUNTERFACTUAL_OPTIONS:
            alt = build_task(task, model.tokenizer, n=n, seed=seed, split=split,
                             **{**options, **COUNTERFACTUAL_OPTIONS[task]}).to(model.cfg.device)
            cf = _accuracies(model, alt)[1]
        reason = None
        if acc < floor:
            reason = f"clean accuracy {acc:.0%} < {floor:.0%}: the model does not do the task"
        elif cf is not None and cf < floor:
            reason = (f"counterfactual accuracy {cf:.0%} < {floor:.0%}: the model answers without reading the "
                      "question (a shortcut), so there is no circuit for the question")
        audit[task] = {"options": {**options, "split": split}, "accuracy": acc, "counterfactual_accuracy": cf,
                       "usable": reason is None, "reason": reason}
        if reason is None:
            usable[task] = ps
    return usable, audit


def head_scores(model: Any, ps: Any, progress: bool = True) -> torch.Tensor:
    """[layer, head] fraction of the clean-minus-corrupted logit difference lost when the head's
    output (z) at every position is replaced by the corrupted run's (1 = all of it)."""
    from circuits.engines.patching import activation_patching

    s = activation_patching(model, ps, "z", direction="noise", positions=None, progress=progress)
    return s.effect().float().cpu()


def task_circuits(model: Any, spec: str, scores: dict[str, torch.Tensor], fraction: float) -> dict[str, Any]:
    """{task: Circuit of its top ``fraction`` of heads by |score| (each node keeps its score)}."""
    from circuits.graph import Circuit, Shape
    from circuits.graph.compare import n_top

    shape = Shape.of(model)
    k = n_top(fraction, shape.n_layers * shape.n_heads)
    return {t: Circuit.from_head_scores(g, k=k, shape=shape, task=t, model=spec, method=METHOD,
                                        settings={"fraction": fraction, "k": k, "selection": "top-k by |score|"})
            for t, g in scores.items()}


def pairwise(scores: dict[str, torch.Tensor], circuits: dict[str, Any], pair: tuple[str, str], seed: int,
             n_null: int = 1000) -> dict[str, Any]:
    """The pair's top-k% overlap curve against its null, and the heads shared and specific to each."""
    from circuits.graph.compare import (
        node_jaccard,
        overlap_coefficient,
        shared_parts,
        threshold_sweep,
    )

    a, b = pair
    sweep = threshold_sweep(scores[a], scores[b], n_null=n_null, seed=seed)
    parts = shared_parts({a: circuits[a], b: circuits[b]})
    return {"pair": [a, b], "sweep": sweep, "shared": parts,
            "jaccard": node_jaccard(circuits[a], circuits[b]),
            "overlap_coefficient": overlap_coefficient(circuits[a], circuits[b])}


def _random_heads(k: int, n_layers: int, n_heads: int, rng: random.Random) -> list[str]:
    cells = [(layer, h) for layer in range(n_layers) for h in range(n_heads)]
    return [f"a{layer}.h{h}" for layer, h in rng.sample(cells, k)]


def cross_faithfulness(model: Any, pss: dict[str, Any], circuits: dict[str, Any], seed: int,
                       n_random: int = N_RANDOM) -> dict[str, Any]:
    """matrix[circuit][task]: the faithfulness of that task's circuit evaluated on ``task`` (every head
    outside it mean-ablated per template); per task, ``n_random`` random circuits of the same size
    (seeded) with their mean, max and 95th percentile."""
    from circuits.engines.ablation import Ablation
    from circuits.engines.faithfulness import (
        circuit_only,
        evaluate_ablated,
        faithfulness,
        resolve_universe,
    )
    from circuits.names import parse_node

    ablation = Ablation("mean", by_group=True)
    universe = resolve_universe(model, "heads")
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    matrix: dict[str, dict[str, float]] = {c: {} for c in circuits}
    intervals: dict[str, dict[str, Any]] = {c: {} for c in circuits}
    rand: dict[str, Any] = {}
    for task, ps in pss.items():
        for name, circuit in circuits.items():
            f = faithfulness(model, ps, sorted(circuit.nodes), ablation=ablation)
            matrix[name][task] = f.faithfulness
            intervals[name][task] = f.ci["faithfulness"]
        k = len(next(iter(circuits.values())).nodes)
        rng = random.Random(f"{seed}:{task}")
        draws = [_random_heads(k, n_layers, n_heads, rng) for _ in range(n_random)]
        variants = [circuit_only([parse_node(x) for x in d], universe) for d in draws]
        base = evaluate_ablated(model, ps, [[], [(u, "all") for u in universe]], ablation=ablation).mean(1)
        vals = evaluate_ablated(model, ps, variants, ablation=ablation).mean(1)
        r = ((vals - base[1]) / (base[0] - base[1])).tolist()
        rand[task] = {"mean": sum(r) / len(r), "max": max(r), "p95": float(torch.tensor(r).quantile(0.95)),
                      "values": r, "n": n_random, "size": k}
    return {"ablation": ablation.describe(), "universe": "heads", "matrix": matrix, "ci": intervals, "random": rand}


def similarity_of(circuits: dict[str, Any], seed: int) -> Any:
    """Jaccard similarity of the circuits' heads, clustered (average linkage, 2 clusters)."""
    from circuits.graph.compare import similarity

    return similarity(circuits, metric="head_jaccard", n_clusters=min(2, len(circuits)), seed=seed)


def figures(scores: dict[str, torch.Tensor], circuits: dict[str, Any], pair: dict[str, Any] | None,
            cross: dict[str, Any], sim: Any, spec: str) -> dict[str, Any]:
    """{stem: Figure}: the pair side by side, every task's grid, the overlap curve, cross-faithfulness
    and the similarity matrix with its dendrogram."""
    from circuits.graph.draw import head_heatmaps, matrix_figure, similarity_figure, sweep_figure

    cbar = "fraction of the logit difference lost"
    figs = {"heads_all_tasks": head_heatmaps(scores, circuits, cbar=cbar,
                                             title=f"Head patching per task, circuits outlined ({spec})")}
    if pair is not None:
        a, b = pair["pair"]
        figs["heads_pair"] = head_heatmaps({a: scores[a], b: scores[b]}, {a: circuits[a], b: circuits[b]},
                                           cbar=cbar, ncols=2, title=f"{a} and {b}: head patching ({spec})")
        figs["overlap_curve"] = sweep_figure({f"{a} vs {b}": pair["sweep"]},
                                             title=f"Top-k% head overlap against random rankings ({spec})")
    names = list(cross["matrix"])
    tasks = list(cross["random"])
    rows = [[cross["matrix"][c].get(t) for t in tasks] for c in names]
    rows.append([cross["random"][t]["mean"] for t in tasks])
    figs["cross_faithfulness"] = matrix_figure(rows, [f"{c} circuit" for c in names] + ["random (mean)"], tasks,
                                               xlabel="evaluated on", cbar="faithfulness",
                                               title=f"Each task's circuit on every task ({spec})")
    if sim is not None and len(sim.names) > 1:
        figs["similarity"] = similarity_figure(sim, title=f"Circuit similarity across tasks ({spec})")
    return figs


@dataclass
class Result:
    """Everything :func:`run` found, and the figures drawn from it."""

    model: Any
    spec: str
    n: int
    seed: int
    fraction: float
    audit: dict[str, dict[str, Any]]
    scores: dict[str, torch.Tensor]
    circuits: dict[str, Any]
    pair: dict[str, Any] | None
    cross: dict[str, Any]
    similarity: Any
    figures: dict[str, Any]
    seconds: float

    def data(self) -> dict[str, Any]:
        """The numbers, as plain data for the result file."""
        p = self.pair
        return {
            "settings": {"method": METHOD, "fraction": self.fraction, "floor": FLOOR,
                         "circuit_size": len(next(iter(self.circuits.values())).nodes) if self.circuits else 0,
                         "ablation": self.cross["ablation"], "n_random": N_RANDOM,
                         "counterfactual_options": COUNTERFACTUAL_OPTIONS},
            "tasks": self.audit,
            "head_scores": {t: g.tolist() for t, g in self.scores.items()},
            "circuits": {t: c.to_dict() for t, c in self.circuits.items()},
            "pair": None if p is None else {"pair": p["pair"], "jaccard": p["jaccard"],
                                            "overlap_coefficient": p["overlap_coefficient"],
                                            "sweep": p["sweep"].to_dict(), "shared": p["shared"].to_dict()},
            "cross_faithfulness": self.cross,
            "similarity": None if self.similarity is None else self.similarity.to_dict(),
            "seconds": round(self.seconds, 2),
        }


@torch.no_grad()
def run(spec: str = "zoo:toyworld", tasks: list[str] | None = None, pair: tuple[str, str] = PAIR, n: int = 64,
        seed: int = 0, fraction: float = FRACTION, device: str | None = None, progress: bool = True,
        floor: float = FLOOR) -> Result:
    """Every step on ``spec``: the ``tasks`` (default: :func:`all_tasks`) compared, the ``pair`` in detail."""
    from circuits.models import load_model
    from circuits.tasks import list_tasks

    if n < MIN_N:
        raise ValueError(f"n={n} prompts is too few for a bootstrap interval; use at least {MIN_N}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    tasks = list(tasks or all_tasks(spec))
    unknown = [t for t in [*tasks, *pair] if t not in list_tasks()]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; known: {', '.join(list_tasks())}")
    if len(set(pair)) != 2:
        raise ValueError(f"the pair must name two different tasks, got {list(pair)}")
    tasks += [t for t in pair if t not in tasks]
    t0 = time.time()
    model = load_model(spec, device=device)
    pss, audit = prompts(model, spec, tasks, n, seed, floor)
    if not pss:
        raise ModelFailsTask(f"{spec} does none of the tasks {tasks} above the floor {floor:.0%}: nothing to compare")
    scores = {t: head_scores(model, ps, progress) for t, ps in pss.items()}
    circuits = task_circuits(model, spec, scores, fraction)
    both = all(t in circuits for t in pair)
    pr = pairwise(scores, circuits, pair, seed) if both else None
    cross = cross_faithfulness(model, pss, circuits, seed)
    sim = similarity_of(circuits, seed) if len(circuits) > 1 else None
    figs = figures(scores, circuits, pr, cross, sim, spec)
    return Result(model, spec, n, seed, fraction, audit, scores, circuits, pr, cross, sim, figs, time.time() - t0)


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "n/a" if v is None else format(v, fmt)


def summary(r: Result) -> str:
    """The printed summary: tasks used or skipped, the pair's overlap, cross-faithfulness, clusters."""
    k = len(next(iter(r.circuits.values())).nodes)
    lines = [f"Circuits across tasks on {r.spec} ({r.n} prompts per task, seed {r.seed}; each circuit: the top "
             f"{r.fraction:.0%} = {k} heads by head patching, noising z at every position)", "",
             f"{'task':16s} {'acc':>5s} {'counterf.':>9s}  circuit"]
    for t, a in r.audit.items():
        circ = ", ".join(sorted(r.circuits[t].nodes, key=lambda x: (len(x), x))) if t in r.circuits else \
            f"skipped: {a['reason']}"
        lines.append(f"{t:16s} {a['accuracy']:5.2f} {_f(a['counterfactual_accuracy']):>9s}  {circ}")
    if r.pair is not None:
        a, b = r.pair["pair"]
        sw, sh = r.pair["sweep"], r.pair["shared"]
        lines += ["", f"{a} vs {b}: Jaccard {_f(r.pair['jaccard'])} (overlap coefficient "
                      f"{_f(r.pair['overlap_coefficient'])}); shared {sh.core or 'none'}; only {a}: {sh.only[a]}; "
                      f"only {b}: {sh.only[b]}",
                  f"overlap curve area {_f(sw.area, '.3f')} against random rankings {_f(sw.null_area_mean, '.3f')} "
                  f"(p = {_f(sw.p_value, '.3f')}, {sw.n_null} draws)"]
    else:
        lines += ["", f"pair {list(PAIR)}: not compared (a task of the pair is skipped)"]
    tasks = list(r.cross["random"])
    lines += ["", "faithfulness of each circuit (rows) on each task (columns); last row: random circuits of the "
                  "same size (mean)", f"{'':16s} " + " ".join(f"{t[:9]:>9s}" for t in tasks)]
    for c, row in r.cross["matrix"].items():
        lines.append(f"{c:16s} " + " ".join(f"{_f(row.get(t)):>9s}" for t in tasks))
    lines.append(f"{'random':16s} " + " ".join(f"{_f(r.cross['random'][t]['mean']):>9s}" for t in tasks))
    if r.similarity is not None:
        groups: dict[int, list[str]] = {}
        for name, lab in zip(r.similarity.names, r.similarity.labels):
            groups.setdefault(lab, []).append(name)
        lines += ["", "clusters (head Jaccard, average linkage): " + "; ".join(
            "{" + ", ".join(g) + "}" for g in groups.values())]
    return "\n".join(lines)


def write(r: Result, folder: str) -> list[str]:
    """compare_tasks.json (with provenance), the figures (PDF + PNG), and each circuit in every export
    format under circuits/."""
    from circuits.engines import fastpaths
    from circuits.graph.export import export_all
    from circuits.models import model_info
    from circuits.results import provenance, write_result

    paths = save_figures(r.figures, folder)
    for task, circuit in r.circuits.items():
        paths += export_all(circuit, os.path.join(folder, "circuits"), task)
    data = {**r.data(), "files": [os.path.relpath(p, folder) for p in paths]}
    prov = provenance(model=model_info(r.model), task="compare_tasks", seed=r.seed, n=r.n,
                      fast_paths=fastpaths.report(r.model))
    return [write_result(os.path.join(folder, "compare_tasks.json"), "compare_tasks", data, prov), *paths]


def main(argv: list[str] | None = None) -> int:
    """``python -m analyses.compare_tasks [--model M] [--tasks T1,T2] [--all-tasks T,...] [--n N] [--seed S]
    [--fraction F] [--device D] [--out DIR]``."""
    ap = argparse.ArgumentParser(prog="python -m analyses.compare_tasks", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="zoo:toyworld")
    ap.add_argument("--tasks", default=",".join(PAIR), help="the pair compared in detail (two tasks)")
    ap.add_argument("--all-tasks", default="", help="tasks for the matrix and clustering (default: the model's)")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fraction", type=float, default=FRACTION)
    ap.add_argument("--device")
    ap.add_argument("--out", default="results")
    args = ap.parse_args(argv)
    pair = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    tasks = [t.strip() for t in args.all_tasks.split(",") if t.strip()] or None

    def analyse(folder: str) -> str:
        if len(pair) != 2:
            raise ValueError(f"--tasks must name two tasks, got {args.tasks!r}")
        r = run(args.model, tasks, pair, args.n, args.seed, args.fraction, args.device)
        paths = write(r, folder)
        return summary(r) + f"\n\ncompare_tasks.json and {len(paths) - 1} files in {r.seconds:.1f} s"

    return run_analysis(analyse, os.path.join(args.out, "compare_tasks", safe_name(args.model)),
                        n=args.n, seed=args.seed)


if __name__ == "__main__":
    raise SystemExit(main())
