"""The IOI analysis end to end on a tiny model: files, numbers and provenance."""

from __future__ import annotations

import json
import os

import pytest

from analyses.ioi import main as ioi_main
from circuits.engines.path_patching import pick_senders as pick


def test_ioi_analysis_writes_json_and_figures(model_dirs, tmp_path, capsys):
    rc = ioi_main(["--model", model_dirs[("gpt2", "word")], "--n", "8", "--device", "cpu", "--out", str(tmp_path)])
    assert rc == 0
    folders = os.listdir(tmp_path / "ioi")
    assert len(folders) == 1
    folder = tmp_path / "ioi" / folders[0]
    r = json.loads((folder / "ioi.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} in ioi.json"))
    for stem in ("patching", "path_patching", "circuit"):
        for ext in ("pdf", "png"):
            assert (folder / f"{stem}.{ext}").stat().st_size > 1000
    assert set(r["head_patching"]) == {"noise", "denoise"}
    assert len(r["head_patching"]["noise"]["normalized"]) == 2  # layers
    assert "logits" in r["path_patching"]
    prov = r["provenance"]  # how it was made
    assert r["schema_version"] == 1 and r["analysis"] == "ioi"
    assert prov["n"] == 8 and prov["seed"] == 0 and prov["task"] == "ioi" and prov["versions"]["torch"]
    assert prov["model"]["n_layers"] == 2 and "commit" in prov["git"]
    assert prov["fast_paths"]["block_replay"]["on"] is True  # the record of what ran, with reasons
    assert sorted(os.listdir(tmp_path / "ioi")) == folders  # published as a unit: no staging folder left
    assert r["baseline"]["abc"]["prompts"]
    out = capsys.readouterr().out
    assert "IOI on" in out and "wrote" in out


def test_pick_selects_by_sign_and_size():
    import torch

    eff = torch.tensor([[-30.0, -10.0, 5.0], [-1.0, 40.0, -8.0]])
    assert pick(eff, set()) == [(0, 0), (0, 1), (1, 2)]
    assert pick(eff, {(0, 0)}, cap=1) == [(0, 1)]
    assert pick(eff, set(), sign=+1) == [(1, 1)]  # 5 < 25% of 40
    assert pick(torch.tensor([[-1.0]]), set()) == []


def test_discover_analysis_writes_curves_circuit_and_agreement(model_dirs, tmp_path, capsys):
    from analyses.discover import main as discover_main

    rc = discover_main(["--task", "ioi", "--model", model_dirs[("gpt2", "word")], "--n", "6", "--device", "cpu",
                        "--out", str(tmp_path), "--steps", "2", "--n-boot", "2"])
    assert rc == 0
    folder = tmp_path / "discover" / "ioi"
    (sub,) = list(folder.iterdir())
    r = json.loads((sub / "discover.json").read_text())
    assert set(r["mib"]) == {"EAP", "EAP-IG-inputs", "EAP-IG-activations", "ACDC", "EAP-IG-inputs per position",
                             "exact single edges"}
    single, exact = r["mib"]["exact single edges"], r["agreement"]["edge"]["exact"]
    assert len(exact) == single["total_edges"]  # the sweep covered every edge
    assert single["settings"]["additivity"] == pytest.approx(sum(exact) / (single["m_full"] - single["m_empty"]))
    assert r["mib"]["EAP-IG-inputs per position"]["settings"]["per_position"]
    assert len(r["mib"]["EAP-IG-inputs per position"]["settings"]["distinct_edges"]) == len(r["mib"]["EAP"]["percentages"])
    assert len(r["checks"]["EAP-IG-inputs"]["position_verification"]["checked"]) == 5
    for c in r["mib"].values():
        assert len(c["faithfulness"]) == 10 and c["faithfulness"][-1] == pytest.approx(1.0, abs=1e-4)
    ref = r["exact_reference"]
    assert ref["settings"]["method"] == "exact-greedy" and ref["faithfulness"][-1] == pytest.approx(1.0, abs=1e-4)
    assert set(r["cpr_of_reference"]) == set(r["mib"])
    for name, frac in r["cpr_of_reference"].items():
        assert frac == pytest.approx(r["mib"][name]["cpr"] / ref["cpr"])
    assert {"node", "edge"} <= set(r["agreement"])
    assert len(r["checks"]["EAP-IG-inputs"]["verification"]["checked"]) == 5
    assert r["provenance"]["task"] == "ioi" and r["eap_ig_circuit"]["stability"]["n_boot"] == 2
    assert json.loads((sub / "eap_ig_circuit.json").read_text())["edges"]
    for stem in ("curves", "circuit"):
        assert (sub / f"{stem}.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "CPR" in out and "heads checked against exact patching" in out and "exact reference" in out
    assert "distinct edges held at" in out and "exact single edges: ranked by each edge's exact effect alone" in out
