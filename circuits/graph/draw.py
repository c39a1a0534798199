"""Drawings of circuit comparisons: head-score heatmaps with a circuit outlined, top-k% overlap curves
against their null, similarity matrices with their dendrogram, effects across regimes, cohorts.

Each function returns a Figure made by :func:`circuits.figures.new_figure`; none saves (use
:func:`circuits.figures.save_figure`), none chooses a matplotlib backend or touches pyplot.
Artists a test or a caller may look for carry a ``gid``: ``circuit-head`` (an outlined head),
``null-band`` / ``null-mean`` (a sweep's null), ``observed`` (a sweep's curve); axes carry a label
(``matrix``, ``dendrogram``, ``counts``, ``presence``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from circuits.figures import heatmaps, new_figure
from circuits.graph.circuit import Circuit
from circuits.graph.compare import Similarity, ThresholdSweep, head_grid, natural_sorted
from circuits.graph.regimes import CheckpointEffects, Cohorts, RegimeChange

_NAN = "lightgrey"


def _cmap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name]


def _integer_ticks(ax: Any, n_x: int, n_y: int) -> None:
    from matplotlib.ticker import MaxNLocator

    for axis, n in ((ax.xaxis, n_x), (ax.yaxis, n_y)):
        axis.set_major_locator(MaxNLocator(nbins=min(max(n, 1), 16), integer=True))


def head_heatmap(scores: Any, circuit: Circuit | None = None, *, title: str = "", cbar: str = "",
                 outline: str = "black") -> Figure:
    """A [layer, head] heatmap of ``scores`` (a Scores with axes (layer, head), a tensor, an array or
    nested lists; any unit, named by ``cbar``) with each head of ``circuit`` outlined by a rectangle
    (gid ``circuit-head``) in ``outline`` colour. Colours: RdBu, symmetric around 0; NaN cells light
    grey. Raises ValueError when the circuit's heads or shape do not fit the grid."""
    from matplotlib.patches import Rectangle

    grid = head_grid(scores)
    n_layers, n_heads = grid.shape
    heads = sorted(circuit.heads()) if circuit is not None else []
    if circuit is not None and circuit.shape is not None and (circuit.shape.n_layers, circuit.shape.n_heads) \
            != grid.shape:
        raise ValueError(f"the circuit's model has {circuit.shape.n_layers} layers x {circuit.shape.n_heads} heads "
                         f"but the score grid is {n_layers} x {n_heads}")
    outside = [h for h in heads if not (h[0] < n_layers and h[1] < n_heads)]
    if outside:
        raise ValueError(f"circuit heads {outside} lie outside the {n_layers} x {n_heads} score grid")
    fig = new_figure((min(14.0, max(3.6, 0.32 * n_heads + 1.8)), min(14.0, max(2.8, 0.28 * n_layers + 1.2))))
    ax = fig.add_subplot()
    finite = np.abs(grid[np.isfinite(grid)])
    lim = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    im = ax.imshow(grid, cmap=_cmap("RdBu").with_extremes(bad=_NAN), vmin=-lim, vmax=lim, aspect="auto",
                   interpolation="nearest")
    for layer, h in heads:
        ax.add_patch(Rectangle((h - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor=outline, lw=1.6,
                               gid="circuit-head"))
    _integer_ticks(ax, n_heads, n_layers)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    fig.colorbar(im, ax=ax, label=cbar)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def head_heatmaps(scores: Mapping[str, Any], circuits: Mapping[str, Circuit] | None = None, *, title: str = "",
                  cbar: str = "", ncols: int = 4) -> Figure:
    """Side-by-side [layer, head] heatmaps, one per name in ``scores`` (each a Scores with axes (layer,
    head), a tensor, an array or nested lists), on one colour scale, with the heads of
    ``circuits[name]`` outlined (gid ``circuit-head``). Raises ValueError when a circuit names no
    panel or its heads do not fit the grid."""
    grids = {name: head_grid(s) for name, s in scores.items()}
    outlines = {name: sorted(c.heads()) for name, c in (circuits or {}).items()}
    return heatmaps(grids, title=title, cbar=cbar, ncols=ncols, outlines=outlines)


def matrix_figure(matrix: Any, rows: list[str], cols: list[str], *, title: str = "", cbar: str = "",
                  xlabel: str = "", ylabel: str = "", vmin: float | None = None, vmax: float | None = None) -> Figure:
    """A labelled [row, column] matrix (any unit, named by ``cbar``), each cell annotated with its value
    ("n/a" for None or NaN, drawn light grey); viridis between ``vmin`` and ``vmax`` (default: the data's
    range)."""
    grid = np.array([[np.nan if v is None else float(v) for v in row] for row in matrix], dtype=float)
    if grid.shape != (len(rows), len(cols)):
        raise ValueError(f"matrix of shape {grid.shape} does not match {len(rows)} row and {len(cols)} column labels")
    fig = new_figure((min(14.0, 1.0 * len(cols) + 2.8), min(14.0, 0.6 * len(rows) + 1.8)))
    ax = fig.add_subplot()
    ax.set_label("matrix")
    im = ax.imshow(grid, cmap=_cmap("viridis").with_extremes(bad=_NAN), vmin=vmin, vmax=vmax, aspect="auto",
                   interpolation="nearest")
    finite = grid[np.isfinite(grid)]
    mid = (float(finite.min()) + float(finite.max())) / 2 if finite.size else 0.0
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = grid[i, j]
            text = "n/a" if not np.isfinite(v) else f"{v:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="black" if not np.isfinite(v) or v > mid else "white")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(im, ax=ax, label=cbar)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def sweep_figure(sweeps: ThresholdSweep | Mapping[str, ThresholdSweep], *, title: str = "") -> Figure:
    """Top-k% overlap curves (Jaccard vs % of heads kept, log x axis), one colour per named sweep: the
    observed curve (solid, markers; gid ``observed``), the null's 95% band (fill_between; gid
    ``null-band``) and the null mean (dashed; gid ``null-mean``). The legend gives each curve's
    area and permutation p-value."""
    named = {"": sweeps} if isinstance(sweeps, ThresholdSweep) else dict(sweeps)
    fig = new_figure((6.0, 4.0))
    ax = fig.add_subplot()
    tab10 = _cmap("tab10")
    for i, (name, s) in enumerate(named.items()):
        x, color = [100 * f for f in s.fractions], tab10(i % 10)
        stats = "" if s.area is None else f"area {s.area:.3g}, p {s.p_value:.3g}"
        label = ", ".join(t for t in (name, stats) if t) or "observed"
        ax.fill_between(x, s.null_low, s.null_high, color=color, alpha=0.18, lw=0, gid="null-band",
                        label=f"{name + ' ' if name else ''}null 95%")
        ax.plot(x, s.null_mean, ls="--", color=color, lw=1.0, gid="null-mean",
                label=f"{name + ' ' if name else ''}null mean")
        ax.plot(x, s.jaccard, marker="o", color=color, gid="observed", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("top heads kept (%)")
    ax.set_ylabel("Jaccard overlap")
    ax.set_ylim(0, 1.02)
    if named:
        ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def similarity_figure(sim: Similarity, *, title: str = "", cbar: str = "") -> Figure:
    """The similarity matrix with its dendrogram (scipy, average linkage on 1 - similarity) at its right:
    rows and columns in the dendrogram's leaf order, bottom to top and left to right, circuit names
    as tick labels. Colours: viridis on [0, 1]."""
    from scipy.cluster.hierarchy import dendrogram

    n = len(sim.names)
    matrix = np.asarray(sim.matrix, dtype=float)
    size = min(14.0, max(4.0, 0.35 * n + 2.5))
    fig = new_figure((size + 1.5, size))
    ax, ax_d = fig.subplots(1, 2, width_ratios=[4, 1], sharey=False)
    ax.set_label("matrix")
    ax_d.set_label("dendrogram")
    if n > 1:
        tree = dendrogram(np.asarray(sim.linkage), ax=ax_d, orientation="right", no_labels=True,
                          color_threshold=0, above_threshold_color="black")
        order = list(tree["leaves"])
        ax_d.set_ylim(0, 10 * n)  # leaf i sits at y = 10 i + 5, as matrix row i sits at y = i
    else:
        order = [0]
    ax_d.axis("off")
    im = ax.imshow(matrix[np.ix_(order, order)], cmap="viridis", vmin=0, vmax=1, origin="lower", aspect="auto",
                   interpolation="nearest")
    labels = [sim.names[i] for i in order]
    ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.set_ylim(-0.5, n - 0.5)
    fig.colorbar(im, ax=[ax, ax_d], label=cbar or sim.metric.replace("_", " "), shrink=0.8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def _effect_rows(effects: Any) -> dict[str, dict[str, float]]:
    if isinstance(effects, CheckpointEffects):
        rows = {step: {h: v[t] for h, v in effects.effect.items()} for t, step in enumerate(effects.steps)}
        rows["mean"] = dict(effects.mean)
        return rows
    return {name: dict(e.effect if isinstance(e, RegimeChange) else e) for name, e in effects.items()}


def effect_heatmap(effects: CheckpointEffects | Mapping[str, RegimeChange | Mapping[str, float]], *,
                   title: str = "", cbar: str = "symmetric effect E") -> Figure:
    """E per head across regimes: a [regime, head] heatmap, heads (any circuit's; natural order) on the
    x axis, one row per regime (``{regime: RegimeChange or {head: E}}``), or per checkpoint plus
    their mean (a CheckpointEffects). A head a regime does not list has E = 0. Colours: RdBu on
    [-1, 1] (blue: gained weight after training, red: lost)."""
    rows = _effect_rows(effects)
    if not rows:
        raise ValueError("effect_heatmap needs at least one regime")
    heads = natural_sorted(set().union(*rows.values()))
    values = np.array([[r.get(h, 0.0) for h in heads] for r in rows.values()], dtype=float).reshape(len(rows),
                                                                                                   len(heads))
    fig = new_figure((min(16.0, max(4.0, 0.22 * len(heads) + 2.5)), max(2.2, 0.35 * len(rows) + 1.6)))
    ax = fig.add_subplot()
    im = ax.imshow(values, cmap="RdBu", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(heads)), heads, rotation=90, fontsize=6)
    ax.set_yticks(range(len(rows)), list(rows), fontsize=7)
    ax.set_xlabel("head")
    fig.colorbar(im, ax=ax, label=cbar)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def cohort_figure(c: Cohorts, *, title: str = "") -> Figure:
    """The cohort plot over checkpoints: below, heads as rows (grouped by cohort: the pre circuit's, then
    by the checkpoint each first appeared in) and checkpoints as columns (a "pre" column first when
    there is a pre circuit), a cell coloured by the head's cohort where the head is present, white
    where absent; heads present at the last checkpoint have bold labels. Above, the number of heads
    present per checkpoint, stacked by cohort."""
    columns = (["pre"] if c.has_pre else []) + list(c.steps)
    cohorts = list(dict.fromkeys(h.cohort for h in c.heads if h.cohort is not None))
    colors = [_cmap("tab10")(i % 10) for i in range(len(cohorts))]
    index = {k: i + 1 for i, k in enumerate(cohorts)}
    image = np.zeros((len(c.heads), len(columns)))
    for r, h in enumerate(c.heads):
        cells = ([h.in_pre] if c.has_pre else []) + list(h.present)
        image[r] = [index.get(h.cohort, 0) if p else 0 for p in cells]
    fig = new_figure((min(14.0, max(4.0, 0.5 * len(columns) + 2.5)),
                      min(16.0, max(3.5, 0.18 * len(c.heads) + 2.5))))
    ax_c, ax = fig.subplots(2, 1, height_ratios=[1, 3], sharex=True)
    ax_c.set_label("counts")
    ax.set_label("presence")
    from matplotlib.colors import BoundaryNorm, ListedColormap

    cmap = ListedColormap(["white", *colors])
    ax.imshow(image, cmap=cmap, norm=BoundaryNorm(np.arange(len(cohorts) + 2) - 0.5, cmap.N), aspect="auto",
              interpolation="nearest")
    ax.set_yticks(range(len(c.heads)), [h.head for h in c.heads], fontsize=6)
    for label, h in zip(ax.get_yticklabels(), c.heads):
        label.set_fontweight("bold" if h.final else "normal")
    ax.set_xticks(range(len(columns)), columns, rotation=90, fontsize=7)
    ax.set_xlabel("checkpoint")
    counts = {"pre": {"pre": sum(h.in_pre for h in c.heads)}} if c.has_pre else {}
    counts.update(c.stack)
    bottom = np.zeros(len(columns))
    for k, color in zip(cohorts, colors):
        heights = np.array([counts[col].get(k, 0) for col in columns], dtype=float)
        ax_c.bar(range(len(columns)), heights, bottom=bottom, color=color, width=0.8, label=k)
        bottom += heights
    ax_c.set_ylabel("heads")
    if cohorts:
        ax_c.legend(title="cohort", fontsize=6, title_fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if title:
        ax_c.set_title(title, fontsize=10)
    return fig
