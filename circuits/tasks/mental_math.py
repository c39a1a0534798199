"""Mental math: the answer of a short expression as the next token.

"23 + 41 =" -> " 64"; longer forms chain three operands ("23 + 41 - 15 =").
Every operand, intermediate and answer stays in [0, max_value] and must be a
single token. The operand corruption changes one operand so that the answer
changes; the corrupted answer is the wrong answer.
``phrasings`` asks the same expression as "a + b =" (eq), "What is a + b ?" or
"a + b is"; the split then holds out (operands, form, phrasing) combinations.
Named positions: A, OP1, B, (OP2, C), EQ (eq phrasing only), END.
"""

from __future__ import annotations

import random
from typing import Any

from circuits.tasks.task import Task
from circuits.tasks.templates import Example, TaskSpec, in_split

FORMS: dict[str, tuple[str, ...]] = {
    "add": ("+",),
    "sub": ("-",),
    "add3": ("+", "+"),
    "addsub": ("+", "-"),
    "subadd": ("-", "+"),
    "sub3": ("-", "-"),
}
_T2 = "{A} {OP1} {B} {EQ}"
_T3 = "{A} {OP1} {B} {OP2} {C} {EQ}"
# phrasings: "eq" is the All-for-One format; the others ask the same sum in words
PHRASINGS: dict[str, str] = {"eq": "{EXPR} {EQ}", "what": "What is {EXPR} ?", "is": "{EXPR} is"}
CORRUPTIONS = ("operand", "last_operand")


def evaluate(operands: list[int], ops: tuple[str, ...]) -> list[int]:
    """Running values after each operator (the last is the answer)."""
    vals = []
    acc = operands[0]
    for op, x in zip(ops, operands[1:]):
        acc = acc + x if op == "+" else acc - x
        vals.append(acc)
    return vals


class MentalMath(Task):
    """The mental math task: options ``forms`` (keys of FORMS), ``max_value`` (9-999),
    ``corruption`` (operand, last_operand), ``phrasings`` (keys of PHRASINGS) and ``split``.
    """

    name = "mental_math"
    description = "Mental math: a+b, a-b and three-operand expressions; operand corruption."
    defaults = {"forms": ("add", "sub", "add3", "addsub"), "max_value": 99, "corruption": "operand",
                "phrasings": ("eq",), "split": "all"}
    min_words = {"numbers": 10, "operators": 2}
    pool_context = {"numbers": ("=", False), "operators": ("1", False)}

    def check_options(self, opts: dict[str, Any]) -> None:
        super().check_options(opts)
        bad = [f for f in opts["forms"] if f not in FORMS]
        if bad or not opts["forms"]:
            raise ValueError(f"mental_math: forms must be a non-empty subset of {list(FORMS)}, got {opts['forms']!r}")
        if not (isinstance(opts["max_value"], int) and 9 <= opts["max_value"] <= 999):
            raise ValueError(f"mental_math: max_value must be an int in [9, 999], got {opts['max_value']!r}")
        bad = [p for p in opts["phrasings"] if p not in PHRASINGS]
        if bad or not opts["phrasings"]:
            raise ValueError(f"mental_math: phrasings must be a non-empty subset of {list(PHRASINGS)}, "
                             f"got {opts['phrasings']!r}")
        if opts["corruption"] not in CORRUPTIONS:
            raise ValueError(f"mental_math: corruption must be one of {CORRUPTIONS}, got {opts['corruption']!r}")

    def word_pools(self, opts: dict[str, Any]) -> dict[str, list[str]]:
        return {"numbers": [str(i) for i in range(opts["max_value"] + 1)], "operators": ["+", "-", "="]}

    def spec(self, opts: dict[str, Any]) -> TaskSpec:
        templates, groups = [], []
        for phrasing in opts["phrasings"]:
            for f in opts["forms"]:
                expr = (_T2 if len(FORMS[f]) == 1 else _T3).replace(" {EQ}", "")
                templates.append(PHRASINGS[phrasing].replace("{EXPR}", expr))
                groups.append(f if len(opts["phrasings"]) == 1 else f"{f}/{phrasing}")
        return TaskSpec(self.name, templates, groups, corrupted_answer_is_wrong=True)

    def sample(self, rng: random.Random, pools: dict[str, list[str]], opts: dict[str, Any]) -> Example | None:
        allowed = {int(w) for w in pools["numbers"]}
        hi = opts["max_value"]
        fi = rng.randrange(len(opts["forms"]))
        ops = FORMS[opts["forms"][fi]]
        n_ph = len(opts["phrasings"])
        ph = rng.randrange(n_ph) if n_ph > 1 else 0  # single phrasing: the original random stream

        def draw() -> list[int]:
            return [rng.randint(0, hi) for _ in range(len(ops) + 1)]

        def ok(xs: list[int]) -> bool:
            vals = evaluate(xs, ops)
            return all(0 <= v <= hi for v in vals) and all(v in allowed for v in xs + vals[-1:])

        xs = draw()
        key = (*xs, opts["forms"][fi]) if n_ph == 1 else (*xs, opts["forms"][fi], opts["phrasings"][ph])
        if not ok(xs) or not in_split(key, opts["split"]):
            return None
        ans = evaluate(xs, ops)[-1]
        for _ in range(50):
            j = len(xs) - 1 if opts["corruption"] == "last_operand" else rng.randrange(len(xs))
            ys = list(xs)
            ys[j] = rng.randint(0, hi)
            if ok(ys) and evaluate(ys, ops)[-1] != ans:
                break
        else:
            return None
        wrong = evaluate(ys, ops)[-1]

        def fill(v: list[int]) -> dict[str, str]:
            f = {"A": str(v[0]), "OP1": ops[0], "B": str(v[1]), "EQ": "="}
            if len(ops) == 2:
                f.update(OP2=ops[1], C=str(v[2]))
            return f

        return Example(ph * len(opts["forms"]) + fi, fill(xs), fill(ys), answer=str(ans), wrong=str(wrong))
