"""`circuits zoo train|check`: rebuild the zoo, or check its targets."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from circuits.io import atomic_write_json
from circuits.zoo import ZOO_DIR, list_zoo


def _check(names: list[str], write_cards: bool = False) -> int:
    from circuits.zoo import check

    t0 = time.time()
    all_names = list_zoo()
    if not all_names:
        print("no zoo models are bundled (run `make zoo`)")
        return 1
    unknown = [n for n in names if n not in all_names]
    if unknown:
        raise KeyError(f"unknown zoo model(s) {unknown}; available: {all_names}")
    measured = check.measure(names or all_names)
    rows = check.verdicts(measured, all_names)
    print(check.report(measured, rows))
    print(f"\nzoo-check took {time.time() - t0:.1f} s")
    if write_cards:
        from circuits.zoo.cards import write_cards as write

        write(measured)
        atomic_write_json(ZOO_DIR / "zoo-check.json", check.record(measured, rows))
    return 0 if all(ok for _, ok, _ in rows) else 1


RECIPES = {"toyworld": "circuits.zoo.recipes.toyworld", "reasoner": "circuits.zoo.recipes.reasoner"}


def _run_recipe(name: str, out: str) -> str:
    """Run one recipe single-threaded (bitwise reproducible whatever the core count)."""
    import importlib

    import torch

    torch.set_num_threads(1)
    importlib.import_module(RECIPES[name]).build(out)
    return name


def _train(names: list[str]) -> int:
    """Retrain into a temp folder, then swap the new models in (nothing half-written).

    Recipes run in parallel processes, one core each.
    """
    from concurrent.futures import ProcessPoolExecutor

    todo = names or list(RECIPES)
    bad = [n for n in todo if n not in RECIPES]
    if bad:
        raise KeyError(f"unknown zoo recipe(s) {bad}; recipes: {list(RECIPES)}")
    t0 = time.time()
    ZOO_DIR.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=ZOO_DIR.parent, prefix=".zoo-train-"))
    try:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=len(todo), mp_context=mp.get_context("spawn")) as pool:
            for done in pool.map(_run_recipe, todo, [str(tmp)] * len(todo)):
                print(f"recipe {done} finished after {(time.time() - t0) / 60:.1f} min")
        for d in sorted(tmp.iterdir()):
            dest = ZOO_DIR / d.name
            if dest.exists():
                shutil.rmtree(dest)
            d.replace(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"trained {todo} in {(time.time() - t0) / 60:.1f} min")
    return _check([], write_cards=True)


def run(action: str, names: list[str], write_cards: bool = False) -> int:
    """Run a zoo action: "check" the models ``names`` (``write_cards``: also rewrite the cards and
    zoo-check.json), or "train" the recipes ``names`` and then check. Empty ``names``: all.

    Returns the exit code: 0 when every target passes, else 1; another action is a ValueError.
    """
    if action == "check":
        return _check(names, write_cards=write_cards)
    if action == "train":
        return _train(names)
    raise ValueError(f"unknown zoo action {action!r}")
