"""Synthetic training corpora for the zoo, built from the task builders themselves.

Each training example is a task's clean prompt followed by its answer token; the
loss is taken only where the answer is predicted, so the model learns the
tasks, not the (random) prompt words. Filler sentences carry a full LM loss so
that no single format dominates. Held-out combinations (``split="test"``) are
never trained on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from circuits.tasks import all_task_words, get_task

FILLER_TEMPLATES = [
    "{N} likes the {C} {O} .",
    "the {O} is next to the {P} .",
    "{N} and {N2} walked to the {P} .",
    "{N} has a {C} {O} and a {C2} {O2} .",
    "the {I} is on the {S} .",
    "{A} {B} {A2} {B2} {A} {B} .",
    "the {P} was quiet and {N} read a {O} .",
]


def zoo_vocabulary() -> list[str]:
    """All words of the zoo's word-level tokenizer: every task word plus filler words."""
    words = set(all_task_words())
    for t in FILLER_TEMPLATES:
        words.update(w for w in t.split() if not w.startswith("{"))
    return sorted(words)


@dataclass
class Sequences:
    """Training rows of varying length: token ids and where the loss is taken."""

    tokens: list[list[int]]
    loss_pos: list[list[int]]  # positions p whose next-token prediction (token p+1) is trained
    source: list[str]


def task_sequences(task: str, tokenizer, n: int, seed: int, split: str, options: dict) -> Sequences:
    """``n`` prompt+answer rows of ``task`` (answer-only loss)."""
    ps = get_task(task).build(tokenizer, n=n, seed=seed, split=split, **options)
    rng = torch.Generator().manual_seed(seed)
    toks, pos = [], []
    for i in range(len(ps)):
        n_i = int(ps.lengths[i])
        ans = int(ps.answers[i])
        if ps.answer_candidates is not None:  # sample uniformly from the correct answer set
            ok = ps.answer_candidates[ps.answer_mask[i]]
            ans = int(ok[torch.randint(len(ok), (1,), generator=rng)])
        toks.append(ps.clean[i, :n_i].tolist() + [ans])
        pos.append([n_i - 1])
    return Sequences(toks, pos, [task] * len(toks))


def counterfactual_pair_sequences(task: str, tokenizer, n: int, seed: int, split: str, options: dict,
                                  separator: str = ".") -> Sequences:
    """``n`` rows that ask both questions of a counterfactual pair: the clean prompt and its answer,
    ``separator``, then the corrupted prompt's question (its tokens after its last ``separator``)
    and the corrupted prompt's own answer; the loss on both answers.

    For tasks whose corrupted prompt shares the clean context and asks another question (reasoning:
    the same chains, the other item). Twice the answer signal per row, and the two questions of a
    row have different answers, so no position or order can stand in for reading the question.
    """
    ps = get_task(task).build(tokenizer, n=n, seed=seed, split=split, **options)
    if ps.corrupted_answers is None:
        raise ValueError(f"counterfactual_pair_sequences: task {task!r} has no answers for its corrupted prompts")
    sep = tokenizer(separator, add_special_tokens=False)["input_ids"]
    if len(sep) != 1:
        raise ValueError(f"counterfactual_pair_sequences: separator {separator!r} is {len(sep)} tokens, not one")
    toks, pos = [], []
    for i in range(len(ps)):
        n_i = int(ps.lengths[i])
        corrupted = ps.corrupted[i, :n_i].tolist()
        last = max(j for j, t in enumerate(corrupted) if t == sep[0])
        row = ps.clean[i, :n_i].tolist() + [int(ps.answers[i])] + sep + corrupted[last + 1:]
        toks.append(row + [int(ps.corrupted_answers[i])])
        pos.append([n_i - 1, len(row) - 1])
    return Sequences(toks, pos, [f"{task}_pairs"] * len(toks))


def reasoning_hop_sequences(tokenizer, n: int, seed: int, split: str) -> Sequences:
    """``n`` one-hop rows over reasoning contexts: a reasoning prompt's four facts, then a question
    about one of them ("the key is in the" -> " box", or "the box is in" -> " Rome"), answer-only loss.

    Each hop of the two-hop task as its own lookup: the sub-skills that balanced reasoning composes.
    The facts come from the reasoning task's own sampler and ``split``; the question is drawn
    uniformly from the four facts with ``seed``.
    """
    from circuits.tasks.recall_reasoning import REASONING_TEMPLATES, Reasoning
    from circuits.tasks.templates import parse_template, render, sample_examples

    task = Reasoning()
    opts = task.options(split=split)
    pools = task.word_pools(opts)
    parsed = [parse_template(t) for t in REASONING_TEMPLATES]
    examples = sample_examples(n, seed, lambda rng: task.sample(rng, pools, opts), task.name)
    rng = random.Random(seed)
    texts, answers = [], []
    for ex in examples:
        prompt = render(parsed[ex.template], ex.clean)[0]
        context = prompt[: prompt.rindex(".") + 1]
        v = ex.clean
        question, answer = rng.choice([(f"the {v['X1']} is in the", v["Y1"]), (f"the {v['X2']} is in the", v["Y2"]),
                                       (f"the {v['Y1']} is in", v["C1"]), (f"the {v['Y2']} is in", v["C2"])])
        texts.append(f"{context} {question}")
        answers.append(answer)
    bos = tokenizer.bos_token_id
    toks, pos = [], []
    for ids, answer in zip(tokenizer(texts, add_special_tokens=False)["input_ids"], answers):
        a = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
        if len(a) != 1:
            raise ValueError(f"reasoning_hop_sequences: answer {answer!r} is {len(a)} tokens, not one")
        toks.append([bos] + ids + a)
        pos.append([len(ids)])
    return Sequences(toks, pos, ["reasoning_hops"] * n)


def filler_sequences(tokenizer, n: int, seed: int) -> Sequences:
    """``n`` filler sentences with a full LM loss."""
    from circuits.tasks import vocab

    rng = random.Random(seed)
    pools = {"N": vocab.NAMES, "C": vocab.COLORS, "O": vocab.COLOR_OBJECTS, "P": vocab.PLACES,
             "I": vocab.ITEMS, "S": vocab.SURFACES, "A": vocab.INDUCTION_WORDS, "B": vocab.CITIES}
    sentences = []
    for _ in range(n):
        t = rng.choice(FILLER_TEMPLATES)
        words = [rng.choice(pools[w[1:-1].rstrip("2")]) if w.startswith("{") else w for w in t.split()]
        sentences.append(" ".join(words))
    bos = tokenizer.bos_token_id
    toks = [[bos] + ids for ids in tokenizer(sentences, add_special_tokens=False)["input_ids"]]
    pos = [list(range(len(ids) - 1)) for ids in toks]
    return Sequences(toks, pos, ["filler"] * n)


REPEAT_POOLS = ("INDUCTION_WORDS", "COLOR_OBJECTS", "COLORS", "CITIES", "ITEMS", "NAMES")


def repeat_sequences(tokenizer, n: int, seed: int, min_len: int = 6, max_len: int = 16,
                     pool_size: int = 12) -> Sequences:
    """``n`` rows "w_1 .. w_L w_1 .. w_L" with the loss on the repeat (tokens 2..L of it).

    Words are drawn with replacement from ``pool_size`` words per row, so a word
    often occurs twice in w_1..w_L and the next word is fixed only by the two
    (or more) words before it. Predicting the repeat densely trains induction
    heads that match on content, several tokens deep - the mechanism that
    colored objects ("the cup is" -> the colour after "cup is") and the other
    in-context tasks need, and that answer-only losses alone do not form.
    """
    from circuits.tasks import vocab

    words = sorted({w for name in REPEAT_POOLS for w in getattr(vocab, name)})
    ids = [i for i in (tokenizer(w, add_special_tokens=False)["input_ids"] for w in words) if len(i) == 1]
    rng = random.Random(seed)
    toks, pos = [], []
    for _ in range(n):
        length = rng.randint(min_len, max_len)
        pool = rng.sample(ids, pool_size)
        seq = [rng.choice(pool)[0] for _ in range(length)]
        toks.append([tokenizer.bos_token_id] + seq + seq)
        pos.append(list(range(length + 1, 2 * length)))
    return Sequences(toks, pos, ["repeats"] * n)


def merge(parts: list[Sequences], seed: int) -> Sequences:
    """The rows of all ``parts`` as one Sequences, shuffled with ``seed``."""
    rows = [(t, p, s) for part in parts for t, p, s in zip(part.tokens, part.loss_pos, part.source)]
    random.Random(seed).shuffle(rows)
    return Sequences([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])


def batches(seqs: Sequences, batch_size: int, pad_id: int, seed: int, epochs: int = 1, bucket: bool = True):
    """Yield (tokens [b, L], loss_mask [b, L]) batches; with ``bucket``, of similar length (little padding).

    ``loss_mask[b, p]`` is True where the prediction at p (of token p+1) is trained. Bucketing puts
    rows of one length together, and the loss is a mean over a batch's trained tokens, so a token in a
    short row weighs more than one in a long row: a choice between a short and a long continuation
    (the reasoner's decision to think short) is then learned miscalibrated towards the short one.
    ``bucket=False`` keeps random batches, where every row's tokens weigh alike.
    """
    order = list(range(len(seqs.tokens)))
    rng = random.Random(seed)
    for _ in range(epochs):
        rng.shuffle(order)
        if bucket:  # sort chunks of 50 batches by length, then shuffle the batches
            chunk = batch_size * 50
            out = []
            for c in range(0, len(order), chunk):
                part = sorted(order[c : c + chunk], key=lambda i: len(seqs.tokens[i]))
                out += [part[b : b + batch_size] for b in range(0, len(part), batch_size)]
        else:
            out = [order[b : b + batch_size] for b in range(0, len(order), batch_size)]
        rng.shuffle(out)
        for idx in out:
            L = max(len(seqs.tokens[i]) for i in idx)
            toks = torch.full((len(idx), L), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), L), dtype=torch.bool)
            for r, i in enumerate(idx):
                t = seqs.tokens[i]
                toks[r, : len(t)] = torch.tensor(t)
                mask[r, seqs.loss_pos[i]] = True
            yield toks, mask
