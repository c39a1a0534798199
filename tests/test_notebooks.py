"""The notebooks: each .ipynb is the jupytext pair of its py:percent file (the file reviewers read),
is committed without outputs, and runs top to bottom on the zoo (executed here with nbclient)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "notebooks"
SOURCES = sorted(FOLDER.glob("[0-9][0-9]_*.py"))
# every analysis has a notebook that steps through it (the quickstart covers the core loop)
EXPECTED = ["00_quickstart", "01_ioi", "02_colored_objects", "03_mental_math", "04_recall_reasoning", "05_discovery",
            "06_compare_tasks", "07_compare_regimes", "08_thinkedit", "09_head_repair"]


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_every_analysis_has_a_notebook():
    assert [p.stem for p in SOURCES] == EXPECTED


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebook_and_its_pair_agree(source: Path):
    paired = source.with_suffix(".ipynb")
    assert paired.exists(), f"{paired.name} is missing: run `make notebooks`"
    py, ipynb = jupytext.read(source), jupytext.read(paired)
    assert _cells(py) == _cells(ipynb), f"{paired.name} has drifted from {source.name}: run `make notebooks`"
    raw = json.loads(paired.read_text())
    for cell in raw["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, \
                f"{paired.name} is committed with outputs: run `make notebooks`"


def test_a_drifted_pair_is_caught(tmp_path: Path):
    """The pairing check can fail: a source edited after its pair was written differs from the pair."""
    nb = jupytext.read(SOURCES[0])
    edited = jupytext.reads(jupytext.writes(nb, "py:percent") + "\n# %%\nprint('new cell')\n", "py:percent")
    assert _cells(edited) != _cells(nb)


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory) -> str:
    """A kernelspec for this interpreter (the project venv), so that no user-level 'python3' kernel
    elsewhere on the machine runs the notebooks."""
    import os

    folder = tmp_path_factory.mktemp("jupyter")
    spec = folder / "kernels" / "circuits-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "circuits test kernel", "language": "python"}))
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(folder)
    yield "circuits-test"
    if old is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = old


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebook_runs(source: Path, kernel_name: str):
    nb = jupytext.read(source)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name=kernel_name,
                                     resources={"metadata": {"path": str(FOLDER)}})
    client.execute()  # a cell that raises fails the test with its traceback
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    refused = any("refused:" in o.get("text", "") for o in outputs)  # the model does not do the task: said so
    assert images or refused, f"{source.name} shows no figure"
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
