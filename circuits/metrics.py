"""Metrics over logits, read only at the positions they need (END by default).

Every metric accepts either full logits [batch, pos, vocab] (it gathers the END
row of each prompt) or logits already taken at END [batch, vocab]; engines that
unembed only the END position pass the latter. ``reduce="mean"`` returns a
scalar, ``reduce="none"`` keeps one value per prompt [batch].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from circuits.prompts import PromptSet

Logits = Float[Tensor, "batch pos vocab"] | Float[Tensor, "batch vocab"]


class UndefinedMetricError(ZeroDivisionError, ValueError):
    """A normalized metric whose denominator is zero or not finite: the value is undefined, not a number."""


def check_difference(a: Tensor | float, b: Tensor | float, what: str) -> Tensor:
    """``a - b`` as a denominator: UndefinedMetricError where it is not finite, or zero up to
    float rounding (below 1e-6 of the operands' size), since dividing by it would give noise."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    d = a - b
    if not torch.isfinite(d).all():
        raise UndefinedMetricError(f"{what} is not finite; the normalized value is undefined")
    if torch.any(d.abs() <= 1e-6 * (a.abs() + b.abs()) + 1e-8):
        raise UndefinedMetricError(f"{what} is zero; the normalized value is undefined")
    return d


def end_logits(logits: Logits, ps: PromptSet, position: str = "END") -> Float[Tensor, "batch vocab"]:
    """Logits at each prompt's named ``position`` (END: the last real token)."""
    if logits.ndim == 2:
        if position != "END":
            raise ValueError("2-D logits are taken to be END logits; pass 3-D logits for other positions")
        return logits
    if logits.ndim != 3:
        raise ValueError(f"logits must be [batch, pos, vocab] or [batch, vocab], got {tuple(logits.shape)}")
    if logits.shape[0] != len(ps):
        raise ValueError(f"logits batch {logits.shape[0]} != {len(ps)} prompts")
    pos = ps.positions[position].to(logits.device)
    return logits[torch.arange(len(ps), device=logits.device), pos]


def _reduce(x: Tensor, reduce: str) -> Tensor:
    if reduce == "mean":
        return x.mean()
    if reduce == "sum":
        return x.sum()
    if reduce == "none":
        return x
    raise ValueError(f"reduce must be 'mean', 'sum' or 'none', got {reduce!r}")


def logit_diff(logits: Logits, ps: PromptSet, reduce: str = "mean") -> Tensor:
    """logit[answer] - logit[wrong answer] at END (units: logits)."""
    lg = end_logits(logits, ps)
    idx = torch.arange(len(ps), device=lg.device)
    d = lg[idx, ps.answers.to(lg.device)] - lg[idx, ps.wrong_answers.to(lg.device)]
    return _reduce(d, reduce)


def normalized_metric(value: Tensor | float, clean_value: Tensor | float,
                      corrupted_value: Tensor | float) -> Tensor:
    """(value - corrupted) / (clean - corrupted): 1 = clean behaviour, 0 = corrupted."""
    value, clean_value, corrupted_value = (torch.as_tensor(v, dtype=torch.float32)
                                           for v in (value, clean_value, corrupted_value))
    denom = clean_value - corrupted_value
    check_difference(clean_value, corrupted_value, "clean minus corrupted metric")
    return (value - corrupted_value) / denom


def answer_prob(logits: Logits, ps: PromptSet, reduce: str = "mean") -> Tensor:
    """Probability of the answer token at END (answer *set* for tasks with candidates)."""
    probs = end_logits(logits, ps).float().softmax(-1)
    if ps.answer_candidates is not None:
        cand = probs[:, ps.answer_candidates.to(probs.device)]
        p = (cand * ps.answer_mask.to(probs.device)).sum(-1)
    else:
        p = probs[torch.arange(len(ps), device=probs.device), ps.answers.to(probs.device)]
    return _reduce(p, reduce)


def candidate_prob_diff(logits: Logits, ps: PromptSet, reduce: str = "mean") -> Tensor:
    """P(correct candidates) - P(wrong candidates) at END (greater-than's metric)."""
    if ps.answer_candidates is None:
        raise ValueError(f"task {ps.task!r} has no answer candidates; use logit_diff")
    probs = end_logits(logits, ps).float().softmax(-1)[:, ps.answer_candidates.to(logits.device)]
    mask = ps.answer_mask.to(probs.device)
    return _reduce((probs * mask).sum(-1) - (probs * ~mask).sum(-1), reduce)


def accuracy(logits: Logits, ps: PromptSet, reduce: str = "mean") -> Tensor:
    """Top-1 accuracy at END: the argmax is the answer (or in the answer set)."""
    top = end_logits(logits, ps).argmax(-1)
    if ps.answer_candidates is not None:
        cands = ps.answer_candidates.to(top.device)
        hit = (top[:, None] == cands[None, :]) & ps.answer_mask.to(top.device)
        ok = hit.any(-1)
    else:
        ok = top == ps.answers.to(top.device)
    return _reduce(ok.float(), reduce)


def counterfactual_accuracy(logits: Logits, ps: PromptSet, reduce: str = "mean") -> Tensor:
    """Top-1 accuracy of the *corrupted* prompts' END logits against their own answers
    (``ps.corrupted_answers``): does the model read the question, or answer what every
    clean prompt shares?"""
    if ps.corrupted_answers is None:
        raise ValueError(f"task {ps.task!r}: its corrupted prompts have no answer of their own")
    top = end_logits(logits, ps).argmax(-1)
    return _reduce((top == ps.corrupted_answers.to(top.device)).float(), reduce)


def bootstrap_ratio(num: Tensor, den: Tensor, n_boot: int = 1000, seed: int = 0) -> list[float] | None:
    """95% bootstrap interval of mean(num) / mean(den) over prompts ([b] each, resampled together);
    None (undefined) when resampled denominators vanish in more than 1% of the draws."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(num), (n_boot, len(num)), generator=g)
    r = num[idx].float().mean(1) / den[idx].float().mean(1)
    r = r[torch.isfinite(r)]
    if len(r) < 0.99 * n_boot:
        return None
    return [float(torch.quantile(r, 0.025)), float(torch.quantile(r, 0.975))]


def kl_rows(logits: Float[Tensor, "batch vocab"], reference: Float[Tensor, "batch vocab"]) -> Float[Tensor, " batch"]:
    """KL(reference || logits) per row, in nats (the one KL implementation; float32 or wider)."""
    lr, lq = reference.float().log_softmax(-1), logits.float().log_softmax(-1)
    return (lr.exp() * (lr - lq)).sum(-1)


def kl_divergence(logits: Logits, reference_logits: Logits, ps: PromptSet, reduce: str = "mean") -> Tensor:
    """KL(reference || logits) at END, in nats (reference: usually the clean run)."""
    return _reduce(kl_rows(end_logits(logits, ps), end_logits(reference_logits, ps)), reduce)


METRICS = {
    "logit_diff": logit_diff,
    "answer_prob": answer_prob,
    "accuracy": accuracy,
    "candidate_prob_diff": candidate_prob_diff,
}


@dataclass(frozen=True)
class MetricSpec:
    """A per-prompt metric for the engines, and which logits it reads.

    ``fn(end_logits [b, vocab], prompts) -> [b]``. ``answers_only``: the metric reads only
    the answer and wrong-answer logits, so engines may unembed just those tokens (a
    declaration, never inferred from a name).
    """

    name: str
    fn: Callable[[Tensor, PromptSet], Tensor]
    answers_only: bool = False


def _per_prompt(fn: Callable[..., Tensor]) -> Callable[[Tensor, PromptSet], Tensor]:
    def per_prompt(logits: Tensor, ps: PromptSet) -> Tensor:
        return fn(logits, ps, reduce="none")

    per_prompt.__name__ = fn.__name__
    return per_prompt


#: the registered metrics as MetricSpecs; logit_diff reads two tokens per prompt, the others softmax
METRIC_SPECS = {name: MetricSpec(name, _per_prompt(fn), answers_only=name == "logit_diff")
                for name, fn in METRICS.items()}


def metric_spec(metric: str | MetricSpec | Callable[[Tensor, PromptSet], Tensor]) -> MetricSpec:
    """A registered metric's name, a MetricSpec, or a callable ``(END logits, prompts) -> [b]``
    (which reads the full vocabulary unless wrapped in a MetricSpec saying otherwise)."""
    if isinstance(metric, MetricSpec):
        return metric
    if isinstance(metric, str):
        if metric == "kl_divergence":
            raise ValueError("kl_divergence needs reference logits; pass a callable metric instead")
        if metric not in METRIC_SPECS:
            raise KeyError(f"unknown metric {metric!r}; available: {sorted(METRIC_SPECS)}")
        return METRIC_SPECS[metric]
    if callable(metric):
        return MetricSpec(getattr(metric, "__name__", "custom"), metric)
    raise TypeError(f"metric must be a metric name, a MetricSpec or a callable, got {type(metric).__name__}")


def kl_to(reference: Float[Tensor, "batch vocab"], name: str = "kl_to_clean") -> MetricSpec:
    """The engines' metric KL(reference || logits) at END per prompt, in nats, against fixed
    ``reference`` END logits (usually the clean run's, in the PromptSet's row order).

    An engine that tiles the prompts (the same rows repeated, in order) is matched by repeating the
    reference; any other row count is a ValueError, never a silent misalignment."""
    ref = reference.detach()

    def kl(logits: Tensor, ps: PromptSet) -> Tensor:
        n, b = logits.shape[0], ref.shape[0]
        if n % b:
            raise ValueError(f"{name}: {n} rows of logits cannot be matched to the {b} reference rows")
        return kl_rows(logits, ref.to(logits.device).repeat(n // b, 1))

    kl.__name__ = name
    return MetricSpec(name, kl)


def get_metric(name: str):
    """A metric (logits, ps, reduce) by name."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; available: {sorted(METRICS)}") from None
