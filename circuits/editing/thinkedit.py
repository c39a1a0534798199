"""ThinkEdit's steps on sampled responses (Sun, Yan and Weng 2025, arXiv 2503.22048).

A :class:`Responses` holds token rows (prompt then completion), where each prompt ends (BOS
included), each thinking length (tags included; -1: unclosed) and whether the answer was right.
From it: the short and long groups (thinking-length thresholds), the length direction (mean of
long minus mean of short at a site, per layer) read either at the positions that predict the
thinking tokens (the paper's) or at the decision position alone (the ``<think>`` token, which
predicts whether the trace closes at once), the heads' scores along the short direction (-u), and
the top / bottom / random head choices the edit and its controls use.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuits.editing.directions import Direction, mean_difference
from circuits.editing.heads import head_direction_scores

WHERE = ("decision", "thinking")


@dataclass
class Responses:
    """Sampled responses: ``rows[i]`` = prompt + completion token ids, ``prompt_len[i]`` (BOS included),
    ``think_len[i]`` (``<think>`` .. ``</think>`` inclusive; -1 when the trace never closed),
    ``correct[i]``."""

    rows: list[list[int]]
    prompt_len: list[int]
    think_len: list[int]
    correct: list[bool]

    def __post_init__(self) -> None:
        n = len(self.rows)
        if not (len(self.prompt_len) == len(self.think_len) == len(self.correct) == n):
            raise ValueError("rows, prompt_len, think_len and correct must have one length each")

    def groups(self, short_max: int, long_min: int) -> tuple[list[int], list[int]]:
        """(indices with a closed trace of <= ``short_max`` tokens, indices with >= ``long_min``)."""
        if short_max >= long_min:
            raise ValueError(f"short_max ({short_max}) must be below long_min ({long_min})")
        short = [i for i, t in enumerate(self.think_len) if 0 < t <= short_max]
        long_ = [i for i, t in enumerate(self.think_len) if t >= long_min]
        return short, long_


def positions(resp: Responses, idx: list[int], where: str, pad: int) -> tuple[Tensor, Tensor]:
    """(tokens [n, P] padded with ``pad``, mask [n, P]) of responses ``idx``: ``where="thinking"`` marks
    the positions that predict the thinking tokens (prompt_len - 1 .. prompt_len + think_len - 2, the
    paper's); ``"decision"`` marks the ``<think>`` token alone (index prompt_len)."""
    if where not in WHERE:
        raise ValueError(f"where must be one of {WHERE}, got {where!r}")
    if not idx:
        raise ValueError("no response in this group: lower the thresholds or sample more")
    width = max(len(resp.rows[i]) for i in idx)
    tokens = torch.full((len(idx), width), pad, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.bool)
    for j, i in enumerate(idx):
        row, p, t = resp.rows[i], resp.prompt_len[i], resp.think_len[i]
        tokens[j, : len(row)] = torch.tensor(row)
        if where == "decision":
            mask[j, p] = True
        else:
            mask[j, p - 1: p + t - 1] = True
    return tokens, mask


def length_direction(model: Any, resp: Responses, short_max: int, long_min: int, *, where: str = "decision",
                     site: str = "resid_mid", pad: int = 0) -> Direction:
    """v[layer] = mean(long) - mean(short) at ``site`` over ``where`` (see :func:`positions`)."""
    short, long_ = resp.groups(short_max, long_min)
    tl, ml = positions(resp, long_, where, pad)
    ts, ms = positions(resp, short, where, pad)
    d = mean_difference(model, tl, ml, ts, ms, site=site)
    d.settings |= {"where": where, "short_max": short_max, "long_min": long_min, "n_short": len(short),
                   "n_long": len(long_)}
    return d


def short_head_scores(model: Any, resp: Responses, direction: Direction, short_max: int, long_min: int, *,
                      where: str = "decision", pad: int = 0) -> Float[Tensor, "layer head"]:
    """[layer, head] each head's direct write on the short responses at ``where``, projected on the unit
    short direction -v[layer]/|v[layer]| (the paper's step D); larger = writes more towards short."""
    short, _ = resp.groups(short_max, long_min)
    tokens, mask = positions(resp, short, where, pad)
    units = {layer: -direction.unit(layer) for layer in direction.layers}
    return head_direction_scores(model, tokens, mask, units)


def _cells(scores: Tensor) -> list[tuple[float, tuple[int, int]]]:
    return [(float(scores[layer, h]), (layer, h)) for layer in range(scores.shape[0])
            for h in range(scores.shape[1]) if not torch.isnan(scores[layer, h])]


def _check_k(k: Any, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in [1, {n}] (the scored heads), got {k!r}")
    return k


def top_heads(scores: Tensor, k: int) -> list[tuple[int, int]]:
    """The ``k`` heads with the largest scores (ties: lower layer, then head)."""
    cells = _cells(scores)
    _check_k(k, len(cells))
    return [c for _, c in sorted(cells, key=lambda x: (-x[0], x[1]))[:k]]


def bottom_heads(scores: Tensor, k: int) -> list[tuple[int, int]]:
    """The ``k`` heads with the smallest scores (the control that edits heads writing away from short)."""
    cells = _cells(scores)
    _check_k(k, len(cells))
    return [c for _, c in sorted(cells, key=lambda x: (x[0], x[1]))[:k]]


def random_heads(scores: Tensor, k: int, rng: random.Random) -> list[tuple[int, int]]:
    """``k`` distinct scored heads drawn with ``rng`` (the random-heads control)."""
    cells = _cells(scores)
    _check_k(k, len(cells))
    return sorted(c for _, c in rng.sample(cells, k))
