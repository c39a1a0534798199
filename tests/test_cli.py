"""The `circuits` command and the package import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from circuits.cli import build_parser, main


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("tasks", "build", "info", "zoo", "export"):
        assert cmd in out
    assert "analyses.ioi" not in out  # analyses run as modules of their own (python -m analyses.ioi)


def test_console_script_is_declared():
    import tomllib
    from pathlib import Path

    meta = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "circuitlab"
    assert meta["project"]["scripts"]["circuits"] == "circuits.cli:main"


def test_import_is_light():
    """`import circuits` must not pull in torch or transformers (keeps it well under 3 s)."""
    code = "import sys, circuits; print(json.dumps(sorted(m for m in ('torch','transformers','transformer_lens') if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_tasks_command_lists_every_task(capsys):
    from circuits.tasks import list_tasks

    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for t in list_tasks():
        assert t in out


def test_build_command_writes_a_prompt_set(model_dirs, tmp_path, capsys):
    from circuits.prompts import PromptSet

    out = tmp_path / "ps.json"
    rc = main(["build", "ioi", "--model", model_dirs[("llama", "bpe")], "--n", "8", "--device", "cpu",
               "--options", '{"corruption": "s2_io"}', "--out", str(out)])
    assert rc == 0
    ps = PromptSet.load(out)
    assert len(ps) == 8 and ps.provenance["options"]["corruption"] == "s2_io"


def test_bad_input_gives_a_one_line_error_and_exit_code_2(capsys, tmp_path):
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("circuits: error:") and "config.json" in err
    assert main(["info", "zoo:nope"]) == 2
    assert "available zoo models" in capsys.readouterr().err


def test_parser_defaults_to_the_zoo_model():
    args = build_parser().parse_args(["build", "ioi"])
    assert args.model == "zoo:toyworld"
