"""PromptSet: validation, device moves, subsets, serialisation, user-built pairs."""

from __future__ import annotations

import json

import pytest
import torch

from circuits.prompts import PromptAlignmentError, PromptSet
from circuits.tasks import TaskVocabularyError, build_task, prompt_set_from_texts


@pytest.fixture(scope="module")
def ps(word_tokenizer):
    return build_task("mental_math", word_tokenizer, n=16, seed=0)


def test_roundtrip_json(ps, tmp_path):
    path = tmp_path / "ps.json"
    ps.save(path)
    back = PromptSet.load(path)
    for name in ("clean", "corrupted", "answers", "wrong_answers", "lengths", "groups"):
        assert torch.equal(getattr(ps, name), getattr(back, name))
    assert back.positions.keys() == ps.positions.keys()
    assert back.provenance == json.loads(json.dumps(ps.provenance))
    assert back.describe()["task"] == "mental_math"


def test_subset_trims_padding_and_keeps_alignment(ps):
    short = ps.subset(ps.lengths == ps.lengths.min())
    assert short.n_pos == int(ps.lengths.min())
    assert (short.lengths == short.n_pos).all()
    assert short.clean_text == [t for t, n in zip(ps.clean_text, ps.lengths) if n == ps.lengths.min()]
    two = ps.subset([3, 1])
    assert torch.equal(two.answers, ps.answers[[3, 1]])
    with pytest.raises(IndexError):
        ps.subset([len(ps)])


def test_groups_and_lengths_partition_the_set(ps):
    assert sum(len(s) for s in ps.group_subsets().values()) == len(ps)
    assert sum(len(s) for s in ps.length_subsets().values()) == len(ps)


def test_to_device_moves_everything(ps):
    moved = ps.to("meta")
    assert moved.clean.device.type == "meta" and moved.positions["END"].device.type == "meta"
    assert ps.clean.device.type == "cpu"


def test_attention_mask_and_generation_prompts(ps):
    m = ps.attention_mask
    assert (m.sum(1) == ps.lengths).all()
    gen = ps.generation_prompts()
    assert [len(g) for g in gen] == ps.lengths.tolist()


def test_misaligned_tensors_raise(ps):
    d = ps.to_dict()
    d["corrupted"] = [row[:-1] for row in d["corrupted"]]
    with pytest.raises(PromptAlignmentError, match="differ in shape"):
        PromptSet.from_dict(d)
    d = ps.to_dict()
    d["positions"]["END"] = [0] * len(ps)
    with pytest.raises(PromptAlignmentError, match="END"):
        PromptSet.from_dict(d)


def test_user_pairs_of_different_lengths_are_a_clear_error(word_tokenizer):
    with pytest.raises(PromptAlignmentError) as e:
        prompt_set_from_texts(word_tokenizer, ["Then, Mary and John went to the store. John gave a drink to"],
                              ["Then, Mary and John went to the red store. John gave a drink to"],
                              ["Mary"], ["John"])
    assert "pair 0" in str(e.value) and "red store" in str(e.value)


def test_user_pairs_multi_token_answer_is_a_clear_error(bpe_tokenizer):
    with pytest.raises(TaskVocabularyError, match="one"):
        prompt_set_from_texts(bpe_tokenizer, ["Then, Mary went to"], ["Then, John went to"],
                              ["Xylophonia"], ["Mary"])


def test_user_pairs_build(word_tokenizer):
    ps = prompt_set_from_texts(word_tokenizer, ["Then, Mary and John went to the store. John gave a drink to"],
                               ["Then, Anna and Lisa went to the store. Paul gave a drink to"],
                               ["Mary"], ["John"])
    assert len(ps) == 1 and int(ps.positions["END"][0]) == int(ps.lengths[0]) - 1


def test_unwritable_export_path_is_a_clear_error(ps, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot create output folder"):
        ps.save(blocker / "sub" / "x.json")


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    from circuits import io

    target = tmp_path / "out.json"
    target.write_text("old")

    class Boom(Exception):
        pass

    def broken_replace(src, dst):
        raise Boom()

    monkeypatch.setattr(io.os, "replace", broken_replace)
    with pytest.raises(Boom):
        io.atomic_write_json(target, {"a": 1})
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_promptset_from_token_ids_equals_the_task_builders():
    """Rebuilding a built task from its own token ids gives the same tensors, END included."""
    from circuits.prompts import PromptAlignmentError, PromptSet
    from circuits.tasks import build_task
    from circuits.tokenization import word_level_tokenizer

    tok = word_level_tokenizer([str(i) for i in range(40)] + ["+", "-", "=", ",", "<think>", "</think>"])
    ps = build_task("arithmetic", tok, n=12, seed=0)
    rows = [r[: int(n)].tolist() for r, n in zip(ps.clean, ps.lengths)]
    bad = [r[: int(n)].tolist() for r, n in zip(ps.corrupted, ps.lengths)]
    again = PromptSet.from_token_ids(rows, bad, ps.answers.tolist(), ps.wrong_answers.tolist(),
                                     pad_token_id=ps.pad_token_id, positions={"A": ps.positions["A"].tolist()},
                                     groups=ps.groups.tolist(), group_names=ps.group_names)
    for name in ("clean", "corrupted", "answers", "wrong_answers", "lengths", "groups"):
        assert torch.equal(getattr(again, name), getattr(ps, name)), name
    assert torch.equal(again.positions["END"], ps.positions["END"])
    assert torch.equal(again.positions["A"], ps.positions["A"])
    with pytest.raises(PromptAlignmentError, match="prompt 1: clean has"):
        PromptSet.from_token_ids([[1, 2], [1, 2, 3]], [[1, 2], [1, 2]], [5, 5], [6, 6], pad_token_id=0)
    with pytest.raises(ValueError, match="one entry per prompt"):
        PromptSet.from_token_ids([[1, 2]], [[1, 2]], [5, 6], [6], pad_token_id=0)
