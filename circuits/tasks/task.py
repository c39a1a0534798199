"""The Task base class: word pools + a sampler + templates -> PromptSet."""

from __future__ import annotations

import random
from typing import Any, ClassVar

from circuits.prompts import PromptSet
from circuits.tasks.templates import (
    Example,
    TaskSpec,
    TokenizerView,
    check_n,
    check_seed,
    collect,
    parse_template,
    render,
    sample_examples,
    to_prompt_set,
)


class Task:
    """A task turns a tokenizer into a PromptSet of clean/corrupted pairs.

    Subclasses define ``name``, ``description``, ``defaults`` (the options and
    their default values), ``word_pools(opts)`` (pool name -> candidate words),
    ``min_words`` (pool name -> minimum single-token words), ``spec(opts)`` and
    ``sample(rng, pools, opts)``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    min_words: ClassVar[dict[str, int]] = {}
    #: probe context per pool: (left word, attached?) used to test single-tokenness
    pool_context: ClassVar[dict[str, tuple[str, bool]]] = {}

    # -- to implement -----------------------------------------------------
    def word_pools(self, opts: dict[str, Any]) -> dict[str, list[str]]:
        """Pool name -> candidate words for options ``opts`` (before the single-token filter)."""
        raise NotImplementedError

    def spec(self, opts: dict[str, Any]) -> TaskSpec:
        """The TaskSpec for options ``opts``: templates, template names and answer format."""
        raise NotImplementedError

    def sample(self, rng: random.Random, pools: dict[str, list[str]], opts: dict[str, Any]) -> Example | None:
        """One Example drawn with ``rng`` from the filtered ``pools``, or None to reject the draw
        (e.g. outside the split).
        """
        raise NotImplementedError

    # -- provided -----------------------------------------------------------
    def options(self, **options: Any) -> dict[str, Any]:
        """``defaults`` updated with ``options``, then checked; a TypeError names unknown options."""
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise TypeError(
                f"task {self.name!r} has no option(s) {sorted(unknown)}; its options are "
                f"{ {k: v for k, v in self.defaults.items()} }"
            )
        opts = {**self.defaults, **options}
        self.check_options(opts)
        return opts

    def check_options(self, opts: dict[str, Any]) -> None:
        """Raise ValueError on a bad option value (override to add checks)."""
        from circuits.tasks.templates import SPLITS

        if "split" in opts and opts["split"] not in SPLITS:
            raise ValueError(f"task {self.name!r}: split must be one of {SPLITS}, got {opts['split']!r}")

    def build(self, tokenizer: Any, n: int, seed: int = 0, prepend_bos: bool | None = None,
              **options: Any) -> PromptSet:
        """Build ``n`` clean/corrupted pairs for ``tokenizer`` (seeded, deterministic)."""
        check_n(n)
        check_seed(seed)
        opts = self.options(**options)
        view = TokenizerView(tokenizer)
        pools: dict[str, list[str]] = {}
        dropped: dict[str, list[str]] = {}
        for pool, words in self.word_pools(opts).items():
            left, attach = self.pool_context.get(pool, ("the", False))
            kept = view.single_tokens(words, task=self.name, what=pool,
                                      minimum=self.min_words.get(pool, 1), left=left, attach=attach)
            pools[pool] = kept
            dropped[pool] = [w for w in words if w not in kept]
        use_bos = view.bos_id is not None if prepend_bos is None else bool(prepend_bos)
        if use_bos and view.bos_id is None:
            raise ValueError(f"prepend_bos=True but tokenizer {view.name!r} has no BOS token")
        spec = self.spec(opts)
        items, rejected = collect(spec, view, n, seed, lambda rng: self.sample(rng, pools, opts), use_bos)
        provenance = {
            "seed": seed,
            "options": _jsonable(opts),
            "words_kept": {k: len(v) for k, v in pools.items()},
            "words_dropped": {k: v for k, v in dropped.items() if v},
            "prompts_rejected": rejected,
        }
        ps = to_prompt_set(spec, view, items, use_bos, provenance)
        limit = getattr(tokenizer, "model_max_length", None)
        if isinstance(limit, int) and limit < 10**6 and ps.n_pos > limit:  # tokenizers that know their model's
            raise ValueError(f"task {self.name!r} built prompts of {ps.n_pos} tokens, longer than tokenizer "
                             f"{view.name!r}'s model_max_length of {limit}; use shorter prompts ({opts})")
        return ps

    def texts(self, n: int, seed: int = 0, **options: Any) -> list[tuple[str, str, int]]:
        """``n`` rendered (prompt, answer, template id) triples, no tokenizer needed.

        The answer follows the prompt after one space, or directly when the
        task's answers are attached (see ``TaskSpec.answer_attach``).
        """
        opts = self.options(**options)
        pools = self.word_pools(opts)
        spec = self.spec(opts)
        parsed = [parse_template(t) for t in spec.templates]
        examples = sample_examples(n, seed, lambda rng: self.sample(rng, pools, opts), self.name)
        return [(render(parsed[ex.template], ex.clean)[0], ex.answer, ex.template) for ex in examples]

    def vocabulary(self, **options: Any) -> set[str]:
        """Every word piece this task can emit: template pieces, fill words and answers."""
        opts = self.options(**options)
        words: set[str] = set()
        pools = self.word_pools(opts)
        for pool in pools.values():
            words.update(pool)
        spec = self.spec(opts)
        for t in spec.templates:
            words.update(p.text for p in parse_template(t) if p.slot is None)
        if spec.answer_candidates:
            words.update(spec.answer_candidates)
        # fill words a sampler emits outside the pools (articles, operators, ...)
        for ex in sample_examples(300, 0, lambda rng: self.sample(rng, pools, opts), self.name):
            words.update(ex.clean.values())
            words.update(ex.corrupted.values())
            words.update((ex.answer, ex.wrong))
        return words


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x
