"""Small pieces the engines share: metrics, base/source runs, position specs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from circuits import metrics
from circuits.prompts import PromptSet

Metric = Callable[[Tensor, PromptSet], Tensor]  # (END logits [b, vocab], prompts) -> [b]
DIRECTIONS = ("denoise", "noise")


# metrics that read only the answer and wrong-answer logits: engines unembed just those tokens
ANSWER_ONLY = ("logit_diff",)


def answer_vocab(ps: PromptSet, metric_name: str) -> tuple[PromptSet, Tensor | None]:
    """(prompts with answer ids remapped into the restricted vocabulary, that vocabulary) or (ps, None)."""
    if metric_name not in ANSWER_ONLY:
        return ps, None
    ids, inv = torch.unique(torch.cat([ps.answers, ps.wrong_answers]), return_inverse=True)
    b = len(ps)
    return replace(ps, answers=inv[:b], wrong_answers=inv[b:], answer_candidates=None, answer_mask=None), ids


def resolve_metric(metric: str | Metric) -> tuple[Metric, str]:
    """(per-prompt metric, its name). Names: logit_diff, answer_prob, accuracy, candidate_prob_diff."""
    if callable(metric):
        return metric, getattr(metric, "__name__", "custom")
    fn = metrics.get_metric(metric)
    if metric == "kl_divergence":
        raise ValueError("kl_divergence needs reference logits; pass a callable metric instead")
    return (lambda logits, ps: fn(logits, ps, reduce="none")), metric


def evaluate_metric(metric: Metric, logits: Tensor, ps: PromptSet) -> Tensor:
    """Apply ``metric`` and check it returns one value per prompt."""
    out = torch.as_tensor(metric(logits, ps))
    if out.shape != (len(ps),):
        raise ValueError(f"the metric must return one value per prompt ([{len(ps)}]), got shape {tuple(out.shape)}")
    return out.float()


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
    return str(getattr(model.cfg, "model_name", None) or type(model).__name__)


def model_settings(model: Any) -> dict[str, Any]:
    """What every result's settings say about the model: its name and the fast paths in use."""
    from circuits.engines import fastpaths

    return {"model": model_name(model), "fast_paths": fastpaths.report(model)}
