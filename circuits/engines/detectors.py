"""Head detectors: scores per (layer, head) from attention patterns and OV circuits.

Pattern scores average A[q, k] over prompts and real query positions:

- previous-token: attention from q to q-1;
- duplicate-token: attention from q to earlier positions holding the same token;
- induction: attention from q to positions k whose previous token equals token q;
- attention sink: attention from q to the first ``n_sink`` positions;
- copy score (IOI paper): the fraction of name tokens that a head's OV circuit,
  applied to the name's residual after MLP0, puts in the top-k unembedded
  logits (``negative=True``: the same with -OV, for negative heads);
- retrieval score (Wu et al. 2024): during greedy decoding, +1/|span| each time a
  head's top-1 attended position lies in the needle span and holds the token
  being generated, averaged over prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from circuits.engines import forward
from circuits.engines.common import model_settings, prepare_prompts
from circuits.engines.sites import hook_at
from circuits.prompts import PromptSet
from circuits.scores import Scores


def _scores(values: Tensor, model: Any, what: str, **settings: Any) -> Scores:
    n_layers, n_heads = values.shape
    return Scores(values, ("layer", "head"), None,
                  {"layer": [str(x) for x in range(n_layers)], "head": [str(h) for h in range(n_heads)]},
                  {}, {"engine": "detector", "detector": what, **model_settings(model), **settings})


@torch.no_grad()
def attention_patterns(model: Any, tokens: Int[Tensor, "batch pos"]) -> Tensor:
    """[layer, batch, head, q, k] attention patterns."""
    names = [hook_at("pattern", layer) for layer in range(model.cfg.n_layers)]
    end = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
    _, store = forward.run_with_store(model, tokens, end, names)
    return torch.stack([store[n] for n in names])


def _lengths(tokens: Tensor, lengths: Tensor | None) -> Tensor:
    return torch.full((tokens.shape[0],), tokens.shape[1]) if lengths is None else lengths.cpu()


def _unpack(tokens: Tensor | PromptSet, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """(token ids [batch, pos], real lengths): a PromptSet gives its clean prompts and their lengths."""
    if isinstance(tokens, PromptSet):
        return tokens.clean, tokens.lengths if lengths is None else lengths
    return tokens, lengths


def _pattern_score(model: Any, tokens: Tensor, lengths: Tensor | None, target: Tensor, what: str) -> Scores:
    """Mean over (prompt, real query with a target) of sum_k A[q, k] * target[b, q, k]."""
    pat = attention_patterns(model, tokens).float().cpu()  # [L, b, h, q, k]
    lens = _lengths(tokens, lengths)
    n = tokens.shape[1]
    real_q = torch.arange(n)[None] < lens[:, None]  # [b, q]
    has = target.any(-1) & real_q  # queries that have a target
    mass = (pat * target[None, :, None].float()).sum(-1)  # [L, b, h, q]
    w = has[None, :, None].float()
    vals = (mass * w).sum((1, 3)) / w.sum((1, 3)).clamp_min(1)
    return _scores(vals, model, what, n_prompts=tokens.shape[0])


def previous_token_scores(model: Any, tokens: Tensor | PromptSet, lengths: Tensor | None = None) -> Scores:
    """[layer, head] mean attention probability from each real query q >= 1 to q - 1.

    ``tokens`` [batch, pos], or a PromptSet (its clean prompts and their lengths); ``lengths`` [batch]
    real lengths (None: no padding).
    """
    tokens, lengths = _unpack(tokens, lengths)
    n = tokens.shape[1]
    target = torch.zeros(tokens.shape[0], n, n, dtype=torch.bool)
    idx = torch.arange(1, n)
    target[:, idx, idx - 1] = True
    return _pattern_score(model, tokens, lengths, target, "previous_token")


def duplicate_token_scores(model: Any, tokens: Tensor | PromptSet, lengths: Tensor | None = None) -> Scores:
    """[layer, head] mean attention mass from a real query to earlier positions holding the same token.

    Averaged over the queries whose token occurs earlier in the prompt; ``lengths`` as in
    :func:`previous_token_scores`.
    """
    tokens, lengths = _unpack(tokens, lengths)
    t = tokens.cpu()
    same = t[:, :, None] == t[:, None, :]
    earlier = torch.tril(torch.ones(t.shape[1], t.shape[1], dtype=torch.bool), -1)
    return _pattern_score(model, tokens, lengths, same & earlier, "duplicate_token")


def induction_scores(model: Any, tokens: Tensor | PromptSet, lengths: Tensor | None = None) -> Scores:
    """[layer, head] mean attention mass from a real query q to keys k < q preceded by token q.

    Averaged over the queries that have such a key; ``lengths`` as in :func:`previous_token_scores`.
    """
    tokens, lengths = _unpack(tokens, lengths)
    t = tokens.cpu()
    prev = torch.cat([torch.full_like(t[:, :1], -1), t[:, :-1]], 1)  # token before each key
    match = t[:, :, None] == prev[:, None, :]
    causal = torch.tril(torch.ones(t.shape[1], t.shape[1], dtype=torch.bool), -1)
    return _pattern_score(model, tokens, lengths, match & causal, "induction")


def sink_scores(model: Any, tokens: Tensor | PromptSet, lengths: Tensor | None = None, n_sink: int = 1) -> Scores:
    """[layer, head] mean attention mass from each real query q >= ``n_sink`` to positions < ``n_sink``."""
    tokens, lengths = _unpack(tokens, lengths)
    n = tokens.shape[1]
    target = torch.zeros(tokens.shape[0], n, n, dtype=torch.bool)
    target[:, n_sink:, :n_sink] = True
    return _pattern_score(model, tokens, lengths, target, "attention_sink")


def repeated_random_tokens(model: Any, n: int = 20, length: int = 20, seed: int = 0,
                           vocab: Sequence[int] | None = None) -> Tensor:
    """[n, 1 + 2*length]: BOS then a random sequence repeated twice (the induction probe)."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.tensor(vocab) if vocab is not None else torch.arange(int(model.cfg.d_vocab))
    seq = pool[torch.randint(len(pool), (n, length), generator=g)]
    bos = getattr(model.tokenizer, "bos_token_id", None) or 0
    return torch.cat([torch.full((n, 1), bos), seq, seq], 1).to(model.cfg.device)


@torch.no_grad()
def copy_scores(model: Any, ps: PromptSet, positions: Sequence[str] = ("IO", "S1"), top_k: int = 5,
                negative: bool = False) -> Scores:
    """Fraction of the tokens at ``positions`` each head's OV circuit copies into its top-k logits."""
    ps = prepare_prompts(model, ps)
    end = ps.positions["END"]
    _, store = forward.run_with_store(model, ps.clean, end, [hook_at("resid_post", 0)])
    resid = store[hook_at("resid_post", 0)]
    xs, toks = [], []
    for p in positions:
        if p not in ps.positions:
            raise ValueError(f"position {p!r} is not named in this PromptSet; it has {sorted(ps.positions)}")
        idx = ps.positions[p].long()
        rows = torch.nonzero(idx >= 0).flatten()
        xs.append(resid[rows, idx[rows]])
        toks.append(ps.clean[rows, idx[rows]])
    x, tok = torch.cat(xs), torch.cat(toks)
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    out = torch.zeros(n_layers, n_heads)
    sign = -1.0 if negative else 1.0
    for layer in range(n_layers):
        attn = model.blocks[layer].attn
        normed = model.blocks[layer].ln1(x[:, None])[:, 0]
        group = n_heads // attn.W_V.shape[0]
        for h in range(n_heads):
            g = h // group
            v = normed @ attn.W_V[g]
            if getattr(attn, "b_V", None) is not None:
                v = v + attn.b_V[g]
            logits = forward.unembed(model, sign * (v @ attn.W_O[h]))
            top = logits.topk(top_k, -1).indices
            out[layer, h] = (top == tok[:, None]).any(-1).float().mean().cpu()
    return _scores(out, model, "copy_negative" if negative else "copy", positions=list(positions), top_k=top_k,
                   n_prompts=len(ps))


@torch.no_grad()
def retrieval_scores(model: Any, tokens: Sequence[Tensor], spans: Sequence[tuple[int, int]], n_steps: int = 8
                     ) -> Scores:
    """Wu et al.'s retrieval score over prompts (1-D token tensors) with needle spans [s, e)."""
    if len(tokens) != len(spans):
        raise ValueError("retrieval_scores needs one needle span per prompt")
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    total = torch.zeros(n_layers, n_heads)
    names = [hook_at("pattern", layer) for layer in range(n_layers)]
    for prompt, (s, e) in zip(tokens, spans):
        if not 0 <= s < e <= len(prompt):
            raise ValueError(f"needle span {(s, e)} is not inside a prompt of length {len(prompt)}")
        seq = prompt.to(model.cfg.device)[None]
        score = torch.zeros(n_layers, n_heads)
        for _ in range(n_steps):
            last = torch.tensor([seq.shape[1] - 1], device=seq.device)
            logits, store = forward.run_with_store(model, seq, last, names)
            w = int(logits[0].argmax())
            for layer, name in enumerate(names):
                j = store[name][0, :, -1].argmax(-1).cpu()  # top-1 key per head
                hit = (j >= s) & (j < e) & (prompt.cpu()[j.clamp_max(len(prompt) - 1)] == w)
                score[layer] += hit.float() / (e - s)
            seq = torch.cat([seq, torch.tensor([[w]], device=seq.device)], 1)
        total += score
    return _scores(total / len(tokens), model, "retrieval", n_steps=n_steps, n_prompts=len(tokens))


def attention_between(model: Any, ps: Any, heads: list[tuple[int, int]], query: str, keys: list[str]) -> dict:
    """{"a{L}.h{H}": {key: mean attention probability}} of each head (layer, head) from the named
    position ``query`` to each named position in ``keys``, over ``ps``'s clean prompts (a
    position a prompt lacks, -1, is skipped for it; NaN where no prompt has both)."""
    pat = attention_patterns(model, ps.clean)  # [L, b, h, q, k]
    q = ps.positions[query].to(pat.device)
    out = {}
    for layer, h in heads:
        row: dict[str, float] = {}
        for k in keys:
            kp = ps.positions[k].to(pat.device)
            ok = (q >= 0) & (kp >= 0)
            rows = torch.nonzero(ok).flatten()
            row[k] = float(pat[layer, rows, h, q[rows], kp[rows]].mean()) if len(rows) else float("nan")
        out[f"a{layer}.h{h}"] = row
    return out
