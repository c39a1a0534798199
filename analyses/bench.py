"""The benchmarks as a result: ``python -m analyses.bench`` (``make bench``).

Runs ``benchmarks/bench_engines.py`` (head patching, faithfulness, path patching against
transformer-lens, with the FLOP bound) and ``benchmarks/bench_attribution.py`` (EAP, EAP-IG, the MIB
curve, the ACDC sweep, IG completeness gaps) in one process, writes their JSON to results/bench/
and their printed tables as the summary, which ``make all --docs`` commits as docs/results/bench.md
for the README to quote. Timings are of this machine and this run; the model is a random
GPT-2-small-shaped one (no zoo weights), with fixed seeds: ``--seed`` must be 0.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from pathlib import Path

from analyses.common import run_analysis

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


class _Tee(io.StringIO):
    """Keeps what is written and passes it on (the benchmarks' progress stays visible)."""

    def __init__(self, stream):
        super().__init__()
        self.stream = stream

    def write(self, s: str) -> int:
        self.stream.write(s)
        self.stream.flush()
        return super().write(s)


def run_benchmarks(folder: str, small: bool = False) -> str:
    """Both benchmark scripts, JSON into ``folder`` (engines.json, attribution.json); their output."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    import bench_attribution
    import bench_engines

    extra = ["--small"] if small else []
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        for name, mod in (("engines", bench_engines), ("attribution", bench_attribution)):
            rc = mod.main(["--out", os.path.join(folder, f"{name}.json"), *extra])
            if rc:
                raise RuntimeError(f"benchmarks/bench_{name}.py exited with {rc}")
    return tee.getvalue()


def summary(output: str) -> str:
    """The benchmarks' tables and totals: their output without the per-step progress lines, the JSON
    they echo (it is in the result files) and the paths they wrote."""
    keep, in_json = [], False
    for line in output.splitlines():
        if line == "{":
            in_json = True
        elif in_json:
            in_json = line != "}"
        elif not line.startswith(("[bench]", "wrote ")):
            keep.append(line)
    return "\n".join(keep).strip()


def main(argv: list[str] | None = None) -> int:
    """``python -m analyses.bench [--out DIR] [--small]``: results/bench/{engines,attribution}.json, summary.txt."""
    ap = argparse.ArgumentParser(prog="python -m analyses.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results")
    ap.add_argument("--small", action="store_true", help="a 2-layer model (a smoke run, not a benchmark)")
    ap.add_argument("--seed", type=int, default=0, help="must be 0: the benchmarks use fixed seeds")
    args = ap.parse_args(argv)
    if args.seed != 0:
        ap.error(f"--seed {args.seed}: the benchmarks use fixed seeds (use 0)")
    return run_analysis(lambda folder: summary(run_benchmarks(folder, args.small)),
                        os.path.join(args.out, "bench"), n=1, seed=0)


if __name__ == "__main__":
    raise SystemExit(main())
