"""How do circuits change under training? (Thinking Sparks, Park et al. 2025): ``python -m analyses.compare_regimes``.

Two studies, each with one method for every model (EAP-IG on the inputs, KL objective; a
model's circuit is its top ``top_fraction`` of edges by |score|, its heads the nodes they touch;
head importance I = the share of |score| of the edges a head writes, Thinking Sparks' App. A.6):

1. **Regimes** (:func:`regimes`): ``zoo:reasoner-base`` against the post-trained ``-sft``,
   ``-distill`` and ``-grpo`` on held-out arithmetic. Each model is read where it answers: the
   base model right after "=", the post-trained ones after the problem's full thinking trace
   (``arithmetic`` with ``thinking="full"``), as Thinking Sparks reads each model on its own
   opening. Reported: accuracy of each model on those prompts, emergent / retained / lost heads per
   regime, E per head, and, over each regime's checkpoints (``zoo:reasoner-<regime>@<step>``), E per
   checkpoint and the cohort table (when each head enters).
2. **Checkpoints** (:func:`evolution`): ``zoo:toyworld@<step>`` and the final model on each of its
   tasks: which heads enter each task's circuit and when (cohorts), and the step from which the
   circuit stays within a Jaccard of ``STABLE`` of the final one. A checkpoint that does not do the
   task (accuracy below ``FLOOR``) is marked: its "circuit" is read, but it is not a mechanism.

:func:`main` writes results/compare_regimes/zoo/ (compare_regimes.json, figures, every circuit in
every export format) as a unit and prints a summary.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import torch

from analyses.common import run_analysis, save_figures

FLOOR = 0.8
STABLE = 0.8  # head Jaccard with the final circuit from which a circuit counts as stable
TOP_FRACTION = 0.05  # a circuit: the top 5% of the model's edges by |EAP-IG score|
STEPS = 8  # EAP-IG integration steps (midpoint rule; each result records its completeness gap)
REGIMES = ("sft", "distill", "grpo")
METHOD = ("EAP-IG on the input embeddings (midpoint rule), objective KL(clean || run) at END; circuit = top "
          "fraction of edges by |score|; head importance = normalised sum of |score| of the edges a head writes")


def checkpoints_of(name: str) -> dict[int, str]:
    """{step: zoo spec} of the bundled checkpoints of zoo model ``name`` (e.g. toyworld@200), by step."""
    from circuits.zoo import list_zoo

    out = {}
    for entry in list_zoo():
        m = re.fullmatch(rf"{re.escape(name)}@(\d+)", entry)
        if m:
            out[int(m.group(1))] = f"zoo:{entry}"
    return dict(sorted(out.items()))


@torch.no_grad()
def _accuracy(model: Any, ps: Any) -> tuple[float, torch.Tensor]:
    from circuits import metrics
    from circuits.engines.forward import end_logits

    lg = end_logits(model, ps.clean, ps.positions["END"])
    return float(metrics.accuracy(lg, ps)), lg


def circuit_of(model: Any, ps: Any, spec: str, task: str, top_fraction: float, steps: int) -> tuple[Any, float]:
    """(Circuit of ``model`` on ``ps`` by :data:`METHOD`, its accuracy on ``ps``)."""
    from circuits.engines.attribution import attribute_edges
    from circuits.graph import Circuit, Shape
    from circuits.metrics import kl_to

    acc, clean = _accuracy(model, ps)
    scores = attribute_edges(model, ps, method="eap-ig-inputs", steps=steps, metric=kl_to(clean))
    ranked = scores.ranked()
    k = max(1, round(top_fraction * len(ranked)))
    circuit = Circuit.from_edges(dict(ranked[:k]), Shape.of(model), task=task, model=spec, method=METHOD,
                                 settings={"top_fraction": top_fraction, "n_edges": k, "of_edges": len(ranked),
                                           "steps": steps, "completeness": scores.settings["completeness"],
                                           "accuracy": acc})
    return circuit, acc


def _load(spec: str, device: str | None) -> Any:
    from circuits.models import load_model

    return load_model(spec, device=device)


def _arithmetic(model: Any, thinking: str, n: int, seed: int) -> Any:
    from circuits.tasks import build_task

    return build_task("arithmetic", model.tokenizer, n=n, seed=seed, split="test",
                      thinking=thinking).to(model.cfg.device)


def regimes(n: int, seed: int, device: str | None, top_fraction: float = TOP_FRACTION, steps: int = STEPS,
            family: str = "reasoner", with_checkpoints: bool = True) -> dict[str, Any]:
    """The regime study on ``zoo:<family>-base`` and its post-trained regimes (see the module docstring);
    ``with_checkpoints=False`` reads the final models only."""
    from circuits.graph.regimes import checkpoint_effects, cohorts, regime_change
    from circuits.zoo import list_zoo

    present = [r for r in REGIMES if f"{family}-{r}" in list_zoo()]
    if f"{family}-base" not in list_zoo() or not present:
        raise ValueError(f"the regime study needs zoo:{family}-base and at least one of "
                         f"{[f'{family}-{r}' for r in REGIMES]} in the zoo")
    circuits, accuracy, prompts = {}, {}, {}

    def read(spec: str, thinking: str) -> Any:
        model = _load(spec, device)
        ps = _arithmetic(model, thinking, n, seed)
        c, acc = circuit_of(model, ps, spec, "arithmetic", top_fraction, steps)
        circuits[spec], accuracy[spec] = c, acc
        prompts[spec] = {"thinking": thinking, **ps.describe()}
        return c

    pre = read(f"zoo:{family}-base", "none")
    changes, effects, cohort_tables, missing = {}, {}, {}, []
    for regime in present:
        post = read(f"zoo:{family}-{regime}", "full")
        changes[regime] = regime_change(pre, post)
        bundled = checkpoints_of(f"{family}-{regime}") if with_checkpoints else {}
        ckpts = {str(step): read(spec, "full") for step, spec in bundled.items()}
        if not ckpts:
            missing.append(regime)
            continue
        ckpts["final"] = post
        effects[regime] = checkpoint_effects(pre, ckpts)
        cohort_tables[regime] = cohorts(ckpts, pre)
    return {"family": family, "regimes": present, "circuits": circuits, "accuracy": accuracy, "prompts": prompts,
            "changes": changes, "checkpoint_effects": effects, "cohorts": cohort_tables,
            "regimes_without_checkpoints": missing}


def stable_from(steps: list[str], jaccards: list[float | None], threshold: float = STABLE) -> str | None:
    """The first step from which every later Jaccard with the final circuit is >= ``threshold``."""
    first = None
    for step, j in zip(steps, jaccards):
        if j is not None and j >= threshold:
            first = first or step
        else:
            first = None
    return first


def evolution(n: int, seed: int, device: str | None, tasks: list[str] | None = None,
              top_fraction: float = TOP_FRACTION, steps: int = STEPS, name: str = "toyworld") -> dict[str, Any]:
    """The checkpoint study on ``zoo:<name>@<step>`` and the final ``zoo:<name>`` (see the module docstring)."""
    from circuits.graph.compare import head_jaccard
    from circuits.graph.regimes import cohorts
    from circuits.tasks import build_task
    from circuits.zoo import task_options

    specs = {str(s): spec for s, spec in checkpoints_of(name).items()}
    if not specs:
        raise ValueError(f"the checkpoint study needs bundled checkpoints zoo:{name}@<step>; none found")
    specs["final"] = f"zoo:{name}"
    options = task_options(f"zoo:{name}")
    tasks = list(tasks or options)
    per_task: dict[str, Any] = {t: {"circuits": {}, "accuracy": {}} for t in tasks}
    for label, spec in specs.items():
        model = _load(spec, device)
        for task in tasks:
            ps = build_task(task, model.tokenizer, n=n, seed=seed, split="test",
                            **options.get(task, {})).to(model.cfg.device)
            c, acc = circuit_of(model, ps, spec, task, top_fraction, steps)
            per_task[task]["circuits"][label] = c
            per_task[task]["accuracy"][label] = acc
    for d in per_task.values():
        final = d["circuits"]["final"]
        labels = list(d["circuits"])
        jac = [head_jaccard(d["circuits"][s], final) for s in labels]
        d["jaccard_with_final"] = dict(zip(labels, jac))
        d["stable_from"] = stable_from(labels, jac)
        d["does_task"] = {s: a >= FLOOR for s, a in d["accuracy"].items()}
        d["cohorts"] = cohorts(d["circuits"])
    return {"model": name, "steps": list(specs), "tasks": per_task}


def figures(reg: dict[str, Any] | None, evo: dict[str, Any] | None) -> dict[str, Any]:
    """{stem: Figure}: E per head per regime, E per checkpoint and cohorts per regime, head importance
    per model, and per toyworld task the cohort plot and the Jaccard with the final circuit."""
    from circuits.figures import bars
    from circuits.graph.draw import cohort_figure, effect_heatmap, head_heatmaps

    figs: dict[str, Any] = {}
    if reg is not None:
        fam = reg["family"]
        figs["regimes_effect"] = effect_heatmap(reg["changes"], title=f"E per head, {fam}-base -> each regime")
        grids = {}
        for spec, c in reg["circuits"].items():
            if "@" in spec:
                continue
            s = c.shape
            g = torch.zeros(s.n_layers, s.n_heads)
            for (layer, h), v in c.head_importance().items():
                g[layer, h] = v
            grids[spec.removeprefix("zoo:")] = g
        figs["regimes_importance"] = head_heatmaps(grids, cbar="head importance I (share of |EAP-IG|)",
                                                   title="Head importance per model")
        for regime, eff in reg["checkpoint_effects"].items():
            figs[f"{regime}_checkpoint_effect"] = effect_heatmap(eff, title=f"E per head over {fam}-{regime} "
                                                                            "checkpoints")
            figs[f"{regime}_cohorts"] = cohort_figure(reg["cohorts"][regime],
                                                      title=f"Heads entering {fam}-{regime}'s circuit")
    if evo is not None:
        for task, d in evo["tasks"].items():
            figs[f"{evo['model']}_{task}_cohorts"] = cohort_figure(
                d["cohorts"], title=f"{task}: heads entering {evo['model']}'s circuit over training")
        figs[f"{evo['model']}_stability"] = bars(
            {task: {s: j for s, j in d["jaccard_with_final"].items()} for task, d in evo["tasks"].items()},
            ylabel="head Jaccard with the final circuit", reference=STABLE,
            title=f"{evo['model']}: how close each checkpoint's circuit is to the final one")
    return figs


@dataclass
class Result:
    """Both studies (either may be None when not asked for), the figures, the time taken."""

    n: int
    seed: int
    top_fraction: float
    regimes: dict[str, Any] | None
    evolution: dict[str, Any] | None
    figures: dict[str, Any]
    seconds: float

    def data(self) -> dict[str, Any]:
        """The numbers, as plain data for the result file."""
        out: dict[str, Any] = {"settings": {"method": METHOD, "top_fraction": self.top_fraction, "steps": STEPS,
                                            "floor": FLOOR, "stable_jaccard": STABLE, "split": "test"},
                               "seconds": round(self.seconds, 2)}
        if self.regimes is not None:
            r = self.regimes
            out["regimes"] = {
                "family": r["family"], "regimes": r["regimes"], "accuracy": r["accuracy"], "prompts": r["prompts"],
                "changes": {k: v.to_dict() for k, v in r["changes"].items()},
                "checkpoint_effects": {k: v.to_dict() for k, v in r["checkpoint_effects"].items()},
                "cohorts": {k: v.to_dict() for k, v in r["cohorts"].items()},
                "regimes_without_checkpoints": r["regimes_without_checkpoints"],
                "circuits": {k: v.to_dict() for k, v in r["circuits"].items()}}
        if self.evolution is not None:
            e = self.evolution
            out["evolution"] = {"model": e["model"], "steps": e["steps"], "tasks": {
                t: {"accuracy": d["accuracy"], "does_task": d["does_task"], "jaccard_with_final": d["jaccard_with_final"],
                    "stable_from": d["stable_from"], "cohorts": d["cohorts"].to_dict(),
                    "circuits": {s: c.to_dict() for s, c in d["circuits"].items()}}
                for t, d in e["tasks"].items()}}
        return out


def run(n: int = 32, seed: int = 0, device: str | None = None, studies: tuple[str, ...] = ("regimes", "evolution"),
        tasks: list[str] | None = None, top_fraction: float = TOP_FRACTION) -> Result:
    """The asked-for ``studies`` ("regimes", "evolution")."""
    unknown = set(studies) - {"regimes", "evolution"}
    if unknown or not studies:
        raise ValueError(f"studies must be a non-empty subset of ['regimes', 'evolution'], got {list(studies)}")
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must lie in (0, 1], got {top_fraction}")
    t0 = time.time()
    reg = regimes(n, seed, device, top_fraction) if "regimes" in studies else None
    evo = evolution(n, seed, device, tasks, top_fraction) if "evolution" in studies else None
    return Result(n, seed, top_fraction, reg, evo, figures(reg, evo), time.time() - t0)


def _heads(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


def summary(r: Result) -> str:
    """The printed summary."""
    lines = [f"Circuits across training ({r.n} held-out prompts, seed {r.seed}; circuit = top "
             f"{r.top_fraction:.0%} of edges by EAP-IG-inputs with a KL objective)"]
    if r.regimes is not None:
        g = r.regimes
        base = f"zoo:{g['family']}-base"
        lines += ["", f"{'model':28s} {'accuracy':>8s} {'heads':>6s}  reads the answer",
                  f"{base:28s} {g['accuracy'][base]:8.2f} {len(g['circuits'][base].heads()):6d}  after '='"]
        for regime in g["regimes"]:
            spec = f"zoo:{g['family']}-{regime}"
            lines.append(f"{spec:28s} {g['accuracy'][spec]:8.2f} {len(g['circuits'][spec].heads()):6d}  "
                         "after the full trace")
        for regime, ch in g["changes"].items():
            top = sorted(ch.effect.items(), key=lambda kv: -kv[1])[:5]
            lines += [f"{regime}: {len(ch.emergent)} emergent, {len(ch.retained)} retained, {len(ch.lost)} lost; "
                      f"highest E: {', '.join(f'{h} {e:+.2f}' for h, e in top)}"]
            if regime in g["cohorts"]:
                c = g["cohorts"][regime]
                lines.append(f"  over checkpoints {c.steps}: heads present "
                             f"{[sum(v.values()) for v in c.stack.values()]}")
        if g["regimes_without_checkpoints"]:
            lines.append(f"no checkpoints bundled for: {g['regimes_without_checkpoints']}")
    if r.evolution is not None:
        e = r.evolution
        lines += ["", f"{e['model']} checkpoints {e['steps']}: accuracy, and head Jaccard with the final circuit"]
        for task, d in e["tasks"].items():
            acc = " ".join(f"{a:.2f}" for a in d["accuracy"].values())
            jac = " ".join("n/a" if j is None else f"{j:.2f}" for j in d["jaccard_with_final"].values())
            lines.append(f"{task:16s} acc {acc} | jaccard {jac} | stable from {d['stable_from'] or 'never'}")
    return "\n".join(lines)


def write(r: Result, folder: str) -> list[str]:
    """compare_regimes.json (with provenance), the figures (PDF + PNG), and every circuit in every export
    format under circuits/."""
    from circuits.graph.export import export_all
    from circuits.results import provenance, write_result

    paths = save_figures(r.figures, folder)
    named: dict[str, Any] = {}
    if r.regimes is not None:
        named |= {spec.removeprefix("zoo:").replace("@", "_"): c for spec, c in r.regimes["circuits"].items()}
    if r.evolution is not None:
        for task, d in r.evolution["tasks"].items():
            named |= {f"{r.evolution['model']}_{s}_{task}": c for s, c in d["circuits"].items()}
    for stem, c in named.items():
        paths += export_all(c, os.path.join(folder, "circuits"), stem)
    data = {**r.data(), "files": [os.path.relpath(p, folder) for p in paths]}
    models = sorted({c.model for c in named.values() if c.model})
    prov = provenance(model={"models": models}, task="compare_regimes", seed=r.seed, n=r.n)
    return [write_result(os.path.join(folder, "compare_regimes.json"), "compare_regimes", data, prov), *paths]


def main(argv: list[str] | None = None) -> int:
    """``python -m analyses.compare_regimes [--study regimes|evolution ...] [--tasks T,...] [--n N] [--seed S]
    [--top-fraction F] [--device D] [--out DIR]``."""
    ap = argparse.ArgumentParser(prog="python -m analyses.compare_regimes", description=__doc__.splitlines()[0])
    ap.add_argument("--study", action="append", choices=["regimes", "evolution"],
                    help="which study (default: both); may be repeated")
    ap.add_argument("--tasks", default="", help="toyworld tasks for the checkpoint study (default: all)")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top-fraction", type=float, default=TOP_FRACTION)
    ap.add_argument("--device")
    ap.add_argument("--out", default="results")
    args = ap.parse_args(argv)
    studies = tuple(args.study or ("regimes", "evolution"))
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] or None

    def analyse(folder: str) -> str:
        r = run(args.n, args.seed, args.device, studies, tasks, args.top_fraction)
        paths = write(r, folder)
        return summary(r) + f"\n\ncompare_regimes.json and {len(paths) - 1} files in {r.seconds:.1f} s"

    return run_analysis(analyse, os.path.join(args.out, "compare_regimes", "zoo"), n=args.n, seed=args.seed)


if __name__ == "__main__":
    raise SystemExit(main())
