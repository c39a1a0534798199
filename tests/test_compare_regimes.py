"""The compare-regimes analysis: circuits over training regimes and checkpoints, from one method."""

from __future__ import annotations

import json

import pytest
import torch

from analyses import compare_regimes as cr


def test_stable_from_is_the_first_step_after_which_every_jaccard_clears_the_bar():
    steps = ["1", "2", "3", "4", "final"]
    assert cr.stable_from(steps, [0.9, 0.5, 0.85, 0.9, 1.0]) == "3"
    assert cr.stable_from(steps, [0.9, 0.9, 0.9, 0.9, 1.0]) == "1"
    assert cr.stable_from(steps, [0.9, 0.9, 0.9, None, 1.0]) == "final"
    assert cr.stable_from(["final"], [1.0]) == "final"


def test_checkpoints_are_found_in_step_order():
    found = cr.checkpoints_of("toyworld")
    assert list(found) == sorted(found) and len(found) >= 4
    assert all(spec == f"zoo:toyworld@{step}" for step, spec in found.items())
    assert cr.checkpoints_of("nosuch") == {}


def test_kl_to_matches_kl_rows_and_refuses_misaligned_rows():
    from circuits.metrics import kl_rows, kl_to

    g = torch.Generator().manual_seed(0)
    ref, x = torch.randn(3, 7, generator=g), torch.randn(6, 7, generator=g)
    m = kl_to(ref)
    assert torch.allclose(m.fn(x, None), kl_rows(x, ref.repeat(2, 1)))
    assert torch.allclose(m.fn(ref, None), torch.zeros(3), atol=1e-6)
    with pytest.raises(ValueError, match="cannot be matched"):
        m.fn(x[:4], None)


@pytest.fixture(scope="module")
def evolution():
    return cr.evolution(16, 0, "cpu", tasks=["greater_than"], steps=4)


def test_evolution_circuits_are_the_top_edges_and_compare_with_the_final_one(evolution):
    from circuits.graph.compare import head_jaccard

    d = evolution["tasks"]["greater_than"]
    assert list(d["circuits"]) == evolution["steps"] and evolution["steps"][-1] == "final"
    final = d["circuits"]["final"]
    for step, c in d["circuits"].items():
        assert c.settings["n_edges"] == len(c.edges) == max(1, round(cr.TOP_FRACTION * c.settings["of_edges"]))
        assert d["jaccard_with_final"][step] == pytest.approx(head_jaccard(c, final))
        assert d["does_task"][step] == (d["accuracy"][step] >= cr.FLOOR)
    assert d["jaccard_with_final"]["final"] == 1.0
    for h in d["cohorts"].heads:  # the cohort table says where each head is
        assert h.present == [h_in(c, h.head) for c in d["circuits"].values()]


def h_in(circuit, head: str) -> bool:
    return head in {f"a{layer}.h{h}" for layer, h in circuit.heads()}


def test_regimes_count_emergent_retained_and_lost_heads_from_the_circuits():
    from circuits.graph.regimes import symmetric_effect

    r = cr.regimes(16, 0, "cpu", steps=4, with_checkpoints=False)
    pre = r["circuits"]["zoo:reasoner-base"]
    assert r["prompts"]["zoo:reasoner-base"]["thinking"] == "none"
    for regime, ch in r["changes"].items():
        post = r["circuits"][f"zoo:reasoner-{regime}"]
        assert r["prompts"][f"zoo:reasoner-{regime}"]["thinking"] == "full"
        names = lambda c: {f"a{layer}.h{h}" for layer, h in c.heads()}  # noqa: E731
        assert set(ch.emergent) == names(post) - names(pre)
        assert set(ch.lost) == names(pre) - names(post)
        assert set(ch.retained) == names(pre) & names(post)
        assert ch.effect == pytest.approx(symmetric_effect(pre, post))


def test_write_and_bad_arguments(evolution, tmp_path, capsys):
    r = cr.Result(16, 0, cr.TOP_FRACTION, None, evolution, cr.figures(None, evolution), 1.0)
    cr.write(r, str(tmp_path))
    d = json.loads((tmp_path / "compare_regimes.json").read_text(),
                   parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert d["evolution"]["tasks"]["greater_than"]["stable_from"] == evolution["tasks"]["greater_than"]["stable_from"]
    assert (tmp_path / "circuits" / "toyworld_final_greater_than.mib.json").is_file()
    assert (tmp_path / "circuits" / "toyworld_final_greater_than.pdf").is_file()
    assert (tmp_path / "toyworld_greater_than_cohorts.png").stat().st_size > 1000
    assert "stable from" in cr.summary(r)
    assert cr.main(["--top-fraction", "2", "--out", str(tmp_path / "x")]) == 2
    assert "top_fraction" in capsys.readouterr().err
