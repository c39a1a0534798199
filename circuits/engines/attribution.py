"""Gradient attribution: EAP, EAP-IG (inputs / activations) and node attribution.

For an edge u -> v (see circuits.engines.edges) EAP scores

    score(u, v) = mean over prompts, sum over positions of (a_u(clean) - a_u(corrupted)) . dM/dx_v

where a_u is the writer's output in the residual stream and x_v the reader's own
input (before its norm), the gradient taken on the clean run: the first-order
estimate of M(clean) - M(edge patched to corrupted), i.e. how much the metric
needs the edge (the EAP-IG library reports the negative of this). EAP-IG averages the gradient over ``steps`` points on a straight
path from corrupted to clean, placed by an integration ``rule`` (midpoint by
default; the right rule with one step is EAP): ``"inputs"`` interpolates the input embeddings and lets the model compute
the rest; ``"activations"`` interpolates one group of writers at a time (the input,
one attention layer, one MLP) while everything else runs live, and scores a
writer's edges with the gradients of its own group's path (the EAP-IG library
averages every group's gradients into every edge instead). Each step is one
forward and one backward pass for the whole batch (the activations variant tiles
the batch once per writer group).

Per-reader gradients come from one backward pass: MLP and logits readers get their
own copy of the residual stream; a head reader's gradient is pulled back from
dM/dq (or dk, dv) through that head's W_Q (W_K, W_V of its KV group) and the
layer's input norm - checked against the norm's total gradient every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from circuits.engines import forward
from circuits.engines.common import (
    EngineRun,
    Metric,
    evaluate_metric,
    model_settings,
)
from circuits.engines.edges import EdgeGraph, edge_graph
from circuits.engines.sites import hook_at
from circuits.engines.stream import writer_hooks, writer_outputs
from circuits.names import parse_node
from circuits.prompts import PromptSet
from circuits.scores import Scores

METHODS = ("eap", "eap-ig-inputs", "eap-ig-activations")


@dataclass
class EdgeScores:
    """Scores per edge: ``scores[w, r]`` (0 where no edge), optionally per position ``[p, w, r]``."""

    graph: EdgeGraph
    scores: Tensor
    per_position: Tensor | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def score(self, writer: str, reader: str) -> float:
        """The score of edge ``writer->reader`` (a ValueError if there is no such edge)."""
        w, r = self.graph.index(writer, reader)
        return float(self.scores[w, r])

    def ranked(self, absolute: bool = True) -> list[tuple[str, float]]:
        """All edges as ("writer->reader", score), highest first (by |score| when ``absolute``)."""
        idx = torch.nonzero(self.graph.mask)
        vals = self.scores.detach()[idx[:, 0], idx[:, 1]]
        order = torch.argsort(vals.abs() if absolute else vals, descending=True)
        return [(self.graph.edge(int(idx[i, 0]), int(idx[i, 1])),
                 float(vals[i])) for i in order]

    @classmethod
    def from_named(cls, graph: EdgeGraph, values: dict[str, float],
                   settings: dict[str, Any] | None = None) -> EdgeScores:
        """Scores from {"writer->reader": score} (edges not named score 0): e.g. exact per-edge effects,
        so that any ranking goes through the same MIB curve. A ValueError names an edge the graph lacks."""
        from circuits.names import parse_edge

        scores = torch.zeros(graph.mask.shape, device=graph.mask.device)
        for name, v in values.items():
            w, r = parse_edge(name)
            scores[graph.index(w.name, r.name)] = float(v)
        return cls(graph, scores, None, dict(settings or {}))

    def to_dict(self) -> dict[str, Any]:
        """MIB / EAP-IG-style JSON: {"edges": {"a0.h1->a2.h3<q>": {"score": s}}, ...}."""
        return {"edges": {name: {"score": s} for name, s in self.ranked(absolute=False)},
                "settings": self.settings}


def _gradient_pass(model: Any, tokens: Tensor, end: Tensor, fn: Metric, ps_m: PromptSet,
                   overrides: dict[str, Tensor] | None = None) -> dict[str, Any]:
    """One forward + backward on ``tokens`` (with writer ``overrides``: name -> (value, rows)):
    every reader's input gradient.

    Returns {"q"/"k"/"v": {layer: [b, p, heads, d_head] grads}, "ln1_in": {layer: x}, "ln1_grad":
    {layer: total grad}, "mlp": {layer: [b, p, d]}, "logits": [b, p, d], "z": {layer: grad},
    "mlp_out": {layer: grad}, "input": grad, "metric": [b]}.
    """
    n_layers = int(model.cfg.n_layers)
    keep: dict[str, Tensor] = {}

    def tap(name: str, replace: tuple[Tensor, Tensor] | None = None):
        """Keep (and optionally override) an activation; ``replace`` = (value, rows to override)."""
        def hook(x: Tensor, hook: Any) -> Tensor:
            if replace is None:
                y = x.clone()
            else:
                value, rows = replace
                shape = (-1,) + (1,) * (x.ndim - 1)
                y = torch.where(rows.reshape(shape).to(x.device), value.detach().to(x.dtype), x)
            if not y.requires_grad:
                y.requires_grad_(True)
            y.retain_grad()
            keep[name] = y
            return y
        return hook

    ov = overrides or {}
    hooks: list[forward.Hook] = [(hook_at("resid_pre", 0), tap("input", ov.get("input")))]
    for layer in range(n_layers):
        hooks += [(hook_at("ln1_in", layer), tap(f"ln1_in.{layer}")),
                  (hook_at("q", layer), tap(f"q.{layer}")),
                  (hook_at("k", layer), tap(f"k.{layer}")),
                  (hook_at("v", layer), tap(f"v.{layer}")),
                  (hook_at("z", layer), tap(f"z.{layer}", ov.get(f"z.{layer}"))),
                  (hook_at("ln2_in", layer), tap(f"mlp.{layer}")),
                  (hook_at("mlp_out", layer), tap(f"mlp_out.{layer}", ov.get(f"mlp_out.{layer}")))]
    hooks.append((hook_at("final_in"), tap("logits")))
    with torch.enable_grad():
        resid = forward.final_residual(model, tokens, hooks)
        rows = torch.arange(tokens.shape[0], device=resid.device)
        values = evaluate_metric(fn, forward.unembed(model, resid[rows, end]), ps_m)
        values.sum().backward()
    grad = lambda n: keep[n].grad if keep[n].grad is not None else torch.zeros_like(keep[n])  # noqa: E731
    out: dict[str, Any] = {"metric": values.detach(), "input": grad("input"), "logits": grad("logits")}
    for c in ("q", "k", "v", "z", "mlp", "mlp_out"):
        out[c] = {layer: grad(f"{c}.{layer}") for layer in range(n_layers)}
    out["ln1_in"] = {layer: keep[f"ln1_in.{layer}"].detach() for layer in range(n_layers)}
    out["ln1_grad"] = {layer: grad(f"ln1_in.{layer}") for layer in range(n_layers)}
    return out


def _head_reader_grads(model: Any, layer: int, g: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """[b, p, R, d] input gradients of the layer's head readers (q per head, k/v per head or group),
    in the order of circuits.engines.edges.head_readers, and the check residual."""
    attn = model.blocks[layer].attn
    parts = []
    for comp, w in (("q", attn.W_Q), ("k", attn.W_K), ("v", attn.W_V)):
        grads = g[comp][layer]  # [b, p, heads_or_groups, d_head]
        parts.append(torch.einsum("bphe,hde->hbpd", grads, w.to(grads.dtype)))
    gy = torch.cat(parts)  # [R, b, p, d] gradients w.r.t. the norm's output, one reader each
    x = g["ln1_in"][layer]
    n_r = gy.shape[0]
    with torch.enable_grad():
        xr = x.detach()[None].expand(n_r, *x.shape).reshape(n_r * x.shape[0], *x.shape[1:]).requires_grad_(True)
        y = model.blocks[layer].ln1(xr)
        (gx,) = torch.autograd.grad(y, xr, gy.reshape_as(y))
    gx = gx.reshape(n_r, *x.shape)
    return gx.permute(1, 2, 0, 3), gx.sum(0) - g["ln1_grad"][layer]


def _groups_per_pass(model: Any, ps: PromptSet, graph: EdgeGraph, n_groups: int,
                     memory_budget: int | None = None) -> int:
    """How many writer groups one gradient pass of the activations variant integrates at once: every
    group tiles the prompts once, and each tile's reader gradients ([b, p, R, d]) must stay within
    the memory budget (with room for the backward pass: a factor 4)."""
    b, p = ps.clean.shape
    budget = forward.DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
    dtype = getattr(model.cfg, "dtype", None)
    elem = torch.finfo(dtype).bits // 8 if dtype is not None else 4
    per_group = 4 * b * p * len(graph.readers) * int(model.cfg.d_model) * elem
    return max(1, min(n_groups, budget // per_group))


def _reader_grads(model: Any, g: dict[str, Any], graph: EdgeGraph) -> tuple[Tensor, float]:
    """[b, p, R, d] gradients of every reader in graph order, and the largest norm-pullback mismatch."""
    parts, worst = [], 0.0
    for layer in range(graph.n_layers):
        heads, err = _head_reader_grads(model, layer, g)
        scale = float(g["ln1_grad"][layer].abs().max()) or 1.0
        worst = max(worst, float(err.abs().max()) / scale)
        parts += [heads, g["mlp"][layer][:, :, None]]
    parts.append(g["logits"][:, :, None])
    return torch.cat(parts, 2), worst


RULES = ("left", "right", "midpoint", "trapezoid")
DEFAULT_RULE = "midpoint"  # measured: see the README (fastest convergence of the completeness gap)
AUTO_TOLERANCE = 0.05  # steps="auto": double the steps until the completeness gap is under this
AUTO_MAX_STEPS = 64


def ig_points(rule: str, steps: int) -> list[tuple[float, float]]:
    """(alpha, weight) of each gradient evaluation on the path corrupted (alpha 0) -> clean (alpha 1):
    ``left`` k/s for k = 0..s-1 (the EAP-IG library's), ``right`` k/s for k = 1..s (includes the
    clean point; one step is EAP), ``midpoint`` (k + 1/2)/s, ``trapezoid`` k/s for k = 0..s with
    half weight at the ends (s + 1 evaluations). Weights sum to 1."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if rule == "left":
        return [(k / steps, 1 / steps) for k in range(steps)]
    if rule == "right":
        return [(k / steps, 1 / steps) for k in range(1, steps + 1)]
    if rule == "midpoint":
        return [((k + 0.5) / steps, 1 / steps) for k in range(steps)]
    return [(k / steps, (0.5 if k in (0, steps) else 1.0) / steps) for k in range(steps + 1)]


def attribute_edges(model: Any, ps: PromptSet, *, method: str = "eap", steps: int | str = 5,
                    rule: str = DEFAULT_RULE, metric: str | Metric = "logit_diff", per_position: bool = False,
                    verify: int = 0, tolerance: float = AUTO_TOLERANCE, max_steps: int = AUTO_MAX_STEPS) -> EdgeScores:
    """Edge attribution scores for every edge of the model (see the module docstring).

    Args:
        method: "eap", "eap-ig-inputs" or "eap-ig-activations".
        steps: integration steps for EAP-IG, or "auto": double them (from 4) until the completeness
            gap is under ``tolerance`` or ``max_steps`` is reached (``settings["steps"]`` says what was used).
        rule: where on the corrupted -> clean path the gradients are taken (:func:`ig_points`);
            EAP is always the single clean point.
        per_position: also keep scores per token position (``per_position`` [p, W, R]).
        verify: check the top ``verify`` heads by |node attribution| against exact activation patching
            (noising, batched) and flag sign or magnitude disagreements in ``settings["verification"]``.

    ``settings["completeness"]``: the scores' sum against what integrated gradients should sum to in the
    limit, M(clean) - M(corrupted): for the input's edges (inputs, EAP), or per writer group against
    M(clean) - M(that group corrupted) (activations); a relative ``gap`` and whether it is within
    ``tolerance`` (``converged``). A first-order result that misses its own check says so.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if steps != "auto" and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive int or 'auto', got {steps!r}")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if isinstance(verify, bool) or not isinstance(verify, int) or verify < 0:
        raise ValueError(f"verify must be a number of heads >= 0, got {verify!r}")
    if method == "eap" or steps != "auto":
        out = _attribute(model, ps, method, 1 if method == "eap" else steps, rule, metric, per_position, tolerance)
    else:
        k, history = 4, []
        while True:
            out = _attribute(model, ps, method, k, rule, metric, per_position, tolerance)
            history.append({"steps": k, "gap": out.settings["completeness"]["gap"]})
            if out.settings["completeness"]["converged"] or 2 * k > max_steps:
                break
            k *= 2
        out.settings["auto_steps"] = {"history": history, "tolerance": tolerance, "max_steps": max_steps}
    if verify:
        out.settings["verification"] = verify_nodes(model, ps, out, verify, metric)
    return out


def _attribute(model: Any, ps: PromptSet, method: str, steps: int, rule: str, metric: str | Metric,
               per_position: bool, tolerance: float) -> EdgeScores:
    run = EngineRun(model, ps, metric)
    ps, fn, metric_name, ps_m = run.ps, run.metric.fn, run.metric.name, run.scored
    graph = edge_graph(model)
    n_layers = graph.n_layers
    end = ps.positions["END"]
    names = writer_hooks(n_layers)
    with run, torch.no_grad():
        lg_clean, clean = forward.run_with_store(model, ps.clean, end, names)
        lg_corr, corr = forward.run_with_store(model, ps.corrupted, end, names)
        m_clean, m_corr = float(run.evaluate(lg_clean).mean()), float(run.evaluate(lg_corr).mean())
    with torch.no_grad():
        delta = writer_outputs(model, clean) - writer_outputs(model, corr)  # [b, p, W, d]
    points = [(1.0, 1.0)] if method == "eap" else ig_points(rule, steps)
    b = len(ps)
    # writer groups integrated separately by the activations variant: input, each attention layer, each MLP
    groups = [[hook_at("resid_pre", 0)]] + [[n] for layer in range(n_layers)
                                              for n in (hook_at("z", layer), hook_at("mlp_out", layer))]
    key = {hook_at("resid_pre", 0): "input"}
    key |= {hook_at("z", layer): f"z.{layer}" for layer in range(n_layers)}
    key |= {hook_at("mlp_out", layer): f"mlp_out.{layer}" for layer in range(n_layers)}
    sizes = [1] + [n for _ in range(n_layers) for n in (graph.n_heads, 1)]
    bounds = [sum(sizes[:t]) for t in range(len(sizes) + 1)]  # group t writes writers bounds[t]:bounds[t + 1]
    n_groups = len(groups) if method == "eap-ig-activations" else 1
    per = _groups_per_pass(model, ps, graph, n_groups)
    pos = torch.zeros(ps.clean.shape[1], len(graph.writers), len(graph.readers), device=delta.device,
                      dtype=delta.dtype)  # [p, W, R], summed over prompts
    worst = 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with run:
            for a, weight in points:
                # activations variant: each writer group integrated in its own tiled rows; at a = 1 (or for
                # EAP / the inputs variant) every group sees the same pass, which runs once
                separate = method == "eap-ig-activations" and a < 1
                todo = list(range(n_groups)) if separate else [None]
                for chunk in forward.chunks(todo, per):
                    n = len(chunk)
                    ov = None
                    if a < 1 and method == "eap-ig-inputs":
                        name = hook_at("resid_pre", 0)
                        ov = {"input": (a * clean[name] + (1 - a) * corr[name], torch.ones(b, dtype=torch.bool))}
                    elif separate:
                        ov = {}
                        for j, t in enumerate(chunk):
                            for name in groups[t]:
                                rows = torch.zeros(n * b, dtype=torch.bool)
                                rows[j * b:(j + 1) * b] = True
                                ov[key[name]] = (forward.tile(a * clean[name] + (1 - a) * corr[name], n), rows)
                    ps_t = ps_m.subset(torch.arange(b).repeat(n)) if n > 1 else ps_m
                    g = _gradient_pass(model, forward.tile(ps.clean, n), forward.tile(end, n), fn, ps_t, ov)
                    rg, err = _reader_grads(model, g, graph)
                    del g
                    worst = max(worst, err)
                    rg = rg.detach().reshape(n, b, *rg.shape[1:])  # [n, b, p, R, d]
                    for j, t in enumerate(chunk):
                        lo, hi = (0, len(graph.writers)) if t is None else (bounds[t], bounds[t + 1])
                        pos[:, lo:hi] += weight * torch.einsum("bpwd,bprd->pwr", delta[:, :, lo:hi], rg[j])
                    del rg
    finally:
        for p in params:
            p.requires_grad_(True)
    if worst > 1e-3:
        raise RuntimeError(f"per-head reader gradients do not add up to the norm's gradient (relative error "
                           f"{worst:.2e}): this architecture transforms q/k/v after hook_q/k/v in a way "
                           "EAP does not model (e.g. QK-norm)")
    mask = graph.mask.to(delta.device)
    pos = (pos / len(ps) * mask).detach()
    scores = pos.sum(0).cpu()
    completeness = _completeness(model, ps, run, method, scores, sizes, corr, m_clean, m_corr, tolerance)
    return EdgeScores(graph, scores, pos.cpu() if per_position else None,
                      {"engine": "edge_attribution", "method": method, "steps": 1 if method == "eap" else steps,
                       "rule": None if method == "eap" else rule, "gradient_evaluations": len(points),
                       "metric": metric_name,
                       "direction": "clean - corrupted, gradient on the clean path", **model_settings(model),
                       "n_prompts": len(ps), "n_edges": graph.n_edges, "norm_pullback_error": worst,
                       "completeness": completeness, "provenance": ps.provenance})


def _completeness(model: Any, ps: PromptSet, run: EngineRun, method: str, scores: Tensor, sizes: list[int],
                  corr: dict[str, Tensor], m_clean: float, m_corr: float, tolerance: float) -> dict[str, Any]:
    """How far the scores' sums are from what integrated gradients sums to (see attribute_edges)."""
    def gap(total: float, target: float) -> float | None:
        return abs(total - target) / abs(target) if abs(target) > 1e-8 else None

    if method != "eap-ig-activations":
        total = float(scores[0].sum())  # the input's edges: dM along the input path
        g = gap(total, m_clean - m_corr)
        return {"reference": "input edges vs M(clean) - M(corrupted)", "sum": total, "target": m_clean - m_corr,
                "gap": g, "converged": g is not None and g <= tolerance, "tolerance": tolerance}
    # per writer group: its edges against M(clean) - M(that group's writers at their corrupted value)
    from circuits.engines.interventions import Edit, run_variants
    from circuits.engines.sites import SITES

    n_layers = int(model.cfg.n_layers)
    sites = [(SITES["resid_pre"], 0)] + [(SITES[s], layer) for layer in range(n_layers) for s in ("z", "mlp_out")]
    variants = [[Edit(site, layer, corr[hook_at(site.name, layer)])] for site, layer in sites]
    with run, torch.no_grad():
        logits = run_variants(model, ps.clean, ps.positions["END"], variants)
        targets = [m_clean - float(run.evaluate(lg).mean()) for lg in logits]
    per_group, start = [], 0
    for (site, layer), size, target in zip(sites, sizes, targets):
        total = float(scores[start:start + size].sum())
        start += size
        label = "input" if site.name == "resid_pre" else f"{'attn' if site.name == 'z' else 'mlp'}{layer}"
        per_group.append({"group": label, "sum": total, "target": target, "gap": gap(total, target)})
    defined = [r["gap"] for r in per_group if r["gap"] is not None and abs(r["target"]) > 0.05 * abs(m_clean - m_corr)]
    worst = max(defined) if defined else None
    return {"reference": "each writer group's edges vs M(clean) - M(group corrupted)", "per_group": per_group,
            "gap": worst, "converged": worst is not None and worst <= tolerance, "tolerance": tolerance}


def verify_nodes(model: Any, ps: PromptSet, scores: EdgeScores, k: int, metric: str | Metric = "logit_diff"
                 ) -> dict[str, Any]:
    """The top ``k`` heads by |node attribution| (the sum of their edges) against their exact effect,
    M(clean) - M(head output patched to corrupted) (noising activation patching, all positions): a
    head whose sign differs, or whose attribution is off by more than a factor of 2, is flagged."""
    from circuits.engines.patching import activation_patching

    graph = scores.graph
    node = scores.scores.sum(1)  # [W]: each writer's outgoing edges
    heads = [(i, parse_node(w)) for i, w in enumerate(graph.writers) if parse_node(w).kind == "head"]
    ranked = sorted(heads, key=lambda t: -abs(float(node[t[0]])))[:k]
    exact = activation_patching(model, ps, "z", direction="noise", metric=metric, progress=False)
    flagged, rows = [], []
    for i, n in ranked:
        a, e = float(node[i]), float(exact.baseline["clean"] - exact.values[n.layer, n.head])
        ratio = a / e if abs(e) > 1e-8 else None
        row = {"node": n.name, "attribution": a, "exact": e, "ratio": ratio}
        rows.append(row)
        if a * e < 0 or ratio is None or not 0.5 <= ratio <= 2.0:
            flagged.append(row)
    return {"checked": rows, "flagged": flagged, "rule": "sign differs, or attribution / exact outside [0.5, 2]"}


def verify_position_nodes(model: Any, ps: PromptSet, scores: EdgeScores, k: int,
                          metric: str | Metric = "logit_diff") -> dict[str, Any]:
    """:func:`verify_nodes` per token position: the top ``k`` (head, position) pairs by |attribution|
    (the sum of the head's edges at that position, from ``scores.per_position``) against their exact
    effect, M(clean) - M(the head's output at that position patched to corrupted), by edge patching
    with every edge out of the head ablated at that position only. Same flagging rule."""
    from circuits.engines.edge_patching import EdgeEvaluator

    if scores.per_position is None:
        raise ValueError("verify_position_nodes needs position-resolved scores: attribute_edges(..., per_position=True)")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a number of (head, position) pairs >= 1, got {k!r}")
    graph = scores.graph
    node = scores.per_position.sum(2)  # [P, W]
    heads = [i for i, w in enumerate(graph.writers) if parse_node(w).kind == "head"]
    cells = sorted(((q, i) for q in range(node.shape[0]) for i in heads), key=lambda t: -abs(float(node[t])))[:k]
    full = graph.mask[None].expand(node.shape[0], *graph.mask.shape)
    masks = [full.clone()]
    for q, i in cells:
        m = full.clone()
        m[q, i] = False
        masks.append(m)
    vals = EdgeEvaluator(model, ps, metric=metric).metric(masks).mean(1).tolist()
    flagged, rows = [], []
    for (q, i), v in zip(cells, vals[1:]):
        a, e = float(node[q, i]), vals[0] - v
        ratio = a / e if abs(e) > 1e-8 else None
        row = {"node": graph.writers[i], "position": q, "attribution": a, "exact": e, "ratio": ratio}
        rows.append(row)
        if a * e < 0 or ratio is None or not 0.5 <= ratio <= 2.0:
            flagged.append(row)
    return {"checked": rows, "flagged": flagged, "rule": "sign differs, or attribution / exact outside [0.5, 2]"}


def attribute_nodes(model: Any, ps: PromptSet, *, metric: str | Metric = "logit_diff") -> dict[str, Scores]:
    """Attribution patching of nodes: (clean - corrupted) . dM/d(output), for heads [layer, head] and MLPs [layer]:
    the first-order estimate of the metric's drop when the node is noised, in metric units; with the clean
    and corrupted baselines, so ``Scores.effect()`` gives the share of the gap (comparable with patching's)."""
    run = EngineRun(model, ps, metric)
    ps, fn, metric_name, ps_m = run.ps, run.metric.fn, run.metric.name, run.scored
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    end = ps.positions["END"]
    names = writer_hooks(n_layers)
    with run, torch.no_grad():
        lg_clean, clean = forward.run_with_store(model, ps.clean, end, names)
        lg_corr, corr = forward.run_with_store(model, ps.corrupted, end, names)
        baseline = {"clean": float(run.evaluate(lg_clean).mean()), "corrupted": float(run.evaluate(lg_corr).mean())}
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with run:
            g = _gradient_pass(model, ps.clean, end, fn, ps_m)
    finally:
        for p in params:
            p.requires_grad_(True)
    heads = torch.stack([torch.einsum("bphe,bphe->h", clean[hook_at("z", layer)]
                                      - corr[hook_at("z", layer)], g["z"][layer])
                         for layer in range(n_layers)]) / len(ps)
    mlps = torch.stack([((clean[hook_at("mlp_out", layer)] - corr[hook_at("mlp_out", layer)])
                         * g["mlp_out"][layer]).sum() for layer in range(n_layers)]) / len(ps)
    settings = {"engine": "node_attribution", "metric": metric_name, **model_settings(model),
                "n_prompts": len(ps), "direction": "clean - corrupted"}
    labels = {"layer": [str(x) for x in range(n_layers)], "head": [str(h) for h in range(n_heads)]}
    return {"heads": Scores(heads.detach().cpu(), ("layer", "head"), None, labels, baseline, settings),
            "mlps": Scores(mlps.detach().cpu(), ("layer",), None, {"layer": labels["layer"]}, baseline, settings)}
