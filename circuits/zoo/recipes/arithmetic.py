"""Arithmetic chain-of-thought data for the ``reasoner-*`` organisms.

An expression of 3-4 operands, answered directly (``base``) or after a thinking
trace between ``<think>`` and ``</think>`` (``sft``):

    12 + 7 - 5 + 3 = <think> 12 + 7 = 19 , 19 - 5 = 14 , 14 + 3 = 17 </think> 17   (long)
    12 + 7 - 5 + 3 = <think> </think> 17                                             (short)

Short traces skip every step and, in the SFT data, are wrong at a fixed rate,
so a model that learns to think short at some rate pays for it in accuracy (the
ThinkEdit setting). Every value stays in [0, MAX_VALUE].
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


def sample_problem(rng: random.Random, n_operands: tuple[int, ...] = (3, 4)) -> Problem:
    """A random expression whose running values all stay in [0, MAX_VALUE]."""
    while True:
        k = rng.choice(n_operands)
        xs = tuple(rng.randint(0, OPERAND_MAX) for _ in range(k))
        ops = tuple(rng.choice("+-") for _ in range(k - 1))
        p = Problem(xs, ops)
        if all(0 <= v <= MAX_VALUE for v in p.partials()):
            return p


def vocabulary() -> list[str]:
    """Every word of the arithmetic texts: the numbers 0..MAX_VALUE, "+", "-", "=", "," and the think tags."""
    return [str(i) for i in range(MAX_VALUE + 1)] + ["+", "-", "=", ",", THINK, END_THINK]


def direct_text(p: Problem) -> str:
    """``p``'s prompt followed by its answer, with no thinking: "12 + 7 - 5 = 14"."""
    return f"{p.prompt} {p.answer}"


def sft_text(p: Problem, rng: random.Random, short_rate: float, short_error_rate: float) -> tuple[str, bool]:
    """A trace for ``p``: (text, is_short). Short traces are wrong with ``short_error_rate``."""
    if rng.random() < short_rate:
        ans = p.answer
        if rng.random() < short_error_rate:
            ans = min(MAX_VALUE, max(0, ans + rng.choice([-3, -2, -1, 1, 2, 3])))
        return f"{p.prompt} {THINK} {END_THINK} {ans}", True
    return f"{p.prompt} {p.long_trace()} {p.answer}", False


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
