"""Colored Objects (Merullo et al. 2024, the circuit-reuse task).

"Q: On the table, I see a red pen, a blue cup, and a green ball. What color is
the cup? A:" -> " blue". The minimal-pair corruption asks about another object
of the same list, whose color becomes the wrong answer. ``question="statement"``
ends the prompt with "... The cup is" instead (the object right before END);
``order="object_first"`` names each object before its color ("a cup that is
blue"); ``order="the_is"`` lists "the cup is blue" and asks "... A: the cup is",
which the zoo uses (see circuits.zoo.recipes.toyworld).
``n_objects`` (2-5, or a list for a mixture) sets how many objects the scene lists.
Named positions: O0.. (objects), C0.. (colors), QO (queried object), END;
ANSWER / ANSWER_OBJ (the queried object's colour and its mention in the scene) and
DISTRACTOR / DISTRACTOR_OBJ (those of the object the corrupted prompt asks about).
A slot absent from a prompt's template has position -1.
"""

from __future__ import annotations

import random
from typing import Any

from circuits.tasks import vocab
from circuits.tasks.task import Task
from circuits.tasks.templates import Example, TaskSpec, in_split

STARTS = ["there is", "you see", "I see"]
QUESTIONS = ("qa", "statement")
ORDERS = ("color_first", "object_first", "the_is")
# the_is lists "the cup is blue" and answers "... A: the cup is" (the zoo's phrasing); its lead-ins:
_THE_IS_STARTS = {"there is": "On the {SURF},", "you see": "you see that on the {SURF},",
                  "I see": "I see that on the {SURF},"}
N_OBJECTS = (2, 3, 4, 5)


def _items(n: int, order: str, prefix: str = "") -> str:
    """'{A0} {C0} {O0}, {A1} {C1} {O1}, and {A2} {C2} {O2}' for n objects."""
    if order == "the_is":
        parts = [f"the {{{prefix}O{i}}} is {{{prefix}C{i}}}" for i in range(n)]
    else:
        one = ("{%sA%d} {%sO%d} that is {%sC%d}" if order == "object_first" else "{%sA%d} {%sC%d} {%sO%d}")
        parts = [one % (prefix, i, prefix, i, prefix, i) for i in range(n)]
    if n == 2:
        return f"{parts[0]} and {parts[1]}"
    return ", ".join(parts[:-1]) + f", and {parts[-1]}"


def _scene_text(n: int, order: str, question: str, start: str) -> str:
    lead = "Q: " if question == "qa" else ""
    if order == "the_is":
        tail = "What color is the {QO}? A: the {QO2} is" if question == "qa" else "the {QO} is"
        return f"{lead}{_THE_IS_STARTS[start]} {_items(n, order)}. {tail}"
    tail = "What color is the {QO}? A:" if question == "qa" else "The {QO} is"
    return f"{lead}On the {{SURF}}, {start} {_items(n, order)}. {tail}"


_SHOT = "Q: On the {SS}, {START} " + _items(3, "color_first", "S") + ". What color is the {SQO}? A: {SANS}\n"


def _article(color: str) -> str:
    return "an" if color[0].lower() in "aeiou" else "a"


class ColoredObjects(Task):
    """The Colored Objects task: options ``shots`` (0 or 1), ``question``, ``order``, ``n_objects``, ``split``."""

    name = "colored_objects"
    description = "Colored Objects: name the color of the queried object; corruption asks about another one."
    defaults = {"shots": 0, "question": "qa", "order": "color_first", "n_objects": 3, "split": "all"}
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
        n_obj = opts["n_objects"]
        n_obj = n_obj if isinstance(n_obj, (list, tuple)) else (n_obj,)
        if not n_obj or any(n not in N_OBJECTS for n in n_obj):
            raise ValueError(f"colored_objects: n_objects must be one of {N_OBJECTS} or a list of them, "
                             f"got {opts['n_objects']!r}")
        if opts["order"] != "color_first" and opts["shots"]:
            raise ValueError(f"colored_objects: order={opts['order']!r} needs shots=0")
        if opts["shots"] and opts["question"] != "qa":
            raise ValueError("colored_objects: shots=1 needs question='qa'")

    def word_pools(self, opts: dict[str, Any]) -> dict[str, list[str]]:
        return {"colors": vocab.COLORS, "objects": vocab.COLOR_OBJECTS, "surfaces": vocab.SURFACES}

    @staticmethod
    def _counts(opts: dict[str, Any]) -> tuple[int, ...]:
        n = opts["n_objects"]
        return tuple(n) if isinstance(n, (list, tuple)) else (n,)

    def spec(self, opts: dict[str, Any]) -> TaskSpec:
        templates, groups = [], []
        for n in self._counts(opts):
            for start in STARTS:
                t = _scene_text(n, opts["order"], opts["question"], start)
                if opts["shots"]:
                    t = _SHOT.replace("{START}", start) + t
                templates.append(t)
                groups.append(f"start={start}" if len(self._counts(opts)) == 1 else f"n={n},start={start}")
        return TaskSpec(self.name, templates, groups, corrupted_answer_is_wrong=True)

    def _scene(self, rng: random.Random, pools: dict[str, list[str]], opts: dict[str, Any],
               n: int = 3, prefix: str = "") -> tuple[dict, list, list]:
        objs = rng.sample(pools["objects"], n)
        cols = rng.sample(pools["colors"], n)
        fill = {f"{prefix}SURF" if not prefix else "SS": rng.choice(pools["surfaces"])}
        for i in range(n):
            fill[f"{prefix}A{i}"] = _article(cols[i]) if opts.get("order") != "object_first" else _article(objs[i])
            fill[f"{prefix}C{i}"] = cols[i]
            fill[f"{prefix}O{i}"] = objs[i]
        return fill, objs, cols

    def sample(self, rng: random.Random, pools: dict[str, list[str]], opts: dict[str, Any]) -> Example | None:
        counts = self._counts(opts)
        ci = rng.randrange(len(counts)) if len(counts) > 1 else 0  # keeps single-count streams unchanged
        n = counts[ci]
        start = rng.randrange(len(STARTS))
        template = ci * len(STARTS) + start
        fill, objs, cols = self._scene(rng, pools, opts, n)
        q, other = rng.sample(range(n), 2)
        key = (*sorted(objs), q, start) if n == 3 else (*sorted(objs), q, start, n)
        if not in_split(key, opts["split"]):
            return None
        clean = {**fill, "QO": objs[q], "QO2": objs[q]}
        if opts["shots"]:
            shot, sobjs, scols = self._scene(rng, pools, opts, 3, prefix="S")
            sq = rng.randrange(3)
            clean.update(shot, SQO=sobjs[sq], SANS=scols[sq])
        corrupted = {**clean, "QO": objs[other], "QO2": objs[other]}
        return Example(template, clean, corrupted, answer=cols[q], wrong=cols[other],
                       aliases={"ANSWER": f"C{q}", "ANSWER_OBJ": f"O{q}", "DISTRACTOR": f"C{other}",
                                "DISTRACTOR_OBJ": f"O{other}"})
