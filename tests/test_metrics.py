"""Metrics on hand-made logits, where every value is known."""

from __future__ import annotations

import math

import pytest
import torch

from circuits import metrics
from circuits.prompts import PromptSet


def make_ps(lengths=(3, 2), answers=(1, 2), wrong=(2, 0), **kw) -> PromptSet:
    b, L = len(lengths), max(lengths)
    toks = torch.zeros(b, L, dtype=torch.long)
    for i, n in enumerate(lengths):
        toks[i, :n] = 5
    return PromptSet(task="t", clean=toks, corrupted=toks.clone(), answers=torch.tensor(answers),
                     wrong_answers=torch.tensor(wrong), lengths=torch.tensor(lengths),
                     positions={"END": torch.tensor(lengths) - 1}, groups=torch.zeros(b, dtype=torch.long),
                     pad_token_id=0, **kw)


def test_end_logits_reads_each_prompts_last_real_token():
    ps = make_ps()
    logits = torch.arange(2 * 3 * 4, dtype=torch.float).reshape(2, 3, 4)
    end = metrics.end_logits(logits, ps)
    assert torch.equal(end[0], logits[0, 2]) and torch.equal(end[1], logits[1, 1])
    assert torch.equal(metrics.end_logits(end, ps), end)
    with pytest.raises(ValueError):
        metrics.end_logits(logits[:1], ps)


def test_logit_diff_accuracy_prob():
    ps = make_ps()
    end = torch.tensor([[0.0, 3.0, 1.0, 0.0], [2.0, 0.0, 1.0, 0.0]])
    assert torch.allclose(metrics.logit_diff(end, ps, reduce="none"), torch.tensor([2.0, -1.0]))
    assert metrics.logit_diff(end, ps).item() == pytest.approx(0.5)
    assert metrics.accuracy(end, ps, reduce="none").tolist() == [1.0, 0.0]
    p0 = math.exp(3) / (math.exp(3) + math.exp(1) + 2)
    assert metrics.answer_prob(end, ps, reduce="none")[0].item() == pytest.approx(p0, rel=1e-6)


def test_normalized_metric():
    assert metrics.normalized_metric(2.0, 4.0, 0.0).item() == pytest.approx(0.5)
    assert metrics.normalized_metric(0.0, 4.0, 0.0).item() == pytest.approx(0.0)
    with pytest.raises(ZeroDivisionError):
        metrics.normalized_metric(1.0, 2.0, 2.0)


def test_kl_divergence():
    ps = make_ps()
    a = torch.randn(2, 4)
    assert metrics.kl_divergence(a, a, ps).item() == pytest.approx(0.0, abs=1e-6)
    b = torch.randn(2, 4)
    p, q = b.softmax(-1), a.softmax(-1)  # reference b, intervened a
    manual = (p * (p.log() - q.log())).sum(-1)
    assert torch.allclose(metrics.kl_divergence(a, b, ps, reduce="none"), manual, atol=1e-6)


def test_candidate_metrics():
    ps = make_ps(answer_candidates=torch.tensor([1, 2, 3]),
                 answer_mask=torch.tensor([[False, True, True], [True, False, False]]))
    end = torch.tensor([[0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 5.0, 0.0]])
    assert metrics.accuracy(end, ps, reduce="none").tolist() == [1.0, 0.0]
    d = metrics.candidate_prob_diff(end, ps, reduce="none")
    assert d[0] > 0 > d[1]
    with pytest.raises(ValueError, match="no answer candidates"):
        metrics.candidate_prob_diff(end, make_ps())


def test_get_metric():
    assert metrics.get_metric("logit_diff") is metrics.logit_diff
    with pytest.raises(KeyError, match="available"):
        metrics.get_metric("nope")
