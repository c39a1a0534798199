"""The zoo's recipe machinery: corpora, the training loop, arithmetic traces, targets."""

from __future__ import annotations

import random

import pytest
import torch

from circuits.zoo.check import verdicts
from circuits.zoo.recipes import arithmetic as ar
from circuits.zoo.recipes import corpus
from circuits.zoo.recipes.train import TrainSettings, lr_at, masked_lm_loss, train


@pytest.fixture(scope="module")
def zoo_tok():
    from circuits.zoo.recipes.toyworld import make_tokenizer

    return make_tokenizer()


# Tasks written for another zoo model's vocabulary, and that model's tokenizer factory.
OTHER_ZOO_TASKS = {"arithmetic": "circuits.zoo.recipes.reasoner"}


def test_zoo_vocabulary_covers_every_task(zoo_tok):
    """Toyworld trains on every task of the suite except the reasoner's own arithmetic, whose
    vocabulary the reasoners' tokenizer covers instead."""
    import importlib

    from circuits.tasks import list_tasks
    from circuits.zoo.recipes.toyworld import EVAL_TASKS

    assert set(EVAL_TASKS) == set(list_tasks()) - set(OTHER_ZOO_TASKS)
    for task, opts in EVAL_TASKS.items():
        seqs = corpus.task_sequences(task, zoo_tok, 30, seed=1, split="train", options=opts)
        assert all(zoo_tok.unk_token_id not in row for row in seqs.tokens)
    for task, recipe in OTHER_ZOO_TASKS.items():
        tok = importlib.import_module(recipe).make_tokenizer()
        seqs = corpus.task_sequences(task, tok, 30, seed=1, split="train", options={})
        assert all(tok.unk_token_id not in row for row in seqs.tokens), task


def test_task_sequences_train_only_on_the_answer(zoo_tok):
    from circuits.tasks import build_task

    seqs = corpus.task_sequences("ioi", zoo_tok, 20, seed=3, split="train", options={})
    ps = build_task("ioi", zoo_tok, n=20, seed=3, split="train")
    for i, (row, pos) in enumerate(zip(seqs.tokens, seqs.loss_pos)):
        assert pos == [len(row) - 2]  # the prediction at END is the only trained one
        assert row[-1] == int(ps.answers[i])
    again = corpus.task_sequences("ioi", zoo_tok, 20, seed=3, split="train", options={})
    assert again.tokens == seqs.tokens


def test_greater_than_rows_sample_correct_years(zoo_tok):
    seqs = corpus.task_sequences("greater_than", zoo_tok, 50, seed=0, split="train", options={})
    for row in seqs.tokens:
        words = zoo_tok.convert_ids_to_tokens(row)
        yy, ans = int(words[8]), int(words[-1])
        assert ans > yy


def test_repeat_rows_train_only_the_predictable_repeat(zoo_tok):
    seqs = corpus.repeat_sequences(zoo_tok, 30, seed=0)
    assert corpus.repeat_sequences(zoo_tok, 30, seed=0).tokens == seqs.tokens
    for row, pos in zip(seqs.tokens, seqs.loss_pos):
        L = (len(row) - 1) // 2
        assert row[0] == zoo_tok.bos_token_id and row[1:L + 1] == row[L + 1:]
        assert pos == list(range(L + 1, 2 * L))  # predicts repeat tokens 2..L, never the first
        assert all(row[p + 1] == row[p + 1 - L] for p in pos)


def test_reasoning_hop_rows_ask_a_fact_their_context_states(zoo_tok):
    seqs = corpus.reasoning_hop_sequences(zoo_tok, 40, seed=0, split="train")
    assert corpus.reasoning_hop_sequences(zoo_tok, 40, seed=0, split="train").tokens == seqs.tokens
    kinds = set()
    for toks, pos in zip(seqs.tokens, seqs.loss_pos):
        assert pos == [len(toks) - 2]  # only the answer is trained
        words = zoo_tok.decode(toks[1:]).split()
        # "the pot is in" -> Lima (a container's city) or "[the] watch is in the" -> pot (an item's container)
        context, question, answer = words[:-6], words[-5:-1], words[-1]
        kinds |= {"container" if question[0] == "the" else "item"}
        stated = [context[i:i + len(question) + 1] for i in range(len(context))]
        assert question + [answer] in stated, (question, answer, context)
        # the context states each subject once: the answer is fixed by the context
        assert sum(s[:-1] == question for s in stated) == 1
    assert kinds == {"item", "container"}


def test_batches_mask_and_pad(zoo_tok):
    seqs = corpus.filler_sequences(zoo_tok, 40, seed=0)
    b = next(corpus.batches(seqs, 16, zoo_tok.pad_token_id, seed=0))
    toks, mask = b
    assert toks.shape[0] == 16 and mask.shape == toks.shape
    assert not mask[toks == zoo_tok.pad_token_id].any()


def tiny_gpt2(vocab: int, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=16, n_layer=1, n_head=2, n_positions=64,
                                      resid_pdrop=0, embd_pdrop=0, attn_pdrop=0))


def test_masked_loss_matches_full_cross_entropy():
    m = tiny_gpt2(50).eval()
    toks = torch.randint(0, 50, (3, 7))
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[0, 2] = mask[1, 5] = mask[2, 0] = True
    logits = m(toks).logits
    ref = torch.nn.functional.cross_entropy(
        torch.stack([logits[0, 2], logits[1, 5], logits[2, 0]]), torch.stack([toks[0, 3], toks[1, 6], toks[2, 1]]))
    torch.testing.assert_close(masked_lm_loss(m, toks, mask), ref)


def test_training_is_deterministic_and_learns(zoo_tok):
    seqs = corpus.task_sequences("recall", zoo_tok, 64, seed=0, split="train", options={})
    states = []
    for _ in range(2):
        m = tiny_gpt2(len(zoo_tok), seed=5)
        losses = train(m, corpus.batches(seqs, 16, zoo_tok.pad_token_id, seed=0, epochs=50),
                       TrainSettings(steps=40, lr=3e-3, warmup=5))
        states.append({k: v.clone() for k, v in m.state_dict().items()})
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


def test_lr_schedule():
    s = TrainSettings(steps=100, lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert lr_at(0, s) == pytest.approx(0.1) and lr_at(9, s) == pytest.approx(1.0)
    assert lr_at(99, s) == pytest.approx(0.1, abs=1e-3)


def test_arithmetic_problems_and_traces():
    rng = random.Random(0)
    for _ in range(200):
        p = ar.sample_problem(rng)
        assert p.answer == eval(p.prompt.rstrip(" ="))
        assert all(0 <= v <= ar.MAX_VALUE for v in p.partials())
        ans, length = ar.parse_completion(f"{p.long_trace()} {p.answer}".split())
        assert ans == p.answer and length == len(p.long_trace().split())
    assert ar.parse_completion("<think> </think> 7".split()) == (7, 2)
    assert ar.parse_completion("<think> 1 + 2".split()) == (None, -1)


def test_merged_traces_compute_the_same_running_values():
    p = ar.Problem((12, 7, 5, 3), ("+", "-", "+"))
    assert ar.trace(p, 0) == p.long_trace()
    assert ar.trace(p, 1) == "<think> 12 + 7 - 5 = 14 , 14 + 3 = 17 </think>"
    assert ar.trace(p, 2) == "<think> 12 + 7 - 5 + 3 = 17 </think>"
    assert ar.trace(p, None) == "<think> </think>"
    rng = random.Random(0)
    for _ in range(300):
        q = ar.sample_problem(rng)
        for m in range(len(q.ops)):
            steps = ar.trace(q, m, rng).removeprefix("<think> ").removesuffix(" </think>").split(" , ")
            assert len(steps) == len(q.ops) - m
            for step in steps:
                lhs, rhs = step.split(" = ")
                assert eval(lhs) == int(rhs)
    with pytest.raises(ValueError, match="can merge"):
        ar.trace(p, 3)


def test_graded_traces_think_less_on_easy_problems_and_pay_for_it():
    """The SFT mixture: P(short) follows the problem's difficulty (so it is computable from the prompt),
    and every kind of trace is wrong at its own rate."""
    from collections import Counter

    rng = random.Random(1)
    kinds: dict[str, Counter] = {}
    wrong: Counter = Counter()
    total: Counter = Counter()
    for _ in range(6000):
        p = ar.sample_problem(rng)
        text, kind = ar.graded_text(p, rng)
        kinds.setdefault(ar.difficulty(p), Counter())[kind] += 1
        total[kind] += 1
        wrong[kind] += int(text.split()[-1]) != p.answer
    share = {d: c["short"] / sum(c.values()) for d, c in kinds.items()}
    for d, mix in ar.TRACE_MIX.items():
        assert share[d] == pytest.approx(mix["short"], abs=0.04), d
    assert share["easy"] > share["medium"] > share["hard"]
    for kind, rate in ar.ERROR_RATE.items():
        assert wrong[kind] / total[kind] == pytest.approx(rate, abs=0.05), kind


def test_verdicts_flag_failures():
    task = lambda a: {"accuracy": a, "logit_diff": 1.0, "n": 10}  # noqa: E731
    measured = {
        "toyworld": {"tasks": {"ioi": task(0.97), "recall": task(0.90)}},
        "toyworld@100": {"tasks": {"ioi": task(0.3), "recall": task(0.9)}},
        "reasoner-sft": {"accuracy": 0.8, "short_rate": 0.5, "accuracy_short": 0.6, "accuracy_long": 0.85},
        "reasoner-grpo": {"accuracy": 0.9},
    }
    rows = {t: ok for t, ok, _ in verdicts(measured, ["toyworld", "toyworld@100"])}
    assert rows["toyworld ioi >= 95%"] and not rows["toyworld recall >= 95%"]
    assert not rows["toyworld has >= 4 checkpoints"]
    assert rows["earliest checkpoint toyworld@100 fails a task (< 60%)"]
    assert not rows["reasoner-sft short thinking in 10-40%"]
    assert rows["reasoner-sft short accuracy >= 10 pts below long"]
    assert rows["reasoner-grpo >= +5 pts over reasoner-sft"]


def test_rebalanced_mixture_fixes_shares_and_scales_the_rest():
    from circuits.zoo.recipes.toyworld import MIXTURE, rebalanced

    m = rebalanced(MIXTURE, {"mental_math": 0.3, "colored_objects": 0.22})
    assert list(m) == list(MIXTURE)  # order decides each part's seed
    assert sum(share for share, _ in m.values()) == pytest.approx(1.0)
    assert m["mental_math"][0] == 0.3 and m["colored_objects"][0] == 0.22
    ratio = m["ioi"][0] / MIXTURE["ioi"][0]
    assert ratio < 1 and m["recall"][0] / MIXTURE["recall"][0] == pytest.approx(ratio)
    assert all(m[t][1] == MIXTURE[t][1] for t in MIXTURE)
    with pytest.raises(ValueError, match="unknown"):
        rebalanced(MIXTURE, {"mental_maths": 0.3})
