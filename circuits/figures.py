"""Figures: heatmaps of (layer x head) scores and layered circuit drawings, saved as PDF + PNG.

Figures are written atomically (a temp file in the same folder, then a rename).
matplotlib is imported lazily and always with the non-interactive Agg backend.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

from circuits.io import atomic_write_bytes


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, stem: str | os.PathLike) -> list[str]:
    """Save ``fig`` as ``stem``.pdf and ``stem``.png (atomically); returns the paths."""
    paths = []
    for ext in ("pdf", "png"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=150, bbox_inches="tight")
        path = f"{os.fspath(stem)}.{ext}"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    _plt().close(fig)
    return paths


def heatmaps(panels: Mapping[str, Any], stem: str | os.PathLike, *, title: str = "", cbar: str = "",
             center: float = 0.0, ncols: int = 5) -> list[str]:
    """One (layer x head) heatmap per panel, diverging colours centred on ``center``."""
    import numpy as np

    plt = _plt()
    names = list(panels)
    ncols = min(ncols, len(names))
    nrows = (len(names) + ncols - 1) // ncols
    arrays = [np.asarray(panels[n], dtype=float) for n in names]
    lim = max(float(np.nanmax(np.abs(a - center))) for a in arrays) or 1.0
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.8 * ncols + 0.8, 2.7 * nrows + 0.6), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    im = None
    for ax, name, a in zip(axes.flat, names, arrays):
        im = ax.imshow(a, cmap="RdBu", vmin=center - lim, vmax=center + lim, aspect="auto")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("head", fontsize=8)
        ax.set_ylabel("layer", fontsize=8)
        ax.set_xticks(range(a.shape[1]))
        ax.set_yticks(range(a.shape[0]))
        ax.tick_params(labelsize=7)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label=cbar)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, stem)


def circuit_figure(nodes: Mapping[str, str], edges: Sequence[tuple[str, str]], n_layers: int,
                   stem: str | os.PathLike, *, classes_order: Sequence[str] = (), title: str = "") -> list[str]:
    """Draw a head circuit: ``nodes`` = {node name "a{L}.h{H}[@POS]": class}, layered bottom-up by layer."""
    import networkx as nx

    plt = _plt()
    g = nx.DiGraph()
    classes = list(classes_order) or sorted(set(nodes.values()))
    colors = plt.get_cmap("tab10")
    by_layer: dict[int, list[str]] = {}
    for name in nodes:
        layer = int(name[1:].split(".")[0])
        by_layer.setdefault(layer, []).append(name)
    pos = {"embed": (0.0, -1.0), "logits": (0.0, float(n_layers))}
    for layer, names in by_layer.items():
        names.sort()
        for i, name in enumerate(names):
            pos[name] = (i - (len(names) - 1) / 2, float(layer))
    g.add_nodes_from(pos)
    g.add_edges_from(e for e in edges if e[0] in pos and e[1] in pos)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * max((len(v) for v in by_layer.values()), default=1)),
                                    1.1 * (n_layers + 2)))
    node_colors = ["lightgray" if n in ("embed", "logits") else colors(classes.index(nodes[n]) % 10) for n in g]
    nx.draw_networkx(g, pos, ax=ax, node_color=node_colors, node_size=1400, font_size=7, arrows=True,
                     arrowsize=12, edge_color="gray")
    for i, c in enumerate(classes):
        ax.scatter([], [], color=colors(i % 10), label=c)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax.set_yticks(range(-1, n_layers + 1))
    ax.set_yticklabels(["embed"] + [f"L{i}" for i in range(n_layers)] + ["logits"])
    ax.tick_params(left=True, labelleft=True)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, stem)
