"""IOI analysis (Wang et al. 2022) on any model: ``python -m analyses.ioi`` (``make ioi``).

Steps, all on IOI prompts with the ABC corruption (p_ABC), each a function that
returns data so that a notebook can run them cell by cell:

1. :func:`baseline` - logit difference (IO - S) clean and corrupted, accuracy;
2. :func:`head_patching` - head outputs patched by position (IO, S1, S1+1, S2, END),
   noising and denoising;
3. :func:`trace_circuit` - path patching backwards, as in the paper (noising, MLPs on
   the paths): logits -> heads with direct effects (name movers if END attends to IO
   more than to S, S-suppression heads if it attends to S); their queries at END ->
   S-inhibition heads, their keys and values -> duplicate-token / induction heads
   (K- and V-composition); S-inhibition values at S2 -> induction / duplicate-token
   heads; induction keys at S1+1 -> previous-token heads. The circuit is the heads of
   each class at their position, classified by path patching and attention;
4. :func:`evaluate_circuit` - faithfulness of the circuit and of its complement (mean
   ablation over p_ABC per template), completeness by class, minimality;
5. :func:`figures` - head patching, path patching and the circuit, as Figures.

:func:`run` chains them; :func:`main` writes results/ioi/<model>/ (ioi.json and the
figures as PDF and PNG, as a unit) and prints a summary.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from analyses.common import run_analysis, safe_name, save_figures
from circuits.engines.detectors import attention_between
from circuits.engines.path_patching import pick_senders as pick

POSITIONS = ["IO", "S1", "S1+1", "S2", "END"]
CLASSES = ["name mover", "negative name mover", "s-suppression", "s-inhibition", "induction", "duplicate token",
           "other upstream", "previous token"]
DIRECT = ("name mover", "negative name mover", "s-suppression")


def prompts(model: Any, n: int, seed: int, spec: str) -> dict[str, Any]:
    """The IOI prompt sets: {"abc": p_ABC (the analysis's set), "s2_io": the S2 := IO flip}.
    Zoo models get held-out word/template combinations (split "test")."""
    from circuits.tasks import build_task

    split = "test" if spec.startswith("zoo:") else "all"
    return {c: build_task("ioi", model.tokenizer, n=n, seed=seed, split=split, corruption=c).to(model.cfg.device)
            for c in ("abc", "s2_io")}


def baseline(model: Any, sets: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Logit difference clean and corrupted, and clean accuracy, of each prompt set."""
    from circuits import metrics
    from circuits.engines.forward import end_logits

    out = {}
    for name, p in sets.items():
        clean = end_logits(model, p.clean, p.positions["END"])  # only the row the metrics read
        corr = end_logits(model, p.corrupted, p.positions["END"])
        out[name] = {"logit_diff_clean": float(metrics.logit_diff(clean, p)),
                     "logit_diff_corrupted": float(metrics.logit_diff(corr, p)),
                     "accuracy_clean": float(metrics.accuracy(clean, p)), "prompts": p.describe()}
    return out


def head_patching(model: Any, ps: Any, progress: bool = True) -> dict[str, Any]:
    """Head outputs (z) patched at each named position: {"noise": Scores, "denoise": Scores}."""
    from circuits.engines.patching import activation_patching

    return {d: activation_patching(model, ps, "z", direction=d, positions=POSITIONS, progress=progress)
            for d in ("noise", "denoise")}


@dataclass
class Trace:
    """What path patching found: each step's effects, the heads' classes at their positions, the edges
    between classes, and the attention signatures that classified them."""

    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    classes: dict[str, str] = field(default_factory=dict)  # "a1.h0@END" -> class
    edges: list[tuple[str, str]] = field(default_factory=list)
    attention_at_END: dict[str, dict[str, float]] = field(default_factory=dict)
    attention_at_S2: dict[str, dict[str, float]] = field(default_factory=dict)


def trace_circuit(model: Any, ps: Any, progress: bool = True) -> Trace:
    """Path patching backwards from the logits (see the module docstring, step 3)."""
    from circuits.engines.path_patching import path_patching, wang_effect

    trace = Trace()

    def step(name: str, receivers: list, receiver_position: str | None) -> torch.Tensor:
        sc = path_patching(model, ps, receivers, receiver_position=receiver_position, progress=progress)
        eff = wang_effect(sc)
        trace.steps[name] = {"receivers": receivers, "receiver_position": receiver_position,
                             "effect_percent": eff.tolist(), "base_logit_diff": sc.baseline["base"]}
        return eff

    e1 = step("logits", ["logits"], None)
    direct = pick(e1, set())
    negative = pick(e1, set(direct), sign=+1, cap=2)
    trace.attention_at_END = attention_between(model, ps, direct + negative, "END", ["IO", "S1", "S2"])

    def reads_io(h: tuple[int, int]) -> bool:  # the name-mover signature: END attends to IO more than to S
        a = trace.attention_at_END[f"a{h[0]}.h{h[1]}"]
        return a["IO"] > a["S1"] + a["S2"]

    movers = [h for h in direct if reads_io(h)]
    other = [h for h in direct if not reads_io(h)]
    negative = [h for h in negative if reads_io(h)]
    chosen = set(direct) | set(negative)
    sinh, keyed = [], []
    receivers = [h for h in movers + other if h[0] > 0]
    if receivers:  # who feeds the direct heads: through their queries at END (S-inhibition) or their keys
        e2 = step("direct heads' queries", [f"a{a}.h{b}<q>" for a, b in receivers], "END")
        sinh = pick(e2, chosen)
        chosen |= set(sinh)
        e2k = step("direct heads' keys", [f"a{a}.h{b}<k>" for a, b in receivers], None)
        keyed = pick(e2k, chosen)
        chosen |= set(keyed)
        e2v = step("direct heads' values", [f"a{a}.h{b}<v>" for a, b in receivers], None)
        valued = pick(e2v, chosen)
        keyed += valued
        chosen |= set(valued)
    ind_dup = list(keyed)
    if sinh:
        e3 = step("s-inhibition values", [f"a{a}.h{b}<v>" for a, b in sinh], "S2")
        found = pick(e3, chosen)
        ind_dup += found
        chosen |= set(found)
    att = attention_between(model, ps, ind_dup, "S2", ["S1", "S1+1"]) if ind_dup else {}
    trace.attention_at_S2 = att

    def attends(h: tuple[int, int], pos: str) -> float:
        return att[f"a{h[0]}.h{h[1]}"][pos]

    induction = [h for h in ind_dup if attends(h, "S1+1") >= max(attends(h, "S1"), 0.2)]
    duplicate = [h for h in ind_dup if h not in induction and attends(h, "S1") >= 0.2]
    upstream = [h for h in ind_dup if h not in induction and h not in duplicate]
    prev = []
    if induction:
        e4 = step("induction keys", [f"a{a}.h{b}<k>" for a, b in induction], "S1+1")
        prev = pick(e4, chosen)
    for cls, heads, pos in (("name mover", movers, "END"), ("negative name mover", negative, "END"),
                            ("s-suppression", other, "END"),
                            ("s-inhibition", sinh, "END"), ("induction", induction, "S2"),
                            ("duplicate token", duplicate, "S2"), ("other upstream", upstream, "S2"),
                            ("previous token", prev, "S1+1")):
        for layer, h in heads:
            trace.classes[f"a{layer}.h{h}@{pos}"] = cls
    trace.edges = circuit_edges(trace.classes)
    return trace


def circuit_edges(classes: dict[str, str]) -> list[tuple[str, str]]:
    """The paper's class-to-class edges between the circuit's heads (source node, the reader input it
    feeds in a later layer): S-inhibition -> direct heads' queries; induction, duplicate-token and
    upstream heads -> S-inhibition heads' values and direct heads' keys and values (the paths step 3
    traced); previous-token -> induction heads' keys; direct heads -> logits."""
    from circuits.names import Reader, parse_node

    def feeds(source: str, target: str, comps: str) -> list[tuple[str, str]]:
        s, t = parse_node(source), parse_node(target)
        return [(source, Reader("head", t.layer, t.head, c).name) for c in comps] if t.layer > s.layer else []

    edges = [(n, "logits") for n, c in classes.items() if c in DIRECT]
    for s, cs in classes.items():
        for t, ct in classes.items():
            if cs == "s-inhibition" and ct in DIRECT:
                edges += feeds(s, t, "q")
            elif cs in ("induction", "duplicate token", "other upstream") and ct == "s-inhibition":
                edges += feeds(s, t, "v")
            elif cs in ("induction", "duplicate token", "other upstream") and ct in DIRECT:
                edges += feeds(s, t, "kv")
            elif cs == "previous token" and ct == "induction":
                edges += feeds(s, t, "k")
    return edges


def evaluate_circuit(model: Any, ps: Any, classes: dict[str, str], seed: int) -> dict[str, Any]:
    """Faithfulness (circuit only and complement), completeness by class and minimality, with mean
    ablation over p_ABC per template (the paper's); None for each when the circuit is empty."""
    from circuits.engines.ablation import Ablation
    from circuits.engines.faithfulness import completeness, faithfulness, minimality

    circuit = list(classes)
    ablation = Ablation("mean", by_group=True)
    if not circuit:
        return {"ablation": ablation.describe(), "faithfulness": None, "completeness": None, "minimality": None}
    by_class: dict[str, list[str]] = {}
    for node, cls in classes.items():
        by_class.setdefault(cls, []).append(node.split("@")[0])
    return {"ablation": ablation.describe(),
            "faithfulness": faithfulness(model, ps, circuit, ablation=ablation),
            "completeness": completeness(model, ps, circuit, classes=by_class, n_random=10, seed=seed,
                                         ablation=ablation),
            "minimality": minimality(model, ps, circuit, n_random=5, seed=seed, ablation=ablation)}


def figures(patch: dict[str, Any], trace: Trace, n_layers: int, label: str) -> dict[str, Any]:
    """{"patching", "path_patching", "circuit"}: Figures of steps 2 and 3."""
    from circuits.figures import circuit_figure, heatmaps

    panels = {f"noising: LD lost @ {pos}": 1 - patch["noise"].normalized()[:, i] for i, pos in enumerate(POSITIONS)}
    panels |= {f"denoising: LD restored @ {pos}": patch["denoise"].normalized()[:, i]
               for i, pos in enumerate(POSITIONS)}
    return {
        "patching": heatmaps(panels, center=0.0, cbar="fraction of clean-corrupted LD",
                             title=f"IOI head patching by position ({label})"),
        "path_patching": heatmaps({k: torch.tensor(v["effect_percent"]) for k, v in trace.steps.items()}, ncols=4,
                                  cbar="effect on LD (%)", title="Path patching (noising): 100 (LD_patched - LD) / LD"),
        "circuit": circuit_figure(trace.classes, trace.edges, n_layers, classes_order=CLASSES,
                                  title=f"IOI circuit in {label}"),
    }


@dataclass
class IOIResult:
    """Everything :func:`run` found, and the figures drawn from it."""

    model: Any
    spec: str
    n: int
    seed: int
    sets: dict[str, Any]
    baseline: dict[str, Any]
    patching: dict[str, Any]
    trace: Trace
    evaluation: dict[str, Any]
    copy_scores: Any
    figures: dict[str, Any]
    seconds: float

    def circuit(self) -> Any:
        """The circuit found, as a ``circuits.graph.Circuit`` (heads at their positions with classes; the
        class-to-class edges traced)."""
        from circuits.graph import Circuit, Shape

        return Circuit.from_classes(self.trace.classes, self.trace.edges, Shape.of(self.model), task="ioi",
                                    model=self.spec, method="path patching backwards (Wang et al. 2022)")

    def data(self) -> dict[str, Any]:
        """The numbers, as plain data for the result file."""
        ev = self.evaluation
        return {
            "settings": {"split": self.sets["abc"].provenance["options"]["split"], "corruption": "abc",
                         "positions": POSITIONS, "path_patching": "noising, MLPs recomputed (Wang et al.)",
                         "ablation": ev["ablation"],
                         "selection": "heads with Wang effect of the step's sign >= 25% of the largest and >= 2%, "
                                      "at most 4 per class"},
            "baseline": self.baseline,
            "head_patching": {d: {"normalized": s.normalized().tolist(), "values": s.values.tolist(),
                                  "baseline": s.baseline, "axes": list(s.axes), "ci95": [x.tolist() for x in s.ci()]}
                              for d, s in self.patching.items()},
            "path_patching": self.trace.steps,
            "circuit": self.circuit().to_dict(),
            "attention": {"at_END": self.trace.attention_at_END, "at_S2": self.trace.attention_at_S2},
            **{k: None if ev[k] is None else ev[k].to_dict() for k in ("faithfulness", "completeness", "minimality")},
            "copy_scores": self.copy_scores.values.tolist(),
            "seconds": round(self.seconds, 2),
        }


@torch.no_grad()
def run(spec: str = "zoo:toyworld", n: int = 64, seed: int = 0, device: str | None = None,
        progress: bool = True) -> IOIResult:
    """Every step on ``spec`` (a model spec for ``circuits.models.load_model``)."""
    from circuits.engines.detectors import copy_scores
    from circuits.models import load_model

    t0 = time.time()
    model = load_model(spec, device=device)
    sets = prompts(model, n, seed, spec)
    ps = sets["abc"]
    base = baseline(model, sets)
    patch = head_patching(model, ps, progress)
    trace = trace_circuit(model, ps, progress)
    evaluation = evaluate_circuit(model, ps, trace.classes, seed)
    copy = copy_scores(model, ps, ["IO", "S1"])
    figs = figures(patch, trace, int(model.cfg.n_layers), spec)
    return IOIResult(model, spec, n, seed, sets, base, patch, trace, evaluation, copy, figs, time.time() - t0)


def summary(result: IOIResult) -> str:
    """The printed summary: baselines, the circuit by class, and its evaluation."""
    lines = [f"IOI on {result.spec} ({result.n} prompts, seed {result.seed}, "
             f"split {result.sets['abc'].provenance['options']['split']})",
             f"{'corruption':12s} {'LD clean':>9s} {'LD corr':>9s} {'acc':>6s}"]
    for k, r in result.baseline.items():
        lines.append(f"{k:12s} {r['logit_diff_clean']:9.3f} {r['logit_diff_corrupted']:9.3f} {r['accuracy_clean']:6.2f}")
    lines += ["", f"{'class':22s} heads (position)"]
    for cls in CLASSES:
        members = [n for n, c in result.trace.classes.items() if c == cls]
        if members:
            lines.append(f"{cls:22s} {', '.join(members)}")
    faith, comp, mini = (result.evaluation[k] for k in ("faithfulness", "completeness", "minimality"))
    if faith is not None:
        ci = faith.ci["faithfulness"]
        ci_text = "undefined" if ci is None else f"{ci[0]:.3f}..{ci[1]:.3f}"
        lines += ["", f"F(model) {faith.full:.3f}  F(circuit) {faith.circuit:.3f}  F(empty) {faith.empty:.3f}  "
                      f"F(complement) {faith.complement:.3f}",
                  f"normalized faithfulness {faith.faithfulness:.3f} (95% CI {ci_text}); complement "
                  f"{faith.complement_faithfulness:.3f}; |F(M)-F(C)| {faith.wang_gap:.3f}"]
        worst = comp.worst
        if worst:
            lines.append(f"completeness: largest |F(C\\K)-F(M\\K)| = {worst.gap:.3f} ({worst.kind}, K={worst.K})")
        low = mini.below(0.01)
        lines.append(f"minimality: {len(mini.nodes) - len(low)}/{len(mini.nodes)} nodes matter by >= 1% of F(M)")
    return "\n".join(lines)


def write(result: IOIResult, folder: str) -> list[str]:
    """ioi.json (with provenance) and the figures (PDF + PNG) into ``folder``; returns the paths."""
    from circuits.engines import fastpaths
    from circuits.models import model_info
    from circuits.results import provenance, write_result

    paths = save_figures(result.figures, folder)
    data = {**result.data(), "figures": [os.path.relpath(p, folder) for p in paths]}
    prov = provenance(model=model_info(result.model), task="ioi", seed=result.seed, n=result.n,
                      fast_paths=fastpaths.report(result.model))
    return [write_result(os.path.join(folder, "ioi.json"), "ioi", data, prov), *paths]


def main(argv: list[str] | None = None) -> int:
    """``python -m analyses.ioi [--model M] [--n N] [--seed S] [--device D] [--out DIR]``."""
    ap = argparse.ArgumentParser(prog="python -m analyses.ioi", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="zoo:toyworld")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device")
    ap.add_argument("--out", default="results")
    args = ap.parse_args(argv)

    def analyse(folder: str) -> str:
        result = run(args.model, args.n, args.seed, args.device)
        paths = write(result, folder)
        return summary(result) + f"\n\nioi.json and {len(paths) - 1} figure files in {result.seconds:.1f} s"

    return run_analysis(analyse, os.path.join(args.out, "ioi", safe_name(args.model)), n=args.n, seed=args.seed)


if __name__ == "__main__":
    raise SystemExit(main())
