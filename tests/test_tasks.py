"""Every task builds on every tokenizer, and its prompts mean what they claim."""

from __future__ import annotations

import re

import pytest
import torch

from circuits.prompts import PromptSet
from circuits.tasks import TaskVocabularyError, build_task, get_task, list_tasks
from tests.conftest import TOKENIZERS

ALL_TASKS = list_tasks()


def word(tok, token_id: int) -> str:
    """The surface word of a token id (byte-level 'Ġ' marker removed)."""
    return tok.convert_ids_to_tokens(int(token_id)).replace("Ġ", "").strip()


def test_registry_lists_the_issue_tasks():
    assert set(ALL_TASKS) == {"ioi", "colored_objects", "mental_math", "recall", "reasoning",
                              "induction", "greater_than", "arithmetic"}


@pytest.mark.parametrize("kind", TOKENIZERS)
@pytest.mark.parametrize("task", ALL_TASKS)
def test_every_task_builds_on_every_tokenizer(task, kind, tokenizers):
    tok = tokenizers[kind]
    ps = build_task(task, tok, n=24, seed=3)
    assert isinstance(ps, PromptSet) and len(ps) == 24
    assert ps.clean.shape == ps.corrupted.shape
    # BOS first, the answer word decodes to the answer text, END is the last real token
    assert (ps.clean[:, 0] == tok.bos_token_id).all()
    for i in range(len(ps)):
        assert word(tok, ps.answers[i]) == ps.answer_text[i]
        assert word(tok, ps.wrong_answers[i]) == ps.wrong_text[i]
        n = int(ps.lengths[i])
        assert (ps.clean[i, n:] == ps.pad_token_id).all()
        # the tokens re-decode to the prompt text (word-level joins with spaces)
        decoded = tok.decode(ps.clean[i, 1:n].tolist())
        assert re.sub(r"\s", "", decoded) == re.sub(r"\s", "", ps.clean_text[i])
    # clean and corrupted differ somewhere in every pair, and only at named slots
    named = torch.stack([p for k, p in ps.positions.items() if k != "END"], 1) if len(ps.positions) > 1 else None
    diff = ps.clean != ps.corrupted
    assert diff.any(1).all()
    if named is not None:
        for i in range(len(ps)):
            changed = set(diff[i].nonzero().flatten().tolist())
            assert changed <= set(named[i].tolist()) - {-1}, (task, ps.clean_text[i], ps.corrupted_text[i])


@pytest.mark.parametrize("kind", TOKENIZERS)
def test_ioi_positions_and_corruptions(kind, tokenizers):
    tok = tokenizers[kind]
    ps = build_task("ioi", tok, n=40, seed=0, corruption="abc")
    idx = torch.arange(len(ps))
    c, k = ps.clean, ps.corrupted
    P = ps.positions
    assert set(P) >= {"IO", "S1", "S1+1", "S2", "END"}
    assert (c[idx, P["IO"]] == ps.answers).all()
    assert (c[idx, P["S1"]] == ps.wrong_answers).all()
    assert (c[idx, P["S2"]] == ps.wrong_answers).all()
    assert (P["S1+1"] == P["S1"] + 1).all()
    # ABC: three distinct names, none of them IO or S
    names = torch.stack([k[idx, P["IO"]], k[idx, P["S1"]], k[idx, P["S2"]]], 1)
    for row, a, s in zip(names.tolist(), ps.answers.tolist(), ps.wrong_answers.tolist()):
        assert len(set(row)) == 3 and a not in row and s not in row
    # both orders appear, BABA has S1 before IO
    baba = ps.groups < 15
    assert baba.any() and (~baba).any()
    assert (P["S1"][baba] < P["IO"][baba]).all() and (P["IO"][~baba] < P["S1"][~baba]).all()

    flip = build_task("ioi", tok, n=20, seed=0, corruption="s2_io")
    i2 = torch.arange(len(flip))
    assert (flip.corrupted[i2, flip.positions["S2"]] == flip.answers).all()


def test_ioi_order_option(word_tokenizer):
    assert (build_task("ioi", word_tokenizer, n=10, order="ABBA").groups >= 15).all()
    assert (build_task("ioi", word_tokenizer, n=10, order="BABA").groups < 15).all()


@pytest.mark.parametrize("kind", TOKENIZERS)
def test_mental_math_answers_are_right(kind, tokenizers):
    tok = tokenizers[kind]
    ps = build_task("mental_math", tok, n=40, seed=1)
    for text, ans, ctext, wrong in zip(ps.clean_text, ps.answer_text, ps.corrupted_text, ps.wrong_text):
        assert eval(text.rstrip("= ")) == int(ans)
        assert eval(ctext.rstrip("= ")) == int(wrong) != int(ans)
    assert len(set(ps.groups.tolist())) > 1  # several forms, several lengths
    assert len(set(ps.lengths.tolist())) > 1


def test_colored_objects_answer_is_the_queried_objects_color(word_tokenizer):
    ps = build_task("colored_objects", word_tokenizer, n=30, seed=2, shots=1)
    for text, ans, wrong in zip(ps.clean_text, ps.answer_text, ps.wrong_text):
        question = text.split("\n")[-1]
        queried = re.search(r"What color is the (\w+)\?", question).group(1)
        assert re.search(rf"\b{ans} {queried}\b", question)
        assert wrong != ans and wrong in question


def test_reasoning_answer_follows_the_chain(word_tokenizer):
    ps = build_task("reasoning", word_tokenizer, n=30, seed=4)
    for text, ans in zip(ps.clean_text, ps.answer_text):
        facts = dict(re.findall(r"the (\w+) is in (?:the )?(\w+)\.", text))
        query = re.search(r"the (\w+) is in$", text).group(1)
        assert facts[facts[query]] == ans


def test_recall_uses_the_fact_table(word_tokenizer):
    from circuits.tasks.vocab import toyworld_facts

    facts = toyworld_facts()
    ps = build_task("recall", word_tokenizer, n=30, seed=5)
    for text, ans, ctext, wrong in zip(ps.clean_text, ps.answer_text, ps.corrupted_text, ps.wrong_text):
        ent = next(e for e in facts if re.search(rf"\b{e}\b", text))
        ent2 = next(e for e in facts if re.search(rf"\b{e}\b", ctext))
        assert facts[ent] == ans and facts[ent2] == wrong != ans


def test_induction_answer_is_the_token_after_the_first_occurrence(word_tokenizer):
    ps = build_task("induction", word_tokenizer, n=20, seed=6, seq_len=5)
    idx = torch.arange(len(ps))
    assert (ps.clean[idx, ps.positions["SRC"]] == ps.answers).all()
    assert (ps.corrupted[idx, ps.positions["SRC"]] == ps.wrong_answers).all()
    assert (ps.clean[idx, ps.positions["PREV"]] == ps.clean[idx, ps.positions["END"]]).all()


def test_induction_mixed_lengths_put_the_answer_at_no_fixed_offset(word_tokenizer):
    lens = [3, 5, 8]
    ps = build_task("induction", word_tokenizer, n=40, seed=6, seq_len=lens)
    idx = torch.arange(len(ps))
    assert (ps.clean[idx, ps.positions["SRC"]] == ps.answers).all()
    assert (ps.clean[idx, ps.positions["PREV"]] == ps.clean[idx, ps.positions["END"]]).all()
    offsets = (ps.positions["END"] - ps.positions["SRC"]).tolist()
    assert sorted(set(offsets)) == [L - 1 for L in lens]  # END - SRC = L - 1 differs by length
    assert sorted(set(ps.groups.tolist())) == [0, 1, 2]
    # a single length keeps its old random stream
    one = build_task("induction", word_tokenizer, n=5, seed=6, seq_len=5)
    assert torch.equal(one.clean, build_task("induction", word_tokenizer, n=5, seed=6, seq_len=[5]).clean)
    with pytest.raises(ValueError, match="seq_len"):
        build_task("induction", word_tokenizer, n=5, seed=6, seq_len=[3, 1])


@pytest.mark.parametrize("kind", TOKENIZERS)
def test_greater_than_candidates(kind, tokenizers):
    tok = tokenizers[kind]
    ps = build_task("greater_than", tok, n=20, seed=7)
    assert ps.answer_candidates is not None
    cand_words = [word(tok, c) for c in ps.answer_candidates]
    for i, text in enumerate(ps.clean_text):
        yy = int(re.search(r"year \d\d(\d\d) to", text).group(1))
        correct = {w for w, m in zip(cand_words, ps.answer_mask[i].tolist()) if m}
        assert correct == {w for w in cand_words if int(w) > yy}
        assert "year 1" in ps.corrupted_text[i] and re.search(r"\d\d01 to", ps.corrupted_text[i])


@pytest.mark.parametrize("task", ALL_TASKS)
def test_builds_are_deterministic(task, word_tokenizer):
    a = build_task(task, word_tokenizer, n=12, seed=11)
    b = build_task(task, word_tokenizer, n=12, seed=11)
    c = build_task(task, word_tokenizer, n=12, seed=12)
    assert torch.equal(a.clean, b.clean) and torch.equal(a.corrupted, b.corrupted)
    assert not torch.equal(a.clean, c.clean) or not torch.equal(a.corrupted, c.corrupted)


@pytest.mark.parametrize("task", ["ioi", "recall", "mental_math", "colored_objects"])
def test_train_and_test_splits_are_disjoint(task, word_tokenizer):
    tr = build_task(task, word_tokenizer, n=60, seed=0, split="train")
    te = build_task(task, word_tokenizer, n=60, seed=0, split="test")
    assert not set(tr.clean_text) & set(te.clean_text)


def test_too_few_single_token_words_is_a_clear_error():
    from circuits.tasks.vocab import NAMES
    from circuits.tokenization import word_level_tokenizer

    tok = word_level_tokenizer(["Then", ",", "and", "went", "to", "the", "store", ".", "gave", "a",
                                "drink", *NAMES[:3]])
    tok.name_or_path = "tiny-vocab"
    with pytest.raises(TaskVocabularyError) as e:
        build_task("ioi", tok, n=4)
    msg = str(e.value)
    assert "tiny-vocab" in msg and "names" in msg and NAMES[0] in msg and NAMES[10] in msg


def test_bad_options_and_names_are_clear_errors(word_tokenizer):
    with pytest.raises(KeyError, match="available tasks"):
        get_task("nope")
    with pytest.raises(TypeError, match="no option"):
        build_task("ioi", word_tokenizer, n=4, colour="red")
    with pytest.raises(ValueError, match="corruption"):
        build_task("ioi", word_tokenizer, n=4, corruption="nope")
    with pytest.raises(ValueError, match="split"):
        build_task("recall", word_tokenizer, n=4, split="dev")
    with pytest.raises(ValueError, match="positive"):
        build_task("induction", word_tokenizer, n=0)


def test_texts_and_vocabulary_need_no_tokenizer():
    t = get_task("ioi")
    rows = t.texts(5, seed=0)
    assert len(rows) == 5 and all(isinstance(p, str) and a for p, a, _ in rows)
    v = t.vocabulary()
    assert "Mary" in v and "gave" in v and "," in v


@pytest.mark.parametrize("options", [{"question": "statement"}, {"order": "object_first"},
                                     {"order": "object_first", "question": "statement"}])
def test_colored_objects_variants(options, word_tokenizer):
    ps = build_task("colored_objects", word_tokenizer, n=30, seed=8, **options)
    for text, ans, wrong in zip(ps.clean_text, ps.answer_text, ps.wrong_text):
        if options.get("order") == "object_first":
            queried = re.search(r"(?:What color is the (\w+)\?|The (\w+) is)", text).group(1, 2)
            queried = queried[0] or queried[1]
            assert re.search(rf"\b{queried} that is {ans}\b", text)
        else:
            queried = re.search(r"The (\w+) is$", text).group(1)
            assert re.search(rf"\b{ans} {queried}\b", text)
        assert wrong != ans and wrong in text
    with pytest.raises(ValueError, match="object_first"):
        build_task("colored_objects", word_tokenizer, n=2, order="object_first", shots=1)
    with pytest.raises(ValueError, match="order"):
        build_task("colored_objects", word_tokenizer, n=2, order="sideways")


def test_reasoning_asks_about_either_item_and_its_corruption_about_the_other(word_tokenizer):
    """No property every clean prompt shares gives the answer away: the question is about the first
    or the second item, balanced, and the corrupted prompt asks about the other (its own answer)."""
    ps = build_task("reasoning", word_tokenizer, n=200, seed=0)
    rows = torch.arange(len(ps))
    q = ps.clean[rows, ps.positions["Q"]]
    first = q == ps.clean[rows, ps.positions["X1"]]
    assert ((q == ps.clean[rows, ps.positions["X2"]]) | first).all()
    assert 0.4 < first.float().mean() < 0.6
    qc = ps.corrupted[rows, ps.positions["Q"]]
    assert (qc != q).all() and torch.equal(ps.corrupted_answers, ps.wrong_answers)
    # the answer is the city of the asked item's container
    city = torch.where(first, ps.clean[rows, ps.positions["C1"]], ps.clean[rows, ps.positions["C2"]])
    assert torch.equal(city, ps.answers)


@pytest.mark.parametrize("task, options, has_own", [
    ("ioi", {}, False), ("ioi", {"corruption": "s2_io"}, True), ("colored_objects", {}, True),
    ("mental_math", {}, True), ("recall", {}, True), ("reasoning", {}, True), ("induction", {}, True),
    ("greater_than", {}, False)])
def test_corrupted_prompts_carry_their_own_answers_where_they_have_one(task, options, has_own, word_tokenizer):
    from circuits import metrics

    ps = build_task(task, word_tokenizer, n=8, seed=0, **options)
    assert (ps.corrupted_answers is not None) == has_own
    if has_own:
        assert torch.equal(ps.corrupted_answers, ps.wrong_answers)
        fake = torch.full((len(ps), len(word_tokenizer)), -1.0)
        fake[torch.arange(len(ps)), ps.answers] = 1.0  # a model that always gives the clean answer
        assert metrics.counterfactual_accuracy(fake, ps) == 0.0  # the audit catches it
    else:
        with pytest.raises(ValueError, match="no answer of their own"):
            metrics.counterfactual_accuracy(torch.zeros(len(ps), len(word_tokenizer)), ps)


def test_arithmetic_matches_the_reasoner_zoo_distribution(word_tokenizer):
    """Three or four operands in 0..9, running values in 0..30, one operand corrupted so that the
    answer changes; the corrupted prompt's answer is the wrong answer."""
    from circuits.tasks.mental_math import evaluate

    ps = build_task("arithmetic", word_tokenizer, n=64, seed=0)
    for clean, corrupt, ans, wrong in zip(ps.clean_text, ps.corrupted_text, ps.answer_text, ps.wrong_text):
        for text, value in ((clean, ans), (corrupt, wrong)):
            tokens = text.split()[:-1]
            xs, ops = [int(t) for t in tokens[::2]], tuple(tokens[1::2])
            assert len(xs) in (3, 4) and all(0 <= x <= 9 for x in xs)
            vals = evaluate(xs, ops)
            assert all(0 <= v <= 30 for v in vals) and str(vals[-1]) == value
        assert sum(a != b for a, b in zip(clean.split(), corrupt.split())) == 1 and ans != wrong
    assert set(ps.group_names) == {"3 operands", "4 operands"}


def test_arithmetic_with_the_full_trace_reads_the_answer_after_each_prompts_own_trace():
    """thinking="full": "... = <think> a op b = p1 , ... </think>"; every step's arithmetic is right, the
    corrupted prompt carries its own problem's trace, and END is the closing tag."""
    from circuits.zoo.recipes import arithmetic as ar
    from circuits.zoo.recipes.reasoner import make_tokenizer

    tok = make_tokenizer()
    ps = build_task("arithmetic", tok, n=32, seed=1, thinking="full")
    for i in range(len(ps)):
        for row, answer in ((ps.clean[i], ps.answers[i]), (ps.corrupted[i], ps.corrupted_answers[i])):
            words = tok.convert_ids_to_tokens([t for t in row.tolist() if t != tok.pad_token_id])[1:]
            eq = words.index("=")
            xs, ops = [int(w) for w in words[:eq:2]], tuple(words[1:eq:2])
            p = ar.Problem(tuple(xs), ops)
            assert " ".join(words[eq + 1:]) == ar.trace(p, 0)
            assert tok.convert_ids_to_tokens([int(answer)])[0] == str(p.answer)
        assert tok.convert_ids_to_tokens([int(ps.clean[i, ps.positions["END"][i]])])[0] == "</think>"
    assert (ps.positions["ETH"] == ps.positions["END"]).all()
    with pytest.raises(ValueError, match="thinking must be one of"):
        build_task("arithmetic", tok, n=4, thinking="some")


def test_arithmetic_split_is_the_reasoner_recipes_split():
    """The task's held-out prompts are problems the reasoner recipes never train on (one hash, one key)."""
    from circuits.zoo.recipes import arithmetic as ar
    from circuits.zoo.recipes.reasoner import make_tokenizer

    tok = make_tokenizer()
    ps = build_task("arithmetic", tok, n=64, seed=0, split="test")
    for text in ps.clean_text:
        tokens = text.split()[:-1]
        p = ar.Problem(tuple(int(t) for t in tokens[::2]), tuple(tokens[1::2]))
        assert ar.in_split(p, "test") and not ar.in_split(p, "train")
