"""Documentation checks: docstrings on the public API and self-contained module docs.

* every module under ``circuits/`` and ``analyses/`` has a module docstring;
* every public top-level function and class defined in such a module, and every
  public method or property of a public class, has a docstring (a method that
  overrides a documented base-class method may inherit its docstring; a class
  must have its own, not an inherited or dataclass/namedtuple-generated one);
* no file under ``circuits/`` or ``analyses/`` points readers outside the
  repository (to ``methods.md`` or ``../shared``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("circuits", "analyses")
OUTSIDE_REFERENCES = ("methods.md", "../shared")

_METHOD_TYPES = (types.FunctionType, property, classmethod, staticmethod, functools.cached_property)


def module_names(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """Dotted names of every ``.py`` module under ``packages`` (relative to ``root``)."""
    names = []
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join(parts))
    return names


def _own_class_doc(cls: type) -> str | None:
    """The class's own docstring, or None when absent, inherited or auto-generated."""
    doc = cls.__dict__.get("__doc__")
    if not doc or not doc.strip():
        return None
    # dataclasses and namedtuples write "Name(field, ...)" when the class has no docstring
    if re.fullmatch(rf"{re.escape(cls.__name__)}\(.*\)", doc.strip(), flags=re.DOTALL):
        return None
    return doc


def undocumented(module: types.ModuleType) -> list[str]:
    """Qualified names of the public objects in ``module`` that lack a docstring.

    Only objects defined in ``module`` itself count (names imported from
    elsewhere are skipped). Methods and properties use ``inspect.getdoc``, so an
    override of a documented base-class method passes.
    """
    missing = []
    for name, obj in vars(module).items():
        if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            if inspect.getdoc(obj) is None:
                missing.append(f"{module.__name__}.{name}")
            continue
        if _own_class_doc(obj) is None:
            missing.append(f"{module.__name__}.{name}")
        for attr, raw in vars(obj).items():
            if attr.startswith("_") or not isinstance(raw, _METHOD_TYPES):
                continue
            member = raw if isinstance(raw, (property, functools.cached_property)) else getattr(obj, attr)
            if inspect.getdoc(member) is None:
                missing.append(f"{module.__name__}.{name}.{attr}")
    return missing


@pytest.fixture(scope="module")
def modules() -> list[types.ModuleType]:
    return [importlib.import_module(name) for name in module_names()]


def test_module_names_cover_the_packages():
    names = module_names()
    assert "circuits" in names and "analyses" in names
    assert "circuits.engines.ablation" in names and "circuits.tasks.task" in names


def test_every_module_has_a_docstring(modules):
    missing = [m.__name__ for m in modules if not (m.__doc__ or "").strip()]
    assert not missing, f"modules without a docstring: {missing}"


def test_public_api_has_docstrings(modules):
    missing = [name for m in modules for name in undocumented(m)]
    assert not missing, f"{len(missing)} public objects without a docstring:\n" + "\n".join(missing)


def test_no_references_outside_the_repository():
    hits = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts or path.suffix == ".safetensors":
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            for i, line in enumerate(text.splitlines(), 1):
                if any(ref in line for ref in OUTSIDE_REFERENCES):
                    hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()[:120]}")
    assert not hits, "references to files outside the repository:\n" + "\n".join(hits)


# -- the checker itself catches what it should ---------------------------------

_SYNTHETIC = '''
"""A synthetic module for the docstring checker."""

from os.path import join  # imported: skipped

from dataclasses import dataclass


def documented():
    """Has one."""


def undocumented_function():
    pass


def _private():
    pass


class Base:
    """A base class."""

    def run(self):
        """Run."""

    @property
    def size(self):
        """The size."""
        return 1


class Child(Base):
    """Overrides inherit the base docstrings."""

    def run(self):
        pass

    @property
    def size(self):
        return 2

    def extra(self):
        pass

    @property
    def bare_property(self):
        return 3

    @staticmethod
    def bare_static():
        pass

    @classmethod
    def bare_classmethod(cls):
        pass

    def _private(self):
        pass


class NoDoc(Base):
    pass


@dataclass
class Record:
    x: int


class _Hidden:
    def method(self):
        pass
'''


def test_checker_flags_undocumented_objects(tmp_path, monkeypatch):
    (tmp_path / "docs_synthetic_mod.py").write_text(_SYNTHETIC)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("docs_synthetic_mod", None)
    mod = importlib.import_module("docs_synthetic_mod")
    try:
        assert sorted(undocumented(mod)) == sorted([
            "docs_synthetic_mod.undocumented_function",
            "docs_synthetic_mod.Child.extra",
            "docs_synthetic_mod.Child.bare_property",
            "docs_synthetic_mod.Child.bare_static",
            "docs_synthetic_mod.Child.bare_classmethod",
            "docs_synthetic_mod.NoDoc",
            "docs_synthetic_mod.Record",
        ])
    finally:
        sys.modules.pop("docs_synthetic_mod", None)


def test_module_names_on_a_synthetic_tree(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    for rel in ("pkg/__init__.py", "pkg/a.py", "pkg/sub/__init__.py", "pkg/sub/b.py"):
        (tmp_path / rel).write_text('"""doc"""\n')
    assert module_names(tmp_path, ("pkg",)) == ["pkg", "pkg.a", "pkg.sub", "pkg.sub.b"]
