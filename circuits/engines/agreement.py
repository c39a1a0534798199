"""Agreement report: attribution scores against exact patching, node and edge level.

Node level: attribution patching of each head (``attribute_nodes``) against the
exact effect of patching that head's output to its corrupted value (noising
activation patching), both as M(clean) - M(patched); and the method's own node
scores (the sum of each head's outgoing edge scores, ``node_from_edges``) against
the same exact effects. Edge level: EAP / EAP-IG
edge scores against the exact effect of ablating that single edge (corrupted
value on that edge only). Reports Pearson and Spearman correlations and checks
the sign of the top components by exact effect; a disagreement there raises
``AgreementError`` unless ``strict=False`` (then it is listed in the report).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from circuits.engines.attribution import attribute_edges, attribute_nodes
from circuits.engines.common import Metric
from circuits.engines.edge_patching import evaluate_edge_circuits
from circuits.engines.patching import activation_patching
from circuits.names import Node
from circuits.prompts import PromptSet
from circuits.records import Record


class AgreementError(RuntimeError):
    """Attribution and exact patching disagree in sign on the top components."""


def correlations(a: Tensor, b: Tensor) -> dict[str, float | None]:
    """Pearson and Spearman correlation of two flat score vectors; None (undefined) for fewer than
    3 values or a constant vector."""
    from scipy.stats import pearsonr, spearmanr

    x, y = a.flatten().double().numpy(), b.flatten().double().numpy()
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return {"pearson": None, "spearman": None, "n": len(x)}
    return {"pearson": float(pearsonr(x, y)[0]), "spearman": float(spearmanr(x, y)[0]), "n": len(x)}


@dataclass
class Agreement(Record):
    """Attribution against exact effects for one kind of component (heads, or edges)."""

    names: list[str]  # the components compared
    attribution: list[float]  # first-order estimate of M(clean) - M(patched)
    exact: list[float]  # M(clean) - M(patched), measured
    pearson: float | None  # None: undefined (fewer than 3 components, or a constant score)
    spearman: float | None
    sign_disagreements_top: list[dict[str, Any]]  # top components (by exact effect) whose signs differ
    total: int  # components of this kind in the model (edges may be sampled)

    def top_exact(self, k: int = 20) -> list[tuple[str, float, float]]:
        """(name, exact, attribution) of the k components with the largest exact effect."""
        rows = zip(self.names, self.exact, self.attribution)
        return sorted(rows, key=lambda t: -abs(t[1]))[:k]


@dataclass
class AgreementReport(Record):
    """Agreement of an attribution method with exact patching, at node (head) and edge level."""

    method: str
    steps: int
    n_prompts: int
    node_method: str
    node: Agreement
    edge: Agreement
    node_from_edges: Agreement | None = None  # the method's head scores (sums of their edges) against exact

    _nested = {"node": ("one", Agreement), "edge": ("one", Agreement), "node_from_edges": ("one", Agreement)}


def _sign_check(names: list[str], approx: Tensor, exact: Tensor, top: int) -> list[dict[str, Any]]:
    order = torch.argsort(exact.abs(), descending=True)[:top]
    bad = []
    floor = 0.01 * float(exact.abs().max()) if len(exact) else 0.0  # ignore effects at noise level
    for i in order.tolist():
        if abs(float(exact[i])) > floor and float(approx[i]) * float(exact[i]) < 0:
            bad.append({"component": names[i], "attribution": float(approx[i]), "exact": float(exact[i])})
    return bad


def agreement_report(model: Any, ps: PromptSet, *, method: str = "eap-ig-inputs", steps: int = 5,
                     metric: str | Metric = "logit_diff", top: int = 5, max_edges: int | None = 2000,
                     strict: bool = True, seed: int = 0) -> AgreementReport:
    """Compare attribution with exact patching (see the module docstring).

    ``max_edges`` caps the exact edge sweep (the top edges by |attribution| plus a
    random sample of the rest, ``seed``); None sweeps every edge.
    """
    node_attr = attribute_nodes(model, ps, metric=metric)["heads"].values
    exact_nodes = activation_patching(model, ps, "z", direction="noise", metric=metric, progress=False)
    exact_node_effect = exact_nodes.baseline["clean"] - exact_nodes.values
    n_layers, n_heads = exact_node_effect.shape
    node_names = [Node("head", layer, h).name for layer in range(n_layers) for h in range(n_heads)]

    scores = attribute_edges(model, ps, method=method, steps=steps, metric=metric)
    g = scores.graph
    idx = torch.nonzero(g.mask)
    flat = scores.scores[idx[:, 0], idx[:, 1]]
    chosen = torch.arange(len(idx))
    if max_edges is not None and len(idx) > max_edges:
        top_i = torch.argsort(flat.abs(), descending=True)[: max_edges // 2]
        rest = torch.tensor(sorted(set(range(len(idx))) - set(top_i.tolist())))
        gen = torch.Generator().manual_seed(seed)
        sample = rest[torch.randperm(len(rest), generator=gen)[: max_edges - len(top_i)]]
        chosen = torch.cat([top_i, sample])
    circuits = []
    for i in chosen.tolist():
        m = g.mask.clone()
        m[int(idx[i, 0]), int(idx[i, 1])] = False
        circuits.append(m)
    vals = evaluate_edge_circuits(model, ps, [g.mask, *circuits], metric=metric).mean(1)
    exact_edge = vals[0] - vals[1:]
    approx_edge = flat[chosen]
    edge_names = [g.edge(int(idx[i, 0]), int(idx[i, 1])) for i in chosen.tolist()]

    bad_nodes = _sign_check(node_names, node_attr.flatten(), exact_node_effect.flatten(), top)
    bad_edges = _sign_check(edge_names, approx_edge, exact_edge, top)

    def level(names: list[str], approx: Tensor, exact: Tensor, bad: list, total: int) -> Agreement:
        c = correlations(approx, exact)
        return Agreement(names, approx.flatten().tolist(), exact.flatten().tolist(), c["pearson"], c["spearman"],
                         bad, total)

    from_edges = torch.stack([scores.scores[g.writer_index[name]].sum() for name in node_names])
    report = AgreementReport(method, steps, len(ps), "attribution patching of head outputs (first order)",
                             level(node_names, node_attr, exact_node_effect, bad_nodes, len(node_names)),
                             level(edge_names, approx_edge, exact_edge, bad_edges, g.n_edges),
                             level(node_names, from_edges, exact_node_effect.flatten(),
                                   _sign_check(node_names, from_edges, exact_node_effect.flatten(), top),
                                   len(node_names)))
    if strict and (bad_nodes or bad_edges):
        raise AgreementError(f"attribution ({method}) and exact patching disagree in sign on the top-{top} "
                             f"components: nodes {bad_nodes}, edges {bad_edges}")
    return report
