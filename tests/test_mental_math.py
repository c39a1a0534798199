"""The All-for-One analysis: the pipeline on a tiny model, and what it establishes on the zoo."""

from __future__ import annotations

import json

import pytest

from analyses import mental_math as mm


def test_a_model_that_solves_no_form_is_refused(model_dirs, tmp_path, capsys):
    rc = mm.main(["--model", model_dirs[("gpt2", "word")], "--n", "16", "--device", "cpu", "--out", str(tmp_path)])
    assert rc == 4 and "solves none of its mental_math forms" in capsys.readouterr().err


def test_the_pipeline_writes_its_documented_keys(tmp_path):
    r = mm.run("zoo:toyworld", n=12, seed=0, device="cpu", min_n=8)
    mm.write(r, str(tmp_path))
    d = json.loads((tmp_path / "mental_math.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert {"settings", "forms", "skipped_forms", "knockout", "af1", "provenance"} <= set(d)
    for form in d["af1"].values():
        assert set(form) == {"paper", "others_full"}
        assert {"wait", "transfer", "tau_met", "ci", "warnings", "per_example"} <= set(form["paper"])
    assert (tmp_path / "stages.png").stat().st_size > 1000 and "All-for-One on" in mm.summary(r)
    assert set(d["forms"]) == {"add", "sub"} and set(d["skipped_forms"]) == {"add3", "addsub", "subadd", "sub3"}


def test_task_and_forms_follow_the_model():
    assert mm.task_of("zoo:reasoner-base")[0] == "arithmetic"
    assert mm.task_of("zoo:toyworld") == ("mental_math", {"forms": ["add", "sub"], "max_value": 20,
                                                            "phrasings": ["eq", "what", "is"]})
    assert [label for label, _ in mm.forms_of("arithmetic", {})] == ["3 operands", "4 operands"]


@pytest.fixture(scope="module")
def reasoner():
    return mm.run("zoo:reasoner-base", n=32, seed=0, device="cpu")


def test_on_reasoner_base_the_last_token_needs_the_other_tokens_attention(reasoner):
    """What the analysis establishes on the Qwen2 reasoner: no AF1 subgraph of the paper's form (other
    tokens self-peeking from the wait on loses the task), while letting the other tokens keep their
    attention (partial sums at operand positions) restores it; and the last token's reads matter in
    the early layers, not only at the end."""
    for form, res in reasoner.found.items():
        assert not res["paper"].tau_met["transfer"] and res["paper"].faithfulness < 0.5, form
        assert res["others_full"].tau_met["transfer"] and res["others_full"].faithfulness >= 0.9, form
    for curve in reasoner.knockout.values():
        assert curve.accuracy[0] >= 0.85 and min(curve.accuracy[1:4]) < 0.3
