"""Task registry: ``build_task(name, tokenizer, n, seed, **options) -> PromptSet``.

    >>> from circuits.tasks import build_task, list_tasks
    >>> ps = build_task("ioi", model.tokenizer, n=64, seed=0, corruption="abc")

Each task keeps only the words that are single tokens in the given tokenizer
and fails with a message naming the tokenizer and the words if too few remain.
"""

from __future__ import annotations

from typing import Any

from circuits.prompts import PromptAlignmentError, PromptSet
from circuits.tasks.arithmetic import Arithmetic
from circuits.tasks.classics import GreaterThan, Induction
from circuits.tasks.colored_objects import ColoredObjects
from circuits.tasks.ioi import IOI
from circuits.tasks.mental_math import MentalMath
from circuits.tasks.recall_reasoning import Reasoning, Recall
from circuits.tasks.task import Task
from circuits.tasks.templates import TaskVocabularyError, prompt_set_from_texts

TASKS: dict[str, Task] = {
    t.name: t
    for t in (IOI(), ColoredObjects(), MentalMath(), Recall(), Reasoning(), Induction(), GreaterThan(), Arithmetic())
}


def get_task(name: str) -> Task:
    """The registered Task called ``name`` (clear error listing the names otherwise)."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; available tasks: {sorted(TASKS)}") from None


def list_tasks() -> list[str]:
    """Names of the registered tasks, sorted."""
    return sorted(TASKS)


def build_task(name: str, tokenizer: Any, n: int, seed: int = 0, **options: Any) -> PromptSet:
    """Build ``n`` clean/corrupted pairs of task ``name`` for ``tokenizer``."""
    return get_task(name).build(tokenizer, n, seed, **options)


def all_task_words() -> set[str]:
    """Every word piece any task can emit with its default options (plus variants)."""
    words: set[str] = set()
    for t in TASKS.values():
        words |= t.vocabulary()
    words |= get_task("recall").vocabulary(facts="world")
    words |= get_task("colored_objects").vocabulary(shots=1)
    words |= get_task("mental_math").vocabulary(forms=("add", "sub", "add3", "addsub", "subadd", "sub3"))
    return words


__all__ = [
    "TASKS", "Task", "PromptSet", "PromptAlignmentError", "TaskVocabularyError",
    "get_task", "list_tasks", "build_task", "all_task_words", "prompt_set_from_texts",
]
