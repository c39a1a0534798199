"""What every analysis script shares: result folder names and the run wrapper (checks, a folder
written as a unit, one-line errors)."""

from __future__ import annotations

import sys
from collections.abc import Callable

SUMMARY = "summary.txt"  # each analysis's printed summary, kept in its result folder


def safe_name(spec: str) -> str:
    """A model spec as a folder name: zoo:toyworld@200 -> zoo_toyworld_200."""
    return spec.replace(":", "_").replace("/", "_").replace("@", "_")


def save_figures(figures: dict, folder: str) -> list[str]:
    """Save each Figure of ``{stem: Figure}`` as ``folder/stem.pdf`` and ``.png``; the paths written."""
    import os

    from circuits.figures import save_figure

    paths: list[str] = []
    for stem, fig in figures.items():
        paths += save_figure(fig, os.path.join(folder, stem))
    return paths


def run_analysis(analyse: Callable[[str], str], folder: str, *, n: int, seed: int) -> int:
    """Run ``analyse(staging_folder) -> summary`` and publish ``folder`` as a unit; exit code.

    ``n`` and ``seed`` are checked and the output place is created before anything is
    loaded or computed; a run that fails leaves the previous results whole; every error
    is one line on stderr (``circuits.cli.one_line_errors``). The summary is printed and
    kept as ``folder/summary.txt`` (what ``make all``'s index links).
    """
    from circuits.cli import one_line_errors
    from circuits.io import run_folder
    from circuits.tasks.templates import check_n, check_seed

    def go() -> int:
        check_n(n)
        check_seed(seed)
        from circuits.io import atomic_write_text

        with run_folder(folder) as stage:
            text = analyse(str(stage))
            atomic_write_text(stage / SUMMARY, text + "\n")
        print(text)
        print(f"wrote {folder}")
        sys.stdout.flush()
        return 0

    return one_line_errors(go)
