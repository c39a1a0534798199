"""ThinkEdit's steps: response groups and positions, head choices, and the pipeline's invariants."""

from __future__ import annotations

import random

import pytest
import torch

from circuits.editing import thinkedit as te


def responses():
    # prompt of 3 tokens (BOS included), then <think> ... </think> answer
    rows = [[1, 5, 6, 40, 41, 7], [1, 5, 6, 40, 9, 9, 9, 41, 7], [1, 5, 6, 40, 9, 9, 9, 9, 9, 41, 7], [1, 5, 6, 40, 9]]
    return te.Responses(rows, [3, 3, 3, 3], [2, 5, 7, -1], [False, True, True, False])


def test_groups_split_by_thinking_length_and_skip_unclosed_traces():
    r = responses()
    assert r.groups(2, 5) == ([0], [1, 2])
    assert r.groups(2, 6) == ([0], [2])
    with pytest.raises(ValueError, match="below"):
        r.groups(5, 5)
    with pytest.raises(ValueError, match="one length"):
        te.Responses([[1]], [1, 2], [1], [True])


def test_positions_mark_the_decision_token_or_the_tokens_that_predict_the_trace():
    r = responses()
    tokens, mask = te.positions(r, [0, 1], "decision", pad=0)
    assert tokens.shape == (2, 9) and tokens[0, 6:].tolist() == [0, 0, 0]
    assert mask.nonzero().tolist() == [[0, 3], [1, 3]]  # the <think> token of each
    _, mask = te.positions(r, [0, 1], "thinking", pad=0)
    assert mask[0].nonzero().flatten().tolist() == [2, 3]  # "=" predicts <think>, <think> predicts </think>
    assert mask[1].nonzero().flatten().tolist() == [2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="no response"):
        te.positions(r, [], "decision", pad=0)
    with pytest.raises(ValueError, match="where"):
        te.positions(r, [0], "everywhere", pad=0)


def test_head_choices_and_their_bad_inputs():
    s = torch.tensor([[0.5, -1.0, float("nan")], [2.0, 0.5, 0.1]])
    assert te.top_heads(s, 2) == [(1, 0), (0, 0)]  # tie 0.5: lower layer first
    assert te.bottom_heads(s, 2) == [(0, 1), (1, 2)]
    drawn = te.random_heads(s, 3, random.Random(0))
    assert len(set(drawn)) == 3 and (0, 2) not in drawn
    for k in (0, 6, 2.0, True):
        with pytest.raises(ValueError, match="k must be"):
            te.top_heads(s, k)


@pytest.fixture(scope="module")
def small_run():
    from analyses import thinkedit as an

    return an.run("zoo:reasoner-sft", n_direction=60, n_select=20, n_eval=40, seed=0, device="cpu", n_random=1)


def test_the_pipeline_edits_the_top_heads_it_scored_and_keeps_the_model_intact(small_run, tmp_path):
    from analyses import thinkedit as an
    from circuits.editing.weights import read_head
    from circuits.models import load_model

    r = small_run
    k = r.choice["k"]
    assert k in an.K_CANDIDATES
    assert r.evaluation["thinkedit"]["heads"] == [f"a{a}.h{b}" for a, b in te.top_heads(r.scores, k)]
    assert r.evaluation["bottom"]["heads"] == [f"a{a}.h{b}" for a, b in te.bottom_heads(r.scores, k)]
    again = an.measure(r.model, an.problems_of("test", 40, 4), 14, 0)  # the model is back to itself
    assert again["accuracy"] == r.evaluation["before"]["accuracy"]
    an.write(r, str(tmp_path))
    edited = load_model(str(tmp_path / "edited"), device="cpu")
    direction = r.directions[f"decision/{an.SITE}"]["direction"]
    for name in r.evaluation["thinkedit"]["heads"]:
        layer, head = int(name[1:].split(".")[0]), int(name.split(".h")[1])
        w = read_head(edited, layer, head)
        assert float((w @ direction.unit(layer)).abs().max()) < 1e-4
    s = r.evaluation["before"]
    assert 0 <= s["ci"]["accuracy"][0] <= s["accuracy"] <= s["ci"]["accuracy"][1] <= 1
    assert "ThinkEdit on zoo:reasoner-sft" in an.summary(r)
