"""Imports run downward only (DESIGN.md's layers), checked by reading every import statement.

Function-level imports count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imports_of(path: Path) -> set[str]:
    """Every module a file imports (absolute names; relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return out


def module_files(pattern: str) -> list[Path]:
    return sorted(p for p in ROOT.glob(pattern) if p.suffix == ".py")


def offenders(files: list[Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for f in files:
        hits = sorted(m for m in imports_of(f) if m in forbidden or m.startswith(tuple(x + "." for x in forbidden)))
        if hits:
            bad[str(f.relative_to(ROOT))] = hits
    return bad


BOTTOM = ["circuits/names.py", "circuits/scores.py", "circuits/prompts.py", "circuits/io.py", "circuits/records.py",
          "circuits/metrics.py", "circuits/tokenization.py", "circuits/results.py", "circuits/figures.py"]
ABOVE_BOTTOM = ("circuits.engines", "circuits.tasks", "circuits.graph", "circuits.editing", "circuits.zoo",
                "circuits.models", "circuits.cli", "analyses")


@pytest.mark.parametrize("rule, files, forbidden", [
    ("the library never imports the analyses", "circuits/**/*.py", ("analyses",)),
    ("names, scores, prompts, io, records, metrics, figures sit at the bottom", BOTTOM, ABOVE_BOTTOM),
    ("names import nothing of the project", ["circuits/names.py"], ("circuits",)),
    ("engines never import tasks", "circuits/engines/*.py", ("circuits.tasks", "circuits.zoo")),
    ("tasks never import engines", "circuits/tasks/*.py", ("circuits.engines", "circuits.models", "circuits.graph")),
    ("the zoo registry never imports the recipes", ["circuits/zoo/__init__.py"], ("circuits.zoo.recipes",)),
    ("models depend on the zoo registry only", ["circuits/models.py", "circuits/compat.py"],
     ("circuits.zoo.recipes", "circuits.zoo.check", "circuits.engines", "circuits.tasks")),
    ("the graph module knows neither engines nor tasks", "circuits/graph/**/*.py",
     ("circuits.engines", "circuits.tasks", "circuits.models", "circuits.zoo")),
    ("the editors know neither tasks nor the zoo", "circuits/editing/*.py",
     ("circuits.tasks", "circuits.zoo", "circuits.graph")),
    ("the Circuit type is plain data", ["circuits/graph/circuit.py"],
     ("circuits.engines", "circuits.tasks", "circuits.models", "circuits.zoo", "circuits.figures", "torch")),
])
def test_imports_run_downward(rule, files, forbidden):
    paths = module_files(files) if isinstance(files, str) else [ROOT / f for f in files]
    assert all(p.is_file() for p in paths), [str(p) for p in paths if not p.is_file()]
    assert not offenders(paths, forbidden), f"{rule}: {offenders(paths, forbidden)}"


def test_the_rules_can_fail(tmp_path, monkeypatch):
    """The reader sees a lazy import inside a function."""
    f = ROOT / "circuits" / "_layering_probe.py"
    f.write_text("def f():\n    from analyses.ioi import run\n    return run\n")
    try:
        assert offenders([f], ("analyses",)) == {"circuits/_layering_probe.py": ["analyses.ioi", "analyses.ioi.run"]}
    finally:
        f.unlink()


def test_hook_names_come_from_the_site_table():
    """No hand-written ``blocks.{layer}...`` hook name outside circuits/engines/sites.py."""
    pattern = "f" + '"blocks.'  # spelled in two parts so that this file does not match itself
    hits = [str(p.relative_to(ROOT)) for p in module_files("**/*.py")
            if ".venv" not in p.parts and p.name != "sites.py" and pattern in p.read_text()]
    assert hits == []


def test_engines_take_only_the_circuit_type_from_the_graph_module():
    """Engines return Circuits; comparison, export and drawing stay above them."""
    bad = {}
    for f in module_files("circuits/engines/*.py"):
        hits = sorted(m for m in imports_of(f) if m.startswith("circuits.graph")
                      and not m.startswith("circuits.graph.circuit"))
        if hits:
            bad[str(f.relative_to(ROOT))] = hits
    assert bad == {}
