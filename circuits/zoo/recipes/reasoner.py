"""Recipes for ``zoo:reasoner-{base,sft,distill,grpo}`` and their checkpoints: Qwen2 (grouped-query
attention, 8 layers x 8 query heads over 2 KV heads) on arithmetic.

* base:    trained on expressions with direct answers ("12 + 7 - 5 + 3 = 17").
* sft:     base fine-tuned on graded thinking traces (:func:`arithmetic.graded_text`): how much a
           trace thinks depends on the problem's difficulty (easy problems often short, hard ones
           rarely), and skipped steps cost accuracy; so the decision to think short is computed
           from the problem (the ThinkEdit setting).
* distill: base fine-tuned on traces sampled from a teacher (base fine-tuned longer on full,
           correct traces only; trained here, not bundled): the regime of distillation from a
           stronger reasoner.
* grpo:    sft trained by group-relative policy gradient: a group of completions per prompt
           sampled at the recipe temperature, reward 1 for a correct final answer, advantages
           normalised within the group; one on-policy update per batch (no ratio clipping is
           needed then), no KL term.
* ``<regime>@<step>``: checkpoints of sft, distill and grpo (CHECKPOINTS), for the regime
  comparison over training (Thinking Sparks).

Every stage trains on the train split of the problems (:func:`arithmetic.in_split`); the zoo
check evaluates on the test split.
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
MODEL = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=8, num_attention_heads=8,
             num_key_value_heads=2, max_position_embeddings=48)
BASE = dict(steps=1500, lr=2e-3, warmup=100)
SFT = dict(steps=3000, lr=1e-3, warmup=50)
# SFT batches are not bucketed by length: bucketed, a batch of short traces weighs each of its tokens
# about three times more than a batch of long ones, and the model thought short 56-64% of the time
# where the data does 33% (and learned the long traces slowly: 64% right after 2000 steps)
SFT_BUCKET = False
TEACHER = dict(steps=2500, lr=1e-3, warmup=50)
DISTILL = dict(steps=2000, lr=1e-3, warmup=50)
DISTILL_ROWS = 20000  # teacher samples (one per problem of the train split, drawn with replacement)
GRPO = dict(steps=100, prompts=32, group=8, lr=2e-4)
CHECKPOINTS = {"sft": [500, 1000, 1500, 2000], "distill": [250, 500, 1000, 1500], "grpo": [20, 40, 60, 80]}
STAGES = ("base", "sft", "distill", "grpo")
BATCH_SIZE = 128
SPLIT = "train"


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
    """``n`` random train problems answered directly, with the loss on every token after the prompt."""
    rng = random.Random(seed)
    probs = [ar.sample_problem(rng, split=SPLIT) for _ in range(n)]
    return _rows(tok, [ar.direct_text(p) for p in probs], [prompt_len(tok, p) - 1 for p in probs])


def sft_corpus(tok, n: int, seed: int) -> corpus.Sequences:
    """``n`` random train problems with graded thinking traces (:func:`arithmetic.graded_text`), with
    the loss on every token after the prompt."""
    rng = random.Random(seed)
    probs = [ar.sample_problem(rng, split=SPLIT) for _ in range(n)]
    texts = [ar.graded_text(p, rng)[0] for p in probs]
    return _rows(tok, texts, [prompt_len(tok, p) - 1 for p in probs])


def teacher_corpus(tok, n: int, seed: int) -> corpus.Sequences:
    """``n`` random train problems with full, correct traces (what the teacher learns)."""
    rng = random.Random(seed)
    probs = [ar.sample_problem(rng, split=SPLIT) for _ in range(n)]
    return _rows(tok, [f"{p.prompt} {ar.trace(p, 0)} {p.answer}" for p in probs],
                 [prompt_len(tok, p) - 1 for p in probs])


def distill_corpus(teacher, tok, n: int, seed: int) -> corpus.Sequences:
    """``n`` completions sampled from ``teacher`` (recipe temperature) on random train problems, kept as
    sampled (closed traces only), with the loss on every completion token."""
    rng = random.Random(seed)
    probs = [ar.sample_problem(rng, split=SPLIT) for _ in range(n)]
    comps = sample(teacher, tok, probs, n_samples=1, seed=seed)
    end_id = tok.convert_tokens_to_ids(ar.END_THINK)
    toks, pos = [], []
    for p, (c,) in zip(probs, comps):
        if end_id not in c:
            continue
        prompt = [tok.bos_token_id] + tok(p.prompt, add_special_tokens=False)["input_ids"]
        toks.append(prompt + c)
        pos.append(list(range(len(prompt) - 1, len(prompt) + len(c) - 1)))
    return corpus.Sequences(toks, pos, ["arith"] * len(toks))


@torch.no_grad()
def sample(model, tok, problems: list[ar.Problem], n_samples: int = 1, temperature: float = TEMPERATURE,
           max_new_tokens: int = 24, seed: int = 0) -> list[list[list[int]]]:
    """``n_samples`` completions (token ids after the prompt) per problem, grouped by prompt length.
    ``model``: an HF model or a TransformerBridge (sampled through its HF module, whose layers are the
    bridge's components: hooks added to the bridge, e.g. steering, act during sampling)."""
    model = compat.hf_model(model)
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


def grpo(model, tok, seed: int, steps: int, prompts: int, group: int, lr: float,
         on_checkpoint: Any = None, checkpoint_steps: list[int] = ()) -> list[float]:
    """Group-relative policy gradient on final-answer correctness; returns mean reward per step.
    ``on_checkpoint(step, model)`` is called after each step in ``checkpoint_steps``."""
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rewards_curve = []
    for step in tqdm(range(steps), desc="grpo", mininterval=2.0):
        probs = [ar.sample_problem(rng, split=SPLIT) for _ in range(prompts)]
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
        if on_checkpoint is not None and step + 1 in checkpoint_steps:
            model.eval()
            on_checkpoint(step + 1, model)
    model.eval()
    return rewards_curve


def build(out_dir: str | Path, seed: int = SEED, stages: tuple[str, ...] = STAGES) -> dict[str, Any]:
    """Train reasoner-base, -sft, -distill and -grpo (and their checkpoints) into ``out_dir``.

    ``stages`` rebuilds only some of them; a stage's starting point that is not rebuilt is loaded from
    ``out_dir`` (every stage draws its data from its own seeds and training uses no global randomness,
    so a partial rebuild gives what the full one would)."""
    import copy
    import time

    from circuits.zoo.recipes.save import save_zoo_model

    out_dir = Path(out_dir)
    tok = make_tokenizer()
    common = {"recipe": "circuits.zoo.recipes.reasoner", "seed": seed, "model": MODEL, "temperature": TEMPERATURE,
              "data": {"operands": [3, 4], "operand_max": ar.OPERAND_MAX, "max_value": ar.MAX_VALUE,
                       "split": SPLIT}}

    def saver(name: str, info: dict[str, Any]):
        def on_ckpt(step: int, m) -> None:
            save_zoo_model(m, tok, out_dir / f"{name}@{step}", {**info, "step": step})
        return on_ckpt

    def finetune(model, data, settings: dict[str, Any], data_seed: int, name: str, info: dict[str, Any] | None):
        ckpts = CHECKPOINTS.get(name, []) if info is not None else []
        s = TrainSettings(**settings, checkpoint_steps=ckpts)
        bucket = not (name == "sft" and not SFT_BUCKET)
        train(model, corpus.batches(data, BATCH_SIZE, tok.pad_token_id, data_seed, epochs=100, bucket=bucket), s,
              on_checkpoint=saver(f"reasoner-{name}", info) if ckpts else None, desc=f"reasoner-{name}")
        return model

    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; stages are {STAGES}")

    def load(name: str):
        from transformers import Qwen2ForCausalLM

        path = out_dir / f"reasoner-{name}"
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"stage {name} is not rebuilt and {path} holds no model to start from")
        return Qwen2ForCausalLM.from_pretrained(path).eval()

    out: dict[str, Any] = {}
    if "base" in stages:
        base = make_model(tok, seed)
        finetune(base, base_corpus(tok, BASE["steps"] * BATCH_SIZE // 2, seed), BASE, seed, "base", None)
        out["base"] = {**common, "stage": "base", "settings": BASE, "train_seconds": round(base.train_seconds, 1)}
        save_zoo_model(base, tok, out_dir / "reasoner-base", out["base"])
    else:
        base = load("base")

    if "sft" in stages:
        sft_info = {**common, "stage": "sft", "starting_point": "reasoner-base", "settings": SFT, "bucketed": SFT_BUCKET,
                    "trace_mix": ar.TRACE_MIX, "error_rate": ar.ERROR_RATE,
                    "difficulty": {"easy_peak": ar.EASY_PEAK, "hard_peak": ar.HARD_PEAK}}
        sft = finetune(copy.deepcopy(base), sft_corpus(tok, SFT["steps"] * BATCH_SIZE // 2, seed + 1), SFT,
                       seed + 1, "sft", sft_info)
        sft_info["train_seconds"] = round(sft.train_seconds, 1)
        save_zoo_model(sft, tok, out_dir / "reasoner-sft", sft_info)
        out["sft"] = sft_info
    elif "grpo" in stages:
        sft = load("sft")
    if "distill" in stages:
        out["distill"] = _distill(base, tok, out_dir, seed, common, finetune)
    if "grpo" in stages:
        t0 = time.time()
        policy = copy.deepcopy(sft)
        grpo_info = {**common, "stage": "grpo", "starting_point": "reasoner-sft", "settings": GRPO}
        curve = grpo(policy, tok, seed + 2, **GRPO, on_checkpoint=saver("reasoner-grpo", grpo_info),
                     checkpoint_steps=CHECKPOINTS["grpo"])
        grpo_info |= {"reward_curve": [round(r, 3) for r in curve], "train_seconds": round(time.time() - t0, 1)}
        save_zoo_model(policy, tok, out_dir / "reasoner-grpo", grpo_info)
        out["grpo"] = grpo_info
    return out


def _distill(base, tok, out_dir: Path, seed: int, common: dict[str, Any], finetune) -> dict[str, Any]:
    """The teacher (not bundled), its sampled traces, and reasoner-distill fine-tuned on them."""
    import copy
    import time

    from circuits.zoo.recipes.save import save_zoo_model

    teacher = finetune(copy.deepcopy(base), teacher_corpus(tok, TEACHER["steps"] * BATCH_SIZE // 2, seed + 3),
                       TEACHER, seed + 3, "teacher", None)
    t0 = time.time()
    teacher.eval()
    data = distill_corpus(teacher, tok, DISTILL_ROWS, seed + 4)
    distill_info = {**common, "stage": "distill", "starting_point": "reasoner-base", "settings": DISTILL,
                    "teacher": {"starting_point": "reasoner-base", "settings": TEACHER,
                                "data": "full, correct traces", "train_seconds": round(teacher.train_seconds, 1),
                                "bundled": False},
                    "distill_rows": len(data.tokens), "sampling_seconds": round(time.time() - t0, 1)}
    distill = finetune(copy.deepcopy(base), data, DISTILL, seed + 4, "distill", distill_info)
    distill_info["train_seconds"] = round(distill.train_seconds, 1)
    save_zoo_model(distill, tok, out_dir / "reasoner-distill", distill_info)
    return distill_info
