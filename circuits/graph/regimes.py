"""Circuits across training: Thinking Sparks' comparisons of a pre model with post-trained ones.

Emergent, retained and lost heads between a pre and a post circuit; the symmetric effect per head
E = (I_post - I_pre) / (I_post + I_pre + eps) with I = ``Circuit.head_importance()``, also per
checkpoint and averaged; and each head's cohort over checkpoints (when it first appears, how often,
whether it is there at the end). Results are ``circuits.records.Record`` dataclasses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from circuits.graph.circuit import Circuit
from circuits.graph.compare import EPS, _check_all, head_name, items, natural_sorted
from circuits.records import Record


def symmetric_effect(pre: Circuit, post: Circuit, *, eps: float = EPS) -> dict[str, float]:
    """E = (I_post - I_pre) / (I_post + I_pre + eps) per head in either circuit, in [-1, 1], with I =
    :meth:`Circuit.head_importance` (normalised to sum 1; 0 where a head is absent). E ~ 1: the head
    is new or gained all weight; ~ -1: lost."""
    pre.check_comparable(post)
    ip, iq = pre.head_importance(), post.head_importance()
    out = {}
    for layer, h in sorted(ip.keys() | iq.keys()):
        p, q = ip.get((layer, h), 0.0), iq.get((layer, h), 0.0)
        out[head_name(layer, h)] = (q - p) / (q + p + eps)
    return out


@dataclass
class RegimeChange(Record):
    """Heads of a pre (base, earlier checkpoint) and a post (post-trained, later) circuit.

    emergent: in post, not pre; retained: in both; lost: in pre, not post; importance_pre/post: I per
    head (sums to 1); effect: E per head in either circuit (see :func:`symmetric_effect`).
    """

    emergent: list[str]
    retained: list[str]
    lost: list[str]
    importance_pre: dict[str, float]
    importance_post: dict[str, float]
    effect: dict[str, float]
    eps: float


def regime_change(pre: Circuit, post: Circuit, *, eps: float = EPS) -> RegimeChange:
    """Emergent, retained and lost heads from ``pre`` to ``post``, and E per head (Thinking Sparks)."""
    pre.check_comparable(post)
    a, b = items(pre, "heads"), items(post, "heads")

    def named(imp: dict[tuple[int, int], float]) -> dict[str, float]:
        return {head_name(*h): v for h, v in sorted(imp.items())}

    return RegimeChange(natural_sorted(b - a), natural_sorted(a & b), natural_sorted(a - b),
                        named(pre.head_importance()), named(post.head_importance()),
                        symmetric_effect(pre, post, eps=eps), eps)


def _steps(checkpoints: Mapping[str, Circuit] | Sequence[Circuit]) -> dict[str, Circuit]:
    steps = dict(checkpoints) if isinstance(checkpoints, Mapping) else {str(i): c for i, c in enumerate(checkpoints)}
    if not steps:
        raise ValueError("at least one checkpoint circuit is needed")
    return steps


@dataclass
class CheckpointEffects(Record):
    """E of each checkpoint against the pre model, per head (in any of the circuits, natural order).

    effect[head][t]: E at steps[t]; mean[head]: (1/|T|) Σ_t E^(t).
    """

    steps: list[str]
    heads: list[str]
    effect: dict[str, list[float]]
    mean: dict[str, float]
    eps: float


def checkpoint_effects(pre: Circuit, checkpoints: Mapping[str, Circuit] | Sequence[Circuit], *,
                       eps: float = EPS) -> CheckpointEffects:
    """E per head per checkpoint against ``pre``, and its mean over checkpoints. ``checkpoints``: {step
    label: Circuit} in training order (a sequence is labelled 0, 1, ...)."""
    steps = _steps(checkpoints)
    per = [symmetric_effect(pre, c, eps=eps) for c in steps.values()]
    heads = natural_sorted(set().union(*per))
    effect = {h: [e.get(h, 0.0) for e in per] for h in heads}
    return CheckpointEffects(list(steps), heads, effect, {h: sum(v) / len(v) for h, v in effect.items()}, eps)


@dataclass
class HeadCohort(Record):
    """One head over the checkpoints: in the pre circuit?, first checkpoint it is in (None: never),
    in how many (count) and in which share (frequency) of them, whether it is in the last, and
    present[t] per checkpoint."""

    head: str
    in_pre: bool
    first: str | None
    count: int
    frequency: float
    final: bool
    present: list[bool]

    _derived = ("cohort",)

    @property
    def cohort(self) -> str | None:
        """"pre" for a head of the pre circuit, else the checkpoint it first appeared in."""
        return "pre" if self.in_pre else self.first


@dataclass
class Cohorts(Record):
    """The cohort table over checkpoints (Thinking Sparks' cohort plot).

    heads: one HeadCohort per head of any circuit, by cohort (pre, then first checkpoint, then
    never present) and head; stack[step][cohort]: heads of each cohort present at that step.
    """

    steps: list[str]
    has_pre: bool
    heads: list[HeadCohort]
    stack: dict[str, dict[str, int]]

    _nested = {"heads": ("list", HeadCohort)}

    def table(self) -> dict[str, HeadCohort]:
        """{head name: HeadCohort}."""
        return {h.head: h for h in self.heads}


def cohorts(checkpoints: Mapping[str, Circuit] | Sequence[Circuit], pre: Circuit | None = None) -> Cohorts:
    """When each head appears over ``checkpoints`` ({step label: Circuit} in training order), how often,
    and whether it is there at the end; heads of ``pre`` (the base model) form the cohort "pre"."""
    steps = _steps(checkpoints)
    if pre is not None and "pre" in steps:
        raise ValueError("a checkpoint may not be labelled 'pre' (the cohort of the pre circuit's heads)")
    _check_all({**steps, **({"pre": pre} if pre is not None else {})})
    sets = [items(c, "heads") for c in steps.values()]
    base = items(pre, "heads") if pre is not None else set()
    labels = list(steps)
    rows = []
    for h in natural_sorted(base.union(*sets)):
        present = [h in s for s in sets]
        first = next((lab for lab, p in zip(labels, present) if p), None)
        rows.append(HeadCohort(h, h in base, first, sum(present), sum(present) / len(sets), present[-1], present))
    order = {c: i for i, c in enumerate(["pre", *labels])}
    rows.sort(key=lambda r: order.get(r.cohort, len(order)))  # stable: head order within a cohort
    stack = {}
    for t, lab in enumerate(labels):
        counts: dict[str, int] = {}
        for r in rows:
            if r.present[t]:
                counts[r.cohort] = counts.get(r.cohort, 0) + 1
        stack[lab] = counts
    return Cohorts(labels, pre is not None, rows, stack)
