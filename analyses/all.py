"""Every analysis on the zoo defaults, then one index page: ``python -m analyses.all`` (``make all``).

Each analysis runs as its own process (``python -m analyses.<name>``, the command its make target
runs), so one that fails or runs out of memory leaves the others running; a progress line per
analysis says how long it took and whether it worked (an analysis that finds the model does not do its
task exits with ``circuits.cli.REFUSED``: listed as refused, with its reason, not as a failure). Then ``results/index.md`` links each
analysis's summary and figures and quotes the summary, and ``--gallery`` copies one figure per
analysis (the README's gallery, ``docs/gallery``) and ``--docs`` writes each summary, with the hashes of
the zoo weights it describes, as ``docs/results/<name>.md`` (where the README's numbers come from). The
exit code is 1 if any analysis failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from analyses.common import SUMMARY
from circuits.cli import REFUSED


@dataclass(frozen=True)
class Analysis:
    """One analysis as ``make all`` runs it: its module, arguments, result folders (relative to the
    results root) and the figure the gallery shows (the first of ``gallery`` that exists)."""

    name: str
    module: str
    args: tuple[str, ...]
    folders: tuple[str, ...]
    gallery: tuple[str, ...] = field(default_factory=tuple)
    notebook: str = ""  # "" for a record with no notebook (zoo-check, bench)
    models: tuple[str, ...] = ("zoo:toyworld",)  # the zoo models it reads (their weights' hashes go in the docs)


ZOO_MODELS = ("zoo:toyworld", "zoo:reasoner-base", "zoo:reasoner-sft", "zoo:reasoner-distill", "zoo:reasoner-grpo")

ANALYSES: tuple[Analysis, ...] = (
    Analysis("ioi", "analyses.ioi", (), ("ioi/zoo_toyworld",), ("circuit.png",), "01_ioi"),
    Analysis("colored-objects", "analyses.colored_objects", (), ("colored_objects/zoo_toyworld",), ("circuit.png",),
             "02_colored_objects"),
    Analysis("mental-math", "analyses.mental_math", ("--model", "zoo:toyworld", "--model", "zoo:reasoner-base"),
             ("mental_math/zoo_toyworld", "mental_math/zoo_reasoner-base"), ("knockout.png",), "03_mental_math",
             ("zoo:toyworld", "zoo:reasoner-base")),
    Analysis("recall-reasoning", "analyses.recall_reasoning", (), ("recall_reasoning/zoo_toyworld",),
             ("dissociation.png",), "04_recall_reasoning"),
    Analysis("discover", "analyses.discover", (), ("discover/ioi/zoo_toyworld",), ("curves.png",), "05_discovery"),
    Analysis("discover-colored-objects", "analyses.discover", ("--task", "colored_objects"),
             ("discover/colored_objects/zoo_toyworld",), ("curves.png",), "05_discovery"),
    Analysis("compare-tasks", "analyses.compare_tasks", (), ("compare_tasks/zoo_toyworld",),
             ("heads_pair.png", "heads_all_tasks.png"), "06_compare_tasks"),
    Analysis("compare-regimes", "analyses.compare_regimes", ("--n", "32"), ("compare_regimes/zoo",),
             ("regimes_effect.png",), "07_compare_regimes",
             ZOO_MODELS),
    Analysis("thinkedit", "analyses.thinkedit", ("--model", "zoo:reasoner-sft"), ("thinkedit/zoo_reasoner-sft",),
             ("before_after.png",), "08_thinkedit", ("zoo:reasoner-sft",)),
    Analysis("repair", "analyses.repair", (), ("repair/zoo_toyworld",), ("repair.png",), "09_head_repair"),
    # records rather than analyses (no notebook, no figure): the zoo's targets, and the benchmarks
    Analysis("zoo-check", "analyses.zoo_check", (), ("zoo_check",), (), "", ZOO_MODELS),
    Analysis("bench", "analyses.bench", (), ("bench",), (), "", ()),
)


@dataclass
class Outcome:
    """How one analysis went: its exit code and wall time (s)."""

    analysis: Analysis
    returncode: int
    seconds: float

    @property
    def status(self) -> str:
        """ok, refused (the model does not do the task) or FAILED (exit code)."""
        if self.returncode == 0:
            return "ok"
        return "refused (the model does not do the task)" if self.returncode == REFUSED else \
            f"FAILED (exit {self.returncode})"

    @property
    def failed(self) -> bool:
        """A crash or bad input (a refusal is a finding, not a failure)."""
        return self.returncode not in (0, REFUSED)


def run_one(a: Analysis, out: str, seed: int) -> Outcome:
    """``python -m <module> <args> --seed S --out OUT``; its output streams through."""
    t = time.time()
    proc = subprocess.run([sys.executable, "-m", a.module, *a.args, "--seed", str(seed), "--out", out], check=False)
    return Outcome(a, proc.returncode, time.time() - t)


def pick_figure(folder: Path, preferred: tuple[str, ...]) -> Path | None:
    """The first of ``preferred`` in ``folder``, else its first PNG (None when it has none)."""
    for name in preferred:
        if (folder / name).is_file():
            return folder / name
    pngs = sorted(folder.glob("*.png"))
    return pngs[0] if pngs else None


def index(outcomes: list[Outcome], out: str, total: float) -> str:
    """The index page (Markdown): a table of the analyses, then each one's summary and figures."""
    root = Path(out)
    lines = ["# circuits: every analysis on the zoo", "",
             f"Made by `make all` (`python -m analyses.all`) in {total / 60:.1f} min. Each analysis's folder holds "
             "its JSON (with provenance), its figures (PDF and PNG) and its summary.", "",
             "| analysis | make target | notebook | status | time | summary |", "|---|---|---|---|---|---|"]
    for o in outcomes:
        a = o.analysis
        links = ", ".join(f"[{f}]({f}/{SUMMARY})" for f in a.folders if (root / f / SUMMARY).is_file()) or "-"
        notebook = f"`notebooks/{a.notebook}.ipynb`" if a.notebook else "-"
        lines.append(f"| {a.name} | `make {a.name}` | {notebook} | {o.status} | {o.seconds:.0f} s "
                     f"| {links} |")
    for o in outcomes:
        lines += ["", f"## {o.analysis.name}"]
        for f in o.analysis.folders:
            folder = root / f
            if not (folder / SUMMARY).is_file():
                lines += ["", f"`{f}`: no results ({o.status}; the reason is in `make all`'s log)."]
                continue
            lines += ["", f"### `{f}`", "", "```", (folder / SUMMARY).read_text().rstrip(), "```", ""]
            lines += [f"![{p.stem}]({f}/{p.name})" for p in sorted(folder.glob("*.png"))]
    return "\n".join(lines) + "\n"


def gallery(outcomes: list[Outcome], out: str, folder: str) -> list[str]:
    """One figure per analysis that worked, copied to ``folder`` as ``<analysis>.png``; the paths."""
    from circuits.io import atomic_write_bytes, checked_folder

    written = []
    for o in outcomes:
        if o.returncode != 0:
            continue
        fig = pick_figure(Path(out) / o.analysis.folders[0], o.analysis.gallery)
        if fig is not None:
            target = os.path.join(folder, f"{o.analysis.name}.png")
            checked_folder(target)
            atomic_write_bytes(target, fig.read_bytes())
            written.append(target)
    return written


def model_hashes(specs: tuple[str, ...]) -> dict[str, str]:
    """{spec: the weights' hash} of the zoo models in ``specs`` (``circuits.zoo.weights_hash``)."""
    from circuits.zoo import weights_hash

    return {s: weights_hash(s.removeprefix("zoo:")) for s in specs if s.startswith("zoo:")}


HASHES = "<!-- models: "  # how a committed summary records the weights it describes: <!-- models: spec=hash ... -->


def docs_page(o: Outcome, out: str) -> str:
    """The committed summary of one analysis (docs/results/<name>.md): the weights it describes, the command,
    and each result folder's summary as the analysis printed it."""
    a = o.analysis
    hashes = " ".join(f"{k}={v}" for k, v in model_hashes(a.models).items())
    lines = [f"# {a.name}", "", f"{HASHES}{hashes} -->",
             f"Written by `make all` from `python -m {a.module} {' '.join(a.args)}` (seed and settings in each "
             "summary). The README quotes its numbers from here; a test checks that they agree and that these "
             "summaries describe the bundled weights."]
    for f in a.folders:
        lines += ["", f"## `results/{f}`", "", "```", (Path(out) / f / SUMMARY).read_text().rstrip(), "```"]
    return "\n".join(lines) + "\n"


def write_docs(outcomes: list[Outcome], out: str, folder: str) -> list[str]:
    """docs_page of every analysis that ran to the end (ok), into ``folder``; the paths written."""
    from circuits.io import atomic_write_text, checked_folder

    written = []
    for o in outcomes:
        if o.returncode != 0:
            continue
        target = os.path.join(folder, f"{o.analysis.name}.md")
        checked_folder(target)
        atomic_write_text(target, docs_page(o, out))
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m analyses.all [--only a,b] [--seed S] [--out DIR] [--gallery DIR]``."""
    from circuits.io import atomic_write_text, checked_folder

    names = [a.name for a in ANALYSES]
    ap = argparse.ArgumentParser(prog="python -m analyses.all", description=__doc__.splitlines()[0])
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(names)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results")
    ap.add_argument("--gallery", help="copy one figure per analysis here (the README's docs/gallery)")
    ap.add_argument("--docs", help="write each analysis's summary here as <name>.md (the README's docs/results)")
    args = ap.parse_args(argv)
    chosen = names if not args.only else [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in names]
    if unknown or not chosen:
        print(f"error: unknown analyses {unknown}; known: {', '.join(names)}", file=sys.stderr)
        return 2
    checked_folder(os.path.join(args.out, "index.md"))  # an unwritable output place fails before any compute
    for place in (args.gallery, args.docs):
        if place:
            checked_folder(os.path.join(place, "ioi"))
    t0 = time.time()
    outcomes = []
    todo = [a for a in ANALYSES if a.name in chosen]
    for i, a in enumerate(todo, 1):
        print(f"[all] {i}/{len(todo)} {a.name}: python -m {a.module} {' '.join(a.args)}", flush=True)
        o = run_one(a, args.out, args.seed)
        outcomes.append(o)
        print(f"[all] {i}/{len(todo)} {a.name}: {o.status} in {o.seconds:.0f} s "
              f"(total {(time.time() - t0) / 60:.1f} min)", flush=True)
    total = time.time() - t0
    page = os.path.join(args.out, "index.md")
    atomic_write_text(page, index(outcomes, args.out, total))
    print(f"[all] wrote {page}")
    if args.gallery:
        for p in gallery(outcomes, args.out, args.gallery):
            print(f"[all] gallery: {p}")
    if args.docs:
        for p in write_docs(outcomes, args.out, args.docs):
            print(f"[all] summary for the README: {p}")
    failed = [o.analysis.name for o in outcomes if o.failed]
    refused = [o.analysis.name for o in outcomes if o.returncode == REFUSED]
    print(f"[all] {len(outcomes) - len(failed) - len(refused)} of {len(outcomes)} analyses ok in {total / 60:.1f} min"
          + (f"; refused (the model does not do the task): {', '.join(refused)}" if refused else "")
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
