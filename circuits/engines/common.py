"""What the engines share: the run preamble (metric, prompts, vocabulary), checks of their inputs,
base/source runs and position specs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuits import metrics
from circuits.metrics import MetricSpec
from circuits.prompts import PromptSet

Metric = Callable[[Tensor, PromptSet], Tensor]  # (END logits [b, vocab], prompts) -> [b]
DIRECTIONS = ("denoise", "noise")


def answer_vocab(ps: PromptSet, metric: MetricSpec) -> tuple[PromptSet, Tensor | None]:
    """(prompts with answer ids remapped into the restricted vocabulary, that vocabulary) when the
    metric reads only the answer tokens; else (ps, None)."""
    if not metric.answers_only:
        return ps, None
    ids, inv = torch.unique(torch.cat([ps.answers, ps.wrong_answers]), return_inverse=True)
    b = len(ps)
    return replace(ps, answers=inv[:b], wrong_answers=inv[b:], answer_candidates=None, answer_mask=None,
                   corrupted_answers=None), ids


def resolve_metric(metric: str | MetricSpec | Metric) -> MetricSpec:
    """The metric as a MetricSpec (see ``circuits.metrics.metric_spec``)."""
    return metrics.metric_spec(metric)


class EngineRun:
    """What every engine does first, written once.

    The metric is resolved, the prompts are checked against the model (vocabulary,
    context, tokenizer) and moved to its device, and, when the metric reads only the
    answer tokens, those are remapped so that engines unembed just them. Use it as a
    context manager: inside, ``forward.unembed`` returns the restricted columns.

        with EngineRun(model, ps, metric) as run:
            logits = ...                      # END logits under some intervention
            values = run.evaluate(logits)     # [b]
    """

    def __init__(self, model: Any, ps: PromptSet, metric: str | MetricSpec | Metric,
                 full_vocabulary: bool = False):
        """``full_vocabulary``: keep every logit even for an answers-only metric (callers that return logits)."""
        self.model = model
        self.metric = resolve_metric(metric)
        self.ps = prepare_prompts(model, ps)
        self.scored, self.vocab = (self.ps, None) if full_vocabulary else answer_vocab(self.ps, self.metric)
        self._vocab_scope: Any = None

    def evaluate(self, logits: Float[Tensor, "batch vocab"]) -> Float[Tensor, " batch"]:
        """The metric per prompt [b] of END logits taken inside this run."""
        return evaluate_metric(self.metric.fn, logits, self.scored)

    def __enter__(self) -> EngineRun:
        from circuits.engines.forward import restricted_vocab

        self._vocab_scope = restricted_vocab(self.vocab)
        self._vocab_scope.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._vocab_scope.__exit__(*exc)


def evaluate_metric(metric: Metric, logits: Tensor, ps: PromptSet) -> Tensor:
    """Apply ``metric`` and check it returns one value per prompt."""
    out = torch.as_tensor(metric(logits, ps))
    if out.shape != (len(ps),):
        raise ValueError(f"the metric must return one value per prompt ([{len(ps)}]), got shape {tuple(out.shape)}")
    bad = (~torch.isfinite(out)).nonzero().flatten()
    if len(bad):
        name = getattr(metric, "__name__", "metric")
        raise ValueError(f"the metric {name!r} returned {float(out[bad[0]])} for {len(bad)} of {len(ps)} prompts "
                         f"(first: prompt {int(bad[0])}); a metric must give a finite number per prompt")
    return out.float()


def as_list(x: Any, what: str) -> list:
    """``x`` (a list, tuple or other iterable) as a list; a single string is an error, not its characters."""
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{what} must be a list, got the string {x!r} (did you mean [{x!r}]?)")
    try:
        return list(x)
    except TypeError:
        raise TypeError(f"{what} must be a list, got {type(x).__name__} {x!r}") from None


class PromptModelMismatch(ValueError):
    """A PromptSet that does not fit the model: another tokenizer, ids beyond the vocabulary, too long."""


def check_fits(model: Any, ps: PromptSet, what: str = "PromptSet") -> None:
    """Raise PromptModelMismatch unless ``ps`` can run on ``model``; before any compute.

    Checks that every token id lies in the model's vocabulary, that the prompts fit its
    context, and that the tokenizer recorded in the PromptSet (its fingerprint) is the
    model's own.
    """
    from circuits.tokenization import fingerprint

    ps.validate()
    vocab = int(model.cfg.d_vocab)
    for name in ("clean", "corrupted", "answers", "wrong_answers", "answer_candidates", "corrupted_answers"):
        t = getattr(ps, name)
        if t is None or t.numel() == 0:
            continue
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= vocab:
            bad = lo if lo < 0 else hi
            raise PromptModelMismatch(
                f"{what} (task {ps.task!r}) holds token id {bad} in {name}, outside the model's vocabulary "
                f"(ids 0..{vocab - 1}); was it built with another tokenizer?")
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if n_ctx and ps.n_pos > int(n_ctx):
        raise PromptModelMismatch(
            f"{what} (task {ps.task!r}) has prompts of {ps.n_pos} tokens, longer than the model's context of "
            f"{int(n_ctx)}; use shorter prompts (fewer objects, shots or operands)")
    recorded = ps.provenance.get("tokenizer_fingerprint")
    tok = getattr(model, "tokenizer", None)
    if recorded is not None and tok is not None and fingerprint(tok) != recorded:
        raise PromptModelMismatch(
            f"{what} (task {ps.task!r}) was built with tokenizer {ps.provenance.get('tokenizer')!r} "
            f"(fingerprint {recorded}), not with this model's tokenizer "
            f"{getattr(tok, 'name_or_path', type(tok).__name__)!r} (fingerprint {fingerprint(tok)}); "
            "rebuild it with model.tokenizer")


def prepare_prompts(model: Any, ps: PromptSet, what: str = "PromptSet") -> PromptSet:
    """``ps`` checked against ``model`` (:func:`check_fits`) and moved to its device."""
    if not isinstance(ps, PromptSet):
        raise TypeError(f"{what} must be a PromptSet (build one with circuits.tasks.build_task), "
                        f"got {type(ps).__name__}")
    check_fits(model, ps, what)
    return ps.to(model.cfg.device)


def base_and_source(ps: PromptSet, direction: str) -> tuple[Tensor, Tensor]:
    """(tokens that are run, tokens whose activations are patched in) for a direction.

    denoise: run the corrupted prompts, patch in clean activations (sufficiency);
    noise: run the clean prompts, patch in corrupted activations (necessity).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    return (ps.corrupted, ps.clean) if direction == "denoise" else (ps.clean, ps.corrupted)


def position_specs(ps: PromptSet, positions: None | str | Sequence[str]) -> tuple[list[Tensor | None], list[str]]:
    """Per-prompt position index tensors [b] and their labels.

    None: one spec covering all positions. "each": every token index 0..P-1.
    A list of names: the PromptSet's named positions (e.g. ["IO", "S1", "S2", "END"]).
    """
    if positions is None:
        return [None], ["all"]
    if not isinstance(positions, str):
        positions = as_list(positions, "positions")
    if positions == "each":
        n = ps.clean.shape[1]
        return [torch.full((len(ps),), p, dtype=torch.long) for p in range(n)], [str(p) for p in range(n)]
    if isinstance(positions, str):
        positions = [positions]
    missing = [p for p in positions if p not in ps.positions]
    if missing:
        raise ValueError(f"positions {missing} are not named in this PromptSet; it has {sorted(ps.positions)}")
    return [ps.positions[p].long() for p in positions], list(positions)


def model_name(model: Any) -> str:
    """The model's ``cfg.model_name``, or its class name when that is unset."""
    return str(getattr(model.cfg, "model_name", None) or type(model).__name__)


def model_settings(model: Any) -> dict[str, Any]:
    """What every result's settings say about the model: its name and the fast paths in use."""
    from circuits.engines import fastpaths

    return {"model": model_name(model), "fast_paths": fastpaths.report(model)}
