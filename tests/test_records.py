"""The records ``make all --docs`` commits besides the analyses: the benchmarks (analyses.bench) and
the zoo's targets (analyses.zoo_check), each a result folder with a summary the README can quote."""

from __future__ import annotations

import json

import pytest

from analyses import bench, zoo_check
from analyses.common import SUMMARY


def test_bench_summary_keeps_the_tables_and_drops_progress_json_and_paths():
    out = "\n".join(["[bench] head_patching_all_pos ...", "table row 4.4x", "{", ' "a": 1', "}",
                     "after 0.5", "wrote results/bench/engines.json", "fast paths: ok"])
    assert bench.summary(out) == "table row 4.4x\nafter 0.5\nfast paths: ok"


def test_bench_runs_both_benchmarks_into_one_result_folder(tmp_path, capsys):
    assert bench.main(["--out", str(tmp_path), "--small"]) == 0
    folder = tmp_path / "bench"
    engines = json.loads((folder / "engines.json").read_text())
    attribution = json.loads((folder / "attribution.json").read_text())
    assert engines["head_patching_all_pos"]["max_abs_diff"] < 1e-4  # the same numbers as transformer-lens
    assert attribution["acdc_sweep"]["taus"] == 20
    text = (folder / SUMMARY).read_text()
    for row in ("head patching, all pos", "faithfulness, per pair", "any exact method",
                "ACDC 20-tau sweep vs 20 single calls", "IG completeness gap, eap-ig-inputs 5 steps"):
        assert row in text, row
    assert str(tmp_path) not in text and "[bench]" not in text  # no machine paths, no progress lines
    assert "head patching, all pos" in capsys.readouterr().out  # progress and tables still shown


def test_records_refuse_a_seed_they_cannot_use(tmp_path, capsys):
    for main in (bench.main, zoo_check.main):
        with pytest.raises(SystemExit) as e:
            main(["--out", str(tmp_path), "--seed", "1"])
        assert e.value.code == 2
        assert "fixed seeds" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_zoo_check_lists_every_target_with_its_verdict(monkeypatch, tmp_path):
    from circuits.zoo import check

    measured = {"toyworld": {"tasks": {"ioi": {"accuracy": 1.0, "logit_diff": 5.0, "counterfactual_accuracy": 0.5}}}}
    rows = [("toyworld ioi >= 90%", True, "100.0%"), ("toyworld ioi counterfactual >= 90%", False, "50.0%")]
    monkeypatch.setattr(check, "measure", lambda names: measured)
    monkeypatch.setattr(check, "verdicts", lambda m, names: rows)
    assert zoo_check.main(["--out", str(tmp_path)]) == 0  # a failed target is a finding, not a crash
    folder = tmp_path / "zoo_check"
    text = (folder / SUMMARY).read_text()
    assert "[PASS] toyworld ioi >= 90%: 100.0%" in text and "[FAIL] toyworld ioi counterfactual >= 90%: 50.0%" in text
    assert "1 of 2 targets met" in text
    saved = json.loads((folder / "zoo-check.json").read_text())
    assert saved["targets"][1] == {"target": rows[1][0], "passed": False, "detail": "50.0%"}
