"""Circuit evaluation: circuit-only, complement, faithfulness, completeness, minimality.

F(S) is the mean metric when every node of the *universe* outside S is ablated
(by default inferred from the circuit: every head, and every MLP too when the circuit holds one;
or ``universe="heads"``, ``"heads+mlps"`` or a list of nodes). A circuit node with
a position (``a9.h6@END``) is kept only at that position, as in the IOI paper.

- normalized faithfulness: (F(C) - F(empty)) / (F(M) - F(empty)), M = full model;
- complement: the circuit's own nodes ablated, everything else intact;
- completeness (Wang et al.): |F(C minus K) - F(M minus K)| for subsets K of C;
- minimality (Wang et al.): for each v in C, max over K of |F(C minus (K+v)) - F(C minus K)|.

Every call evaluates all of its variants on all prompt pairs in tiled forward
passes (transformer-lens 4.3's ``faithfulness`` takes one pair at a time).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from circuits.engines.ablation import Ablation, ablation_values, edits_for, placement
from circuits.engines.common import (
    EngineRun,
    Metric,
    as_list,
    model_settings,
    resolve_metric,
)
from circuits.engines.interventions import run_variants
from circuits.engines.nodes import Node, all_heads, all_mlps, check_nodes, parse_node
from circuits.engines.sites import site_of
from circuits.metrics import bootstrap_ratio, check_difference
from circuits.prompts import PromptSet
from circuits.records import Record

Placed = tuple[Node, str]


def infer_universe(circuit: Sequence[Node]) -> str:
    """"heads+mlps" when the circuit holds an MLP, else "heads" (the default universe of the evaluations)."""
    return "heads+mlps" if any(n.kind == "mlp" for n in circuit) else "heads"


def resolve_universe(model: Any, universe: str | Sequence[Any]) -> list[Node]:
    """The nodes an evaluation may ablate: every head ("heads"), every head and MLP
    ("heads+mlps"), or the given nodes, checked against the model.
    """
    if universe == "heads":
        return all_heads(model)
    if universe == "heads+mlps":
        return all_heads(model) + all_mlps(model)
    if isinstance(universe, str):
        raise ValueError(f"universe must be 'heads', 'heads+mlps' or a list of nodes, got {universe!r}")
    return check_nodes(model, [parse_node(n) for n in universe])


def circuit_only(circuit: Sequence[Node], universe: Sequence[Node], also: Sequence[Node] = ()) -> list[Placed]:
    """Ablations that keep only ``circuit`` (minus the nodes in ``also``, which are ablated too)."""
    kept = {n.unpositioned(): n.pos for n in circuit}
    drop = {n.unpositioned() for n in also}
    out: list[Placed] = []
    for u in universe:
        if u in drop or u not in kept:
            out.append((u, "all"))
        elif kept[u] is not None:
            out.append((u, f"except:{kept[u]}"))
    return out


def complement(circuit: Sequence[Node]) -> list[Placed]:
    """Ablations of the circuit's own nodes (each at its position, if it has one)."""
    return [placement(n) for n in circuit]


@torch.no_grad()
def evaluate_ablated(model: Any, ps: PromptSet, variants: Sequence[Sequence[Placed]], *,
                     ablation: Ablation | None = None, metric: str | Metric = "logit_diff",
                     tokens: str = "clean", memory_budget: int | None = None, progress: bool = False) -> Tensor:
    """Per-prompt metric [n_variants, b] of each ablation variant (one list of (node, where) per variant)."""
    ablation = ablation or Ablation()
    if tokens not in ("clean", "corrupted"):
        raise ValueError(f"tokens must be 'clean' or 'corrupted', got {tokens!r}")
    variants = [[(check_nodes(model, [parse_node(n)])[0], where) for n, where in as_list(v, f"variant {i}")]
                for i, v in enumerate(as_list(variants, "variants"))]
    with EngineRun(model, ps, metric) as run:
        ps = run.ps
        toks = ps.clean if tokens == "clean" else ps.corrupted
        sites = {(site_of(n), n.layer) for v in variants for n, _ in v}
        values = ablation_values(model, ps, toks, sites, ablation) if sites else {}
        edit_lists = [edits_for(v, values, ps) for v in variants]
        logits = run_variants(model, toks, ps.positions["END"], edit_lists, memory_budget, progress and "ablations")
        return torch.stack([run.evaluate(lg) for lg in logits]).cpu()


@dataclass
class Faithfulness(Record):
    """A circuit's faithfulness (see the module docstring); metric values are means over prompts."""

    full: float  # F(M): nothing ablated
    circuit: float  # F(C): everything outside the circuit ablated
    empty: float  # F(empty): the whole universe ablated
    complement: float  # the circuit's own nodes ablated
    faithfulness: float  # (circuit - empty) / (full - empty)
    complement_faithfulness: float  # (complement - empty) / (full - empty)
    ci: dict[str, list[float] | None] = field(default_factory=dict)  # 95% bootstrap intervals; None: undefined
    per_example: dict[str, list[float]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    _derived = ("wang_gap",)

    @property
    def wang_gap(self) -> float:
        """|F(M) - F(C)| (the IOI paper's faithfulness, in metric units)."""
        return abs(self.full - self.circuit)


@dataclass
class CompletenessCheck(Record):
    """One subset K of the circuit: F(C minus K) against F(M minus K) (Wang et al.'s completeness)."""

    K: list[str]
    kind: str  # "empty", "class:<name>" or "random"
    F_C_minus_K: float
    F_M_minus_K: float
    gap: float  # |F(C minus K) - F(M minus K)|, metric units


@dataclass
class Completeness(Record):
    """Completeness checks, largest gap first."""

    checks: list[CompletenessCheck]
    settings: dict[str, Any] = field(default_factory=dict)

    _nested = {"checks": ("list", CompletenessCheck)}

    @property
    def worst(self) -> CompletenessCheck | None:
        """The subset with the largest gap (None if there is none)."""
        return self.checks[0] if self.checks else None


@dataclass
class NodeMinimality(Record):
    """One node's minimality: the largest change its removal makes, and the subset K where it does."""

    score: float  # max over K of |F(C minus (K + v)) - F(C minus K)|, metric units
    fraction_of_full: float | None  # score / |F(M)|; None when F(M) is 0 (undefined)
    K: list[str]


@dataclass
class Minimality(Record):
    """Minimality of every circuit node (Wang et al.: each should matter by at least 1% of F(M))."""

    full: float  # F(M)
    nodes: dict[str, NodeMinimality]
    settings: dict[str, Any] = field(default_factory=dict)

    _nested = {"nodes": ("dict", NodeMinimality)}

    def below(self, fraction: float = 0.01) -> list[str]:
        """Nodes whose score is under ``fraction`` of |F(M)| (or undefined)."""
        return [n for n, m in self.nodes.items() if m.fraction_of_full is None or m.fraction_of_full < fraction]


def faithfulness(model: Any, ps: PromptSet, circuit: Sequence[Any], *, universe: str | Sequence[Any] | None = None,
                 ablation: Ablation | None = None, metric: str | Metric = "logit_diff",
                 memory_budget: int | None = None) -> Faithfulness:
    """Full model, circuit only, empty circuit and complement, in one batched evaluation."""
    ablation = ablation or Ablation()
    circ = check_nodes(model, [parse_node(n) for n in as_list(circuit, "circuit")])
    universe = infer_universe(circ) if universe is None else universe
    uni = resolve_universe(model, universe)
    unknown = [n.name for n in circ if n.unpositioned() not in set(uni)]
    if unknown:
        raise ValueError(f"circuit nodes {unknown} are not in the universe ({universe!r})")
    variants = [[], circuit_only(circ, uni), [(u, "all") for u in uni], complement(circ)]
    full, c, empty, comp = evaluate_ablated(model, ps, variants, ablation=ablation, metric=metric,
                                            memory_budget=memory_budget)
    den = (full - empty).mean()
    check_difference(full.mean(), empty.mean(), f"F(model) minus F(empty circuit) ({float(full.mean()):.4g} - "
                                                f"{float(empty.mean()):.4g}: ablating the whole universe changes "
                                                "nothing)")
    metric_name = resolve_metric(metric).name
    return Faithfulness(
        float(full.mean()), float(c.mean()), float(empty.mean()), float(comp.mean()),
        float((c - empty).mean() / den), float((comp - empty).mean() / den),
        ci={"faithfulness": bootstrap_ratio(c - empty, full - empty),
            "complement_faithfulness": bootstrap_ratio(comp - empty, full - empty)},
        per_example={"full": full.tolist(), "circuit": c.tolist(), "empty": empty.tolist(),
                     "complement": comp.tolist()},
        settings={"engine": "faithfulness", "circuit": [n.name for n in circ], "universe": universe
                  if isinstance(universe, str) else [n.name for n in uni], "ablation": ablation.describe(),
                  "metric": metric_name, **model_settings(model), "n_prompts": len(ps)})


def _subsets(nodes: list[Node], n: int, rng: random.Random) -> list[list[Node]]:
    return [[x for x in nodes if rng.random() < 0.5] for _ in range(n)]


def completeness(model: Any, ps: PromptSet, circuit: Sequence[Any], *, classes: dict[str, Sequence[Any]] | None = None,
                 n_random: int = 20, seed: int = 0, universe: str | Sequence[Any] | None = None,
                 ablation: Ablation | None = None, metric: str | Metric = "logit_diff",
                 memory_budget: int | None = None) -> Completeness:
    """|F(C minus K) - F(M minus K)| for K = each class, the empty set and ``n_random`` random subsets of C
    (drawn with ``seed``); checks sorted largest gap first."""
    circ = check_nodes(model, [parse_node(n) for n in as_list(circuit, "circuit")])
    uni = resolve_universe(model, infer_universe(circ) if universe is None else universe)
    rng = random.Random(seed)
    ks: list[tuple[str, list[Node]]] = [("empty", [])]
    for name, members in (classes or {}).items():
        nodes = check_nodes(model, [parse_node(m) for m in as_list(members, f"class {name!r}")])
        ks.append((f"class:{name}", [m.unpositioned() for m in nodes]))
    ks += [("random", [n.unpositioned() for n in k]) for k in _subsets(circ, n_random, rng)]
    variants = []
    for _, k in ks:
        variants.append(circuit_only(circ, uni, also=k))
        variants.append([(n, "all") for n in k])
    vals = evaluate_ablated(model, ps, variants, ablation=ablation, metric=metric, memory_budget=memory_budget)
    means = vals.mean(1)
    checks = [CompletenessCheck([n.name for n in k], kind, float(means[2 * i]), float(means[2 * i + 1]),
                                float((means[2 * i] - means[2 * i + 1]).abs())) for i, (kind, k) in enumerate(ks)]
    return Completeness(sorted(checks, key=lambda c: -c.gap),
                        {"engine": "completeness", "circuit": [n.name for n in circ], "n_random": n_random,
                         "seed": seed, "metric": resolve_metric(metric).name, "n_prompts": len(ps)})


def minimality(model: Any, ps: PromptSet, circuit: Sequence[Any], *, n_random: int = 10, seed: int = 0,
               universe: str | Sequence[Any] | None = None, ablation: Ablation | None = None,
               metric: str | Metric = "logit_diff", memory_budget: int | None = None) -> Minimality:
    """For each node v: max over K (empty + ``n_random`` random subsets of C minus v, drawn with ``seed``)
    of |F(C minus (K+v)) - F(C minus K)|."""
    circ = check_nodes(model, [parse_node(n) for n in as_list(circuit, "circuit")])
    uni = resolve_universe(model, infer_universe(circ) if universe is None else universe)
    rng = random.Random(seed)
    plan, variants = [], [[]]
    for v in circ:
        others = [n for n in circ if n.unpositioned() != v.unpositioned()]
        for k in [[]] + _subsets(others, n_random, rng):
            ku = [n.unpositioned() for n in k]
            plan.append((v, ku))
            variants.append(circuit_only(circ, uni, also=ku + [v.unpositioned()]))
            variants.append(circuit_only(circ, uni, also=ku))
    vals = evaluate_ablated(model, ps, variants, ablation=ablation, metric=metric,
                            memory_budget=memory_budget).mean(1)
    full = float(vals[0])
    nodes: dict[str, NodeMinimality] = {}
    for i, (v, k) in enumerate(plan):
        score = float((vals[1 + 2 * i] - vals[2 + 2 * i]).abs())
        if v.name not in nodes or score > nodes[v.name].score:
            nodes[v.name] = NodeMinimality(score, score / abs(full) if full else None, [n.name for n in k])
    return Minimality(full, nodes, {"engine": "minimality", "circuit": [n.name for n in circ],
                                    "n_random": n_random, "seed": seed, "metric": resolve_metric(metric).name,
                                    "n_prompts": len(ps)})
