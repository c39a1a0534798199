"""All-for-One on mental math (Mamidanna et al. 2025): ``python -m analyses.mental_math``.

Does the answer of "23 + 41 =" get computed at the last token after a waiting period
and a short transfer (the paper's AF1 subgraph), and where? Steps, each a function
that returns data:

1. :func:`prompts` - one prompt set per expression form the model solves (a zoo
   model's own forms and phrasing, from its recipe; the reasoner zoo's 3-4 operand
   chains through the ``arithmetic`` task); forms below the accuracy floor are listed,
   not analysed; a larger fresh sample supplies the context-aware means (CAMA);
2. :func:`knockout` - the necessity test: the last token may not read other tokens in
   one layer at a time;
3. :func:`search` - the three stages (CAMA waiting depth, transfer layers, head pruning),
   with the paper's schedule (other tokens self-peek from the wait on) and with the
   variant in which other tokens keep their normal attention; unmet thresholds and a
   trivial wait of 0 are flagged, the final schedule has per-prompt values and a CI;
4. :func:`figures`.

:func:`main` writes results/mental_math/<model>/ per model (mental_math.json, figures)
and prints a summary; ``--model`` may be given more than once (``make mental-math`` runs
zoo:toyworld and zoo:reasoner-base, the second architecture: Qwen2 with grouped-query
attention).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from analyses.common import run_analysis, safe_name, save_figures
from circuits.cli import ModelFailsTask

FLOOR = 0.8  # a form the model answers less often than this is not analysed
TAU = 0.9  # AF1's faithfulness threshold (accuracy relative to the full model)
MIN_N = 16  # fewer prompts give no usable bootstrap interval


def task_of(spec: str) -> tuple[str, dict[str, Any]]:
    """(task, options) of the arithmetic a model was trained on: a zoo model's recorded options
    (toyworld: mental_math; the reasoners: arithmetic), else mental_math's defaults."""
    from circuits.zoo import recipe, task_options

    recorded = task_options(spec)
    if "mental_math" in recorded:
        return "mental_math", recorded["mental_math"]
    if spec.startswith("zoo:") and recipe(spec[4:]).get("recipe", "").endswith("reasoner"):
        return "arithmetic", {}
    return "mental_math", {}


def forms_of(task: str, options: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, options) of each expression form to analyse separately."""
    if task == "arithmetic":
        return [(f"{k} operands", {**options, "n_operands": (k,)}) for k in options.get("n_operands", (3, 4))]
    from circuits.tasks.mental_math import FORMS

    return [(f, {**options, "forms": (f,)}) for f in FORMS]  # every form: those the model fails are listed


def prompts(model: Any, spec: str, n: int, seed: int, floor: float = FLOOR) -> dict[str, Any]:
    """{"task", "options", "forms": {label: {"prompts", "reference", "accuracy"}}, "skipped": {label: accuracy}}:
    a form is analysed only if the model answers at least ``floor`` of it; a clear error if none is."""
    from circuits import metrics
    from circuits.engines.forward import end_logits
    from circuits.tasks import build_task

    task, options = task_of(spec)
    split = "test" if spec.startswith("zoo:") else "all"
    out: dict[str, Any] = {"task": task, "options": {**options, "split": split}, "forms": {}, "skipped": {}}
    for i, (label, opts) in enumerate(forms_of(task, options)):
        ps = build_task(task, model.tokenizer, n=n, seed=seed, split=split, **opts).to(model.cfg.device)
        acc = float(metrics.accuracy(end_logits(model, ps.clean, ps.positions["END"]), ps))
        if acc < floor or acc == 0:  # AF1's faithfulness is relative to the full model's accuracy
            out["skipped"][label] = acc
            continue
        ref = build_task(task, model.tokenizer, n=4 * n, seed=seed + 1000 + i, split=split, **opts)
        out["forms"][label] = {"prompts": ps, "reference": ref.to(model.cfg.device), "accuracy": acc}
    if not out["forms"]:
        raise ModelFailsTask(f"{spec} solves none of its {task} forms (accuracies {out['skipped']}, floor {floor:.0%}): "
                         "there is no computation to locate")
    return out


def knockout(model: Any, sets: dict[str, Any]) -> dict[str, Any]:
    """{form: KnockoutCurve}: accuracy when the last token may not read other tokens, layer by layer."""
    from circuits.engines.af1 import knockout_curve

    return {label: knockout_curve(model, f["prompts"]) for label, f in sets["forms"].items()}


def search(model: Any, sets: dict[str, Any], tau: float = TAU) -> dict[str, dict[str, Any]]:
    """{form: {"paper": AF1Result, "others_full": AF1Result}}: the three stages with the paper's schedule
    (every other token self-peeks from the wait on) and with other tokens' attention left intact."""
    from circuits.engines.af1 import all_for_one

    return {label: {name: all_for_one(model, f["prompts"], reference=f["reference"], tau=tau, others=others)
                    for name, others in (("paper", "self"), ("others_full", "full"))}
            for label, f in sets["forms"].items()}


def figures(found: dict[str, dict[str, Any]], curves: dict[str, Any], label: str) -> dict[str, Any]:
    """{"stages", "knockout"}: faithfulness by CAMA depth and by transfer length (both schedules), and
    the knockout curves, per form."""
    from circuits.figures import new_figure

    stages = new_figure((10, 3.6))
    ax1, ax2 = stages.subplots(1, 2)
    for form, res in found.items():
        paper = res["paper"]
        ax1.plot([r["wait"] for r in paper.stage1], [r["faithfulness"] for r in paper.stage1], marker="o", label=form)
        for name, style in (("paper", "-"), ("others_full", "--")):
            r2 = res[name].stage2
            ax2.plot([r["transfer"] for r in r2], [r["faithfulness"] for r in r2], style, marker="o",
                     label=f"{form} ({'paper' if name == 'paper' else 'others read normally'}, wait {res[name].wait})")
    for ax, xlabel, title in ((ax1, "CAMA at the input of layer", "stage 1: waiting"),
                              (ax2, "transfer layers after the wait", "stage 2: transfer")):
        ax.axhline(TAU, color="gray", lw=0.8, ls="--")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy / full accuracy")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    stages.suptitle(f"All-for-One search ({label})", fontsize=10)
    ko = new_figure((5, 3.6))
    ax = ko.add_subplot()
    for form, c in curves.items():
        ax.plot(c.layers, c.accuracy, marker="o", label=form)
    ax.set_xlabel("layer where the last token reads only itself (-1: none)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Knockout of the last token's attention ({label})", fontsize=9)
    ax.legend(fontsize=7)
    return {"stages": stages, "knockout": ko}


@dataclass
class Result:
    """Everything :func:`run` found, and the figures drawn from it."""

    model: Any
    spec: str
    n: int
    seed: int
    sets: dict[str, Any]
    knockout: dict[str, Any]
    found: dict[str, dict[str, Any]]
    figures: dict[str, Any]
    seconds: float

    def data(self) -> dict[str, Any]:
        """The numbers, as plain data for the result file."""
        return {
            "settings": {"task": self.sets["task"], "task_options": self.sets["options"], "tau": TAU,
                         "floor": FLOOR, "cama_reference": "4n fresh prompts of the same form",
                         "schedules": {"paper": "other tokens self-peek from the wait on",
                                       "others_full": "other tokens keep their attention; only the last "
                                                      "token is restricted"}},
            "forms": {label: {"accuracy": f["accuracy"], "prompts": f["prompts"].describe()}
                      for label, f in self.sets["forms"].items()},
            "skipped_forms": self.sets["skipped"],
            "knockout": {k: c.to_dict() for k, c in self.knockout.items()},
            "af1": {k: {name: r.to_dict() for name, r in v.items()} for k, v in self.found.items()},
            "seconds": round(self.seconds, 2),
        }


@torch.no_grad()
def run(spec: str = "zoo:toyworld", n: int = 64, seed: int = 0, device: str | None = None,
        floor: float = FLOOR, min_n: int = MIN_N) -> Result:
    """Every step on ``spec`` (``n`` >= ``min_n`` prompts per form, so that the intervals mean something)."""
    from circuits.models import load_model

    if n < min_n:
        raise ValueError(f"n={n} prompts is too few for a bootstrap interval; use at least {min_n}")
    t0 = time.time()
    model = load_model(spec, device=device)
    sets = prompts(model, spec, n, seed, floor)
    curves = knockout(model, sets)
    found = search(model, sets)
    return Result(model, spec, n, seed, sets, curves, found, figures(found, curves, spec), time.time() - t0)


def summary(r: Result) -> str:
    """The printed summary: per form and schedule, the wait, the transfer, faithfulness and flags."""
    lines = [f"All-for-One on {r.spec}: task {r.sets['task']} ({r.n} prompts per form, seed {r.seed})"]
    if r.sets["skipped"]:
        lines.append("not analysed (below the accuracy floor): "
                     + ", ".join(f"{k} {v:.0%}" for k, v in r.sets["skipped"].items()))
    lines += ["", f"{'form':14s} {'schedule':12s} {'acc':>5s} {'wait':>5s} {'transfer':>9s} {'faithful':>9s} "
                  f"{'95% CI':>13s}  flags"]
    for form, res in r.found.items():
        for name, a in res.items():
            ci = a.ci.get("faithfulness")
            flags = ([] if a.tau_met.get("transfer") else ["tau not met"]) + (["wait 0 (trivial)"] if a.wait_trivial
                                                                             else [])
            lines.append(f"{form:14s} {name:12s} {a.accuracy_full:5.2f} {a.wait:5d} {a.transfer:9d} "
                         f"{a.faithfulness:9.3f} {'n/a' if ci is None else f'{ci[0]:.2f}..{ci[1]:.2f}':>13s}  "
                         f"{', '.join(flags) or '-'}")
    lines.append("")
    for form, c in r.knockout.items():
        lines.append(f"knockout {form}: " + " ".join(f"L{layer}:{acc:.2f}" for layer, acc in zip(c.layers, c.accuracy)))
    return "\n".join(lines)


def write(r: Result, folder: str) -> list[str]:
    """mental_math.json (with provenance) and the figures (PDF + PNG) into ``folder``."""
    from circuits.engines import fastpaths
    from circuits.models import model_info
    from circuits.results import provenance, write_result

    paths = save_figures(r.figures, folder)
    data = {**r.data(), "figures": [os.path.relpath(p, folder) for p in paths]}
    prov = provenance(model=model_info(r.model), task=r.sets["task"], seed=r.seed, n=r.n,
                      fast_paths=fastpaths.report(r.model))
    return [write_result(os.path.join(folder, "mental_math.json"), "mental_math", data, prov), *paths]


def main(argv: list[str] | None = None) -> int:
    """``python -m analyses.mental_math [--model M ...] [--n N] [--seed S] [--device D] [--out DIR]``."""
    ap = argparse.ArgumentParser(prog="python -m analyses.mental_math", description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", help="a model spec; repeat for several (default zoo:toyworld)")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device")
    ap.add_argument("--out", default="results")
    args = ap.parse_args(argv)
    rc = 0
    for spec in args.model or ["zoo:toyworld"]:
        def analyse(folder: str, spec: str = spec) -> str:
            r = run(spec, args.n, args.seed, args.device)
            paths = write(r, folder)
            return summary(r) + f"\n\nmental_math.json and {len(paths) - 1} figure files in {r.seconds:.1f} s"

        rc = max(rc, run_analysis(analyse, os.path.join(args.out, "mental_math", safe_name(spec)),
                                  n=args.n, seed=args.seed))
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
