"""The recall-vs-reasoning analysis: end to end on a tiny model (files, keys, strict JSON, ranges), its
refusals (a model that fails a task, too few items), the specialisation index, labels and control
intervals by hand, and on zoo:toyworld a property verified by running the analysis there."""

from __future__ import annotations

import json

import pytest
import torch

from analyses import recall_reasoning as rr

KEYS = {"schema_version", "analysis", "provenance", "settings", "prompts", "layer_restoration", "head_effects",
        "layer_effects", "specialisation", "circuits", "dissociation", "neurons", "figures", "timings_s", "seconds"}


def strict(text: str) -> dict:
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in recall_reasoning.json"))


def test_the_analysis_end_to_end_on_a_tiny_model(model_dirs, tmp_path, capsys):
    # a random model answers nothing: the floor is lowered and every item kept (debugging options)
    rc = rr.main(["--model", model_dirs[("gpt2", "word")], "--n", "20", "--device", "cpu", "--out", str(tmp_path),
                  "--floor", "0", "--min-items", "8", "--keep", "all"])
    assert rc == 0
    (folder,) = list((tmp_path / "recall_reasoning").iterdir())
    r = strict((folder / "recall_reasoning.json").read_text())
    assert set(r) == KEYS and r["analysis"] == "recall_reasoning"
    assert r["provenance"]["fast_paths"] and r["provenance"]["n"] == 20
    assert "not recoverable" in r["settings"]["protocol"] and r["settings"]["floor"] == 0.0
    for stem in ("layer_profile", "head_effects", "dissociation", "restoration"):
        for ext in ("pdf", "png"):
            assert f"{stem}.{ext}" in r["figures"] and (folder / f"{stem}.{ext}").stat().st_size > 1000
    for t in rr.TASKS:
        p = r["prompts"][t]
        assert p["kept"] + p["dropped"] == p["built"] == 20 and p["selection"] + p["evaluation"] == p["kept"]
        assert len(r["layer_restoration"][t]["normalized"]) == 2
        assert isinstance(r["layer_restoration"][t]["question_read"], bool)
    for kind in rr.KINDS:
        for t in rr.TASKS:
            assert torch.tensor(r["head_effects"][kind][t]["delta"]).shape == (2, 4)
            assert len(r["layer_effects"][kind][t]["heads"]) == len(r["layer_effects"][kind][t]["mlp"]) == 2
        for part in ("heads", "layer_heads", "mlps"):
            si = torch.tensor(r["specialisation"][kind][part]["si"])
            assert ((si >= -1) & (si <= 1)).all()
            labels = r["specialisation"][kind][part]["labels"]
            flat = [x for row in labels for x in row] if part == "heads" else labels
            assert len(flat) == si.numel() and set(flat) <= set(rr.LABELS)
    for c, task in (("R", "recall"), ("Q", "reasoning")):
        circ = r["circuits"][c]
        assert circ["task"] == task and len(circ["heads"]) == circ["k"] <= 8 // 3
        cell = r["dissociation"]["cells"][c]
        if cell is not None:
            for t in rr.TASKS:
                ctl = cell[t]["controls"]["ld_drop"]
                assert ctl["lo"] <= ctl["mean"] <= ctl["hi"] and ctl["n"] == rr.N_CONTROLS
                assert cell[t]["exceeds_controls"]["ld_drop"] == (cell[t]["ld_drop"] > ctl["hi"])
    assert r["neurons"]["k"] == 32 and len(r["neurons"]["top"]["recall"]) == 32
    assert set(r["neurons"]["effects"]) == {"recall_neurons", "reasoning_neurons", "controls"}
    out = capsys.readouterr().out
    assert "recall vs reasoning on" in out and "double dissociation" in out and "wrote" in out


def test_a_model_that_fails_a_task_is_refused(model_dirs, loaded_models, tmp_path, capsys):
    from circuits.cli import REFUSED

    rc = rr.main(["--model", model_dirs[("gpt2", "word")], "--n", "16", "--device", "cpu", "--out", str(tmp_path)])
    assert rc == REFUSED == 4  # a finding about the model, told apart from bad input (2) and crashes (3)
    err = capsys.readouterr().err
    assert "circuits: refused:" in err and "fails recall (clean accuracy" in err and "below the accuracy floor 0.8" in err
    assert not (tmp_path / "recall_reasoning").exists() or not any((tmp_path / "recall_reasoning").iterdir())
    model = loaded_models("gpt2")
    with pytest.raises(rr.ModelFailsTask, match="nothing is analysed on noise"):
        rr.prompts(model, "a-tiny-model", 16, 0)
    with pytest.raises(ValueError, match=r"only 0 of 16 recall prompts .* at least 16"):  # floor off, none right
        rr.prompts(model, "a-tiny-model", 16, 0, floor=0.0)
    with pytest.raises(ValueError, match="min_items"):
        rr.run(model_dirs[("gpt2", "word")], n=16, min_items=2)


def test_specialisation_index_and_labels_by_hand():
    si = rr.specialisation_index(torch.tensor([0.4, 0.3, 0.0, -0.3, 0.02, 0.0]),
                                 torch.tensor([0.0, 0.1, 0.2, 0.1, 0.01, 0.0]), eps=0.0)
    assert si[:5].tolist() == pytest.approx([1.0, 0.5, -1.0, -1.0, 1 / 3])
    assert rr.specialisation_index(torch.tensor([0.0]), torch.tensor([0.0])).item() == 0.0  # eps: no NaN
    assert rr.label(0.4, 0.0, 1.0) == "recall"
    assert rr.label(0.3, 0.1, 0.5) == "mixed"  # |SI| <= theta with both effects above delta
    assert rr.label(0.3, 0.1, 0.5000001) == "recall"
    assert rr.label(0.0, 0.2, -1.0) == "reasoning"
    assert rr.label(-0.3, 0.1, -1.0) == "reasoning"  # ablation helps recall, hurts reasoning
    assert rr.label(0.02, 0.01, 1 / 3) == "none"  # both effects below delta = 0.05
    assert rr.label(0.3, 0.04, 0.76) == "recall"
    assert rr.label(0.3, 0.2, 0.2) == "mixed"
    assert rr.label(0.04, 0.3, -0.76) == "reasoning"
    assert rr.label(0.3, 0.0, 0.2) == "none"  # one effect, but not specialised enough
    assert rr.label(0.3, 0.2, 0.2, delta=0.25) == "none"
    effects = {"mean": {"recall": {"heads": torch.tensor([[0.4, 0.3], [0.0, 0.02]]), "layer_heads": torch.tensor(
        [0.5, 0.0]), "mlps": torch.tensor([0.1, 0.0])},
        "reasoning": {"heads": torch.tensor([[0.0, 0.1], [0.2, 0.01]]), "layer_heads": torch.tensor([0.5, 0.3]),
                      "mlps": torch.tensor([0.0, 0.3])}}}
    sp = rr.specialisation(effects)["mean"]
    assert sp["heads"]["labels"] == [["recall", "mixed"], ["reasoning", "none"]]
    assert sp["layer_heads"]["labels"] == ["mixed", "reasoning"]
    assert sp["mlps"]["labels"] == ["recall", "reasoning"]
    assert sp["mlps"]["si"].tolist() == pytest.approx([1.0, -1.0], abs=1e-4)
    ranked = rr.ranked_heads(sp["heads"]["si"], effects["mean"]["recall"]["heads"], +1)
    assert [h for h, _ in ranked] == ["a0.h0", "a0.h1", "a1.h1"]  # SI x effect: 0.4, 0.15, 0.0067
    assert [h for h, _ in rr.ranked_heads(sp["heads"]["si"], effects["mean"]["reasoning"]["heads"], -1)] == ["a1.h0"]


def test_control_intervals_by_hand():
    c = rr.control_interval(torch.arange(101.0))  # quantiles of 0..100 interpolate to 2.5 and 97.5
    assert c == pytest.approx({"mean": 50.0, "lo": 2.5, "hi": 97.5, "n": 101}, abs=1e-9)
    assert rr.control_interval(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), level=0.5) == pytest.approx(
        {"mean": 3.0, "lo": 2.0, "hi": 4.0, "n": 5}, abs=1e-9)
    assert rr.beyond(97.6, c) and not rr.beyond(97.5, c) and not rr.beyond(10.0, c)
    heads = [f"a{la}.h{h}" for la in range(3) for h in range(4)]
    draws = rr.control_sets(heads, ["a0.h0", "a2.h3"], 30, seed=1)
    assert len(draws) == 30 and all(len(d) == 2 and not {"a0.h0", "a2.h3"} & set(d) for d in draws)
    assert draws == rr.control_sets(heads, ["a0.h0", "a2.h3"], 30, seed=1) and len({tuple(d) for d in draws}) > 5


# --- zoo:toyworld: a property checked by running the analysis there (n 64, seed 0, floor 0.3): the circuit
# R chosen on the selection half costs recall 0.82 of its LD on the evaluation half, against random
# heads' 95% upper bound of 0.31; recall's END residual carries the whole answer from layer 0 on.
# The floor is lowered because the bundled toyworld answers reasoning by a shortcut (~0.5 clean);
# the assertions read the recall task only.

@pytest.fixture(scope="module")
def toyworld():
    from circuits.models import load_model

    return load_model("zoo:toyworld", device="cpu")


def test_toyworld_recall_circuit_beats_random_heads(toyworld):
    sets = rr.prompts(toyworld, "zoo:toyworld", 64, 0, floor=0.3)
    assert sets["recall"].info["accuracy"] == 1.0
    scores = rr.layer_restoration(toyworld, {"recall": sets["recall"]})["recall"]
    assert rr.question_read(scores)  # the corrupted entity moves the LD (10 -> -11 logits)
    assert (scores.normalized()[:, 0] > 0.95).all()  # the entity's answer is at END from layer 0's output on
    effects = rr.head_effects(toyworld, sets, kinds=("mean",))
    circuits = rr.choose_circuits(toyworld, sets, rr.specialisation(effects), effects)
    assert circuits["R"]["heads"]
    cell = rr.dissociation(toyworld, sets, circuits, n_controls=20, seed=0)["cells"]["R"]["recall"]
    assert cell["ld_drop"] > 0.5 and cell["exceeds_controls"]["ld_drop"], cell


@pytest.mark.xfail(strict=True, raises=rr.ModelFailsTask,
                   reason="bundled toyworld solves reasoning by a shortcut; its retrain on balanced prompts reached 69%")
def test_toyworld_passes_the_reasoning_floor(toyworld):
    sets = rr.prompts(toyworld, "zoo:toyworld", 64, 0)
    assert sets["reasoning"].info["accuracy"] >= rr.FLOOR
