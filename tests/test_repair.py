"""The head-repair analysis: which heads, where they are made to look, and the controls."""

from __future__ import annotations

import pytest

from analyses import repair as rp


def test_choose_heads_takes_the_ioi_heads_whose_role_differs():
    roles = {"ioi": {"a1.h0": "s-suppression", "a2.h2": "s-suppression", "a0.h1": "induction",
                     "a3.h0": "s-inhibition"},
             "colored_objects": {"a1.h0": "object mover", "a3.h0": "s-inhibition"}}
    c = rp.choose_heads(roles)
    assert c["heads"] == ["a1.h0", "a2.h2"]  # a3.h0 plays the same role in both; a0.h1 is not of the classes
    assert c["roles"]["a1.h0"] == {"ioi": "s-suppression", "colored_objects": "object mover"}
    same = {"ioi": {"a3.h0": "s-inhibition"}, "colored_objects": {"a3.h0": "s-inhibition"}}
    assert rp.choose_heads(same)["heads"] == ["a3.h0"] and "all of them" in rp.choose_heads(same)["reason"]
    assert rp.choose_heads({"ioi": {"a0.h0": "induction"}, "colored_objects": {}})["heads"] == []


@pytest.fixture(scope="module")
def weak():
    from circuits.models import load_model

    model = load_model("zoo:toyworld", device="cpu")
    ps, size = rp.weak_prompts(model, "zoo:toyworld", 32, 0)
    return model, ps, size


def test_the_keys_are_the_incorrect_colour_words(weak):
    model, ps, size = weak
    assert size == 5
    wrong, every = rp.colour_keys(ps, "wrong"), rp.colour_keys(ps, "all")
    assert every.shape == (32, 5) and ((wrong == -1).sum(1) == 1).all()
    for i in range(len(ps)):
        words = model.tokenizer.convert_ids_to_tokens(ps.clean[i, every[i]].tolist())
        answer = model.tokenizer.convert_ids_to_tokens([int(ps.answers[i])])[0]
        kept = model.tokenizer.convert_ids_to_tokens(ps.clean[i, wrong[i][wrong[i] >= 0]].tolist())
        assert answer.strip() in [w.strip() for w in words] and answer.strip() not in [w.strip() for w in kept]
    with pytest.raises(ValueError, match="which"):
        rp.colour_keys(ps, "some")


def test_repair_matches_a_hand_run_override_and_draws_its_controls(weak):
    from circuits.editing.attention import override_attention
    from circuits.engines.forward import end_logits

    model, ps, _ = weak
    res = rp.repair(model, ps, ["a1.h0", "a2.h2"], seed=0, n_random=3)
    with override_attention(model, [(1, 0), (2, 2)], ps.positions["END"], rp.colour_keys(ps, "wrong")):
        acc = float((end_logits(model, ps.clean, ps.positions["END"]).argmax(-1) == ps.answers).float().mean())
    assert res["after"]["accuracy"] == pytest.approx(acc)
    before = float((end_logits(model, ps.clean, ps.positions["END"]).argmax(-1) == ps.answers).float().mean())
    assert res["before"]["accuracy"] == pytest.approx(before)
    assert res["after"]["fixed"] - res["after"]["broken"] == round((acc - before) * len(ps))
    assert len(res["random"]["draws"]) == 3 and all(len(d["heads"]) == 2 for d in res["random"]["draws"])
    assert rp.repair(model, ps, [], seed=0)["after"] is None


def test_bad_heads_are_refused(tmp_path, capsys):
    assert rp.main(["--heads", "m1", "--n", "16", "--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "not a head name" in capsys.readouterr().err
    assert rp.main(["--heads", "a9.h0", "--n", "16", "--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "layer 9" in capsys.readouterr().err
