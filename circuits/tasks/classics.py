"""The small classics: induction and greater-than.

* ``induction``: a random word sequence, then its repeat up to one word short:
  "w0 .. w{L-1} w0 .. w{L-2}" -> " w{L-1}". Corruption: the first occurrence of
  the answer word is replaced by another word, which becomes the wrong answer.
  ``seq_len`` may be a list: each prompt then draws its length from it, so the
  answer sits at no fixed offset from END and only a content match (a real
  induction head) finds it. Named positions: SRC (first occurrence of the answer), PREV (the token before
  SRC), END, and W{i}/R{i} for every word.
* ``greater_than`` (Hanna et al. 2023): "The war lasted from the year 1732 to
  the year 17" -> any two-digit year > 32. The answer set is given as
  candidates 00..99 with a per-prompt mask; ``answers`` holds YY+1 and
  ``wrong_answers`` YY. Corruption: YY -> 01.
"""

from __future__ import annotations

import random
from typing import Any

from circuits.tasks import vocab
from circuits.tasks.task import Task
from circuits.tasks.templates import Example, TaskSpec, in_split


class Induction(Task):
    """The induction task: options ``seq_len`` (an int in [2, 20] or a list of them) and ``split``."""

    name = "induction"
    description = "Induction: repeat a random word sequence; corruption changes the first occurrence of the answer."
    defaults = {"seq_len": 6, "split": "all"}
    min_words = {"words": 8}
    pool_context = {"words": ("the", False)}

    def check_options(self, opts: dict[str, Any]) -> None:
        super().check_options(opts)
        lens = self._lengths(opts)
        if not lens or not all(isinstance(n, int) and 2 <= n <= 20 for n in lens):
            raise ValueError(f"induction: seq_len must be an int in [2, 20] or a list of them, "
                             f"got {opts['seq_len']!r}")

    @staticmethod
    def _lengths(opts: dict[str, Any]) -> tuple:
        n = opts["seq_len"]
        return tuple(n) if isinstance(n, (list, tuple)) else (n,)

    def word_pools(self, opts: dict[str, Any]) -> dict[str, list[str]]:
        return {"words": vocab.INDUCTION_WORDS}

    def spec(self, opts: dict[str, Any]) -> TaskSpec:
        templates = []
        for L in self._lengths(opts):
            first = " ".join("{SRC}" if i == L - 1 else ("{PREV}" if i == L - 2 else f"{{W{i}}}") for i in range(L))
            templates.append(first + " " + " ".join(f"{{R{i}}}" for i in range(L - 1)))
        return TaskSpec(self.name, templates, [f"len-{L}" for L in self._lengths(opts)], corrupted_answer_is_wrong=True)

    def sample(self, rng: random.Random, pools: dict[str, list[str]], opts: dict[str, Any]) -> Example | None:
        lens = self._lengths(opts)
        template = rng.randrange(len(lens)) if len(lens) > 1 else 0  # keeps single-length streams unchanged
        L = lens[template]
        if len(pools["words"]) < L + 1:
            from circuits.tasks.templates import TaskVocabularyError

            raise TaskVocabularyError(f"induction: seq_len={L} needs {L + 1} single-token words, "
                                      f"only {len(pools['words'])} are")
        ws = rng.sample(pools["words"], L + 1)
        seq, alt = ws[:L], ws[L]
        if not in_split(seq, opts["split"]):
            return None
        fill = {f"W{i}": w for i, w in enumerate(seq[: L - 2])}
        fill.update(PREV=seq[L - 2], SRC=seq[L - 1])
        fill.update({f"R{i}": seq[i] for i in range(L - 1)})
        return Example(template, fill, {**fill, "SRC": alt}, answer=seq[L - 1], wrong=alt)


class GreaterThan(Task):
    """The greater-than task (Hanna et al. 2023): any year after the start year; option ``split``."""

    name = "greater_than"
    description = "Greater-than: 'from the year 17YY to the year 17' -> a year > YY; corruption YY -> 01."
    defaults = {"split": "all"}
    min_words = {"nouns": 1, "centuries": 1, "years": 20}
    pool_context = {"nouns": ("The", False), "centuries": ("year", False), "years": ("17", True)}

    def word_pools(self, opts: dict[str, Any]) -> dict[str, list[str]]:
        return {"nouns": vocab.NOUNS_GT, "centuries": vocab.CENTURIES, "years": vocab.YEARS_2D}

    def spec(self, opts: dict[str, Any]) -> TaskSpec:
        return TaskSpec(self.name, ["The {NOUN} lasted from the year {CC1}{YY} to the year {CC2}"],
                        ["greater-than"], answer_attach=True, answer_candidates=vocab.YEARS_2D)

    def sample(self, rng: random.Random, pools: dict[str, list[str]], opts: dict[str, Any]) -> Example | None:
        years = set(pools["years"])
        if "01" not in years:
            from circuits.tasks.templates import TaskVocabularyError

            raise TaskVocabularyError("greater_than: the corruption year '01' is not a single token after '17' "
                                      "in this tokenizer")
        yy = rng.randint(2, 98)
        noun, cc = rng.choice(pools["nouns"]), rng.choice(pools["centuries"])
        if f"{yy:02d}" not in years or not in_split((noun, cc, yy), opts["split"]):
            return None
        clean = {"NOUN": noun, "CC1": cc, "YY": f"{yy:02d}", "CC2": cc}
        mask = [int(y) > yy for y in vocab.YEARS_2D]
        return Example(0, clean, {**clean, "YY": "01"}, answer=f"{yy + 1:02d}", wrong=f"{yy:02d}",
                       candidates_correct=mask)
