"""Comparing circuits across tasks, training regimes and checkpoints: pure functions on Circuits
and on [layer, head] head-score grids.

* Set overlap of two circuits (:func:`overlap`, :func:`node_jaccard`, :func:`edge_jaccard`,
  :func:`overlap_coefficient`, :func:`weighted_jaccard`): the Merullo et al. 78% figure is a
  Jaccard of head sets.
* Two score grids: :func:`rank_correlation` (Spearman) and :func:`threshold_sweep` (the overlap of
  the top heads as the kept fraction grows, against a permutation null whose expectation
  :func:`expected_random_jaccard` gives in closed form).
* Several circuits: :func:`shared_parts` (core and task-specific heads) and :func:`similarity`
  (a similarity matrix, its clusters, linkage and a 2-D embedding).
* Training regimes (Thinking Sparks): :func:`regime_change` (emergent, retained, lost heads and the
  symmetric effect E per head), :func:`checkpoint_effects` (E per checkpoint and its mean) and
  :func:`cohorts` (when each head appears, how often, whether it stays).

Every function on two circuits calls ``a.check_comparable(b)`` first (circuits of models of
different shapes raise ValueError). A ratio whose denominator is empty (two empty sets) is None,
never NaN. Heads are named ``a{L}.h{H}`` and listed in layer, head order. Results that are more
than a number are :class:`circuits.records.Record` dataclasses, so they write strict JSON.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from circuits.graph.circuit import Circuit
from circuits.names import Node, parse_node
from circuits.records import Record

ITEMS = ("nodes", "edges", "heads")
METRICS = ("node_jaccard", "edge_jaccard", "head_jaccard", "weighted_jaccard")
DEFAULT_FRACTIONS = (0.01, 0.02, 0.05, 0.10, 0.20, 0.50)
EPS = 1e-6  # Thinking Sparks' epsilon in E


def head_name(layer: int, head: int) -> str:
    """``a{layer}.h{head}``."""
    return Node("head", int(layer), int(head)).name


def natural_sorted(names: Iterable[str]) -> list[str]:
    """Names in natural order (``a2.h1`` before ``a10.h0``): by layer, then head, for heads."""
    return sorted(names, key=lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)])


def items(c: Circuit, of: str = "nodes", *, positions: bool = False) -> set[str]:
    """The set a comparison counts: ``of`` = "nodes" (node names), "edges" (edge names; they carry
    no positions) or "heads" (head node names). Positions (``@END``) are dropped unless ``positions``."""
    if of == "nodes":
        return c.node_set(positions)
    if of == "edges":
        return c.edge_set()
    if of == "heads":
        if positions:
            return {n for n in c.nodes if parse_node(n).kind == "head"}
        return {head_name(*h) for h in c.heads()}
    raise ValueError(f"of must be one of {ITEMS}, got {of!r}")


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


# --------------------------------------------------------------------------- two circuits
@dataclass
class Overlap(Record):
    """Set overlap of two circuits A and B (counts of items; ratios are None when undefined).

    jaccard = |A∩B| / |A∪B|; coefficient = |A∩B| / min(|A|, |B|); share_of_a = |A∩B| / |A|
    (the share of A's items that B holds), share_of_b likewise.
    """

    of: str
    size_a: int
    size_b: int
    intersection: int
    union: int
    jaccard: float | None
    coefficient: float | None
    share_of_a: float | None
    share_of_b: float | None


def overlap(a: Circuit, b: Circuit, *, of: str = "nodes", positions: bool = False) -> Overlap:
    """Counts and ratios of the overlap of ``a`` and ``b``'s nodes, edges or heads (see :func:`items`)."""
    a.check_comparable(b)
    x, y = items(a, of, positions=positions), items(b, of, positions=positions)
    inter, union = len(x & y), len(x | y)
    return Overlap(of, len(x), len(y), inter, union, _ratio(inter, union), _ratio(inter, min(len(x), len(y))),
                   _ratio(inter, len(x)), _ratio(inter, len(y)))


def node_jaccard(a: Circuit, b: Circuit, *, positions: bool = False) -> float | None:
    """|A∩B| / |A∪B| of the node names (``input``, heads, MLPs, ``logits``), in [0, 1]; None if both are empty."""
    return overlap(a, b, of="nodes", positions=positions).jaccard


def edge_jaccard(a: Circuit, b: Circuit) -> float | None:
    """|A∩B| / |A∪B| of the edge names, in [0, 1]; None if neither circuit has edges."""
    return overlap(a, b, of="edges").jaccard


def head_jaccard(a: Circuit, b: Circuit, *, positions: bool = False) -> float | None:
    """|A∩B| / |A∪B| of the heads only, in [0, 1]; None if neither circuit has heads."""
    return overlap(a, b, of="heads", positions=positions).jaccard


def overlap_coefficient(a: Circuit, b: Circuit, *, of: str = "nodes", positions: bool = False) -> float | None:
    """|A∩B| / min(|A|, |B|), in [0, 1] (1: one circuit inside the other); None if either set is empty."""
    return overlap(a, b, of=of, positions=positions).coefficient


def _weights(c: Circuit, of: str, positions: bool) -> dict[str, float]:
    """{item: |score|} (unscored: 1); nodes that share a name once positions are dropped add up."""
    if of == "edges":
        pairs = list(c.edges.items())
    elif of in ("nodes", "heads"):
        pairs = []
        for name, info in c.nodes.items():
            node = parse_node(name)
            if of == "nodes" or node.kind == "head":
                pairs.append(((node if positions else node.unpositioned()).name, info.score))
    else:
        raise ValueError(f"of must be one of {ITEMS}, got {of!r}")
    out: dict[str, float] = {}
    for key, s in pairs:
        w = 1.0 if s is None else abs(float(s))
        if math.isnan(w):
            raise ValueError(f"{key} has a NaN score; weighted Jaccard needs finite scores")
        out[key] = out.get(key, 0.0) + w
    return out


def weighted_jaccard(a: Circuit, b: Circuit, *, of: str | None = None, positions: bool = False,
                     normalize: bool = False) -> float | None:
    """Σ min(|a_i|, |b_i|) / Σ max(|a_i|, |b_i|) over the union of items, in [0, 1].

    Weights are |score| in the circuits' own unit: edge scores when ``of`` = "edges", node scores
    for "nodes" or "heads"; an unscored item weighs 1 and an absent one 0. ``of`` defaults to
    "edges" for two edge circuits and "nodes" for two node circuits (a mix must say which).
    ``normalize`` divides each circuit's weights by their sum first (compares distributions when
    the two circuits' scores have different scales). None when the union is empty or weighs 0.
    """
    a.check_comparable(b)
    if of is None:
        if a.kind != b.kind:
            raise ValueError("weighted_jaccard of an edge circuit and a node circuit: pass of='nodes', 'heads' "
                             "or 'edges'")
        of = "edges" if a.kind == "edge" else "nodes"
    wa, wb = _weights(a, of, positions), _weights(b, of, positions)
    if normalize:
        wa, wb = ({k: v / (sum(w.values()) or 1.0) for k, v in w.items()} for w in (wa, wb))
    keys = wa.keys() | wb.keys()
    lo = sum(min(wa.get(k, 0.0), wb.get(k, 0.0)) for k in keys)
    hi = sum(max(wa.get(k, 0.0), wb.get(k, 0.0)) for k in keys)
    return _ratio(lo, hi)


# ------------------------------------------------------------------------- score grids
def head_grid(values: Any) -> np.ndarray:
    """A [layer, head] score grid as a float numpy array: a Scores with axes (layer, head), a tensor,
    an array or nested lists. NaN marks a cell not scored."""
    if hasattr(values, "axes") and hasattr(values, "values"):  # a circuits.scores.Scores
        if tuple(values.axes) != ("layer", "head"):
            raise ValueError(f"expected Scores with axes ('layer', 'head'), got {tuple(values.axes)}")
        values = values.values
    if hasattr(values, "detach"):  # a torch tensor (any dtype, any device)
        values = values.detach().cpu().double().numpy()
    grid = np.asarray(values, dtype=float)
    if grid.ndim != 2:
        raise ValueError(f"a head-score grid must be 2-D [layer, head], got shape {grid.shape}")
    return grid


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = head_grid(a), head_grid(b)
    if x.shape != y.shape:
        raise ValueError(f"head-score grids of different shapes cannot be compared: {x.shape} against {y.shape}")
    return x, y


def rank_correlation(a: Any, b: Any, *, by_abs: bool = False) -> float | None:
    """Spearman's rho (scipy) between two [layer, head] grids of the same shape, over the cells where
    both are finite (NaN cells skipped pairwise), of |score| when ``by_abs``; in [-1, 1]. None when
    undefined: fewer than two cells, or either side constant."""
    from scipy.stats import spearmanr

    x, y = _pair(a, b)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if by_abs:
        x, y = np.abs(x), np.abs(y)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    rho = float(spearmanr(x, y).statistic)
    return rho if math.isfinite(rho) else None


def n_top(fraction: float, n_heads: int) -> int:
    """How many heads a top ``fraction`` (0 < fraction <= 1) of ``n_heads`` keeps: the nearest
    integer (halves up), at least 1 (2% of 384 heads: 8)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"a top fraction must be in (0, 1], got {fraction!r}")
    return max(1, math.floor(fraction * n_heads + 0.5 + 1e-9))


def _ranking(grid: np.ndarray) -> np.ndarray:
    """Flat indices of the scored cells by decreasing |score| (ties: lower layer, then head, first)."""
    flat = grid.ravel()
    ok = np.flatnonzero(np.isfinite(flat))
    return ok[np.argsort(-np.abs(flat[ok]), kind="stable")]


def expected_random_jaccard(size_a: int, size_b: int, n_heads: int) -> float | None:
    """E[|A∩B| / |A∪B|] for A, B drawn uniformly at random, of sizes ``size_a`` and ``size_b``, out of
    ``n_heads``: exact, summing k / (a + b - k) over the hypergeometric law of k = |A∩B| (in rational
    arithmetic). None when both sizes are 0."""
    if not (0 <= size_a <= n_heads and 0 <= size_b <= n_heads):
        raise ValueError(f"set sizes {size_a} and {size_b} must lie in [0, {n_heads}]")
    if size_a + size_b == 0:
        return None
    total, ways = Fraction(0), math.comb(n_heads, size_b)
    for k in range(max(0, size_a + size_b - n_heads), min(size_a, size_b) + 1):
        p = Fraction(math.comb(size_a, k) * math.comb(n_heads - size_a, size_b - k), ways)
        total += p * Fraction(k, size_a + size_b - k)
    return float(total)


def _null_jaccards(pool_a: np.ndarray, pool_b: np.ndarray, ks_a: Sequence[int], ks_b: Sequence[int],
                   n_heads: int, n_draws: int, seed: int) -> np.ndarray:
    """[n_draws, len(ks)] Jaccards of random head sets: each draw ranks ``pool_a`` and ``pool_b`` (flat
    cell indices) by one random permutation each and keeps the first k, so that a draw's sets are
    nested across the ks as the top sets of a real grid are."""
    rng = np.random.default_rng(seed)
    out = np.empty((n_draws, len(ks_a)))
    chunk = max(1, 2_000_000 // max(n_heads, 1))
    for start in range(0, n_draws, chunk):
        m = min(chunk, n_draws - start)
        ranks = []
        for pool in (pool_a, pool_b):
            r = np.full((m, n_heads), n_heads)  # cells outside the pool are never chosen
            r[:, pool] = rng.random((m, len(pool))).argsort(axis=1).argsort(axis=1)
            ranks.append(r)
        for j, (ka, kb) in enumerate(zip(ks_a, ks_b)):
            inter = ((ranks[0] < ka) & (ranks[1] < kb)).sum(axis=1)
            out[start:start + m, j] = inter / (ka + kb - inter)
    return out


def random_jaccard_draws(size_a: int, size_b: int, n_heads: int, *, n_draws: int = 10_000,
                         seed: int = 0) -> np.ndarray:
    """[n_draws] Jaccards of random head sets of sizes ``size_a`` and ``size_b`` out of ``n_heads``
    (the permutation null :func:`threshold_sweep` uses; seeded)."""
    if not (0 <= size_a <= n_heads and 0 <= size_b <= n_heads) or size_a + size_b == 0:
        raise ValueError(f"set sizes {size_a} and {size_b} must lie in [0, {n_heads}], not both 0")
    pool = np.arange(n_heads)
    return _null_jaccards(pool, pool, [size_a], [size_b], n_heads, n_draws, seed)[:, 0]


@dataclass
class ThresholdSweep(Record):
    """Jaccard of the top heads of two grids as the kept fraction grows, against a permutation null.

    Per fraction (ascending): k_a / k_b heads kept (:func:`n_top` of the grid's heads, at most its
    scored cells), their ``jaccard``, and the null's mean, 95% band (2.5 and 97.5 percentiles) and
    exact expectation (:func:`expected_random_jaccard`; None when the grids' scored cells differ).
    ``area``: the trapezoid of jaccard over the fractions (units: fraction; None with one fraction);
    ``p_value``: the one-sided permutation p-value of that area, (1 + #{null area >= area}) / (1 + n_null).
    """

    fractions: list[float]
    n_heads: int
    k_a: list[int]
    k_b: list[int]
    jaccard: list[float]
    null_mean: list[float]
    null_low: list[float]
    null_high: list[float]
    null_exact: list[float | None]
    area: float | None
    null_area_mean: float | None
    p_value: float | None
    n_null: int
    seed: int


def threshold_sweep(a: Any, b: Any, fractions: Sequence[float] = DEFAULT_FRACTIONS, *, n_null: int = 1000,
                    seed: int = 0) -> ThresholdSweep:
    """The top-k% overlap curve of two [layer, head] grids of the same shape (see :class:`ThresholdSweep`).

    For each fraction f the top heads of each grid by |score| (ties: lower layer, then head) are
    compared by Jaccard. The null draws ``n_null`` random rankings of each grid's scored cells
    (``seed``ed), so its sets have the same sizes and are nested across fractions like the real ones.
    """
    x, y = _pair(a, b)
    fr = sorted({float(f) for f in fractions})
    if not fr:
        raise ValueError("threshold_sweep needs at least one fraction")
    if isinstance(n_null, bool) or not isinstance(n_null, int) or n_null < 1:
        raise ValueError(f"n_null must be a positive integer, got {n_null!r}")
    n = x.size
    ra, rb = _ranking(x), _ranking(y)
    if not ra.size or not rb.size:
        raise ValueError("threshold_sweep: a grid has no scored (finite) cell")
    ks_a = [min(n_top(f, n), ra.size) for f in fr]
    ks_b = [min(n_top(f, n), rb.size) for f in fr]
    obs = []
    for ka, kb in zip(ks_a, ks_b):
        sa, sb = set(ra[:ka].tolist()), set(rb[:kb].tolist())
        obs.append(len(sa & sb) / len(sa | sb))
    null = _null_jaccards(ra, rb, ks_a, ks_b, n, n_null, seed)
    low, high = np.quantile(null, [0.025, 0.975], axis=0)
    same_pool = set(ra.tolist()) == set(rb.tolist())
    exact = [expected_random_jaccard(ka, kb, ra.size) if same_pool else None for ka, kb in zip(ks_a, ks_b)]
    area = null_area = p = None
    if len(fr) > 1:
        area = float(np.trapezoid(obs, fr))
        areas = np.trapezoid(null, fr, axis=1)
        null_area = float(areas.mean())
        p = float((1 + np.count_nonzero(areas >= area - 1e-12)) / (1 + n_null))
    return ThresholdSweep(fr, n, ks_a, ks_b, obs, null.mean(axis=0).tolist(), low.tolist(), high.tolist(), exact,
                          area, null_area, p, n_null, seed)


# ---------------------------------------------------------------------- several circuits
def _check_all(circuits: Mapping[str, Circuit]) -> list[str]:
    names = list(circuits)
    for i, p in enumerate(names):
        for q in names[i + 1:]:
            circuits[p].check_comparable(circuits[q])
    return names


@dataclass
class SharedParts(Record):
    """The shared core and the task-specific parts of several circuits (item names, natural order).

    core: in every circuit; only: {circuit: items in it alone}; partial: in two or more but not all;
    union: in any; count: {item: number of circuits holding it}.
    """

    names: list[str]
    of: str
    core: list[str]
    only: dict[str, list[str]]
    partial: list[str]
    union: list[str]
    count: dict[str, int]


def shared_parts(circuits: Mapping[str, Circuit], *, of: str = "heads", positions: bool = False) -> SharedParts:
    """Which heads (or nodes, edges: ``of``) several named circuits share (see :class:`SharedParts`)."""
    names = _check_all(circuits)
    if not names:
        raise ValueError("shared_parts needs at least one circuit")
    sets = {n: items(circuits[n], of, positions=positions) for n in names}
    count: dict[str, int] = {}
    for s in sets.values():
        for i in s:
            count[i] = count.get(i, 0) + 1
    union = natural_sorted(count)
    only = {n: natural_sorted(i for i in s if count[i] == 1) for n, s in sets.items()}
    core = [i for i in union if count[i] == len(names)]
    partial = [i for i in union if 1 < count[i] < len(names)]
    return SharedParts(names, of, core, only, partial, union, {i: count[i] for i in union})


@dataclass
class Similarity(Record):
    """Pairwise similarity of named circuits, their clusters and a 2-D map.

    matrix[i][j]: the ``metric`` of circuits names[i] and names[j] (1 on the diagonal); labels: the
    cluster of each circuit (average linkage on 1 - similarity; numbered in order of first
    appearance); linkage: scipy's [n-1, 4] linkage of the same distances (for a dendrogram); order:
    its leaf order; coords: [n, 2] metric-MDS coordinates, in distance units.
    """

    names: list[str]
    metric: str
    matrix: list[list[float]]
    labels: list[int]
    linkage: list[list[float]]
    order: list[int]
    coords: list[list[float]]
    n_clusters: int | None
    distance_threshold: float | None
    seed: int


def _metric(metric: str, positions: bool) -> Any:
    if metric == "node_jaccard":
        return lambda a, b: node_jaccard(a, b, positions=positions)
    if metric == "head_jaccard":
        return lambda a, b: head_jaccard(a, b, positions=positions)
    if metric == "edge_jaccard":
        return edge_jaccard
    if metric == "weighted_jaccard":
        return lambda a, b: weighted_jaccard(a, b, positions=positions)
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def _mds(distance: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import MDS

    if not distance.any():  # all circuits alike: one point (MDS would divide by a zero stress)
        return np.zeros((len(distance), 2))

    # scikit-learn >= 1.9 (pyproject's range): a precomputed metric, classical initialisation (deterministic)
    return MDS(n_components=2, random_state=seed, metric="precomputed", init="classical_mds",
               n_init=1).fit_transform(distance)


def similarity(circuits: Mapping[str, Circuit], *, metric: str = "node_jaccard", n_clusters: int | None = None,
               distance_threshold: float | None = None, positions: bool = False, seed: int = 0) -> Similarity:
    """Similarity matrix of named circuits under ``metric`` (one of :data:`METRICS`), clustered by
    scikit-learn's AgglomerativeClustering (precomputed distance 1 - similarity, average linkage; cut
    into ``n_clusters`` or at ``distance_threshold``; default 2 clusters) and embedded in 2-D by metric
    MDS (fixed ``seed``). Deterministic for fixed inputs. Raises ValueError when a similarity is
    undefined (an empty circuit under that metric)."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform
    from sklearn.cluster import AgglomerativeClustering

    names = _check_all(circuits)
    n, fn = len(names), _metric(metric, positions)
    if n == 0:
        raise ValueError("similarity needs at least one circuit")
    if n_clusters is not None and distance_threshold is not None:
        raise ValueError("give n_clusters or distance_threshold, not both")
    if n_clusters is not None and not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters must lie in [1, {n}], got {n_clusters}")
    sim = np.ones((n, n))
    for i in range(n):
        for j in range(i, n):
            s = fn(circuits[names[i]], circuits[names[j]])
            if s is None:
                raise ValueError(f"{metric} of {names[i]!r} and {names[j]!r} is undefined (empty under this metric)")
            sim[i, j] = sim[j, i] = s
    dist = np.clip(1.0 - sim, 0.0, 1.0)
    np.fill_diagonal(dist, 0.0)
    if n == 1:
        return Similarity(names, metric, sim.tolist(), [0], [], [0], [[0.0, 0.0]], n_clusters, distance_threshold,
                          seed)
    if distance_threshold is None:
        model = AgglomerativeClustering(n_clusters=n_clusters or min(2, n), metric="precomputed", linkage="average")
    else:
        model = AgglomerativeClustering(n_clusters=None, distance_threshold=distance_threshold, metric="precomputed",
                                        linkage="average", compute_full_tree=True)
    raw = model.fit_predict(dist).tolist()
    first = {lab: k for k, lab in enumerate(dict.fromkeys(raw))}
    z = linkage(squareform(dist, checks=False), method="average")
    coords = _mds(dist, seed)
    return Similarity(names, metric, sim.tolist(), [first[x] for x in raw], z.tolist(),
                      leaves_list(z).tolist(), coords.tolist(), n_clusters, distance_threshold, seed)
