"""Circuits from edge scores (top-n, threshold, greedy), pruning, ACDC and stability.

A circuit is a boolean mask over the edge graph (True = edge kept). ``prune``
removes dangling parts as MIB does: a node stays only if it has an outgoing edge
and an incoming edge (``input`` always counts as fed, ``logits`` as read), and an
edge stays only if both its ends stay; repeated until nothing changes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuits.engines.edges import EdgeGraph, edge_graph
from circuits.graph.circuit import Circuit
from circuits.metrics import kl_rows, logit_diff
from circuits.names import Node, parse_edge, parse_reader
from circuits.prompts import PromptSet
from circuits.records import Record


def _owners(graph: EdgeGraph) -> tuple[Tensor, Tensor]:
    """(reader -> writer node matrix [W, R]: reader r belongs to writer w, logits-reader flags [R])."""
    own = torch.zeros(len(graph.writers), len(graph.readers), dtype=torch.bool)
    for r, name in enumerate(graph.readers):
        reader = parse_reader(name)
        if reader.kind == "mlp":
            own[graph.writer_index[Node("mlp", reader.layer).name], r] = True
        for h in reader.heads(graph.n_heads, graph.n_kv_heads):  # a KV group reader: every head of the group
            own[graph.writer_index[Node("head", reader.layer, h).name], r] = True
    is_logits = torch.tensor([parse_reader(n).kind == "logits" for n in graph.readers])
    return own, is_logits


def prune(graph: EdgeGraph, circuit: Tensor) -> Tensor:
    """Drop dangling nodes and edges (see the module docstring); returns a new mask."""
    mask = circuit.bool() & graph.mask
    own, is_logits = _owners(graph)
    while True:
        has_out = mask.any(1)
        fed_readers = mask.any(0)
        has_in = (own & fed_readers[None]).any(1)
        has_in[graph.writer_index["input"]] = True
        alive = has_out & has_in
        reader_alive = (own & alive[:, None]).any(0) | is_logits
        new = mask & alive[:, None] & reader_alive[None]
        if torch.equal(new, mask):
            return new
        mask = new


def _ranking(graph: EdgeGraph, scores: Tensor, absolute: bool) -> Tensor:
    s = (scores.abs() if absolute else scores).clone().float()
    s[~graph.mask] = -float("inf")
    return torch.argsort(s.flatten(), descending=True)


def _edge_count(n: Any, graph: EdgeGraph) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= graph.n_edges:
        raise ValueError(f"n must be an integer number of edges in [0, {graph.n_edges}], got {n!r}")
    return n


def select_topn(graph: EdgeGraph, scores: Tensor, n: int, *, absolute: bool = True, do_prune: bool = True) -> Tensor:
    """The n highest-scoring edges (by |score| when ``absolute``), then pruned."""
    n = _edge_count(n, graph)
    mask = torch.zeros_like(graph.mask)
    mask.view(-1)[_ranking(graph, scores, absolute)[:n]] = True
    return prune(graph, mask) if do_prune else mask


def select_threshold(graph: EdgeGraph, scores: Tensor, tau: float, *, absolute: bool = True,
                     do_prune: bool = True) -> Tensor:
    """Edges whose score (|score| when ``absolute``) is at least ``tau``, then pruned."""
    s = scores.abs() if absolute else scores
    mask = (s >= tau) & graph.mask
    return prune(graph, mask) if do_prune else mask


def select_greedy(graph: EdgeGraph, scores: Tensor, n: int, *, absolute: bool = True, do_prune: bool = True) -> Tensor:
    """Grow from the logits: repeatedly add the best edge whose reader already belongs to the circuit."""
    n = _edge_count(n, graph)
    own, is_logits = _owners(graph)
    s = (scores.abs() if absolute else scores).float().clone()
    s[~graph.mask] = -float("inf")
    mask = torch.zeros_like(graph.mask)
    reader_on = is_logits.clone()
    for _ in range(n):
        cand = s.clone()
        cand[:, ~reader_on] = -float("inf")
        cand[mask] = -float("inf")
        best = int(torch.argmax(cand))
        if cand.view(-1)[best] == -float("inf"):
            break
        w, r = divmod(best, s.shape[1])
        mask[w, r] = True
        reader_on |= own[w]
    return prune(graph, mask) if do_prune else mask


def circuit_from_mask(graph: EdgeGraph, mask: Tensor, scores: Tensor | None = None, **settings: Any) -> Circuit:
    """The edge Circuit of the edges where ``mask`` [n_writers, n_readers] and ``graph.mask`` are both True,
    each with its score from ``scores`` [n_writers, n_readers] when given; ``settings`` say how it was found
    (``task``, ``model`` and ``method`` among them become the circuit's own fields)."""
    idx = torch.nonzero(mask.bool() & graph.mask)
    edges = {graph.edge(int(w), int(r)): None if scores is None else float(scores[int(w), int(r)]) for w, r in idx}
    meta = {k: settings.pop(k) for k in ("task", "model", "method") if k in settings}
    return Circuit.from_edges(edges, graph.shape(), settings=settings, **meta)


def circuit_mask(circuit: Circuit, graph: EdgeGraph) -> Tensor:
    """An edge Circuit as a boolean mask over ``graph``'s edges [n_writers, n_readers]."""
    circuit.check_comparable(Circuit(shape=graph.shape()))
    m = torch.zeros_like(graph.mask)
    for e in circuit.edges:
        w, r = parse_edge(e)
        m[graph.index(w.name, r.name)] = True
    return m


def check_tau(tau: Any) -> float:
    """ACDC's threshold: a finite number >= 0, else a clear error (a negative or NaN tau removes nothing)."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau < 0:
        raise ValueError(f"ACDC's threshold tau must be a finite number >= 0 (the largest change of the "
                         f"objective an edge may make and still be removed), got {tau!r}")
    return float(tau)


@torch.no_grad()
def acdc(model: Any, ps: PromptSet, tau: float | Sequence[float], *, objective: str = "kl",
         candidates: Tensor | None = None, ablation: str = "corrupted", reference: PromptSet | None = None,
         tau_relative: bool = False, progress: bool = True, memory_budget: int | None = None
         ) -> Circuit | dict[float, Circuit]:
    """ACDC (Conmy et al.): from the logits backwards, drop every edge whose removal changes the
    objective by less than ``tau``.

    objective "kl": mean KL(clean || circuit) at END, in nats (the paper's default); "logit_diff": the
    change of the mean logit difference. ``candidates`` (a mask, e.g. EAP's top edges) restricts the
    search: edges outside it are removed from the start. ``tau_relative``: tau is a fraction of the
    objective's whole range, |objective(no edge) - objective(every edge)|, so one setting means the
    same on models whose logit differences differ.

    A list of taus is a sweep: every tau runs ACDC's own greedy pass (so each circuit is exactly what a
    single call would give), the passes advance together, their trial circuits are evaluated in shared
    tiled forward passes, and a circuit state met before is not evaluated again. Returns a Circuit, or
    {tau: Circuit} for a list.
    """
    from circuits.engines.edge_patching import EdgeEvaluator

    if objective not in ("kl", "logit_diff"):
        raise ValueError(f"objective must be 'kl' or 'logit_diff', got {objective!r}")
    sweep = not isinstance(tau, (int, float)) or isinstance(tau, bool)
    taus = [check_tau(t) for t in (list(tau) if sweep else [tau])]
    if not taus:
        raise ValueError("a tau sweep needs at least one tau")
    graph = edge_graph(model)
    ev = EdgeEvaluator(model, ps, ablation=ablation, reference=reference, memory_budget=memory_budget)
    start = graph.mask.clone() if candidates is None else (candidates.bool() & graph.mask)
    clean_logits = ev.logits([graph.mask])[0]
    ps_cpu = ev.ps.to("cpu")
    cache: dict[bytes, float] = {}

    def values(masks: list[Tensor]) -> list[float]:
        """The objective of each mask; each new circuit state is evaluated once, all in shared passes."""
        todo = list({m.numpy().tobytes(): m for m in masks if m.numpy().tobytes() not in cache}.items())
        if todo:
            logits = ev.logits([m for _, m in todo])
            for (k, _), lg in zip(todo, logits):
                cache[k] = (float(kl_rows(lg, clean_logits).mean()) if objective == "kl"
                            else float(logit_diff(lg.cpu(), ps_cpu).mean()))
        return [cache[m.numpy().tobytes()] for m in masks]

    full, empty = values([graph.mask.clone(), torch.zeros_like(graph.mask)])
    scale = abs(empty - full) if tau_relative else 1.0
    runs = [{"tau": t, "tau_abs": t * scale, "mask": start.clone(), "current": None, "log": []} for t in taus]
    for r, v in zip(runs, values([r["mask"] for r in runs])):
        r["current"] = v
    order = sorted(range(len(graph.readers)), key=lambda r: -graph.reader_layer(graph.readers[r]))
    todo = [(w, r) for r in order for w in sorted(torch.nonzero(start[:, r]).flatten().tolist(),
                                                   key=lambda w: -graph.writer_layer(graph.writers[w]))]
    for w, r in tqdm(todo, desc="acdc" if not sweep else f"acdc ({len(taus)} taus)", disable=not progress,
                     leave=False):
        active = [run for run in runs if run["mask"][w, r]]
        trials = []
        for run in active:
            trial = run["mask"].clone()
            trial[w, r] = False
            trials.append(trial)
        for run, trial, v in zip(active, trials, values(trials)):
            removed = abs(v - run["current"]) < run["tau_abs"]
            run["log"].append({"edge": graph.edge(w, r), "before": run["current"], "after": v, "removed": removed})
            if removed:
                run["mask"], run["current"] = trial, v
    out = {}
    for run in runs:
        out[run["tau"]] = circuit_from_mask(
            graph, prune(graph, run["mask"]), method="acdc", engine="acdc", tau=run["tau"],
            tau_relative=tau_relative, tau_abs=run["tau_abs"], objective=objective, ablation=ablation,
            candidates=None if candidates is None else int(candidates.sum()), final_objective=run["current"],
            objective_full=full, objective_empty=empty, n_prompts=len(ps), log=run["log"],
            evaluations=len(cache), sweep=taus if sweep else None)
    return out if sweep else out[taus[0]]


def jaccard(a: Tensor, b: Tensor) -> float:
    """|a & b| / |a | b| of two edge masks (1.0 for two empty circuits)."""
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


@dataclass
class Stability(Record):
    """How stable a discovered circuit is: edge Jaccard of circuits found on bootstrap resamples
    of the prompts against the circuit found on all of them."""

    jaccard: list[float]  # one per resample
    mean: float
    min: float
    n_boot: int
    seed: int


def bootstrap_stability(ps: PromptSet, find: Callable[[PromptSet], Tensor], n_boot: int = 5, seed: int = 0
                        ) -> Stability:
    """Stability of ``find(prompts) -> edge mask`` over ``n_boot`` resamples drawn with ``seed``."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    rng = random.Random(seed)
    full = find(ps)
    vals = []
    for _ in range(n_boot):
        idx = [rng.randrange(len(ps)) for _ in range(len(ps))]
        vals.append(jaccard(full, find(ps.subset(idx))))
    return Stability(vals, sum(vals) / len(vals), min(vals), n_boot, seed)
