"""ThinkEdit on a reasoner (Sun et al. 2025): ``python -m analyses.thinkedit``.

Does a direction in the residual stream control how long the model thinks, do a few heads write
along it, and does projecting it out of their output weights make the model think short less often
and answer better? Steps, each a function that returns data (the paper's procedure, adapted to the
zoo's arithmetic reasoner):

1. :func:`collect` - sample one response per problem (fixed problem and sampling seeds) on two
   draws of training problems; thinking length, correctness;
2. :func:`directions` - the length direction (mean long minus mean short), at the decision position
   (the ``<think>`` token) at ``resid_post`` (the paper's "mlp" site) and ``resid_mid`` (its "attn"
   site), and at the paper's positions (those that predict the thinking tokens, ``resid_mid``); each
   with its stability across the two draws (cosine per layer) and its size relative to the
   residual norm;
3. :func:`steering` - add alpha * v at every layer, |alpha v| up to STEER_MAX of the residual norm:
   the exact P(short) = P(``</think>`` | prompt, ``<think>``), the short rate and accuracy of
   sampled responses, for the two decision-position directions. The edit uses the direction of
   :data:`SITE` (on the zoo reasoner the attention-site direction does not steer: see the output);
4. :func:`head_scores` - each head's direct write along the short direction on the short responses;
5. :func:`choose_k` - k chosen on a separate selection split (training problems), never on the
   evaluation problems;
6. :func:`evaluate` - before and after editing the top-k heads, on held-out problems with the same
   sampling seeds, against k random heads (several draws) and the k lowest-scoring heads: short
   rate, accuracy, accuracy of the shortest 5/10/20% of responses, mean P(short), each with a
   bootstrap 95% interval;
7. :func:`figures`; :func:`write` also saves the edited checkpoint.

:func:`main` writes results/thinkedit/<model>/ as a unit and prints a summary.
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
from circuits.cli import ModelFailsTask

SHORT_MAX = 2  # thinking tokens of a short trace: "<think> </think>", no step
LONG_MIN = 13  # a trace that writes at least two steps (the full three-operand trace)
SITE = "resid_post"  # the site of the direction that is steered along and projected out
STEER_MAX = 0.1  # the largest steering vector, as a fraction of the mean residual norm
ALPHAS = 7  # steering strengths, evenly spaced in [-STEER_MAX, +STEER_MAX] of the residual norm
K_CANDIDATES = (1, 2, 4, 8)
SHORTEST = (0.05, 0.10, 0.20)
N_BOOT = 1000


def collect(model: Any, problems: list[Any], sample_seed: int) -> Any:
    """One sampled response per problem (the recipe's temperature) as ``thinkedit.Responses``."""
    from circuits.zoo.evaluate import responses

    return responses(model, problems, sample_seed)


def problems_of(split: str, n: int, seed: int) -> list[Any]:
    """``n`` arithmetic problems of ``split`` drawn with ``seed``."""
    from circuits.zoo.recipes import arithmetic as ar

    rng = random.Random(seed)
    return [ar.sample_problem(rng, split=split) for _ in range(n)]


READINGS = {"decision/resid_post": ("decision", "resid_post"), "decision/resid_mid": ("decision", "resid_mid"),
            "thinking/resid_mid": ("thinking", "resid_mid")}


def directions(model: Any, draws: list[Any]) -> dict[str, Any]:
    """{"<where>/<site>": {"direction": Direction of the first draw, "cosine": per-layer cosine between
    the draws}} for each reading in :data:`READINGS`."""
    from circuits.editing.directions import cosine
    from circuits.editing.thinkedit import length_direction

    pad = model.tokenizer.pad_token_id
    for i, r in enumerate(draws):
        short, long_ = r.groups(SHORT_MAX, LONG_MIN)
        if not short or not long_:
            closed = sum(t > 0 for t in r.think_len)
            raise ModelFailsTask(f"draw {i} of {len(r.think_len)} sampled responses has {len(short)} short "
                                 f"(<= {SHORT_MAX} thinking tokens) and {len(long_)} long (>= {LONG_MIN}) traces "
                                 f"({closed} closed): the model does not think both ways, so there is no length "
                                 "direction to find")
    out = {}
    for name, (where, site) in READINGS.items():
        ds = [length_direction(model, r, SHORT_MAX, LONG_MIN, where=where, site=site, pad=pad) for r in draws]
        out[name] = {"direction": ds[0], "cosine": cosine(ds[0], ds[1])}
    return out


def _stats(records: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """Short rate, accuracy, shortest-p% accuracy and mean P(short), with bootstrap 95% intervals."""
    n = len(records)
    ok = torch.tensor([float(r["correct"]) for r in records])
    length = torch.tensor([float(r["thinking_length"]) if r["thinking_length"] > 0 else float("inf")
                           for r in records])
    short = torch.tensor([float(0 < r["thinking_length"] <= SHORT_MAX) for r in records])
    ps = torch.tensor([r["p_short"] for r in records])

    def measures(idx: torch.Tensor) -> dict[str, torch.Tensor]:  # idx [B, n] resampled rows -> [B] each
        order = torch.gather(idx, 1, torch.argsort(length[idx], dim=1, stable=True))
        out = {"accuracy": ok[idx].mean(1), "short_rate": short[idx].mean(1), "p_short": ps[idx].mean(1)}
        for p in SHORTEST:
            m = max(1, int(p * n))
            out[f"accuracy_shortest_{round(p * 100)}%"] = ok[order[:, :m]].mean(1)
        return out

    point = {k: float(v[0]) for k, v in measures(torch.arange(n)[None]).items()}
    g = torch.Generator().manual_seed(seed)
    boots = measures(torch.randint(n, (N_BOOT, n), generator=g))
    ci = {k: [float(v.quantile(0.025)), float(v.quantile(0.975))] for k, v in boots.items()}
    return {**point, "ci": ci, "n": n}


def measure(model: Any, problems: list[Any], sample_seed: int, seed: int) -> dict[str, Any]:
    """Sample once per problem; the :func:`_stats` of the records, and the records."""
    from circuits.zoo.evaluate import p_short

    resp = collect(model, problems, sample_seed)
    ps = p_short(model, model.tokenizer, problems)
    records = [{"problem": p.prompt, "correct": ok, "thinking_length": t, "p_short": round(float(q), 5)}
               for p, ok, t, q in zip(problems, resp.correct, resp.think_len, ps)]
    return {**_stats(records, seed), "records": records}


def steering(model: Any, direction: Any, problems: list[Any], sample_seed: int, seed: int) -> dict[str, Any]:
    """P(short) and accuracy while alpha * v is added at every layer (at the direction's site), for
    ALPHAS strengths up to STEER_MAX of the residual norm (positive: towards long)."""
    from circuits.editing.steering import steer

    vectors = {layer: direction.vector(layer) for layer in direction.layers}
    top = STEER_MAX / max(direction.relative_norm)
    alphas = [top * (2 * i / (ALPHAS - 1) - 1) for i in range(ALPHAS)]
    rows = []
    for a in alphas:
        with steer(model, vectors, a, site=direction.site):
            m = measure(model, problems, sample_seed, seed)
        rows.append({"alpha": a, "relative_norm": a * max(direction.relative_norm),
                     **{k: m[k] for k in ("p_short", "short_rate", "accuracy")}, "ci": m["ci"]})
    ps = [r["p_short"] for r in rows]
    base = rows[ALPHAS // 2]
    monotone = all(x >= y for x, y in zip(ps, ps[1:]))
    kept = all(r["accuracy"] >= base["ci"]["accuracy"][0] for r in rows[ALPHAS // 2:])
    return {"alphas": alphas, "rows": rows, "p_short_monotone_decreasing": monotone,
            "accuracy_kept_towards_long": kept}


def head_scores(model: Any, resp: Any, direction: Any) -> torch.Tensor:
    """[layer, head] each head's write along the short direction at the decision position."""
    from circuits.editing.thinkedit import short_head_scores

    return short_head_scores(model, resp, direction, SHORT_MAX, LONG_MIN, where="decision",
                             pad=model.tokenizer.pad_token_id)


def _units(direction: Any) -> dict[int, torch.Tensor]:
    return {layer: -direction.unit(layer) for layer in direction.layers}


def choose_k(model: Any, scores: torch.Tensor, direction: Any, problems: list[Any], sample_seed: int,
             seed: int) -> dict[str, Any]:
    """Accuracy and short rate on the selection problems for each k in K_CANDIDATES; the chosen k has
    the highest accuracy (ties: the smaller k)."""
    from circuits.editing.edit import edited
    from circuits.editing.thinkedit import top_heads

    rows = {}
    for k in K_CANDIDATES:
        with edited(model, top_heads(scores, k), _units(direction)):
            m = measure(model, problems, sample_seed, seed)
        rows[k] = {key: m[key] for key in ("accuracy", "short_rate", "p_short")}
    best = max(rows, key=lambda k: (rows[k]["accuracy"], -k))
    return {"candidates": rows, "k": best}


def evaluate(model: Any, scores: torch.Tensor, direction: Any, k: int, problems: list[Any], sample_seed: int,
             seed: int, n_random: int) -> dict[str, Any]:
    """{condition: stats} on the evaluation problems: before, ThinkEdit (top-k), k lowest-scoring heads,
    and ``n_random`` draws of k random heads (their mean per measure, and each draw)."""
    from circuits.editing.edit import edited
    from circuits.editing.thinkedit import bottom_heads, random_heads, top_heads

    units = _units(direction)
    out: dict[str, Any] = {"before": measure(model, problems, sample_seed, seed)}
    heads = {"thinkedit": top_heads(scores, k), "bottom": bottom_heads(scores, k)}
    for name, hs in heads.items():
        with edited(model, hs, units) as e:
            out[name] = {**measure(model, problems, sample_seed, seed), "heads": e.heads,
                         "params_changed": e.params_changed, "percent": e.percent}
    rng = random.Random(seed)
    draws = []
    for _ in range(n_random):
        hs = random_heads(scores, k, rng)
        with edited(model, hs, units) as e:
            m = measure(model, problems, sample_seed, seed)
        draws.append({key: m[key] for key in ("accuracy", "short_rate", "p_short", "accuracy_shortest_10%")}
                     | {"heads": e.heads})
    out["random"] = {"draws": draws, **{key: sum(d[key] for d in draws) / len(draws)
                                        for key in ("accuracy", "short_rate", "p_short", "accuracy_shortest_10%")}}
    return out


def figures(scores: torch.Tensor, k: int, dirs: dict[str, Any], steer: dict[str, Any], ev: dict[str, Any],
            spec: str) -> dict[str, Any]:
    """{stem: Figure}: head scores with the edited heads outlined, direction stability, the steering
    curve, before/after with intervals."""
    from circuits.editing.thinkedit import top_heads
    from circuits.figures import bars, heatmaps, line_plot

    figs = {"head_scores": heatmaps({"write along the short direction": scores.numpy()},
                                    outlines={"write along the short direction": top_heads(scores, k)},
                                    cbar="mean projection on -u (residual units)",
                                    title=f"ThinkEdit head scores, top {k} outlined ({spec})")}
    figs["direction_stability"] = line_plot(
        {where: {str(layer): c for layer, c in zip(d["direction"].layers, d["cosine"])} for where, d in dirs.items()},
        xlabel="layer", ylabel="cosine between two draws", reference=0.9,
        title="Is the length direction stable across draws?")
    for name, sweep in steer.items():
        figs[f"steering_{name.split('/')[1]}"] = line_plot(
            {m: {f"{r['relative_norm']:+.3f}": r[m] for r in sweep["rows"]} for m in ("p_short", "short_rate", "accuracy")},
            xlabel="|alpha v| / residual norm (sign: towards long)", ylabel="fraction",
            title=f"Steering along the {name} direction ({spec})")
    conds = ["before", "thinkedit", "bottom"]
    keys = ["accuracy", "short_rate", "accuracy_shortest_10%"]
    figs["before_after"] = bars({key: {c: ev[c][key] for c in conds} | {"random": ev["random"][key]} for key in keys},
                                errors={key: {c: ev[c]["ci"][key] for c in conds} for key in keys},
                                ylabel="fraction", title=f"ThinkEdit on {spec}: held-out problems")
    return figs


@dataclass
class Result:
    """Everything :func:`run` found, and the figures drawn from it."""

    model: Any
    spec: str
    seed: int
    sizes: dict[str, int]
    draws: list[Any]
    directions: dict[str, Any]
    steering: dict[str, Any]
    scores: torch.Tensor
    choice: dict[str, Any]
    evaluation: dict[str, Any]
    figures: dict[str, Any]
    seconds: float

    def data(self) -> dict[str, Any]:
        """The numbers, as plain data for the result file."""
        groups = [r.groups(SHORT_MAX, LONG_MIN) for r in self.draws]
        return {
            "settings": {"short_max": SHORT_MAX, "long_min": LONG_MIN, "site": SITE,
                         "edit_direction": "decision position (the <think> token), short = -v",
                         "steer_max": STEER_MAX, "k_candidates": list(K_CANDIDATES), "shortest": list(SHORTEST),
                         "n_boot": N_BOOT, "sizes": self.sizes,
                         "splits": {"direction": "train (two draws)", "selection": "train", "evaluation": "test"}},
            "draws": [{"n": len(r.rows), "short": len(s), "long": len(lg),
                       "accuracy": sum(r.correct) / len(r.correct)} for r, (s, lg) in zip(self.draws, groups)],
            "directions": {w: {"cosine_between_draws": d["cosine"], **d["direction"].to_dict()}
                           for w, d in self.directions.items()},
            "steering": self.steering,
            "head_scores": self.scores.tolist(),
            "k_selection": self.choice,
            "evaluation": self.evaluation,
            "seconds": round(self.seconds, 2),
        }


@torch.no_grad()
def run(spec: str = "zoo:reasoner-sft", n_direction: int = 400, n_select: int = 200, n_eval: int = 600,
        seed: int = 0, device: str | None = None, n_random: int = 3) -> Result:
    """Every step on ``spec`` (see the module docstring); every draw has its own seed."""
    from circuits.models import load_model

    for name, v in (("n_direction", n_direction), ("n_select", n_select), ("n_eval", n_eval)):
        if v < 20:
            raise ValueError(f"{name}={v} is too few problems (at least 20)")
    t0 = time.time()
    model = load_model(spec, device=device)
    draws = [collect(model, problems_of("train", n_direction, seed + 1 + i), seed + 11 + i) for i in range(2)]
    dirs = directions(model, draws)
    direction = dirs[f"decision/{SITE}"]["direction"]
    select = problems_of("train", n_select, seed + 3)
    steer = {name: steering(model, dirs[name]["direction"], select, seed + 13, seed)
             for name in ("decision/resid_post", "decision/resid_mid")}
    scores = head_scores(model, draws[0], direction)
    choice = choose_k(model, scores, direction, select, seed + 13, seed)
    ev = evaluate(model, scores, direction, choice["k"], problems_of("test", n_eval, seed + 4), seed + 14, seed,
                  n_random)
    figs = figures(scores, choice["k"], dirs, steer, ev, spec)
    sizes = {"direction": n_direction, "selection": n_select, "evaluation": n_eval, "random_draws": n_random}
    return Result(model, spec, seed, sizes, draws, dirs, steer, scores, choice, ev, figs, time.time() - t0)


def _ci(stats: dict[str, Any], key: str) -> str:
    lo, hi = stats["ci"][key]
    return f"{stats[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def summary(r: Result) -> str:
    """The printed summary."""
    ev, d = r.evaluation, r.directions
    lines = [f"ThinkEdit on {r.spec} (seed {r.seed}; direction from {r.sizes['direction']} x 2 training problems, k "
             f"chosen on {r.sizes['selection']} others, evaluated on {r.sizes['evaluation']} held-out problems)", ""]
    for where, x in d.items():
        cos = x["cosine"]
        lines.append(f"direction at the {where} position(s): cosine between draws min {min(cos):.2f} / mean "
                     f"{sum(cos) / len(cos):.2f}; |v| / residual norm up to {max(x['direction'].relative_norm):.2f}")
    for name, st in r.steering.items():
        curve = " ".join(format(row["p_short"], ".3f") for row in st["rows"])
        acc = " ".join(format(row["accuracy"], ".2f") for row in st["rows"])
        lines += [f"steering along {name} (|alpha v| from -{STEER_MAX:.0%} to +{STEER_MAX:.0%} of the residual norm): "
                  f"P(short) {curve}; accuracy {acc}; P(short) monotone decreasing: "
                  f"{st['p_short_monotone_decreasing']}; accuracy kept towards long: {st['accuracy_kept_towards_long']}"]
    lines += [f"edit direction: decision/{SITE}",
              f"k chosen on the selection split: {r.choice['k']} (" + ", ".join(
                  f"k={k}: acc {v['accuracy']:.3f}" for k, v in r.choice["candidates"].items()) + ")",
              f"edited heads: {', '.join(ev['thinkedit']['heads'])} ({ev['thinkedit']['params_changed']} parameters, "
              f"{ev['thinkedit']['percent']:.2f}%)", "",
              f"{'condition':12s} {'accuracy':>24s} {'short rate':>24s} {'acc. shortest 10%':>24s}"]
    for c in ("before", "thinkedit", "bottom"):
        lines.append(f"{c:12s} {_ci(ev[c], 'accuracy'):>24s} {_ci(ev[c], 'short_rate'):>24s} "
                     f"{_ci(ev[c], 'accuracy_shortest_10%'):>24s}")
    rnd = ev["random"]
    lines.append(f"{'random':12s} {rnd['accuracy']:24.3f} {rnd['short_rate']:24.3f} {rnd['accuracy_shortest_10%']:24.3f}"
                 f"   (mean of {len(rnd['draws'])} draws)")
    return "\n".join(lines)


def write(r: Result, folder: str) -> list[str]:
    """thinkedit.json (with provenance), the figures, and the edited checkpoint (edited/)."""
    from circuits.editing.edit import edited, save_edited
    from circuits.editing.thinkedit import top_heads
    from circuits.models import model_info
    from circuits.results import provenance, write_result

    paths = save_figures(r.figures, folder)
    direction = r.directions[f"decision/{SITE}"]["direction"]
    with edited(r.model, top_heads(r.scores, r.choice["k"]), _units(direction)) as e:
        paths.append(save_edited(r.model, os.path.join(folder, "edited"), e, r.spec))
    data = {**r.data(), "files": [os.path.relpath(p, folder) for p in paths]}
    prov = provenance(model=model_info(r.model), task="thinkedit", seed=r.seed, n=r.sizes["evaluation"])
    return [write_result(os.path.join(folder, "thinkedit.json"), "thinkedit", data, prov), *paths]


def main(argv: list[str] | None = None) -> int:
    """``python -m analyses.thinkedit [--model M] [--n-eval N] [--seed S] [--device D] [--out DIR]``."""
    ap = argparse.ArgumentParser(prog="python -m analyses.thinkedit", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="zoo:reasoner-sft")
    ap.add_argument("--n-direction", type=int, default=400)
    ap.add_argument("--n-select", type=int, default=200)
    ap.add_argument("--n-eval", type=int, default=600)
    ap.add_argument("--random-draws", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device")
    ap.add_argument("--out", default="results")
    args = ap.parse_args(argv)

    def analyse(folder: str) -> str:
        r = run(args.model, args.n_direction, args.n_select, args.n_eval, args.seed, args.device, args.random_draws)
        paths = write(r, folder)
        return summary(r) + f"\n\nthinkedit.json, {len(paths) - 1} files and the edited checkpoint in {r.seconds:.1f} s"

    return run_analysis(analyse, os.path.join(args.out, "thinkedit", safe_name(args.model)), n=args.n_eval,
                        seed=args.seed)


if __name__ == "__main__":
    raise SystemExit(main())
