"""Arithmetic chain-of-thought data for the ``reasoner-*`` organisms.

An expression of 3-4 operands, answered directly (``base``) or after a thinking
trace between ``<think>`` and ``</think>`` (``sft``, the teacher, ``distill``):

    12 + 7 - 5 + 3 = <think> 12 + 7 = 19 , 19 - 5 = 14 , 14 + 3 = 17 </think> 17   (full)
    12 + 7 - 5 + 3 = <think> 12 + 7 - 5 = 14 , 14 + 3 = 17 </think> 17             (one merge)
    12 + 7 - 5 + 3 = <think> </think> 17                                             (short)

How much a trace thinks is graded (full, one or two merged steps, none) and depends on
the problem (:func:`difficulty`): easy problems (three operands, every value <= 12) are
often answered short, hard ones (four operands passing 15) rarely. Merged and short
traces are wrong more often (:data:`ERROR_RATE`), so thinking less costs accuracy and
the decision to think short is something the model has to compute from the problem
(the ThinkEdit setting). Every value stays in [0, MAX_VALUE]. Problems have a
deterministic train/test split (:func:`in_split`, as the tasks have).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

THINK, END_THINK = "<think>", "</think>"
MAX_VALUE = 30
OPERAND_MAX = 9


@dataclass(frozen=True)
class Problem:
    """An expression: its operands and the operators ("+" or "-") between them."""

    operands: tuple[int, ...]
    ops: tuple[str, ...]

    @property
    def prompt(self) -> str:
        """The expression followed by " =", e.g. "12 + 7 - 5 ="."""
        parts = [str(self.operands[0])]
        for op, x in zip(self.ops, self.operands[1:]):
            parts += [op, str(x)]
        return " ".join(parts) + " ="

    def partials(self) -> list[int]:
        """Running values after each operator; the last is the answer."""
        acc, out = self.operands[0], []
        for op, x in zip(self.ops, self.operands[1:]):
            acc = acc + x if op == "+" else acc - x
            out.append(acc)
        return out

    @property
    def answer(self) -> int:
        """The value of the expression."""
        return self.partials()[-1]

    def long_trace(self) -> str:
        """The step-by-step thinking trace: "<think> 12 + 7 = 19 , 19 - 5 = 14 </think>"."""
        steps, acc = [], self.operands[0]
        for (op, x), nxt in zip(zip(self.ops, self.operands[1:]), self.partials()):
            steps.append(f"{acc} {op} {x} = {nxt}")
            acc = nxt
        return f"{THINK} " + " , ".join(steps) + f" {END_THINK}"


def in_split(p: Problem, split: str) -> bool:
    """Whether ``p`` belongs to ``split`` ("train", "test" or "all"): the same deterministic hash and key
    as the ``arithmetic`` task's, so the task's test prompts are problems no stage trained on."""
    from circuits.tasks.templates import in_split as task_split

    return task_split((*p.operands, *p.ops), split)


def sample_problem(rng: random.Random, n_operands: tuple[int, ...] = (3, 4), split: str = "all") -> Problem:
    """A random expression of ``split`` whose running values all stay in [0, MAX_VALUE]."""
    while True:
        k = rng.choice(n_operands)
        xs = tuple(rng.randint(0, OPERAND_MAX) for _ in range(k))
        ops = tuple(rng.choice("+-") for _ in range(k - 1))
        p = Problem(xs, ops)
        if all(0 <= v <= MAX_VALUE for v in p.partials()) and in_split(p, split):
            return p


EASY_PEAK, HARD_PEAK = 12, 15
#: P(trace kind | difficulty): "short" (no steps), "merged" (one or two steps merged), "full"
TRACE_MIX = {"easy": {"short": 0.6, "merged": 0.25, "full": 0.15},
             "medium": {"short": 0.2, "merged": 0.35, "full": 0.45},
             "hard": {"short": 0.03, "merged": 0.17, "full": 0.8}}
#: P(wrong final answer) by the kind of trace: the more steps skipped, the more errors
ERROR_RATE = {"full": 0.0, "merge1": 0.12, "merge2": 0.25, "short": 0.4}


def peak(p: Problem) -> int:
    """The largest value the problem passes through (its first operand or a running value)."""
    return max([p.operands[0], *p.partials()])


def difficulty(p: Problem) -> str:
    """"easy" (three operands, peak <= EASY_PEAK), "hard" (four operands, peak > HARD_PEAK) or "medium"."""
    if len(p.operands) == 3 and peak(p) <= EASY_PEAK:
        return "easy"
    if len(p.operands) == 4 and peak(p) > HARD_PEAK:
        return "hard"
    return "medium"


def trace(p: Problem, merges: int | None = 0, rng: random.Random | None = None) -> str:
    """The thinking trace with ``merges`` pairs of consecutive steps merged into one ("12 + 7 - 5 = 14");
    ``None``: short (no steps). Which steps merge is drawn with ``rng`` (default: the first ones)."""
    if merges is None:
        return f"{THINK} {END_THINK}"
    n_ops = len(p.ops)
    if not 0 <= merges <= n_ops - 1:
        raise ValueError(f"a {n_ops}-operator problem can merge 0..{n_ops - 1} times, got {merges}")
    cuts = list(range(1, n_ops))  # a step ends after operator i (1-based) unless that cut is merged away
    drop = set(rng.sample(cuts, merges)) if rng is not None else set(cuts[:merges])
    ends = [c for c in cuts if c not in drop] + [n_ops]
    steps, start, acc, parts = [], 0, p.operands[0], p.partials()
    for end in ends:
        terms = " ".join(f"{op} {x}" for op, x in zip(p.ops[start:end], p.operands[start + 1:end + 1]))
        steps.append(f"{acc} {terms} = {parts[end - 1]}")
        acc, start = parts[end - 1], end
    return f"{THINK} " + " , ".join(steps) + f" {END_THINK}"


def _wrong(ans: int, rng: random.Random) -> int:
    return min(MAX_VALUE, max(0, ans + rng.choice([-3, -2, -1, 1, 2, 3])))


def graded_text(p: Problem, rng: random.Random, mix: dict[str, dict[str, float]] | None = None) -> tuple[str, str]:
    """An SFT row for ``p``: (text, kind), kind one of "full", "merge1", "merge2", "short"; the kind is
    drawn from ``mix[difficulty(p)]`` (default :data:`TRACE_MIX`), the answer is wrong at
    :data:`ERROR_RATE` of its kind."""
    weights = (mix or TRACE_MIX)[difficulty(p)]
    pick = rng.choices(list(weights), weights=list(weights.values()))[0]
    if pick == "short":
        kind, merges = "short", None
    elif pick == "merged":
        merges = rng.randint(1, len(p.ops) - 1)
        kind = f"merge{merges}"
    else:
        kind, merges = "full", 0
    ans = _wrong(p.answer, rng) if rng.random() < ERROR_RATE[kind] else p.answer
    return f"{p.prompt} {trace(p, merges, rng)} {ans}", kind


def vocabulary() -> list[str]:
    """Every word of the arithmetic texts: the numbers 0..MAX_VALUE, "+", "-", "=", "," and the think tags."""
    return [str(i) for i in range(MAX_VALUE + 1)] + ["+", "-", "=", ",", THINK, END_THINK]


def direct_text(p: Problem) -> str:
    """``p``'s prompt followed by its answer, with no thinking: "12 + 7 - 5 = 14"."""
    return f"{p.prompt} {p.answer}"


def parse_completion(tokens: list[str]) -> tuple[int | None, int]:
    """(final answer or None, thinking length in tokens incl. tags; -1 without a closed trace)."""
    if END_THINK not in tokens:
        return None, -1
    end = tokens.index(END_THINK)
    start = tokens.index(THINK) if THINK in tokens else 0
    length = end - start + 1
    after = tokens[end + 1 : end + 2]
    try:
        return (int(after[0]) if after else None), length
    except ValueError:
        return None, length
