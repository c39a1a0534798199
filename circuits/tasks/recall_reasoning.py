"""Recall vs reasoning: two subtasks with matched formats, both answering a city.

* ``recall``: a memorized fact about an entity, asked through one of several
  phrasings ("Milo lives in" -> " Rome"). Facts come from the toyworld fact base
  (``facts="toyworld"``, memorized by the zoo) or from real-world capitals
  (``facts="world"``, for pretrained models). Corruption: another entity with a
  different answer.
* ``reasoning``: in-context two-hop inference with a distractor chain
  ("the key is in the box. the coin is in the bag. the box is in Rome. the bag
  is in Oslo. the key is in" -> " Rome"). Corruption: ask about the other item.
"""

from __future__ import annotations

import random
from typing import Any

from circuits.tasks import vocab
from circuits.tasks.task import Task
from circuits.tasks.templates import Example, TaskSpec, in_split

RECALL_TEMPLATES = {
    "toyworld": ["{E} lives in", "the home of {E} is in", "{E} comes from", "everyone knows that {E} lives in"],
    "world": ["the capital of {E} is", "the capital city of {E} is", "{E} has its capital in"],
}
FACT_TABLES = ("toyworld", "world")

REASONING_TEMPLATES = [
    "the {X1} is in the {Y1}. the {X2} is in the {Y2}. the {Y1a} is in {C1}. the {Y2a} is in {C2}. the {Q} is in",
    "the {X1} is in the {Y1}. the {X2} is in the {Y2}. the {Y2a} is in {C2}. the {Y1a} is in {C1}. the {Q} is in",
    "the {Y1a} is in {C1}. the {Y2a} is in {C2}. the {X1} is in the {Y1}. the {X2} is in the {Y2}. the {Q} is in",
]


def facts_table(name: str) -> dict[str, str]:
    """Entity -> city of fact table ``name`` ("toyworld" or "world"); a ValueError otherwise."""
    if name == "toyworld":
        return vocab.toyworld_facts()
    if name == "world":
        return dict(vocab.WORLD_FACTS)
    raise ValueError(f"recall: facts must be one of {FACT_TABLES}, got {name!r}")


class Recall(Task):
    """The recall task: options ``facts`` (toyworld or world), ``templates`` (phrasing indices;
    None: all) and ``split``.
    """

    name = "recall"
    description = "Recall of memorized facts (entity -> city) through several phrasings; entity corruption."
    defaults = {"facts": "toyworld", "split": "all", "templates": None}
    min_words = {"entities": 2, "cities": 2}
    pool_context = {"entities": ("that", False), "cities": ("in", False)}

    def check_options(self, opts: dict[str, Any]) -> None:
        super().check_options(opts)
        facts_table(opts["facts"])
        t, n = opts["templates"], len(RECALL_TEMPLATES[opts["facts"]])
        if t is not None and (not t or any(not (isinstance(i, int) and 0 <= i < n) for i in t)):
            raise ValueError(f"recall: templates must be indices in [0, {n}), got {t!r}")

    def word_pools(self, opts: dict[str, Any]) -> dict[str, list[str]]:
        table = facts_table(opts["facts"])
        return {"entities": list(table), "cities": sorted(set(table.values()))}

    def spec(self, opts: dict[str, Any]) -> TaskSpec:
        ts = RECALL_TEMPLATES[opts["facts"]]
        return TaskSpec(self.name, ts, [f"phrasing-{i}" for i in range(len(ts))], corrupted_answer_is_wrong=True)

    def sample(self, rng: random.Random, pools: dict[str, list[str]], opts: dict[str, Any]) -> Example | None:
        table = facts_table(opts["facts"])
        ents = [e for e in pools["entities"] if table[e] in pools["cities"]]
        t = rng.choice(opts["templates"] or range(len(RECALL_TEMPLATES[opts["facts"]])))
        e = rng.choice(ents)
        if not in_split((e, t), opts["split"]):
            return None
        others = [x for x in ents if table[x] != table[e]]
        if not others:
            return None
        e2 = rng.choice(others)
        return Example(t, {"E": e}, {"E": e2}, answer=table[e], wrong=table[e2])


class Reasoning(Task):
    """The two-hop reasoning task: the question asks about one item (X1 or X2, balanced), the other
    item's chain distracts and is what the corrupted prompt asks about; option ``split``."""

    name = "reasoning"
    description = "In-context two-hop reasoning (item -> container -> city) with a distractor chain."
    defaults = {"split": "all"}
    min_words = {"items": 2, "containers": 2, "cities": 2}
    pool_context = {"items": ("the", False), "containers": ("the", False), "cities": ("in", False)}

    def word_pools(self, opts: dict[str, Any]) -> dict[str, list[str]]:
        return {"items": vocab.ITEMS, "containers": vocab.CONTAINERS, "cities": vocab.CITIES}

    def spec(self, opts: dict[str, Any]) -> TaskSpec:
        return TaskSpec(self.name, REASONING_TEMPLATES, [f"order-{i}" for i in range(len(REASONING_TEMPLATES))],
                        corrupted_answer_is_wrong=True)

    def sample(self, rng: random.Random, pools: dict[str, list[str]], opts: dict[str, Any]) -> Example | None:
        t = rng.randrange(len(REASONING_TEMPLATES))
        x1, x2 = rng.sample(pools["items"], 2)
        y1, y2 = rng.sample(pools["containers"], 2)
        c1, c2 = rng.sample(pools["cities"], 2)
        if not in_split((x1, y1, c1, x2, y2, c2, t), opts["split"]):
            return None
        base = {"X1": x1, "X2": x2, "Y1": y1, "Y1a": y1, "Y2": y2, "Y2a": y2, "C1": c1, "C2": c2}
        # the clean prompt asks about the first or the second item, balanced, and the corrupted prompt
        # about the other: no position or order gives the answer away (each prompt must be read)
        first = rng.random() < 0.5
        (q, answer), (other, wrong) = ((x1, c1), (x2, c2)) if first else ((x2, c2), (x1, c1))
        return Example(t, {**base, "Q": q}, {**base, "Q": other}, answer=answer, wrong=wrong)
