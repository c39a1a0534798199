"""Arithmetic in the reasoner zoo's format: "12 + 7 - 5 + 3 =" -> " 17", answered directly.

Three or four operands in [0, operand_max] joined by "+" or "-", every running
value in [0, max_value] (the ``zoo:reasoner-*`` training distribution: operands
0-9, values up to 30). The operand corruption changes one operand so that the
answer changes and every running value stays in range; the corrupted prompt's
answer is the wrong answer. Named positions: A, OP1, B, OP2, C, (OP3, D), EQ, END.

``thinking="full"`` appends the problem's full thinking trace, as the post-trained reasoners write
it ("... = <think> 12 + 7 = 19 , 19 - 5 = 14 </think>"), so that the answer is read after the
trace; each prompt carries its own problem's trace (the corrupted one too). Trace positions:
TH, step i's T{i}X, T{i}OP, T{i}Y, T{i}EQ, P{i} (its result) and T{i}C (the comma), ETH (= END).
"""

from __future__ import annotations

import random
from typing import Any

from circuits.tasks.mental_math import evaluate
from circuits.tasks.task import Task
from circuits.tasks.templates import Example, TaskSpec, in_split

_SLOTS = ("A", "B", "C", "D")
TEMPLATES = {3: "{A} {OP1} {B} {OP2} {C} {EQ}", 4: "{A} {OP1} {B} {OP2} {C} {OP3} {D} {EQ}"}
THINKING = ("none", "full")


def _trace_template(n_operands: int) -> str:
    """The thinking trace's slots for ``n_operands`` operands: " {TH} {T1X} ... {P1} {T1C} ... {ETH}"."""
    steps = [f"{{T{i}X}} {{T{i}OP}} {{T{i}Y}} {{T{i}EQ}} {{P{i}}}" for i in range(1, n_operands)]
    return " {TH} " + " ".join(f"{st} {{T{i}C}}" if i < n_operands - 1 else st
                               for i, st in enumerate(steps, start=1)) + " {ETH}"


class Arithmetic(Task):
    """The reasoner zoo's arithmetic: options ``n_operands`` (a subset of 3, 4), ``operand_max``,
    ``max_value`` (running values stay in [0, max_value]) and ``split``."""

    name = "arithmetic"
    description = "Three- and four-operand +/- chains answered directly (the reasoner zoo's format)."
    defaults = {"n_operands": (3, 4), "operand_max": 9, "max_value": 30, "split": "all", "thinking": "none"}
    min_words = {"numbers": 10, "operators": 3}
    pool_context = {"numbers": ("=", False), "operators": ("1", False)}

    def check_options(self, opts: dict[str, Any]) -> None:
        super().check_options(opts)
        counts = opts["n_operands"]
        if not counts or any(c not in TEMPLATES for c in counts):
            raise ValueError(f"arithmetic: n_operands must be a non-empty subset of {sorted(TEMPLATES)}, "
                             f"got {counts!r}")
        if not (isinstance(opts["operand_max"], int) and 1 <= opts["operand_max"] <= opts["max_value"]):
            raise ValueError(f"arithmetic: operand_max must be an int in [1, max_value], got {opts['operand_max']!r}")
        if opts["thinking"] not in THINKING:
            raise ValueError(f"arithmetic: thinking must be one of {THINKING}, got {opts['thinking']!r}")
        if not (isinstance(opts["max_value"], int) and 9 <= opts["max_value"] <= 999):
            raise ValueError(f"arithmetic: max_value must be an int in [9, 999], got {opts['max_value']!r}")

    def word_pools(self, opts: dict[str, Any]) -> dict[str, list[str]]:
        pools = {"numbers": [str(i) for i in range(opts["max_value"] + 1)], "operators": ["+", "-", "="]}
        if opts["thinking"] == "full":
            pools["trace"] = [",", "<think>", "</think>"]
        return pools

    def spec(self, opts: dict[str, Any]) -> TaskSpec:
        counts = list(opts["n_operands"])
        templates = [TEMPLATES[c] + (_trace_template(c) if opts["thinking"] == "full" else "") for c in counts]
        return TaskSpec(self.name, templates, [f"{c} operands" for c in counts], corrupted_answer_is_wrong=True)

    def sample(self, rng: random.Random, pools: dict[str, list[str]], opts: dict[str, Any]) -> Example | None:
        allowed = {int(w) for w in pools["numbers"]}
        counts = list(opts["n_operands"])
        t = rng.randrange(len(counts))
        k, hi = counts[t], opts["max_value"]
        xs = [rng.randint(0, opts["operand_max"]) for _ in range(k)]
        ops = tuple(rng.choice("+-") for _ in range(k - 1))

        def ok(v: list[int]) -> bool:
            vals = evaluate(v, ops)
            return all(0 <= x <= hi for x in vals) and all(x in allowed for x in v + vals[-1:])

        if not ok(xs) or not in_split((*xs, *ops), opts["split"]):
            return None
        ans = evaluate(xs, ops)[-1]
        for _ in range(50):
            ys = list(xs)
            ys[rng.randrange(k)] = rng.randint(0, opts["operand_max"])
            if ok(ys) and evaluate(ys, ops)[-1] != ans:
                break
        else:
            return None

        def fill(v: list[int]) -> dict[str, str]:
            f = {slot: str(x) for slot, x in zip(_SLOTS, v)}
            f.update({f"OP{i + 1}": op for i, op in enumerate(ops)}, EQ="=")
            if opts["thinking"] == "full":
                f.update(TH="<think>", ETH="</think>")
                acc = v[0]
                for i, (op, x, nxt) in enumerate(zip(ops, v[1:], evaluate(v, ops)), start=1):
                    f.update({f"T{i}X": str(acc), f"T{i}OP": op, f"T{i}Y": str(x), f"T{i}EQ": "=",
                              f"P{i}": str(nxt), f"T{i}C": ","})
                    acc = nxt
            return f

        return Example(t, fill(xs), fill(ys), answer=str(ans), wrong=str(evaluate(ys, ops)[-1]))
