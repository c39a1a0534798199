"""The zoo's targets as a result: ``python -m analyses.zoo_check`` (``make all``'s zoo-check entry).

The same measurement as ``make zoo-check`` (``circuits.zoo.check``: every bundled model on its
tasks, clean and counterfactual, and the reasoners' organism targets), written as a result folder
(results/zoo_check/: zoo-check.json and the summary) so that ``make all --docs`` can commit it with the
weights' hashes and the README can quote it. A target that fails is a finding here, listed FAIL in
the summary (the tests hold it as a strict xfail with its reason): this exits 0 where ``make
zoo-check`` exits 1. The check draws its prompts with its own fixed seeds; ``--seed`` must be 0.
"""

from __future__ import annotations

import argparse
import os
import time

from analyses.common import run_analysis


def measure(names: list[str] | None = None) -> tuple[dict, list[tuple[str, bool, str]]]:
    """(measured numbers per model, [(target, passed, detail)]) for ``names`` (default: every bundled model)."""
    from circuits.zoo import check, list_zoo

    every = list_zoo()
    if not every:
        raise ValueError("no zoo models are bundled (run `make zoo`)")
    measured = check.measure(names or every)
    return measured, check.verdicts(measured, every)


def main(argv: list[str] | None = None) -> int:
    """``python -m analyses.zoo_check [--out DIR]``: results/zoo_check/{zoo-check.json, summary.txt}."""
    from circuits.io import atomic_write_json
    from circuits.zoo import check

    ap = argparse.ArgumentParser(prog="python -m analyses.zoo_check", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results")
    ap.add_argument("--seed", type=int, default=0, help="must be 0: the check uses its own fixed seeds")
    args = ap.parse_args(argv)
    if args.seed != 0:
        ap.error(f"--seed {args.seed}: the zoo check draws its prompts with its own fixed seeds (use 0)")

    def analyse(folder: str) -> str:
        t0 = time.time()
        measured, rows = measure()
        atomic_write_json(os.path.join(folder, "zoo-check.json"), check.record(measured, rows))
        failed = sum(not ok for _, ok, _ in rows)
        return (check.report(measured, rows) + f"\n\n{len(rows) - failed} of {len(rows)} targets met "
                f"(zoo-check took {time.time() - t0:.1f} s)")

    return run_analysis(analyse, os.path.join(args.out, "zoo_check"), n=1, seed=args.seed)


if __name__ == "__main__":
    raise SystemExit(main())
