"""The compare-tasks analysis: one method for every task, the audit that skips shortcuts, and what it writes."""

from __future__ import annotations

import json

import pytest
import torch

from analyses import compare_tasks as ct

TASKS = ["ioi", "colored_objects", "greater_than"]


@pytest.fixture(scope="module")
def result():
    return ct.run("zoo:toyworld", tasks=TASKS, n=16, seed=0, device="cpu", progress=False)


def test_each_circuit_is_the_top_fraction_of_its_own_grid(result):
    n_cells = 16
    k = max(1, round(ct.FRACTION * n_cells))
    for task, grid in result.scores.items():
        assert grid.shape == (4, 4)
        flat = grid.abs().flatten()
        top = set(torch.topk(flat, k).indices.tolist())
        assert {layer * 4 + h for layer, h in result.circuits[task].heads()} == top, task
        for name, info in result.circuits[task].nodes.items():
            layer, head = int(name[1:].split(".")[0]), int(name.split(".h")[1])
            assert info.score == pytest.approx(float(grid[layer, head]))


def test_head_scores_are_the_fraction_of_the_gap_lost(result):
    """1 - normalized noising patching, checked against a hand-run noising patch of one head."""
    from circuits.engines.patching import activation_patching
    from circuits.models import load_model
    from circuits.tasks import build_task
    from circuits.zoo import task_options

    model = load_model("zoo:toyworld", device="cpu")
    ps = build_task("ioi", model.tokenizer, n=16, seed=0, split="test", **task_options("zoo:toyworld")["ioi"])
    s = activation_patching(model, ps, "z", direction="noise", layers=[0], heads=[3], progress=False)
    clean, corrupted = s.baseline["clean"], s.baseline["corrupted"]
    lost = (clean - float(s.values[0, 0])) / (clean - corrupted)
    assert float(result.scores["ioi"][0, 3]) == pytest.approx(lost, abs=1e-5)


def test_cross_faithfulness_is_normalised_between_no_head_and_every_head():
    """Every head kept scores 1, no head kept scores 0, on any task; random circuits of every head too."""
    from circuits.graph import Circuit, Shape
    from circuits.models import load_model

    model = load_model("zoo:toyworld", device="cpu")
    pss, _ = ct.prompts(model, "zoo:toyworld", ["ioi", "greater_than"], 16, 0)
    every = Circuit.from_classes({f"a{layer}.h{h}": None for layer in range(4) for h in range(4)},
                                 shape=Shape.of(model))
    out = ct.cross_faithfulness(model, pss, {"every": every}, seed=0, n_random=2)
    for task in pss:
        assert out["matrix"]["every"][task] == pytest.approx(1.0, abs=1e-5)
        assert out["random"][task]["mean"] == pytest.approx(1.0, abs=1e-5)


def test_the_pair_and_the_matrix_use_the_library_comparisons(result):
    from circuits.graph.compare import head_jaccard

    a, b = ct.PAIR
    assert result.pair["jaccard"] == pytest.approx(head_jaccard(result.circuits[a], result.circuits[b]))
    shared = result.circuits[a].heads() & result.circuits[b].heads()
    assert len(result.pair["shared"].core) == len(shared)
    sim = result.similarity
    assert sim.names == list(result.circuits)
    for i, p in enumerate(sim.names):
        for j, q in enumerate(sim.names):
            assert sim.matrix[i][j] == pytest.approx(head_jaccard(result.circuits[p], result.circuits[q]))


def test_a_task_below_the_floor_is_skipped_with_its_reason():
    from circuits.models import load_model

    model = load_model("zoo:toyworld", device="cpu")
    pss, audit = ct.prompts(model, "zoo:toyworld", ["greater_than"], 16, 0, floor=1.01)
    assert pss == {} and not audit["greater_than"]["usable"]
    assert "clean accuracy" in audit["greater_than"]["reason"]
    with pytest.raises(ValueError, match="does none of the tasks"):
        ct.run("zoo:toyworld", tasks=["greater_than"], pair=("ioi", "greater_than"), n=16, device="cpu",
               progress=False, floor=1.01)


def test_write_exports_every_circuit_in_every_format(result, tmp_path):
    from circuits.graph.serialize import load_circuit

    ct.write(result, str(tmp_path))
    d = json.loads((tmp_path / "compare_tasks.json").read_text(),
                   parse_constant=lambda c: pytest.fail(f"bare {c} in compare_tasks.json"))
    assert set(d["tasks"]) == set(TASKS) and d["provenance"]["task"] == "compare_tasks"
    assert d["settings"]["method"] == ct.METHOD
    for task, circuit in result.circuits.items():
        assert load_circuit(tmp_path / "circuits" / f"{task}.json") == circuit
        for ext in ("mib.json", "graphml", "dot", "tex", "pdf", "svg", "png"):
            assert (tmp_path / "circuits" / f"{task}.{ext}").stat().st_size > 100
    for stem in ("heads_pair", "heads_all_tasks", "overlap_curve", "cross_faithfulness", "similarity"):
        assert (tmp_path / f"{stem}.png").stat().st_size > 1000
    assert "ioi vs colored_objects" in ct.summary(result)


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "ioi"], "two tasks"),
    (["--tasks", "ioi,nosuch"], "unknown tasks"),
    (["--fraction", "0"], "fraction"),
    (["--n", "4"], "too few"),
])
def test_bad_arguments_get_one_line_and_write_nothing(argv, message, tmp_path, capsys):
    assert ct.main([*argv, "--device", "cpu", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    folder = tmp_path / "compare_tasks"
    assert not folder.exists() or not any(folder.iterdir())
