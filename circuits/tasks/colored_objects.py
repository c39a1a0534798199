"""Colored Objects (Merullo et al. 2024, the circuit-reuse task).

"Q: On the table, I see a red pen, a blue cup, and a green ball. What color is
the cup? A:" -> " blue". The minimal-pair corruption asks about another object
of the same list, whose color becomes the wrong answer. ``question="statement"``
ends the prompt with "... The cup is" instead (the object right before END);
``order="object_first"`` names each object before its color ("a cup that is
blue"), which the zoo uses (see circuits.zoo.toyworld).
Named positions: O0-O2 (objects), C0-C2 (colors), QO (queried object), END.
"""

from __future__ import annotations

import random
from typing import Any

from circuits.tasks import vocab
from circuits.tasks.base import Example, TaskSpec, in_split
from circuits.tasks.task import Task

STARTS = ["there is", "you see", "I see"]
_QUESTION = ("Q: On the {SURF}, {START} {A0} {C0} {O0}, {A1} {C1} {O1}, and {A2} {C2} {O2}. "
             "What color is the {QO}? A:")
_QUESTION_OBJECT_FIRST = ("Q: On the {SURF}, {START} {A0} {O0} that is {C0}, {A1} {O1} that is {C1}, and "
                          "{A2} {O2} that is {C2}. What color is the {QO}? A:")
_STATEMENT_OBJECT_FIRST = ("On the {SURF}, {START} {A0} {O0} that is {C0}, {A1} {O1} that is {C1}, and "
                           "{A2} {O2} that is {C2}. The {QO} is")
_STATEMENT = ("On the {SURF}, {START} {A0} {C0} {O0}, {A1} {C1} {O1}, and {A2} {C2} {O2}. "
              "The {QO} is")
QUESTIONS = ("qa", "statement")
ORDERS = ("color_first", "object_first")
_SHOT = ("Q: On the {SS}, {START} {SA0} {SC0} {SO0}, {SA1} {SC1} {SO1}, and {SA2} {SC2} {SO2}. "
         "What color is the {SQO}? A: {SANS}\n")


def _article(color: str) -> str:
    return "an" if color[0].lower() in "aeiou" else "a"


class ColoredObjects(Task):
    name = "colored_objects"
    description = "Colored Objects: name the color of the queried object; corruption asks about another one."
    defaults = {"shots": 0, "question": "qa", "order": "color_first", "split": "all"}
    min_words = {"colors": 3, "objects": 3, "surfaces": 1}
    pool_context = {"colors": ("a", False), "objects": ("the", False), "surfaces": ("the", False)}

    def check_options(self, opts: dict[str, Any]) -> None:
        super().check_options(opts)
        if opts["shots"] not in (0, 1):
            raise ValueError(f"colored_objects: shots must be 0 or 1, got {opts['shots']!r}")
        if opts["question"] not in QUESTIONS:
            raise ValueError(f"colored_objects: question must be one of {QUESTIONS}, got {opts['question']!r}")
        if opts["order"] not in ORDERS:
            raise ValueError(f"colored_objects: order must be one of {ORDERS}, got {opts['order']!r}")
        if opts["order"] == "object_first" and opts["shots"]:
            raise ValueError("colored_objects: order='object_first' needs shots=0")
        if opts["shots"] and opts["question"] != "qa":
            raise ValueError("colored_objects: shots=1 needs question='qa'")

    def word_pools(self, opts: dict[str, Any]) -> dict[str, list[str]]:
        return {"colors": vocab.COLORS, "objects": vocab.COLOR_OBJECTS, "surfaces": vocab.SURFACES}

    def spec(self, opts: dict[str, Any]) -> TaskSpec:
        templates = []
        for start in STARTS:
            forms = {("qa", "color_first"): _QUESTION, ("statement", "color_first"): _STATEMENT,
                     ("qa", "object_first"): _QUESTION_OBJECT_FIRST,
                     ("statement", "object_first"): _STATEMENT_OBJECT_FIRST}
            t = forms[(opts["question"], opts["order"])].replace("{START}", start)
            if opts["shots"]:
                t = _SHOT.replace("{START}", start) + t
            templates.append(t)
        return TaskSpec(self.name, templates, [f"start={s}" for s in STARTS])

    def _scene(self, rng: random.Random, pools: dict[str, list[str]], opts: dict[str, Any],
               prefix: str = "") -> tuple[dict, list, list]:
        objs = rng.sample(pools["objects"], 3)
        cols = rng.sample(pools["colors"], 3)
        fill = {f"{prefix}SURF" if not prefix else "SS": rng.choice(pools["surfaces"])}
        for i in range(3):
            fill[f"{prefix}A{i}"] = _article(cols[i]) if opts.get("order") != "object_first" else _article(objs[i])
            fill[f"{prefix}C{i}"] = cols[i]
            fill[f"{prefix}O{i}"] = objs[i]
        return fill, objs, cols

    def sample(self, rng: random.Random, pools: dict[str, list[str]], opts: dict[str, Any]) -> Example | None:
        template = rng.randrange(len(STARTS))
        fill, objs, cols = self._scene(rng, pools, opts)
        q, other = rng.sample(range(3), 2)
        if not in_split((*sorted(objs), q, template), opts["split"]):
            return None
        clean = {**fill, "QO": objs[q]}
        if opts["shots"]:
            shot, sobjs, scols = self._scene(rng, pools, opts, prefix="S")
            sq = rng.randrange(3)
            clean.update(shot, SQO=sobjs[sq], SANS=scols[sq])
        corrupted = {**clean, "QO": objs[other]}
        return Example(template, clean, corrupted, answer=cols[q], wrong=cols[other])
