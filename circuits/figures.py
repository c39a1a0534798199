"""Figures for notebooks and papers: (layer x head) heatmaps, circuit drawings, faithfulness curves.

Rules this module keeps:

* It never chooses a matplotlib backend (no ``matplotlib.use``) and never imports
  ``matplotlib.pyplot``: figures are built with ``matplotlib.figure.Figure()``
  directly, so drawing works the same under any backend, a script's or a
  notebook's, and nothing is registered with pyplot's global figure list (drawing
  many figures leaks nothing; there is nothing to close).
* Drawing functions return the Figure; nothing is written until :func:`save_figure`.
  In Jupyter a returned Figure shows inline as a cell's value (through the inline
  backend when it is active, otherwise as a PNG of its own).
* :func:`save_figure` writes each format atomically and deterministically: the same
  drawing saved twice gives byte-identical files. PDFs embed TrueType (Type 42)
  fonts, SVGs keep text as text, and no file carries a date. These settings are
  applied with ``matplotlib.rc_context`` around the save only; global rcParams are
  never changed.
* Circuit drawings read node, reader and edge names through :mod:`circuits.names`
  only (the embeddings are ``input``).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

from circuits import names
from circuits.io import atomic_write_bytes

FORMATS = ("pdf", "png", "svg")
_METADATA = {"pdf": {"CreationDate": None, "ModDate": None}, "svg": {"Date": None}, "png": {"Software": None}}
_SAVE_RC = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none", "svg.hashsalt": "circuits"}
_NO_CLASS = "lightgrey"

#: An edge of :func:`circuit_figure`: (source, target) or (source, target, weight).
Edge = tuple[str, str] | tuple[str, str, float]


class _Figure(Figure):
    """A Figure that can show itself as PNG in Jupyter even when no pyplot backend was ever loaded.

    IPython prefers a formatter registered for ``Figure`` (the inline backend's) over
    ``_repr_png_``, so with the inline backend active nothing changes.
    """

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()


def new_figure(figsize: tuple[float, float] = (6.0, 4.0), **kwargs: Any) -> Figure:
    """An empty Figure (constrained layout) for drawings of one's own: it shows itself inline in
    Jupyter under any backend, and ``save_figure`` writes it deterministically."""
    return _Figure(figsize=figsize, layout=kwargs.pop("layout", "constrained"), **kwargs)


def _colormap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name]


def save_figure(fig: Figure, stem: str | os.PathLike, formats: str | Sequence[str] = ("pdf", "png"),
                dpi: float = 150) -> list[str]:
    """Write ``fig`` as ``stem.<ext>`` for each of ``formats`` (pdf, png, svg); returns the paths.

    ``dpi`` (dots per inch) sets the resolution of PNGs and of raster parts of PDFs and
    SVGs. Every format is rendered before any file is written, then each file is written
    atomically (a temp file in the same folder, then a rename); the folder is created if
    missing. Output is deterministic: no dates, Type 42 fonts in PDF, text kept as text
    in SVG, fixed SVG ids. The figure is left open and unchanged; a pyplot figure passed
    here is not closed (close it with ``plt.close(fig)``). Raises ValueError for an
    unknown format and OSError when the folder cannot be created or written.
    """
    import matplotlib

    formats = [formats] if isinstance(formats, str) else list(formats)
    for ext in formats:
        if ext not in FORMATS:
            raise ValueError(f"unsupported figure format {ext!r}: expected one of {FORMATS}")
    rendered = []
    with matplotlib.rc_context(_SAVE_RC):
        for ext in dict.fromkeys(formats):
            buf = io.BytesIO()
            fig.savefig(buf, format=ext, dpi=dpi, bbox_inches="tight", metadata=_METADATA[ext])
            rendered.append((f"{os.fspath(stem)}.{ext}", buf.getvalue()))
    for path, data in rendered:
        atomic_write_bytes(path, data)
    return [path for path, _ in rendered]


def heatmaps(panels: Mapping[str, Any], *, title: str = "", cbar: str = "", center: float = 0.0,
             ncols: int = 5, outlines: Mapping[str, Any] | None = None) -> Figure:
    """One (layer x head) heatmap per panel, in a grid of ``ncols`` columns.

    ``panels`` maps a panel title to a 2-D array-like ``[layer, head]`` of scores (numpy,
    nested lists, or a CPU tensor), any unit; ``cbar`` names that unit on the colorbar.
    Colours are RdBu on one scale shared by all panels, symmetric around ``center``; NaN
    cells are drawn light grey. ``outlines`` maps a panel title to the (layer, head) cells
    to outline in black (gid ``circuit-head``). Returns the Figure (save it with
    :func:`save_figure`).
    """
    import numpy as np
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import MaxNLocator

    if not panels:
        raise ValueError("heatmaps needs at least one panel")
    titles = list(panels)
    unknown = sorted(set(outlines or {}) - set(titles))
    if unknown:
        raise ValueError(f"outlines name panels {unknown} that are not among {titles}")
    arrays = [np.asarray(panels[t], dtype=float) for t in titles]
    for t, a in zip(titles, arrays):
        if a.ndim != 2:
            raise ValueError(f"panel {t!r} must be 2-D [layer, head], got shape {a.shape}")
    finite = [np.abs(a[np.isfinite(a)] - center) for a in arrays]
    lim = max((float(f.max()) for f in finite if f.size), default=0.0) or 1.0
    ncols = max(1, min(ncols, len(titles)))
    nrows = math.ceil(len(titles) / ncols)
    fig = _Figure(figsize=(2.8 * ncols + 0.8, 2.7 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[len(titles):]:
        ax.axis("off")
    cmap = _colormap("RdBu").with_extremes(bad=_NO_CLASS)
    im = None
    for ax, t, a in zip(axes.flat, titles, arrays):
        im = ax.imshow(a, cmap=cmap, vmin=center - lim, vmax=center + lim, aspect="auto",
                       interpolation="nearest")
        ax.set_title(t, fontsize=8)
        ax.set_xlabel("head", fontsize=8)
        ax.set_ylabel("layer", fontsize=8)
        for axis, n in ((ax.xaxis, a.shape[1]), (ax.yaxis, a.shape[0])):
            axis.set_major_locator(MaxNLocator(nbins=min(max(n, 1), 16), integer=True))
        ax.tick_params(labelsize=7)
        for layer, head in sorted((outlines or {}).get(t, ())):
            if not (0 <= layer < a.shape[0] and 0 <= head < a.shape[1]):
                raise ValueError(f"panel {t!r}: outlined cell (layer {layer}, head {head}) lies outside its "
                                 f"{a.shape[0]} x {a.shape[1]} grid")
            ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="black", lw=1.6,
                                   gid="circuit-head"))
    fig.colorbar(im, ax=axes, shrink=0.8, label=cbar)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _endpoint(name: str, as_target: bool, n_layers: int) -> tuple[str, float, str, tuple]:
    """(drawn node name, level, reader component or "", sort key) of an edge end."""
    item: names.Node | names.Reader
    if as_target:
        try:
            item = names.parse_reader(name)
        except names.BadName:
            item = names.parse_node(name)
    else:
        item = names.parse_node(name)
    return _placed(item, n_layers)


def _placed(item: names.Node | names.Reader, n_layers: int) -> tuple[str, float, str, tuple]:
    kinds = ("input", "head", "group", "mlp", "resid", "logits")
    if isinstance(item, names.Reader):
        drawn, component, index, pos = item.owner(), item.component or "", item.index, ""
    else:
        drawn, component, index, pos = item.name, "", item.head, item.pos or ""
    key = (item.layer, kinds.index(item.kind), -1 if index is None else index, pos)
    return drawn, names.level(item, n_layers), component, key


def _nodes_and_edges(nodes: Mapping[str, str], edges: Sequence[Edge], n_layers: int
                     ) -> tuple[dict[str, tuple[float, tuple]], list[tuple[str, str, str, float | None]]]:
    """Drawn nodes {name: (level, sort key)} and edges (source, target, component, weight)."""
    placed: dict[str, tuple[float, tuple]] = {}
    at_position: dict[str, list[str]] = {}  # a head's unpositioned name -> its positioned nodes
    for name in nodes:
        node = names.parse_node(name)
        drawn, lvl, _, key = _placed(node, n_layers)
        placed.setdefault(drawn, (lvl, key))
        if node.pos:
            at_position.setdefault(node.unpositioned().name, []).append(drawn)

    def attach(drawn: str) -> str:  # an edge end naming a head that the circuit holds at one position
        held = at_position.get(drawn, [])
        return held[0] if drawn not in placed and len(held) == 1 else drawn

    out = []
    for e in edges:
        if len(e) not in (2, 3):
            raise ValueError(f"an edge is (source, target) or (source, target, weight), got {e!r}")
        u, ulvl, _, ukey = _endpoint(str(e[0]), False, n_layers)
        v, vlvl, comp, vkey = _endpoint(str(e[1]), True, n_layers)
        u, v = attach(u), attach(v)
        placed.setdefault(u, (ulvl, ukey))
        placed.setdefault(v, (vlvl, vkey))
        out.append((u, v, comp, None if len(e) == 2 or e[2] is None else float(e[2])))
    return placed, out


def circuit_layout(nodes: Mapping[str, str], edges: Sequence[Edge], n_layers: int
                   ) -> dict[str, tuple[float, float]]:
    """Where :func:`circuit_figure` draws each node: {drawn node name: (x, y)} in data units.

    ``y`` is :func:`circuits.names.level`: ``input`` at -1, the heads of layer L at L, the
    MLP of layer L at L + 0.5, ``logits`` at ``n_layers``. Nodes of one level are spread
    one unit apart, centred on x = 0, ordered by layer, head (or KV group) and position.
    The drawn nodes are the keys of ``nodes`` plus every edge end; an edge target that is
    a reader (``a2.h1<q>``, ``a2.g0<k>``) is drawn as its owner (``a2.h1``, ``a2.g0``).
    """
    placed, _ = _nodes_and_edges(nodes, edges, n_layers)
    by_level: dict[float, list[str]] = {}
    for name, (lvl, _) in placed.items():
        by_level.setdefault(lvl, []).append(name)
    pos = {}
    for lvl, row in by_level.items():
        row.sort(key=lambda n: (placed[n][1], n))
        for i, name in enumerate(row):
            pos[name] = (i - (len(row) - 1) / 2, lvl)
    return pos


def circuit_figure(nodes: Mapping[str, str], edges: Sequence[Edge], n_layers: int, *,
                   classes_order: Sequence[str] = (), title: str = "") -> Figure:
    """Draw a circuit of heads and/or edges, layered bottom (``input``) to top (``logits``).

    ``nodes`` maps node names (``a1.h0@END``, ``m2``, ``input``; see :mod:`circuits.names`)
    to a class label such as ``"name mover"`` (``""``: unlabelled). ``edges`` are
    ``(source, target)`` or ``(source, target, weight)``: a source is a node name, a target
    a node name or a reader name (``a2.h1<q>``, ``a2.g0<k>``, ``m1``, ``logits``); an edge
    into a reader is drawn to the reader's owner and labelled with its component q/k/v.
    ``n_layers`` is the model's number of layers. Nodes are placed by
    :func:`circuit_layout` and coloured by class (tab10, in ``classes_order`` then any
    other classes sorted); nodes without a class, such as edge-only ``input``/``logits``,
    are light grey. Weighted edges are coloured (coolwarm, symmetric around 0; any unit)
    with width growing with |weight|; unweighted edges are grey. Returns the Figure.
    """
    import numpy as np
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch

    pos = circuit_layout(nodes, edges, n_layers)
    _, drawn_edges = _nodes_and_edges(nodes, edges, n_layers)
    cls_of = {names.parse_node(n).name: c for n, c in nodes.items()}
    present = {c for c in cls_of.values() if c}
    classes = [c for c in classes_order if c in present] + sorted(present - set(classes_order))
    tab10 = _colormap("tab10")
    color_of = {c: tab10(i % 10) for i, c in enumerate(classes)}

    # Sizes in inches: nodes of radius r, x units of 3 r, y units of 3 r (5.6 r when MLPs sit
    # at half levels), shrunk so that the axes are at most 16 inches tall.
    xs = [x for x, _ in pos.values()] or [0.0]
    half = any(y != int(y) for _, y in pos.values())
    r = min(0.2, 16.0 / ((5.6 if half else 3.0) * (n_layers + 2.2)))
    xu, yu = 3.0 * r, (5.6 if half else 3.0) * r
    xlim, ylim = (min(xs) - 0.7, max(xs) + 0.7), (-1.6, n_layers + 0.6)
    fig = _Figure(figsize=(xu * (xlim[1] - xlim[0]) + 0.8 + (2.0 if classes else 0.3),
                           yu * (ylim[1] - ylim[0]) + (0.4 if title else 0.1) + (0.9 if any(
                               len(e) == 3 and e[2] is not None for e in edges) else 0.0)),
                  layout="constrained")
    ax = fig.add_subplot()
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect(yu / xu, adjustable="box")
    radius_pt = 72 * r
    font = max(3.5, min(6.5, radius_pt / 2.2))
    inch = {n: np.array([x * xu, y * yu]) for n, (x, y) in pos.items()}

    weights = [w for *_, w in drawn_edges if w is not None]
    lim = max((abs(w) for w in weights), default=0.0) or 1.0
    norm, cmap = Normalize(-lim, lim), _colormap("coolwarm")
    pair_count: dict[tuple[str, str], int] = {}
    for u, v, _, _ in drawn_edges:
        pair_count[(u, v)] = pair_count.get((u, v), 0) + 1
    pair_seen: dict[tuple[str, str], int] = {}
    for i, (u, v, comp, w) in enumerate(drawn_edges):
        k, j = pair_count[(u, v)], pair_seen.get((u, v), 0)
        pair_seen[(u, v)] = j + 1
        a, b = inch[u], inch[v]
        rad = 0.3 * (j - (k - 1) / 2)  # edges between one pair of nodes fan out
        if k == 1:  # bend an edge away from any node it would cross
            d = b - a
            length = float(np.hypot(*d)) or 1.0
            for n, c in inch.items():
                t = float(np.dot(c - a, d)) / length ** 2
                side = float(d[0] * (c - a)[1] - d[1] * (c - a)[0]) / length
                if n not in (u, v) and 0 < t < 1 and abs(side) < 1.3 * r:
                    sign = (1 if i % 2 == 0 else -1) if abs(side) < 1e-9 else (1 if side > 0 else -1)
                    rad = sign * min(0.6, max(0.25, 5.0 * r / length))
                    break
        color = "grey" if w is None else cmap(norm(w))
        lw = 1.0 if w is None else 0.6 + 2.4 * abs(w) / lim
        ax.add_patch(FancyArrowPatch(pos[u], pos[v], arrowstyle="-|>", color=color, lw=lw,
                                     shrinkA=radius_pt, shrinkB=radius_pt + 1,
                                     mutation_scale=6 + 2 * lw, connectionstyle=f"arc3,rad={rad}",
                                     zorder=1))
        if comp:  # at the curve's middle: arc3 puts its control point rad * |b - a| off the chord
            d = b - a
            mid = (a + b) / 2 + 0.5 * rad * np.array([d[1], -d[0]])
            ax.text(mid[0] / xu, mid[1] / yu, comp, fontsize=font, ha="center", va="center",
                    zorder=2, bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none",
                                    "alpha": 0.8})

    names_drawn = list(pos)
    xy = np.array([pos[n] for n in names_drawn], dtype=float).reshape(-1, 2)
    colors = [color_of[cls_of[n]] if cls_of.get(n) else _NO_CLASS for n in names_drawn]
    ax.scatter(xy[:, 0], xy[:, 1], s=(2 * radius_pt) ** 2, c=colors, edgecolors="black",
               linewidths=0.5, zorder=3)
    for n, (x, y) in zip(names_drawn, xy):
        ax.text(x, y, n.replace("@", "\n@"), fontsize=font, ha="center", va="center", zorder=4)

    ax.set_yticks(range(-1, n_layers + 1))
    ax.set_yticklabels(["input"] + [f"L{i}" for i in range(n_layers)] + ["logits"], fontsize=7)
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    if classes:
        handles = [Line2D([], [], ls="", marker="o", markersize=7, color=color_of[c],
                          markeredgecolor="black", markeredgewidth=0.5) for c in classes]
        fig.legend(handles, classes, loc="outside right upper", fontsize=7, frameon=False)
    if weights:
        fig.colorbar(ScalarMappable(norm, cmap), ax=ax, location="bottom", shrink=0.5, pad=0.02,
                     label="edge weight")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def faithfulness_curves(curves: Mapping[str, Mapping[str, Any]], *, title: str = "",
                        reference: Mapping[str, Any] | None = None) -> Figure:
    """Faithfulness vs share of edges kept, one line per method.

    ``curves`` maps a method name to a mapping with ``"percentages"`` (fractions of the
    graph's edges kept, 0..1, drawn as % on a log axis), ``"faithfulness"`` (one value
    per percentage; 1.0 is the full model's behaviour, marked by a dashed line), and the
    scalars ``"cpr"`` and ``"cmd"`` shown in the legend. ``reference`` (same keys): what the
    curves are read against, such as the exact greedy pruning curve, drawn as a thick black
    line. Returns the Figure.
    """
    fig = _Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    if reference is not None:
        ax.plot([100 * p for p in reference["percentages"]], reference["faithfulness"], color="black", lw=2.5,
                alpha=0.6, marker="s", label=f"exact greedy reference (CPR {reference['cpr']:.2f}, "
                                             f"CMD {reference['cmd']:.2f})")
    for name, c in curves.items():
        ax.plot([100 * p for p in c["percentages"]], c["faithfulness"], marker="o",
                label=f"{name} (CPR {c['cpr']:.2f}, CMD {c['cmd']:.2f})")
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("edges kept (%)")
    ax.set_ylabel("faithfulness f")
    if curves:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def line_plot(series: Mapping[str, Mapping[str, float | None]], *, xlabel: str = "", ylabel: str = "",
              title: str = "", reference: float | None = None) -> Figure:
    """One line per series over shared categorical x labels (``series[name][x label] = value``, the x
    labels in order of first appearance); a None value leaves a gap (undefined); ``reference`` draws a
    dashed horizontal line. Returns the Figure."""
    labels = list(dict.fromkeys(x for s in series.values() for x in s))
    if not labels:
        raise ValueError("line_plot needs at least one point")
    fig = _Figure(figsize=(max(4.5, 0.45 * len(labels) + 2.5), 3.6), layout="constrained")
    ax = fig.add_subplot()
    for name, s in series.items():
        ys = [float("nan") if s.get(x) is None else float(s[x]) for x in labels]
        ax.plot(range(len(labels)), ys, marker="o", label=name)
    if reference is not None:
        ax.axhline(reference, color="gray", lw=0.8, ls="--")
    ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 6 else 0, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def bars(groups: Mapping[str, Mapping[str, float | None]], *, errors: Mapping[str, Mapping[str, Sequence[float]]]
         | None = None, ylabel: str = "", title: str = "", reference: float | None = None) -> Figure:
    """Grouped bars: one group per key of ``groups`` (e.g. a scene size), one bar per series inside it
    (e.g. accuracy, faithfulness). ``errors[group][series]`` = (low, high) draws an interval; a None
    value is left out (undefined); ``reference`` draws a dashed horizontal line. Returns the Figure."""
    series = list(dict.fromkeys(k for g in groups.values() for k in g))
    fig = _Figure(figsize=(max(4.0, 0.9 * len(groups) * max(1, len(series)) + 1.5), 3.6), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(series))
    colors = _colormap("tab10")
    for j, name in enumerate(series):
        xs, ys, lo, hi = [], [], [], []
        for i, (group, values) in enumerate(groups.items()):
            v = values.get(name)
            if v is None:
                continue
            xs.append(i + (j - (len(series) - 1) / 2) * width)
            ys.append(v)
            interval = (errors or {}).get(group, {}).get(name)
            lo.append(v - interval[0] if interval else 0.0)
            hi.append(interval[1] - v if interval else 0.0)
        has = any(lo) or any(hi)  # intervals only where this series has some
        ax.bar(xs, ys, width=width, color=colors(j % 10), label=name,
               yerr=[lo, hi] if has else None, capsize=3 if has else 0)
    if reference is not None:
        ax.axhline(reference, color="gray", lw=0.8, ls="--")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(list(groups), fontsize=8)
    ax.set_ylabel(ylabel)
    if series:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig
