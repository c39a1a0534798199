"""Colored Objects (Merullo et al. 2024, the circuit-reuse study): ``python -m analyses.colored_objects``.

"... the cup is blue, the pen is red ... What color is the cup? A: the cup is" -> " blue";
the corrupted prompt asks about another object of the same scene (its colour is the
wrong answer). Steps, each a function that returns data:

1. :func:`prompts` - the task as the model was trained on it (a zoo model's scene sizes,
   from its recipe), and a check that the model solves it (accuracy floor);
2. :func:`head_patching` - head outputs patched at the queried object's mention, its
   colour, the distractor's colour, the question and END (noising and denoising);
3. :func:`trace_circuit` - path patching backwards, as ``make ioi`` does: logits -> heads
   with direct effects, named by where END attends (the answer's colour: colour movers; the
   queried object: object movers) -> the heads that feed their queries at END, their keys,
   and their values where they read (content gatherers if they attend to the answer's
   colour); classes named by attention and effect;
4. :func:`evaluate_circuit` - faithfulness and complement (mean ablation per template)
   with bootstrap intervals, against random circuits of the same size and positions;
5. :func:`by_scene_size` - accuracy, logit difference and faithfulness for 2..5 objects;
6. :func:`ioi_overlap` - the heads it shares with the IOI circuit that ``analyses.ioi``
   finds on the same model: Jaccard and overlap coefficient, against random head sets of
   the same sizes;
7. :func:`figures`.

:func:`main` writes results/colored_objects/<model>/ (colored_objects.json, figures) as a
unit and prints a summary.
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

POSITIONS = ["ANSWER_OBJ", "ANSWER", "DISTRACTOR", "QO", "QO2", "END"]
READ_AT_END = ["ANSWER", "DISTRACTOR", "QO", "QO2"]  # where a direct head's END query may look
CLASSES = ["color mover", "object mover", "other direct", "query composer", "key feeder", "content gatherer",
           "value feeder"]
DIRECT = ("color mover", "object mover", "other direct")
FLOOR = 0.8  # below this clean accuracy the model does not do the task: nothing to analyse
MIN_N = 16  # fewer prompts give no usable bootstrap interval


def scene_sizes(spec: str) -> list[int]:
    """The scene sizes a zoo model was trained on (its recipe), else the task's default of 3 objects."""
    from circuits.zoo import recipe

    if not spec.startswith("zoo:"):
        return [3]
    sizes = recipe(spec[4:]).get("task_options", {}).get("colored_objects", {}).get("n_objects", 3)
    return list(sizes) if isinstance(sizes, (list, tuple)) else [sizes]


def prompts(model: Any, spec: str, n: int, seed: int, floor: float = FLOOR) -> tuple[Any, dict[str, Any]]:
    """(PromptSet over the model's scene sizes, task options); a clear error if the model's clean
    accuracy is below ``floor`` (the analysis would read noise)."""
    from circuits import metrics
    from circuits.engines.forward import end_logits
    from circuits.tasks import build_task
    from circuits.zoo import task_options

    split = "test" if spec.startswith("zoo:") else "all"
    options = {**task_options(spec).get("colored_objects", {}), "n_objects": scene_sizes(spec)}
    ps = build_task("colored_objects", model.tokenizer, n=n, seed=seed, split=split, **options).to(model.cfg.device)
    acc = float(metrics.accuracy(end_logits(model, ps.clean, ps.positions["END"]), ps))
    if acc < floor:
        raise ModelFailsTask(f"{spec} answers only {acc:.0%} of the colored-objects prompts (floor {floor:.0%}): it does "
                         "not do the task, so there is no circuit to find")
    return ps, {**options, "split": split, "clean_accuracy": acc}


def head_patching(model: Any, ps: Any, progress: bool = True) -> dict[str, Any]:
    """{"noise": Scores, "denoise": Scores} of head outputs (z) patched at each named position."""
    from circuits.engines.patching import activation_patching

    named = [p for p in POSITIONS if p in ps.positions]  # QO2 exists only in "the cup is" phrasings
    return {d: activation_patching(model, ps, "z", direction=d, positions=named, progress=progress)
            for d in ("noise", "denoise")}


@dataclass
class Trace:
    """Path patching's findings: each step's effects, the heads' classes (with positions), the edges
    between them, and the attention signatures that named the direct heads."""

    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    classes: dict[str, str] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)
    attention_at_END: dict[str, dict[str, float]] = field(default_factory=dict)
    attention_at_read: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # position -> head -> key


def trace_circuit(model: Any, ps: Any, progress: bool = True) -> Trace:
    """Path patching backwards from the logits (see the module docstring, step 3).

    Direct heads are named by where END attends most: the answer's colour (colour mover), the
    queried object (object mover: QO2 in "A: the cup is", or QO in the question), else other
    direct. Their queries at END are fed by query composers, their keys (anywhere) by key
    feeders, and their values, at the position each head reads, by content gatherers (named by
    where that position attends most among the answer's colour, its object and the distractor).
    """
    from circuits.engines.detectors import attention_between
    from circuits.engines.path_patching import path_patching, pick_senders, wang_effect
    from circuits.names import Reader, parse_node

    trace = Trace()

    def step(name: str, receivers: list, receiver_position: str | None) -> torch.Tensor:
        sc = path_patching(model, ps, receivers, receiver_position=receiver_position, progress=progress)
        eff = wang_effect(sc)
        trace.steps[name] = {"receivers": receivers, "receiver_position": receiver_position,
                             "effect_percent": eff.tolist(), "base_logit_diff": sc.baseline["base"]}
        return eff

    direct = pick_senders(step("logits", ["logits"], None), set())
    looks = [p for p in READ_AT_END if p in ps.positions]
    trace.attention_at_END = attention_between(model, ps, direct, "END", looks)

    def reads(h: tuple[int, int]) -> str:
        a = trace.attention_at_END[f"a{h[0]}.h{h[1]}"]
        return max(looks, key=lambda k: a[k])

    kind = {h: {"ANSWER": "color mover", "QO": "object mover", "QO2": "object mover"}.get(reads(h), "other direct")
            for h in direct}
    chosen = set(direct)
    found: list[tuple[str, list[tuple[int, int]], str]] = [(kind[h], [h], "@END") for h in direct]
    receivers = [h for h in direct if h[0] > 0]
    if receivers:
        composers = pick_senders(step("direct heads' queries", [f"a{a}.h{b}<q>" for a, b in receivers], "END"),
                                 chosen)
        chosen |= set(composers)
        keyed = pick_senders(step("direct heads' keys", [f"a{a}.h{b}<k>" for a, b in receivers], None), chosen)
        chosen |= set(keyed)
        found += [("query composer", composers, "@END"), ("key feeder", keyed, "")]
        for pos in sorted({reads(h) for h in receivers}):  # values where each direct head reads them
            heads = [h for h in receivers if reads(h) == pos]
            gathered = pick_senders(step(f"direct heads' values at {pos}", [f"a{a}.h{b}<v>" for a, b in heads], pos),
                                    chosen)
            chosen |= set(gathered)
            att = attention_between(model, ps, gathered, pos, ["ANSWER", "ANSWER_OBJ", "DISTRACTOR"])
            trace.attention_at_read[pos] = att
            for h in gathered:
                a = att[f"a{h[0]}.h{h[1]}"]
                cls = "content gatherer" if a["ANSWER"] >= max(a["ANSWER_OBJ"], a["DISTRACTOR"]) else "value feeder"
                found.append((cls, [h], f"@{pos}"))
    for cls, heads, pos in found:
        for layer, h in heads:
            trace.classes.setdefault(f"a{layer}.h{h}{pos}", cls)
    direct_nodes = [parse_node(n) for n, c in trace.classes.items() if c in DIRECT]
    trace.edges = [(n.name, "logits") for n in direct_nodes]
    for node, cls in trace.classes.items():
        comp = {"query composer": "q", "key feeder": "k", "content gatherer": "v", "value feeder": "v"}.get(cls)
        if comp is not None:  # the reader input of each later direct head this head feeds
            trace.edges += [(node, Reader("head", t.layer, t.head, comp).name) for t in direct_nodes
                            if t.layer > parse_node(node).layer]
    return trace


def random_like(circuit: list[str], n_layers: int, n_heads: int, rng: random.Random) -> list[str]:
    """A random circuit with the same number of heads at the same positions (distinct heads)."""
    from circuits.names import parse_node

    heads = rng.sample([(layer, h) for layer in range(n_layers) for h in range(n_heads)], len(circuit))
    return [f"a{layer}.h{h}" + (f"@{parse_node(c).pos}" if parse_node(c).pos else "")
            for (layer, h), c in zip(heads, circuit)]


def evaluate_circuit(model: Any, ps: Any, classes: dict[str, str], seed: int, n_random: int = 20) -> dict[str, Any]:
    """Faithfulness and complement of the circuit (mean ablation per template, bootstrap intervals),
    and the faithfulness of ``n_random`` random circuits of the same size and positions."""
    from circuits.engines.ablation import Ablation
    from circuits.engines.faithfulness import (
        circuit_only,
        evaluate_ablated,
        faithfulness,
        resolve_universe,
    )
    from circuits.names import parse_node

    ablation = Ablation("mean", by_group=True)
    circuit = list(classes)
    if not circuit:
        return {"ablation": ablation.describe(), "faithfulness": None, "random": None}
    faith = faithfulness(model, ps, circuit, ablation=ablation)
    rng = random.Random(seed)
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    universe = resolve_universe(model, "heads")
    draws = [random_like(circuit, n_layers, n_heads, rng) for _ in range(n_random)]
    variants = [circuit_only([parse_node(n) for n in d], universe) for d in draws]
    vals = evaluate_ablated(model, ps, variants, ablation=ablation).mean(1)
    rand = ((vals - faith.empty) / (faith.full - faith.empty)).tolist()
    above = sum(faith.faithfulness > r for r in rand)
    return {"ablation": ablation.describe(), "faithfulness": faith,
            "random": {"faithfulness": rand, "mean": sum(rand) / len(rand), "max": max(rand), "n": n_random,
                       "seed": seed, "circuit_beats": above}}


def by_scene_size(model: Any, ps: Any, classes: dict[str, str]) -> dict[str, dict[str, Any]]:
    """{"n=k": accuracy, logit difference, and the circuit's faithfulness with its interval} per
    scene size present in ``ps`` (its template groups name the size)."""
    from circuits import metrics
    from circuits.engines.ablation import Ablation
    from circuits.engines.faithfulness import faithfulness
    from circuits.engines.forward import end_logits

    sizes: dict[str, list[int]] = {}
    only = ps.provenance.get("options", {}).get("n_objects")
    for i, g in enumerate(ps.groups.tolist()):
        name = ps.group_names[g].split(",")[0]  # "n=2,start=..." when sizes are mixed, else "start=..."
        sizes.setdefault(name if name.startswith("n=") else f"n={only}", []).append(i)
    out = {}
    for size, rows in sorted(sizes.items()):
        sub = ps.subset(rows)
        lg = end_logits(model, sub.clean, sub.positions["END"])
        row: dict[str, Any] = {"n": len(sub), "accuracy": float(metrics.accuracy(lg, sub)),
                               "logit_diff": float(metrics.logit_diff(lg, sub))}
        if classes and len(sub) >= 4:
            f = faithfulness(model, sub, list(classes), ablation=Ablation("mean", by_group=True))
            row |= {"faithfulness": f.faithfulness, "ci": f.ci["faithfulness"]}
        out[size] = row
    return out


def jaccard(a: set, b: set) -> float | None:
    """|a & b| / |a | b| (None for two empty sets)."""
    return len(a & b) / len(a | b) if a | b else None


def ioi_overlap(model: Any, spec: str, heads: set[tuple[int, int]], n: int, seed: int, progress: bool,
                n_null: int = 1000) -> dict[str, Any]:
    """Heads shared with the IOI circuit that ``analyses.ioi.trace_circuit`` finds on the same model
    (positions ignored): Jaccard and overlap coefficient, and the same statistics for random head
    sets of the same sizes (the null; a p-value = share of random pairs with at least this Jaccard)."""
    from analyses import ioi
    from circuits.names import parse_node

    sets = ioi.prompts(model, n, seed, spec)
    ioi_heads = {(parse_node(c).layer, parse_node(c).head) for c in ioi.trace_circuit(model, sets["abc"], progress).classes}
    shared = heads & ioi_heads
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    everything = [(layer, h) for layer in range(n_layers) for h in range(n_heads)]
    rng = random.Random(seed)
    null = [jaccard(set(rng.sample(everything, len(heads))), set(rng.sample(everything, len(ioi_heads))))
            for _ in range(n_null)]
    j = jaccard(heads, ioi_heads)
    defined = [x for x in null if x is not None]
    return {"ioi_heads": sorted(f"a{a}.h{b}" for a, b in ioi_heads),
            "shared": sorted(f"a{a}.h{b}" for a, b in shared),
            "colored_objects_only": sorted(f"a{a}.h{b}" for a, b in heads - ioi_heads),
            "ioi_only": sorted(f"a{a}.h{b}" for a, b in ioi_heads - heads),
            "jaccard": j, "overlap_coefficient": len(shared) / min(len(heads), len(ioi_heads))
            if heads and ioi_heads else None,
            "null_jaccard_mean": sum(defined) / len(defined) if defined else None,
            "p_value": (sum(x >= j for x in defined) / len(defined)) if defined and j is not None else None,
            "n_null": n_null}


def figures(patch: dict[str, Any], trace: Trace, sizes: dict[str, dict[str, Any]], n_layers: int,
            label: str) -> dict[str, Any]:
    """{"patching", "path_patching", "circuit", "scene_sizes"} Figures."""
    from circuits.figures import bars, circuit_figure, heatmaps

    named = patch["noise"].labels["pos"]
    panels = {f"noising: LD lost @ {pos}": 1 - patch["noise"].normalized()[:, i] for i, pos in enumerate(named)}
    panels |= {f"denoising: LD restored @ {pos}": patch["denoise"].normalized()[:, i] for i, pos in enumerate(named)}
    return {
        "patching": heatmaps(panels, center=0.0, cbar="fraction of clean-corrupted LD", ncols=len(named),
                             title=f"Colored objects: head patching by position ({label})"),
        "path_patching": heatmaps({k: torch.tensor(v["effect_percent"]) for k, v in trace.steps.items()}, ncols=4,
                                  cbar="effect on LD (%)", title="Path patching (noising): 100 (LD_patched - LD) / LD"),
        "circuit": circuit_figure(trace.classes, trace.edges, n_layers, classes_order=CLASSES,
                                  title=f"Colored-objects circuit in {label}"),
        "scene_sizes": bars({k: {"accuracy": v["accuracy"], "faithfulness": v.get("faithfulness")}
                             for k, v in sizes.items()},
                            errors={k: {"faithfulness": v["ci"]} for k, v in sizes.items() if v.get("ci")},
                            ylabel="fraction", reference=1.0, title="By scene size"),
    }


@dataclass
class Result:
    """Everything :func:`run` found, and the figures drawn from it."""

    model: Any
    spec: str
    n: int
    seed: int
    ps: Any
    options: dict[str, Any]
    patching: dict[str, Any]
    trace: Trace
    evaluation: dict[str, Any]
    sizes: dict[str, dict[str, Any]]
    overlap: dict[str, Any]
    figures: dict[str, Any]
    seconds: float

    def circuit(self) -> Any:
        """The circuit found, as a ``circuits.graph.Circuit`` (heads at their positions with classes; the
        class-to-class edges traced)."""
        from circuits.graph import Circuit, Shape

        return Circuit.from_classes(self.trace.classes, self.trace.edges, Shape.of(self.model), task="colored_objects",
                                    model=self.spec, method="path patching backwards (Merullo et al. 2024)")

    def data(self) -> dict[str, Any]:
        """The numbers, as plain data for the result file."""
        ev = self.evaluation
        return {
            "settings": {"task_options": self.options, "positions": POSITIONS, "ablation": ev["ablation"],
                         "path_patching": "noising, MLPs recomputed (Wang et al.)",
                         "selection": "heads with Wang effect of the step's sign >= 25% of the largest and >= 2%, "
                                      "at most 4 per step"},
            "prompts": self.ps.describe(),
            "head_patching": {d: {"normalized": s.normalized().tolist(), "baseline": s.baseline, "axes": list(s.axes)}
                              for d, s in self.patching.items()},
            "path_patching": self.trace.steps,
            "circuit": self.circuit().to_dict(),
            "attention": {"at_END": self.trace.attention_at_END, "where_read": self.trace.attention_at_read},
            "faithfulness": None if ev["faithfulness"] is None else ev["faithfulness"].to_dict(),
            "random_circuits": ev["random"],
            "scene_sizes": self.sizes,
            "ioi_overlap": self.overlap,
            "seconds": round(self.seconds, 2),
        }


@torch.no_grad()
def run(spec: str = "zoo:toyworld", n: int = 64, seed: int = 0, device: str | None = None, progress: bool = True,
        floor: float = FLOOR, min_n: int = MIN_N) -> Result:
    """Every step on ``spec`` (``n`` >= ``min_n`` prompts, so that the intervals mean something)."""
    from circuits.models import load_model
    from circuits.names import parse_node

    if n < min_n:
        raise ValueError(f"n={n} prompts is too few for a bootstrap interval; use at least {min_n}")
    t0 = time.time()
    model = load_model(spec, device=device)
    ps, options = prompts(model, spec, n, seed, floor)
    patch = head_patching(model, ps, progress)
    trace = trace_circuit(model, ps, progress)
    evaluation = evaluate_circuit(model, ps, trace.classes, seed)
    sizes = by_scene_size(model, ps, trace.classes)
    heads = {(parse_node(c).layer, parse_node(c).head) for c in trace.classes}
    overlap = ioi_overlap(model, spec, heads, n, seed, progress)
    figs = figures(patch, trace, sizes, int(model.cfg.n_layers), spec)
    return Result(model, spec, n, seed, ps, options, patch, trace, evaluation, sizes, overlap, figs, time.time() - t0)


def summary(r: Result) -> str:
    """The printed summary: the circuit by class, its faithfulness against random circuits, scene sizes
    and the overlap with IOI."""
    lines = [f"Colored objects on {r.spec} ({r.n} prompts, seed {r.seed}, scene sizes "
             f"{r.options['n_objects']}, clean accuracy {r.options['clean_accuracy']:.2f})", "",
             f"{'class':18s} heads"]
    for cls in CLASSES:
        members = [n for n, c in r.trace.classes.items() if c == cls]
        if members:
            lines.append(f"{cls:18s} {', '.join(members)}")
    f, rand = r.evaluation["faithfulness"], r.evaluation["random"]
    if f is not None:
        ci = f.ci["faithfulness"]
        lines += ["", f"faithfulness {f.faithfulness:.3f} (95% CI "
                      f"{'undefined' if ci is None else f'{ci[0]:.3f}..{ci[1]:.3f}'}); complement "
                      f"{f.complement_faithfulness:.3f}; random circuits of the same size: mean {rand['mean']:.3f}, "
                      f"max {rand['max']:.3f} (beaten by the circuit in {rand['circuit_beats']}/{rand['n']})"]
    lines += ["", f"{'scene':8s} {'n':>4s} {'acc':>6s} {'LD':>7s} {'faithfulness':>13s}"]
    for size, v in r.sizes.items():
        fa = v.get("faithfulness")
        lines.append(f"{size:8s} {v['n']:4d} {v['accuracy']:6.2f} {v['logit_diff']:7.2f} "
                     f"{'n/a' if fa is None else format(fa, '.3f'):>13s}")
    o = r.overlap
    jac = "undefined" if o["jaccard"] is None else f"{o['jaccard']:.2f}"
    lines += ["", f"overlap with the IOI circuit: Jaccard {jac} (random sets of the same sizes: "
                  f"{'n/a' if o['null_jaccard_mean'] is None else format(o['null_jaccard_mean'], '.2f')}, "
                  f"p = {'n/a' if o['p_value'] is None else format(o['p_value'], '.3f')}); shared {o['shared']}"]
    return "\n".join(lines)


def write(r: Result, folder: str) -> list[str]:
    """colored_objects.json (with provenance) and the figures (PDF + PNG) into ``folder``."""
    from circuits.engines import fastpaths
    from circuits.models import model_info
    from circuits.results import provenance, write_result

    paths = save_figures(r.figures, folder)
    data = {**r.data(), "figures": [os.path.relpath(p, folder) for p in paths]}
    prov = provenance(model=model_info(r.model), task="colored_objects", seed=r.seed, n=r.n,
                      fast_paths=fastpaths.report(r.model))
    return [write_result(os.path.join(folder, "colored_objects.json"), "colored_objects", data, prov), *paths]


def main(argv: list[str] | None = None) -> int:
    """``python -m analyses.colored_objects [--model M] [--n N] [--seed S] [--device D] [--out DIR]``."""
    ap = argparse.ArgumentParser(prog="python -m analyses.colored_objects", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="zoo:toyworld")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device")
    ap.add_argument("--out", default="results")
    args = ap.parse_args(argv)

    def analyse(folder: str) -> str:
        r = run(args.model, args.n, args.seed, args.device)
        paths = write(r, folder)
        return summary(r) + f"\n\ncolored_objects.json and {len(paths) - 1} figure files in {r.seconds:.1f} s"

    return run_analysis(analyse, os.path.join(args.out, "colored_objects", safe_name(args.model)),
                        n=args.n, seed=args.seed)


if __name__ == "__main__":
    raise SystemExit(main())
