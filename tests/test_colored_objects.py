"""The colored-objects analysis: the pipeline on a tiny model, and what it establishes on the zoo."""

from __future__ import annotations

import json

import pytest

from analyses import colored_objects as co


def strict_json(path):
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} in {path.name}"))


def test_a_model_that_fails_the_task_is_refused_before_analysis(model_dirs, tmp_path, capsys):
    """A tiny random model answers at chance: the analysis says so instead of analysing noise."""
    rc = co.main(["--model", model_dirs[("gpt2", "word")], "--n", "16", "--device", "cpu", "--out", str(tmp_path)])
    assert rc == 4  # circuits.cli.REFUSED: the model does not do the task
    assert "does not do the task" in capsys.readouterr().err
    assert not (tmp_path / "colored_objects").exists() or not any((tmp_path / "colored_objects").iterdir())


def test_the_pipeline_writes_its_documented_keys(model_dirs, tmp_path):
    r = co.run(model_dirs[("gpt2", "word")], n=8, seed=0, device="cpu", progress=False, floor=0.0, min_n=4)
    co.write(r, str(tmp_path))
    d = strict_json(tmp_path / "colored_objects.json")
    assert {"settings", "prompts", "head_patching", "path_patching", "circuit", "faithfulness", "random_circuits",
            "scene_sizes", "ioi_overlap", "provenance", "schema_version"} <= set(d)
    assert d["provenance"]["task"] == "colored_objects"
    for stem in ("patching", "path_patching", "circuit", "scene_sizes"):
        assert (tmp_path / f"{stem}.png").stat().st_size > 1000
    assert "Colored objects on" in co.summary(r)


def test_jaccard_and_random_circuits_keep_their_shape():
    import random

    assert co.jaccard({(0, 1), (1, 2)}, {(1, 2)}) == 0.5 and co.jaccard(set(), set()) is None
    drawn = co.random_like(["a1.h0@END", "a0.h2", "a2.h3@S2"], 3, 4, random.Random(0))
    assert [n.split("@")[1] if "@" in n else None for n in drawn] == ["END", None, "S2"]
    assert len({n.split("@")[0] for n in drawn}) == 3  # distinct heads


@pytest.fixture(scope="module")
def toyworld_result():
    return co.run("zoo:toyworld", n=32, seed=0, device="cpu", progress=False)


def test_on_toyworld_the_circuit_beats_random_circuits_of_its_size(toyworld_result):
    """What the analysis establishes: the circuit it finds keeps most of the logit difference, far
    more than random circuits with the same number of heads at the same positions."""
    r = toyworld_result
    f, rand = r.evaluation["faithfulness"], r.evaluation["random"]
    assert f.faithfulness > 0.6 and f.complement_faithfulness < 0.2
    assert f.faithfulness > rand["max"] and rand["circuit_beats"] == rand["n"]
    assert set(r.sizes) == {"n=2", "n=3", "n=4", "n=5"}  # the scene sizes toyworld was trained on


def test_too_few_prompts_for_an_interval_are_refused(tmp_path, capsys):
    assert co.main(["--n", "8", "--out", str(tmp_path)]) == 2
    assert "too few for a bootstrap interval" in capsys.readouterr().err
