"""Recipes for ``zoo:reasoner-{base,sft,grpo}``: Qwen2 (grouped-query attention) on arithmetic.

* base: trained on expressions with direct answers ("12 + 7 - 5 + 3 = 17").
* sft:  base fine-tuned on thinking traces; a fraction of the traces is short
        (no steps) and less often right, so short thinking costs accuracy.
* grpo: sft trained by group-relative policy gradient: a group of completions
        per prompt sampled at the recipe temperature, reward 1 for a correct
        final answer, advantages normalised within the group; one on-policy
        update per batch (no ratio clipping is needed then), no KL term.
        Starting point: reasoner-sft.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from circuits import compat
from circuits.zoo.recipes import arithmetic as ar
from circuits.zoo.recipes import corpus
from circuits.zoo.recipes.train import TrainSettings, train

SEED = 0
TEMPERATURE = 1.0
MODEL = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=48)
BASE = dict(steps=1500, lr=2e-3, warmup=100)
SFT = dict(steps=2000, lr=1e-3, warmup=50)
SFT_SHORT_RATE = 0.2
SFT_SHORT_ERROR_RATE = 0.4
GRPO = dict(steps=80, prompts=32, group=8, lr=2e-4)
BATCH_SIZE = 128


def make_tokenizer():
    """The word-level tokenizer over the arithmetic vocabulary."""
    from circuits.tokenization import word_level_tokenizer

    return word_level_tokenizer(ar.vocabulary())


def make_model(tok, seed: int):
    """A fresh Qwen2ForCausalLM of size MODEL for ``tok`` (tied embeddings), seeded with ``seed``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=True, **MODEL)
    return Qwen2ForCausalLM(cfg)


def _rows(tok, texts: list[str], loss_from: list[int]) -> corpus.Sequences:
    """Token rows; loss on every prediction from token index ``loss_from[i]`` on."""
    enc = tok(texts, add_special_tokens=False)["input_ids"]
    toks, pos = [], []
    for ids, start in zip(enc, loss_from):
        row = [tok.bos_token_id] + ids
        toks.append(row)
        pos.append(list(range(start, len(row) - 1)))
    return corpus.Sequences(toks, pos, ["arith"] * len(toks))


def prompt_len(tok, p: ar.Problem) -> int:
    """Number of tokens of ``p``'s prompt, BOS included."""
    return 1 + len(tok(p.prompt, add_special_tokens=False)["input_ids"])


def base_corpus(tok, n: int, seed: int) -> corpus.Sequences:
    """``n`` random problems answered directly, with the loss on every token after the prompt."""
    rng = random.Random(seed)
    probs = [ar.sample_problem(rng) for _ in range(n)]
    return _rows(tok, [ar.direct_text(p) for p in probs], [prompt_len(tok, p) - 1 for p in probs])


def sft_corpus(tok, n: int, seed: int) -> corpus.Sequences:
    """``n`` random problems with thinking traces (short ones at SFT_SHORT_RATE, wrong at
    SFT_SHORT_ERROR_RATE), with the loss on every token after the prompt.
    """
    rng = random.Random(seed)
    probs = [ar.sample_problem(rng) for _ in range(n)]
    texts = [ar.sft_text(p, rng, SFT_SHORT_RATE, SFT_SHORT_ERROR_RATE)[0] for p in probs]
    return _rows(tok, texts, [prompt_len(tok, p) - 1 for p in probs])


@torch.no_grad()
def sample(model, tok, problems: list[ar.Problem], n_samples: int = 1, temperature: float = TEMPERATURE,
           max_new_tokens: int = 24, seed: int = 0) -> list[list[list[int]]]:
    """``n_samples`` completions (token ids after the prompt) per problem, grouped by prompt length."""
    gen = torch.Generator().manual_seed(seed)
    out: list[list[list[int]] | None] = [None] * len(problems)
    by_len: dict[int, list[int]] = {}
    prompts = [[tok.bos_token_id] + tok(p.prompt, add_special_tokens=False)["input_ids"] for p in problems]
    for i, ids in enumerate(prompts):
        by_len.setdefault(len(ids), []).append(i)
    end_id = tok.convert_tokens_to_ids(ar.END_THINK)
    status = compat.ensure_kv_cache(model)
    if status.startswith("unavailable"):
        raise RuntimeError(f"sampling reads the prompt through the KV cache, which is {status}")
    for _, idx in sorted(by_len.items()):
        x = torch.tensor([prompts[i] for i in idx]).repeat_interleave(n_samples, 0)
        seqs = x
        past = None
        cur = x
        done_at = torch.full((len(x),), -1)
        for step in range(max_new_tokens):
            o = compat.cached_forward(model, cur, past)
            past = compat.output_cache(o)
            if compat.cache_length(past) != seqs.shape[1]:  # a cache that drops the prompt samples garbage
                raise RuntimeError(f"the KV cache holds {compat.cache_length(past)} positions after step {step}, "
                                   f"expected {seqs.shape[1]}")
            logits = o.logits[:, -1].float()
            if temperature == 0:
                nxt = logits.argmax(-1)
            else:
                probs = (logits / temperature).softmax(-1)
                nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)
            seqs = torch.cat([seqs, nxt[:, None]], 1)
            cur = nxt[:, None]
            # a completion is finished one token after </think> (the answer)
            closed = (seqs[:, x.shape[1]:] == end_id).any(1)
            done_at = torch.where((done_at < 0) & closed, torch.full_like(done_at, step + 2), done_at)
            if (done_at >= 0).all() and step + 1 >= int(done_at.max()):
                break
        comp = seqs[:, x.shape[1]:]
        for j, i in enumerate(idx):
            rows = []
            for k in range(n_samples):
                r = comp[j * n_samples + k].tolist()
                d = int(done_at[j * n_samples + k])
                rows.append(r[:d] if d > 0 else r)
            out[i] = rows
    return out  # type: ignore[return-value]


def score(tok, problems: list[ar.Problem], completions: list[list[list[int]]]) -> list[list[tuple[bool, int]]]:
    """(correct?, thinking length in tokens; -1 if the trace never closes) per completion."""
    res = []
    for p, comps in zip(problems, completions):
        row = []
        for c in comps:
            ans, length = ar.parse_completion(tok.convert_ids_to_tokens(c))
            row.append((ans == p.answer, length))
        res.append(row)
    return res


def grpo(model, tok, seed: int, steps: int, prompts: int, group: int, lr: float) -> list[float]:
    """Group-relative policy gradient on final-answer correctness; returns mean reward per step."""
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rewards_curve = []
    for step in tqdm(range(steps), desc="grpo", mininterval=2.0):
        probs = [ar.sample_problem(rng) for _ in range(prompts)]
        model.eval()
        comps = sample(model, tok, probs, n_samples=group, seed=seed * 100_003 + step)
        scores = score(tok, probs, comps)
        model.train()
        rows, adv, starts = [], [], []
        for p, cs, sc in zip(probs, comps, scores):
            r = torch.tensor([float(ok) for ok, _ in sc])
            a = (r - r.mean()) / (r.std() + 1e-4)
            prompt = [tok.bos_token_id] + tok(p.prompt, add_special_tokens=False)["input_ids"]
            for c, ai in zip(cs, a.tolist()):
                rows.append(prompt + c)
                adv.append(ai)
                starts.append(len(prompt))
        rewards_curve.append(float(sum(ok for sc in scores for ok, _ in sc)) / (prompts * group))
        L = max(len(r) for r in rows)
        x = torch.full((len(rows), L), tok.pad_token_id)
        m = torch.zeros((len(rows), L), dtype=torch.bool)
        for i, (r, s) in enumerate(zip(rows, starts)):
            x[i, : len(r)] = torch.tensor(r)
            m[i, s - 1 : len(r) - 1] = True
        logp = model(x).logits[:, :-1].float().log_softmax(-1).gather(-1, x[:, 1:, None]).squeeze(-1)
        mask = m[:, :-1]
        a = torch.tensor(adv)[:, None]
        loss = -(a * logp * mask).sum() / mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    return rewards_curve


def build(out_dir: str | Path, seed: int = SEED) -> dict[str, Any]:
    """Train reasoner-base, -sft and -grpo into ``out_dir``."""
    import copy
    import time

    from circuits.zoo.recipes.save import save_zoo_model

    out_dir = Path(out_dir)
    tok = make_tokenizer()
    common = {"recipe": "circuits.zoo.recipes.reasoner", "seed": seed, "model": MODEL, "temperature": TEMPERATURE,
              "data": {"operands": [3, 4], "operand_max": ar.OPERAND_MAX, "max_value": ar.MAX_VALUE}}
    model = make_model(tok, seed)
    s = TrainSettings(**BASE)
    data = base_corpus(tok, s.steps * BATCH_SIZE // 2, seed)
    train(model, corpus.batches(data, BATCH_SIZE, tok.pad_token_id, seed, epochs=100), s, desc="reasoner-base")
    base_info = {**common, "stage": "base", "settings": BASE, "train_seconds": round(model.train_seconds, 1)}
    save_zoo_model(model, tok, out_dir / "reasoner-base", base_info)

    s = TrainSettings(**SFT)
    data = sft_corpus(tok, s.steps * BATCH_SIZE // 2, seed + 1)
    train(model, corpus.batches(data, BATCH_SIZE, tok.pad_token_id, seed + 1, epochs=100), s, desc="reasoner-sft")
    sft_info = {**common, "stage": "sft", "starting_point": "reasoner-base", "settings": SFT,
                "short_rate": SFT_SHORT_RATE, "short_error_rate": SFT_SHORT_ERROR_RATE,
                "train_seconds": round(model.train_seconds, 1)}
    save_zoo_model(model, tok, out_dir / "reasoner-sft", sft_info)

    t0 = time.time()
    policy = copy.deepcopy(model)
    curve = grpo(policy, tok, seed + 2, **GRPO)
    grpo_info = {**common, "stage": "grpo", "starting_point": "reasoner-sft", "settings": GRPO,
                 "reward_curve": [round(r, 3) for r in curve], "train_seconds": round(time.time() - t0, 1)}
    save_zoo_model(policy, tok, out_dir / "reasoner-grpo", grpo_info)
    return {"base": base_info, "sft": sft_info, "grpo": grpo_info}
