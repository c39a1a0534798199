"""Held-out evaluation of zoo models: per-task top-1 accuracy and mean logit difference."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from circuits import metrics
from circuits.tasks import get_task


@torch.no_grad()
def end_logits_of(model: Any, ps) -> torch.Tensor:
    """[batch, vocab] logits at END for an HF model or a TransformerBridge."""
    out = model(ps.clean)
    logits = out.logits if hasattr(out, "logits") else out
    return metrics.end_logits(logits, ps)


@torch.no_grad()
def evaluate_tasks(model: Any, tokenizer: Any, tasks: dict[str, dict], n: int = 200, seed: int = 12345,
                   split: str = "test", batch_size: int = 100) -> dict[str, dict[str, float]]:
    """{task: {"accuracy", "logit_diff", "counterfactual_accuracy", "n"}} on ``n`` freshly drawn prompts
    per task. ``counterfactual_accuracy``: the corrupted prompts scored against their own answers
    (None where the corruption has none): a model that answers from something every clean prompt
    shares, not from the question, fails it."""
    out = {}
    for name, options in tasks.items():
        ps = get_task(name).build(tokenizer, n=n, seed=seed, split=split, **options)
        accs, lds, cfs = [], [], []
        for start in range(0, n, batch_size):
            sub = ps.subset(slice(start, start + batch_size))
            lg = end_logits_of(model, sub)
            accs.append(metrics.accuracy(lg, sub, reduce="none"))
            lds.append(metrics.logit_diff(lg, sub, reduce="none"))
            if sub.corrupted_answers is not None:
                lg_c = end_logits_of(model, replace(sub, clean=sub.corrupted))
                cfs.append(metrics.counterfactual_accuracy(lg_c, sub, reduce="none"))
        out[name] = {"accuracy": round(float(torch.cat(accs).mean()), 4),
                     "logit_diff": round(float(torch.cat(lds).mean()), 3),
                     "counterfactual_accuracy": round(float(torch.cat(cfs).mean()), 4) if cfs else None, "n": n}
    return out


SHORT_THINKING_MAX = 2  # "<think> </think>": no steps at all


@torch.no_grad()
def p_short(model: Any, tokenizer: Any, problems: list[Any], batch_size: int = 256) -> torch.Tensor:
    """[n] the exact probability of closing the trace at once, P(``</think>`` | prompt, ``<think>``),
    per problem (the decision to think short, read without sampling)."""
    from circuits.zoo.recipes import arithmetic as ar

    think, end = tokenizer.convert_tokens_to_ids([ar.THINK, ar.END_THINK])
    out = torch.zeros(len(problems))
    by_len: dict[int, list[int]] = {}
    rows = [[tokenizer.bos_token_id] + tokenizer(p.prompt, add_special_tokens=False)["input_ids"] + [think]
            for p in problems]
    for i, r in enumerate(rows):
        by_len.setdefault(len(r), []).append(i)
    for idx in by_len.values():
        for start in range(0, len(idx), batch_size):
            part = idx[start:start + batch_size]
            o = model(torch.tensor([rows[i] for i in part]))
            logits = o.logits if hasattr(o, "logits") else o
            out[part] = logits[:, -1].float().softmax(-1)[:, end].cpu()
    return out


def responses(model: Any, problems: list[Any], sample_seed: int, temperature: float | None = None) -> Any:
    """One sampled response per problem (the recipe's temperature unless given), as
    ``circuits.editing.thinkedit.Responses`` (token rows, prompt ends, thinking lengths, correctness)."""
    from circuits.editing.thinkedit import Responses
    from circuits.zoo.recipes import reasoner

    tok = model.tokenizer
    temp = reasoner.TEMPERATURE if temperature is None else temperature
    comps = reasoner.sample(model, tok, problems, n_samples=1, temperature=temp, seed=sample_seed)
    scores = reasoner.score(tok, problems, comps)
    rows, plen = [], []
    for p, (c,) in zip(problems, comps):
        prompt = [tok.bos_token_id] + tok(p.prompt, add_special_tokens=False)["input_ids"]
        rows.append(prompt + c)
        plen.append(len(prompt))
    return Responses(rows, plen, [s[0][1] for s in scores], [s[0][0] for s in scores])


STEER_CHECK = 0.1  # the steering gate's largest |alpha v|, as a fraction of the residual norm
THINKING_SITE = "resid_post"  # the site of the length direction the gates and ThinkEdit use
LONG_THINKING_MIN = 13  # a long trace writes at least two steps (the full three-operand trace)


@torch.no_grad()
def thinking_gates(model: Any, n: int = 300, seed: int = 7) -> dict[str, Any]:
    """What ThinkEdit needs of a reasoner (a TransformerBridge), measured on training problems:

    * ``direction_cosine``: per layer, the cosine between the length directions (mean long minus
      mean short at ``THINKING_SITE``, decision position: the ``<think>`` token) of two draws of ``n``;
    * ``steering``: the exact mean P(short) and the sampled accuracy on ``n`` other problems while
      alpha * v is added at every layer, |alpha v| at -1, -0.5, 0, 0.5, 1 x STEER_CHECK of the residual
      norm; ``monotone``: P(short) falls as alpha grows; ``accuracy_kept``: the accuracy towards long
      (alpha > 0) stays within 5 points of alpha = 0.
    """
    import random

    from circuits.editing.directions import cosine
    from circuits.editing.steering import steer
    from circuits.editing.thinkedit import length_direction
    from circuits.zoo.recipes import arithmetic as ar

    def problems(s: int) -> list[Any]:
        rng = random.Random(s)
        return [ar.sample_problem(rng, split="train") for _ in range(n)]

    pad = model.tokenizer.pad_token_id
    dirs = [length_direction(model, responses(model, problems(seed + i), seed + 10 + i), SHORT_THINKING_MAX,
                             LONG_THINKING_MIN, where="decision", site=THINKING_SITE, pad=pad) for i in range(2)]
    v = dirs[0]
    probe = problems(seed + 2)
    top = STEER_CHECK / max(v.relative_norm)
    rows = []
    for f in (-1.0, -0.5, 0.0, 0.5, 1.0):
        with steer(model, {layer: v.vector(layer) for layer in v.layers}, f * top, site=THINKING_SITE):
            ps = float(p_short(model, model.tokenizer, probe).mean())
            acc = sum(responses(model, probe, seed + 12).correct) / n
        rows.append({"relative_norm": f * STEER_CHECK, "p_short": round(ps, 4), "accuracy": round(acc, 4)})
    base = rows[2]["accuracy"]
    return {"site": THINKING_SITE, "n": n, "direction_cosine": [round(c, 4) for c in cosine(dirs[0], dirs[1])],
            "steering": rows,
            "monotone": all(a["p_short"] > b["p_short"] for a, b in zip(rows, rows[1:])),
            "accuracy_kept": all(r["accuracy"] >= base - 0.05 for r in rows[3:])}


@torch.no_grad()
def evaluate_reasoner(model: Any, tokenizer: Any, n: int = 300, seed: int = 4242, sample_seed: int | None = None,
                      temperature: float | None = None, direct: bool = False, split: str = "test",
                      records: bool = False) -> dict[str, Any]:
    """Arithmetic accuracy of a reasoner on ``n`` problems of ``split``; with thinking stats unless ``direct``.

    ``seed`` draws the problems, ``sample_seed`` (default: ``seed``) the samples, so that two models
    or two edits can be compared on the same problems with the same sampling noise.
    ``direct``: the answer is the argmax right after "=" (reasoner-base). Otherwise completions are
    sampled at ``temperature`` (default: the recipe's) and split into short (<= 2 thinking tokens: no
    steps), long (more) and unclosed traces (no ``</think>`` within the budget; counted wrong);
    ``p_short``: the mean and spread over problems of the exact P(short) (:func:`p_short`).
    ``records``: also return one record per sample (problem, correct, thinking length).
    """
    import random
    from collections import Counter

    from circuits.zoo.recipes import arithmetic as ar
    from circuits.zoo.recipes import reasoner

    rng = random.Random(seed)
    problems = [ar.sample_problem(rng, split=split) for _ in range(n)]
    if direct:  # one batched forward per prompt length (3- and 4-operand prompts)
        correct = 0
        by_len: dict[int, list[tuple[list[int], int]]] = {}
        for p in problems:
            ids = [tokenizer.bos_token_id] + tokenizer(p.prompt, add_special_tokens=False)["input_ids"]
            by_len.setdefault(len(ids), []).append((ids, p.answer))
        for rows in by_len.values():
            out = model(torch.tensor([ids for ids, _ in rows]))
            logits = out.logits if hasattr(out, "logits") else out
            preds = tokenizer.convert_ids_to_tokens(logits[:, -1].argmax(-1).tolist())
            correct += sum(pred == str(ans) for pred, (_, ans) in zip(preds, rows))
        return {"accuracy": round(correct / n, 4), "n": n, "split": split, "mode": "direct answer (greedy)"}
    temp = reasoner.TEMPERATURE if temperature is None else temperature
    comps = reasoner.sample(model, tokenizer, problems, n_samples=1, temperature=temp,
                            seed=seed if sample_seed is None else sample_seed)
    scores = [s[0] for s in reasoner.score(tokenizer, problems, comps)]
    lengths = [length for _, length in scores]
    short = [ok for ok, length in scores if 0 < length <= SHORT_THINKING_MAX]
    long_ = [ok for ok, length in scores if length > SHORT_THINKING_MAX]
    ps = p_short(model, tokenizer, problems)

    def rate(xs: list[bool]) -> float | None:
        return round(sum(xs) / len(xs), 4) if xs else None

    out = {
        "accuracy": rate([ok for ok, _ in scores]),
        "short_rate": round(len(short) / n, 4),
        "accuracy_short": rate(short),
        "accuracy_long": rate(long_),
        "unclosed_rate": round(sum(1 for x in lengths if x < 0) / n, 4),
        "p_short": {"mean": round(float(ps.mean()), 4), "std": round(float(ps.std()), 4)},
        "thinking_length_histogram": dict(sorted(Counter(lengths).items())),
        "n": n,
        "split": split,
        "temperature": temp,
        "seeds": {"problems": seed, "samples": seed if sample_seed is None else sample_seed},
    }
    if records:
        out["records"] = [{"problem": p.prompt, "answer": p.answer, "correct": ok, "thinking_length": length,
                           "difficulty": ar.difficulty(p), "p_short": round(float(q), 5)}
                          for p, (ok, length), q in zip(problems, scores, ps)]
    return out
