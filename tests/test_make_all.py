"""``make all`` (analyses.all): every analysis run as its own process, the index page, the gallery, and
refusals told apart from failures."""

from __future__ import annotations

import pytest

from analyses import all as make_all
from analyses.common import SUMMARY, safe_name
from circuits.cli import REFUSED


def test_make_all_runs_each_analysis_and_links_its_summary_and_figures(model_dirs, tmp_path, monkeypatch, capsys):
    d = model_dirs[("gpt2", "word")]
    ok = make_all.Analysis("ioi", "analyses.ioi", ("--model", d, "--n", "8", "--device", "cpu"),
                           (f"ioi/{safe_name(d)}",), ("circuit.png",), "01_ioi")
    refused = make_all.Analysis("recall-reasoning", "analyses.recall_reasoning",
                                ("--model", d, "--n", "16", "--device", "cpu"), (f"recall_reasoning/{safe_name(d)}",),
                                (), "04_recall_reasoning")
    monkeypatch.setattr(make_all, "ANALYSES", (ok, refused))
    out, gallery = tmp_path / "results", tmp_path / "gallery"
    assert make_all.main(["--out", str(out), "--gallery", str(gallery)]) == 0  # a refusal is not a failure
    text = capsys.readouterr().out
    assert "[all] 1/2 ioi: ok in" in text and "[all] 2/2 recall-reasoning: refused" in text
    assert "1 of 2 analyses ok" in text and "refused (the model does not do the task): recall-reasoning" in text
    page = (out / "index.md").read_text()
    summary = (out / ok.folders[0] / SUMMARY).read_text()
    assert "IOI on" in summary and summary.strip() in page  # the summary the run printed, quoted
    assert f"]({ok.folders[0]}/circuit.png)" in page and f"({ok.folders[0]}/{SUMMARY})" in page
    assert "| recall-reasoning | `make recall-reasoning` | `notebooks/04_recall_reasoning.ipynb` | refused" in page
    assert (gallery / "ioi.png").read_bytes() == (out / ok.folders[0] / "circuit.png").read_bytes()
    assert not (gallery / "recall-reasoning.png").exists()


def test_outcomes_and_figure_choice(tmp_path):
    a = make_all.ANALYSES[0]
    assert make_all.Outcome(a, 0, 1.0).status == "ok" and not make_all.Outcome(a, 0, 1.0).failed
    assert make_all.Outcome(a, REFUSED, 1.0).status.startswith("refused") and not make_all.Outcome(a, REFUSED, 1).failed
    assert make_all.Outcome(a, 3, 1.0).status == "FAILED (exit 3)" and make_all.Outcome(a, 3, 1.0).failed
    assert make_all.pick_figure(tmp_path, ("x.png",)) is None
    (tmp_path / "b.png").write_bytes(b"b")
    (tmp_path / "a.png").write_bytes(b"a")
    assert make_all.pick_figure(tmp_path, ("x.png",)).name == "a.png"
    assert make_all.pick_figure(tmp_path, ("x.png", "b.png")).name == "b.png"


def test_every_make_target_and_notebook_is_listed():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    makefile = (root / "Makefile").read_text()
    for a in make_all.ANALYSES:
        assert f"\n{a.name}: setup" in makefile, a.name
        if a.notebook:  # zoo-check and bench are records, with no notebook
            assert (root / "notebooks" / f"{a.notebook}.py").exists(), a.notebook
    assert [a.name for a in make_all.ANALYSES if not a.notebook] == ["zoo-check", "bench"]


def test_unknown_analyses_and_unwritable_places_fail_first(tmp_path, capsys):
    assert make_all.main(["--only", "ioi,nope", "--out", str(tmp_path)]) == 2
    assert "unknown analyses ['nope']" in capsys.readouterr().err
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(OSError):
        make_all.main(["--only", "ioi", "--out", str(blocked / "results")])
