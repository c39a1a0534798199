"""Indirect object identification (Wang et al. 2022).

"Then, Mary and John went to the store. John gave a drink to" -> " Mary".
BABA: the subject S is named first; ABBA: the indirect object IO is named first.
Named positions: IO, S1, S1+1, S2, END. LD = logit(IO) - logit(S) at END.

Corruptions:
  * ``abc``   - IO, S1 and S2 replaced by three other distinct names (p_ABC);
  * ``s2_io`` - S2 replaced by IO, which flips the answer to S (Merullo et al.).
"""

from __future__ import annotations

import random
from typing import Any

from circuits.tasks import vocab
from circuits.tasks.task import Task
from circuits.tasks.templates import Example, TaskSpec, in_split

BABA_TEMPLATES = [
    "Then, {S1} and {IO} went to the {PLACE}. {S2} gave a {OBJECT} to",
    "Then, {S1} and {IO} had a lot of fun at the {PLACE}. {S2} gave a {OBJECT} to",
    "Then, {S1} and {IO} were working at the {PLACE}. {S2} decided to give a {OBJECT} to",
    "Then, {S1} and {IO} were thinking about going to the {PLACE}. {S2} wanted to give a {OBJECT} to",
    "Then, {S1} and {IO} had a long argument, and afterwards {S2} said to",
    "After {S1} and {IO} went to the {PLACE}, {S2} gave a {OBJECT} to",
    "When {S1} and {IO} got a {OBJECT} at the {PLACE}, {S2} decided to give it to",
    "When {S1} and {IO} got a {OBJECT} at the {PLACE}, {S2} decided to give the {OBJECT} to",
    "While {S1} and {IO} were working at the {PLACE}, {S2} gave a {OBJECT} to",
    "While {S1} and {IO} were commuting to the {PLACE}, {S2} gave a {OBJECT} to",
    "After the lunch, {S1} and {IO} went to the {PLACE}. {S2} gave a {OBJECT} to",
    "Afterwards, {S1} and {IO} went to the {PLACE}. {S2} gave a {OBJECT} to",
    "Then, {S1} and {IO} had a long argument. Afterwards {S2} said to",
    "The {PLACE} {S1} and {IO} went to had a {OBJECT}. {S2} gave it to",
    "Friends {S1} and {IO} found a {OBJECT} at the {PLACE}. {S2} gave it to",
]
ABBA_TEMPLATES = [t.replace("{S1} and {IO}", "{IO} and {S1}") for t in BABA_TEMPLATES]
CORRUPTIONS = ("abc", "s2_io")
ORDERS = ("mixed", "BABA", "ABBA")


class IOI(Task):
    """The IOI task: options ``order`` (mixed, BABA, ABBA), ``corruption`` (abc, s2_io),
    ``templates`` (indices into BABA_TEMPLATES; None: all) and ``split``.
    """

    name = "ioi"
    description = "Indirect object identification: BABA/ABBA templates, ABC or S2->IO corruption."
    defaults = {"order": "mixed", "corruption": "abc", "split": "all", "templates": None}
    min_words = {"names": 5, "places": 1, "objects": 1}
    pool_context = {"names": ("and", False), "places": ("the", False), "objects": ("a", False)}

    def check_options(self, opts: dict[str, Any]) -> None:
        super().check_options(opts)
        if opts["order"] not in ORDERS:
            raise ValueError(f"ioi: order must be one of {ORDERS}, got {opts['order']!r}")
        if opts["corruption"] not in CORRUPTIONS:
            raise ValueError(f"ioi: corruption must be one of {CORRUPTIONS}, got {opts['corruption']!r}")
        t = opts["templates"]
        if t is not None:
            bad = [i for i in t if not (isinstance(i, int) and 0 <= i < len(BABA_TEMPLATES))]
            if bad or not t:
                raise ValueError(f"ioi: templates must be indices in [0, {len(BABA_TEMPLATES)}), got {t!r}")

    def word_pools(self, opts: dict[str, Any]) -> dict[str, list[str]]:
        return {"names": vocab.NAMES, "places": vocab.PLACES, "objects": vocab.OBJECTS}

    def spec(self, opts: dict[str, Any]) -> TaskSpec:
        names = [f"BABA-{i}" for i in range(len(BABA_TEMPLATES))] + [
            f"ABBA-{i}" for i in range(len(ABBA_TEMPLATES))
        ]
        return TaskSpec(self.name, BABA_TEMPLATES + ABBA_TEMPLATES, names,
                        derived_positions={"S1+1": ("S1", 1)},
                        corrupted_answer_is_wrong=opts["corruption"] == "s2_io")  # ABC has no single answer

    def sample(self, rng: random.Random, pools: dict[str, list[str]], opts: dict[str, Any]) -> Example | None:
        base = rng.choice(opts["templates"] or range(len(BABA_TEMPLATES)))
        order = opts["order"] if opts["order"] != "mixed" else rng.choice(["BABA", "ABBA"])
        io, s = rng.sample(pools["names"], 2)
        if not in_split((io, s, base), opts["split"]):
            return None
        place, obj = rng.choice(pools["places"]), rng.choice(pools["objects"])
        clean = {"IO": io, "S1": s, "S2": s, "PLACE": place, "OBJECT": obj}
        if opts["corruption"] == "abc":
            others = [n for n in pools["names"] if n not in (io, s)]
            a, b, c = rng.sample(others, 3)
            corrupted = {**clean, "IO": a, "S1": b, "S2": c}
        else:  # s2_io
            corrupted = {**clean, "S2": io}
        template = base if order == "BABA" else base + len(BABA_TEMPLATES)
        return Example(template, clean, corrupted, answer=io, wrong=s)
