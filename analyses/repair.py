"""Head repair (the circuit-reuse study, Merullo et al. 2024, section 3.6): ``python -m analyses.repair``.

Where a model is weak on Colored Objects, do heads that IOI uses in one role, and Colored Objects
in another (or not at all), fix it when made to behave as in IOI? Steps, each a function that
returns data:

1. :func:`weak_prompts` - Colored Objects where the model is weak: by default the largest scenes
   its recipe trained on (5 objects for ``zoo:toyworld``), held-out combinations;
2. :func:`roles` - each head's class in the IOI circuit (``analyses.ioi``'s path patching) and in
   the Colored Objects circuit (``analyses.colored_objects``'s, on the scene sizes it solves);
3. :func:`choose_heads` - the IOI heads whose role differs in Colored Objects, among the classes
   that read the wrong name at END (:data:`REPAIR_CLASSES`: the study's S-inhibition heads and
   negative mover, and S-suppression heads); if none differ, every IOI head of those classes, said
   so in the output;
4. :func:`repair` - at END, force the chosen heads to attend uniformly to the incorrect colour
   words, as they attend to S2 in IOI (the study's intervention); controls: the same override on
   random heads (several draws), and the chosen heads attending uniformly to every colour (no
   information about which is wrong);
5. :func:`figures`.

:func:`main` writes results/repair/<model>/ as a unit and prints a summary.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import torch

from analyses.common import run_analysis, safe_name, save_figures

# the IOI classes whose heads read the wrong name (S) at END: the study's S-inhibition heads and negative
# mover, and the S-suppression heads that attend to S and write against it (toyworld's IOI circuit)
REPAIR_CLASSES = ("s-inhibition", "negative name mover", "s-suppression")
N_RANDOM = 10
N_BOOT = 1000


def weak_prompts(model: Any, spec: str, n: int, seed: int, n_objects: int | None = None) -> tuple[Any, int]:
    """(Colored Objects prompts of ``n_objects`` objects (default: the largest trained size), that size)."""
    from analyses.colored_objects import scene_sizes
    from circuits.tasks import build_task
    from circuits.zoo import task_options

    size = n_objects or max(scene_sizes(spec))
    split = "test" if spec.startswith("zoo:") else "all"
    options = {**task_options(spec).get("colored_objects", {}), "n_objects": size}
    ps = build_task("colored_objects", model.tokenizer, n=n, seed=seed, split=split, **options)
    return ps.to(model.cfg.device), size


def roles(model: Any, spec: str, n: int, seed: int, progress: bool = False) -> dict[str, dict[str, str]]:
    """{"ioi": {head: class}, "colored_objects": {head: class}} (positions dropped; a head with several
    classes keeps the first)."""
    from analyses import colored_objects as co
    from analyses import ioi
    from circuits.names import parse_node

    def by_head(classes: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for node, cls in classes.items():
            out.setdefault(parse_node(node).unpositioned().name, cls)
        return out

    ioi_ps = ioi.prompts(model, n, seed, spec)["abc"]
    co_ps, _ = co.prompts(model, spec, n, seed)
    return {"ioi": by_head(ioi.trace_circuit(model, ioi_ps, progress).classes),
            "colored_objects": by_head(co.trace_circuit(model, co_ps, progress).classes)}


def choose_heads(r: dict[str, dict[str, str]]) -> dict[str, Any]:
    """The heads to repair (see the module docstring, step 3), and why."""
    from circuits.names import parse_node

    ioi, co = r["ioi"], r["colored_objects"]
    pool = {h: c for h, c in ioi.items() if c in REPAIR_CLASSES}
    differ = sorted((h for h in pool if co.get(h) != pool[h]), key=lambda h: (parse_node(h).layer, parse_node(h).head))
    heads = differ or sorted(pool, key=lambda h: (parse_node(h).layer, parse_node(h).head))
    reason = ("IOI inhibition-type heads whose role differs in Colored Objects" if differ else
              "no IOI inhibition-type head has a different role in Colored Objects: all of them" if pool else
              f"the IOI circuit has no head of the classes {list(REPAIR_CLASSES)}")
    return {"heads": heads, "reason": reason, "roles": {h: {"ioi": ioi[h], "colored_objects": co.get(h)}
                                                         for h in heads}}


def colour_keys(ps: Any, which: str) -> torch.Tensor:
    """[batch, n_objects] key positions: the incorrect colour words (``which="wrong"``; -1 pads the
    correct one out) or every colour word (``"all"``)."""
    cols = sorted(k for k in ps.positions if k.startswith("C") and k[1:].isdigit())
    pos = torch.stack([ps.positions[c] for c in cols], 1)  # [b, n]
    if which == "all":
        return pos
    if which != "wrong":
        raise ValueError(f"which must be 'wrong' or 'all', got {which!r}")
    return torch.where(pos == ps.positions["ANSWER"][:, None], torch.full_like(pos, -1), pos)


@torch.no_grad()
def _correct(model: Any, ps: Any) -> torch.Tensor:
    from circuits.engines.forward import end_logits

    lg = end_logits(model, ps.clean, ps.positions["END"])
    return (lg.argmax(-1) == ps.answers.to(lg.device)).float().cpu()


def _ci(x: torch.Tensor, seed: int) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    boots = x[torch.randint(len(x), (N_BOOT, len(x)), generator=g)].mean(1)
    return [float(boots.quantile(0.025)), float(boots.quantile(0.975))]


def _heads_of(names: list[str]) -> list[tuple[int, int]]:
    from circuits.names import parse_node

    return [(parse_node(h).layer, parse_node(h).head) for h in names]


@torch.no_grad()
def repair(model: Any, ps: Any, heads: list[str], seed: int, n_random: int = N_RANDOM) -> dict[str, Any]:
    """Accuracy before, after the override (chosen heads -> wrong colours), the chosen heads -> every
    colour, and random heads of the same number -> wrong colours; fixed and broken prompts."""
    from circuits.editing.attention import override_attention

    end = ps.positions["END"]
    before = _correct(model, ps)
    out: dict[str, Any] = {"before": {"accuracy": float(before.mean()), "ci": _ci(before, seed)}}
    if not heads:
        return out | {"after": None, "uniform": None, "random": None}
    chosen = _heads_of(heads)
    with override_attention(model, chosen, end, colour_keys(ps, "wrong")):
        after = _correct(model, ps)
    with override_attention(model, chosen, end, colour_keys(ps, "all")):
        uniform = _correct(model, ps)
    out["after"] = {"accuracy": float(after.mean()), "ci": _ci(after, seed),
                    "fixed": int(((before == 0) & (after == 1)).sum()), "broken": int(((before == 1) & (after == 0)).sum())}
    out["uniform"] = {"accuracy": float(uniform.mean()), "ci": _ci(uniform, seed)}
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    cells = [(a, b) for a in range(n_layers) for b in range(n_heads)]
    rng = random.Random(seed)
    draws = []
    for _ in range(n_random):
        hs = sorted(rng.sample(cells, len(chosen)))
        with override_attention(model, hs, end, colour_keys(ps, "wrong")):
            draws.append({"heads": [f"a{a}.h{b}" for a, b in hs], "accuracy": float(_correct(model, ps).mean())})
    accs = [d["accuracy"] for d in draws]
    out["random"] = {"draws": draws, "mean": sum(accs) / len(accs), "max": max(accs),
                     "beaten_by_repair": sum(out["after"]["accuracy"] > a for a in accs)}
    return out


def figures(res: dict[str, Any], spec: str, size: int) -> dict[str, Any]:
    """{stem: Figure}: accuracy before and after, against the controls, with intervals."""
    from circuits.figures import bars

    vals = {"before": res["before"]["accuracy"]}
    errs = {"before": res["before"]["ci"]}
    if res.get("after"):
        vals |= {"repair": res["after"]["accuracy"], "chosen heads, uniform": res["uniform"]["accuracy"],
                 "random heads (mean)": res["random"]["mean"]}
        errs |= {"repair": res["after"]["ci"], "chosen heads, uniform": res["uniform"]["ci"]}
    return {"repair": bars({f"{size} objects": vals}, errors={f"{size} objects": errs}, ylabel="accuracy",
                           title=f"Head repair on Colored Objects ({spec})")}


@dataclass
class Result:
    """Everything :func:`run` found, and the figures drawn from it."""

    model: Any
    spec: str
    n: int
    seed: int
    size: int
    roles: dict[str, dict[str, str]]
    choice: dict[str, Any]
    results: dict[str, Any]
    figures: dict[str, Any]
    seconds: float

    def data(self) -> dict[str, Any]:
        """The numbers, as plain data for the result file."""
        return {"settings": {"task": "colored_objects", "n_objects": self.size, "repair_classes": list(REPAIR_CLASSES),
                             "intervention": "END row of each chosen head: uniform over the incorrect colour words",
                             "n_random": N_RANDOM, "n_boot": N_BOOT},
                "roles": self.roles, "choice": self.choice, "results": self.results,
                "seconds": round(self.seconds, 2)}


def run(spec: str = "zoo:toyworld", n: int = 128, seed: int = 0, device: str | None = None,
        n_objects: int | None = None, heads: list[str] | None = None) -> Result:
    """Every step on ``spec``; ``heads`` overrides the choice (names ``a{L}.h{H}``)."""
    from circuits.models import load_model
    from circuits.names import parse_node

    if n < 16:
        raise ValueError(f"n={n} prompts is too few for a bootstrap interval; use at least 16")
    t0 = time.time()
    model = load_model(spec, device=device)
    ps, size = weak_prompts(model, spec, n, seed, n_objects)
    if heads is not None:
        for h in heads:
            node = parse_node(h)
            if node.kind != "head":
                raise ValueError(f"{h!r} is not a head name (a{{L}}.h{{H}})")
        r = {"ioi": {}, "colored_objects": {}}
        choice = {"heads": list(heads), "reason": "given", "roles": {}}
    else:
        r = roles(model, spec, 64, seed)
        choice = choose_heads(r)
    res = repair(model, ps, choice["heads"], seed)
    return Result(model, spec, n, seed, size, r, choice, res, figures(res, spec, size), time.time() - t0)


def summary(r: Result) -> str:
    """The printed summary."""
    res = r.results
    lines = [f"Head repair on Colored Objects, {r.size}-object scenes, {r.spec} ({r.n} held-out prompts, seed "
             f"{r.seed})", f"heads: {', '.join(r.choice['heads']) or 'none'} ({r.choice['reason']})"]
    for h, role in r.choice["roles"].items():
        lines.append(f"  {h}: IOI {role['ioi']}, Colored Objects {role['colored_objects'] or 'not in the circuit'}")
    b = res["before"]
    lines.append(f"before: accuracy {b['accuracy']:.3f} [{b['ci'][0]:.3f}, {b['ci'][1]:.3f}]")
    if res.get("after"):
        a, u, rnd = res["after"], res["uniform"], res["random"]
        lines += [f"after (chosen heads attend to the wrong colours): {a['accuracy']:.3f} [{a['ci'][0]:.3f}, "
                  f"{a['ci'][1]:.3f}]; fixed {a['fixed']}, broken {a['broken']}",
                  f"control, chosen heads attend to every colour: {u['accuracy']:.3f}",
                  f"control, {len(rnd['draws'])} draws of random heads: mean {rnd['mean']:.3f}, max {rnd['max']:.3f} "
                  f"(the repair beats {rnd['beaten_by_repair']}/{len(rnd['draws'])})"]
    return "\n".join(lines)


def write(r: Result, folder: str) -> list[str]:
    """repair.json (with provenance) and the figure (PDF + PNG) into ``folder``."""
    from circuits.models import model_info
    from circuits.results import provenance, write_result

    paths = save_figures(r.figures, folder)
    data = {**r.data(), "figures": [os.path.relpath(p, folder) for p in paths]}
    prov = provenance(model=model_info(r.model), task="repair", seed=r.seed, n=r.n)
    return [write_result(os.path.join(folder, "repair.json"), "repair", data, prov), *paths]


def main(argv: list[str] | None = None) -> int:
    """``python -m analyses.repair [--model M] [--n N] [--objects K] [--heads a1.h2,...] [--seed S] [--out DIR]``."""
    ap = argparse.ArgumentParser(prog="python -m analyses.repair", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="zoo:toyworld")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--objects", type=int, help="scene size (default: the largest the model was trained on)")
    ap.add_argument("--heads", default="", help="heads to repair (default: chosen from the IOI/CO comparison)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device")
    ap.add_argument("--out", default="results")
    args = ap.parse_args(argv)
    heads = [h.strip() for h in args.heads.split(",") if h.strip()] or None

    def analyse(folder: str) -> str:
        r = run(args.model, args.n, args.seed, args.device, args.objects, heads)
        paths = write(r, folder)
        return summary(r) + f"\n\nrepair.json and {len(paths) - 1} figure files in {r.seconds:.1f} s"

    return run_analysis(analyse, os.path.join(args.out, "repair", safe_name(args.model)), n=args.n, seed=args.seed)


if __name__ == "__main__":
    raise SystemExit(main())
