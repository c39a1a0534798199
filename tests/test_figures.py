"""circuits.figures: backend-neutral drawing, circuit layout by names.level, deterministic saving."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text

from circuits import figures, names

CURVES = {"EAP-IG": {"percentages": [0.001, 0.01, 0.1, 1.0], "faithfulness": [0.1, 0.6, 0.9, 1.0],
                     "cpr": 0.8, "cmd": 0.2},
          "random": {"percentages": [0.001, 0.01, 0.1, 1.0], "faithfulness": [0.0, 0.1, 0.4, 1.0],
                     "cpr": 0.3, "cmd": 0.7}}
NODES = {"a1.h0@END": "name mover", "a0.h3@S2": "induction", "m1": ""}
EDGES = [("input", "a0.h3@S2"), ("a0.h3@S2", "a1.h0@END"), ("a1.h0@END", "logits"),
         ("a0.h1", "a2.g0<k>"), ("m1", "a2.h1<q>")]
WEIGHTED = [("input", "a0.h1<q>", 0.5), ("input", "a0.h1<k>", -0.3), ("a0.h1", "m0", 1.2),
            ("m0", "a1.g0<v>", -0.8), ("a1.h2", "logits", 1.0)]


def _panels() -> dict[str, np.ndarray]:
    a = np.arange(12, dtype=float).reshape(3, 4) - 4.0
    a[1, 2] = np.nan
    return {"noising": a, "denoising": -a / 2, "all missing": np.full((3, 4), np.nan)}


def _draw_all() -> list[Figure]:
    return [figures.heatmaps(_panels(), title="t", cbar="fraction"),
            figures.circuit_figure(NODES, EDGES, 3, classes_order=["name mover"], title="c"),
            figures.circuit_figure({}, WEIGHTED, 2),
            figures.faithfulness_curves(CURVES, title="f")]


def _texts(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text)]


# --- no global state: backend, rcParams, pyplot ---------------------------------------------


def test_drawing_and_saving_leave_backend_and_rcparams_alone(tmp_path):
    backend = matplotlib.get_backend()
    before = dict(matplotlib.rcParams)
    for i, fig in enumerate(_draw_all()):
        figures.save_figure(fig, tmp_path / f"fig{i}", ("pdf", "png", "svg"))
    assert matplotlib.get_backend() == backend
    assert dict(matplotlib.rcParams) == before


def test_library_never_chooses_a_backend_nor_uses_pyplot(tmp_path):
    # A fresh process under a non-Agg backend: a matplotlib.use("Agg") anywhere would show.
    script = textwrap.dedent(f"""
        import json, sys
        import matplotlib
        backend = matplotlib.get_backend()
        before = dict(matplotlib.rcParams)
        sys.path.insert(0, {os.getcwd()!r})
        import tests.test_figures as t
        for i, fig in enumerate(t._draw_all()):
            t.figures.save_figure(fig, {str(tmp_path)!r} + f"/fig{{i}}", ("svg",))
        print(json.dumps({{"before": backend, "after": matplotlib.get_backend(),
                          "rc_same": dict(matplotlib.rcParams) == before,
                          "pyplot": "matplotlib.pyplot" in sys.modules}}))
    """)
    env = {**os.environ, "MPLBACKEND": "svg"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"before": "svg", "after": "svg", "rc_same": True, "pyplot": False}


def test_figures_return_figure_objects_that_render_in_notebooks():
    for fig in _draw_all():
        assert isinstance(fig, Figure)
        # Jupyter shows a cell's Figure value even when no pyplot backend was ever loaded
        assert fig._repr_png_().startswith(b"\x89PNG")


# --- circuit drawings -----------------------------------------------------------------------


def test_circuit_layout_places_nodes_by_level():
    pos = figures.circuit_layout(NODES, EDGES, 3)
    assert set(pos) == {"input", "a0.h3@S2", "a1.h0@END", "m1", "logits", "a0.h1", "a2.g0", "a2.h1"}
    levels = {n: y for n, (_, y) in pos.items()}
    assert levels == {"input": -1.0, "a0.h3@S2": 0.0, "a0.h1": 0.0, "a1.h0@END": 1.0, "m1": 1.5,
                      "a2.g0": 2.0, "a2.h1": 2.0, "logits": 3.0}
    for name, y in levels.items():
        assert y == names.level(name if name != "a2.g0" else "a2.g0<k>", 3)
    # one level's nodes are spread one unit apart, centred, ordered by head/group index
    assert pos["a0.h1"][0] == -0.5 and pos["a0.h3@S2"][0] == 0.5
    assert pos["a2.h1"][0] + pos["a2.g0"][0] == 0 and pos["a2.h1"][0] != pos["a2.g0"][0]
    assert pos["input"][0] == pos["logits"][0] == pos["m1"][0] == 0.0
    # head order is numeric, not by string: h2 before h10
    row = figures.circuit_layout({"a0.h10": "", "a0.h2": ""}, [], 1)
    assert row["a0.h2"][0] < row["a0.h10"][0]


def test_circuit_figure_draws_nodes_at_their_levels_with_reader_owners():
    fig = figures.circuit_figure(NODES, EDGES, 3, classes_order=["induction", "name mover"])
    ax = fig.axes[0]
    (nodes,) = [c for c in ax.collections if len(c.get_offsets()) > 1]
    pos = figures.circuit_layout(NODES, EDGES, 3)
    assert sorted(map(tuple, nodes.get_offsets().tolist())) == sorted(pos.values())
    texts = _texts(fig)
    assert "a2.g0" in texts and "a2.h1" in texts and "input" in texts and "a1.h0\n@END" in texts
    assert not any("embed" in t for t in texts)
    assert not any("<" in t for t in texts)  # readers are drawn as their owner node
    assert {"k", "q"} <= set(texts)  # edges into readers carry the component
    # classes take tab10 colours in classes_order; unclassified nodes are light grey
    tab10 = matplotlib.colormaps["tab10"]
    face = dict(zip(pos, map(tuple, nodes.get_facecolors().tolist())))
    assert face["a0.h3@S2"] == pytest.approx(tab10(0))
    assert face["a1.h0@END"] == pytest.approx(tab10(1))
    grey = matplotlib.colors.to_rgba("lightgrey")
    assert face["m1"] == pytest.approx(grey) and face["input"] == pytest.approx(grey)
    assert len(ax.patches) == len(EDGES)  # one arrow per edge
    assert len(fig.axes) == 1  # no weights: no colorbar


def test_circuit_figure_colours_edges_by_weight():
    fig = figures.circuit_figure({}, WEIGHTED, 2)
    assert len(fig.axes) == 2  # the circuit and the edge-weight colorbar
    arrows = fig.axes[0].patches
    colors = [tuple(a.get_edgecolor()) for a in arrows]
    widths = [a.get_linewidth() for a in arrows]
    cmap = matplotlib.colormaps["coolwarm"]
    assert colors[2] == pytest.approx(cmap(1.0))  # the largest positive weight: darkest red
    assert colors[3][2] > colors[3][0]  # a negative weight is blue
    assert widths[2] == max(widths) and widths[4] < widths[2]
    assert not any("embed" in t for t in _texts(fig))


def test_circuit_figure_parses_names_with_circuits_names():
    with pytest.raises(names.BadName):
        figures.circuit_figure({"embed": "x"}, [], 2)
    with pytest.raises(names.BadName):
        figures.circuit_figure({}, [("embed", "a0.h1<q>")], 2)
    with pytest.raises(ValueError, match="edge"):
        figures.circuit_figure({}, [("input",)], 2)


# --- heatmaps and curves --------------------------------------------------------------------


def test_heatmaps_with_nan_cells():
    panels = _panels()
    fig = figures.heatmaps(panels, center=1.0, cbar="fraction")
    images = [im for ax in fig.axes for im in ax.images]
    assert len(images) == len(panels)
    lim = max(float(np.nanmax(np.abs(a - 1.0))) for a in list(panels.values())[:2])
    for im in images:  # one colour scale, symmetric around center
        assert (im.norm.vmin, im.norm.vmax) == pytest.approx((1.0 - lim, 1.0 + lim))
        assert im.cmap.get_bad()[3] > 0  # NaN cells are painted, not left transparent
    assert [ax.get_title() for ax in fig.axes if ax.images] == list(panels)
    assert {ax.get_xlabel() for ax in fig.axes if ax.images} == {"head"}
    with pytest.raises(ValueError, match="2-D"):
        figures.heatmaps({"bad": np.zeros((2, 3, 4))})


def test_faithfulness_curves():
    fig = figures.faithfulness_curves(CURVES, title="MIB")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["EAP-IG (CPR 0.80, CMD 0.20)", "random (CPR 0.30, CMD 0.70)"]
    xs = ax.lines[0].get_xdata()
    assert list(xs) == pytest.approx([0.1, 1.0, 10.0, 100.0])  # percent of edges
    assert any(tuple(line.get_ydata()) == (1.0, 1.0) and line.get_linestyle() == "--"
               for line in ax.lines)


# --- saving ---------------------------------------------------------------------------------


def test_save_figure_is_deterministic_and_paper_ready(tmp_path):
    files = {}
    for run in ("a", "b"):
        for kind, fig in zip(("heat", "circuit"), _draw_all()):  # an image, text, a colorbar
            paths = figures.save_figure(fig, tmp_path / run / kind, ("pdf", "svg", "png"), dpi=80)
            assert paths == [str(tmp_path / run / kind) + f".{e}" for e in ("pdf", "svg", "png")]
            for p in paths:
                files[(run, kind, p.rsplit(".", 1)[1])] = open(p, "rb").read()
    for (run, kind, ext), data in files.items():
        if run == "a":
            assert data == files[("b", kind, ext)], f"{kind}.{ext} differs between two saves"
        if ext == "pdf":
            assert b"/CreationDate" not in data and b"/ModDate" not in data
            assert b"/FontFile2" in data and b"/Subtype /Type3" not in data
        if ext == "svg":
            assert b"<dc:date>" not in data and b"<text" in data  # text stays text
            assert not re.search(rb"20\d\d-\d\d-\d\dT", data)
        if ext == "png":
            assert data.startswith(b"\x89PNG") and b"Software" not in data
    assert not [f for f in os.listdir(tmp_path / "a") if f.startswith(".tmp")]


def test_save_figure_rejects_unknown_formats_before_writing(tmp_path):
    fig = figures.faithfulness_curves(CURVES)
    with pytest.raises(ValueError, match="'jpeg'"):
        figures.save_figure(fig, tmp_path / "f", ("pdf", "jpeg"))
    assert os.listdir(tmp_path) == []
    assert figures.save_figure(fig, tmp_path / "f", "svg") == [str(tmp_path / "f.svg")]


def test_save_figure_into_a_file_names_the_path(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(OSError, match=re.escape(str(blocker))):
        figures.save_figure(figures.faithfulness_curves(CURVES), blocker / "fig", ("png",))
    assert blocker.read_text() == "x"


def test_circuit_figure_of_a_deep_model_fits_a_page():
    # a big model's circuit still fits a page: the axes are at most about 16 inches tall
    fig = figures.circuit_figure({"a30.h1": "x", "a0.h0": "y"}, [("a0.h0", "m15"), ("m15", "logits")], 32)
    w, h = fig.get_size_inches()
    assert math.isfinite(w) and h <= 17.5


def test_bars_draw_one_bar_per_defined_value_with_intervals():
    from circuits.figures import bars

    fig = bars({"n=2": {"accuracy": 1.0, "faithfulness": 0.8}, "n=3": {"accuracy": 0.9, "faithfulness": None}},
               errors={"n=2": {"faithfulness": (0.7, 0.9)}}, ylabel="fraction", reference=1.0)
    ax = fig.axes[0]
    heights = sorted(round(p.get_height(), 3) for p in ax.patches)
    assert heights == [0.8, 0.9, 1.0]  # the undefined value is left out, not drawn as 0
    assert [t.get_text() for t in ax.get_xticklabels()] == ["n=2", "n=3"]


def test_an_edge_to_a_head_held_at_one_position_joins_that_node():
    """A circuit holds a1.h0 at END; an edge into its query input must end at that node, not at a
    second, grey copy of the head."""
    from circuits.figures import circuit_layout

    layout = circuit_layout({"a0.h2@S2": "induction", "a1.h0@END": "mover"},
                            [("a0.h2@S2", "a1.h0<q>"), ("a1.h0@END", "logits")], 2)
    assert set(layout) == {"a0.h2@S2", "a1.h0@END", "logits"}


def test_line_plot_draws_one_line_per_series_with_gaps_for_undefined_points():
    from circuits.figures import line_plot

    fig = line_plot({"a": {"x": 1.0, "y": None, "z": 3.0}, "b": {"y": 2.0}}, reference=0.5)
    ax = fig.axes[0]
    lines = [ln for ln in ax.lines if ln.get_label() in ("a", "b")]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["x", "y", "z"]
    a = lines[0].get_ydata()
    assert a[0] == 1.0 and a[1] != a[1] and a[2] == 3.0  # NaN gap where undefined
    import pytest

    with pytest.raises(ValueError, match="at least one point"):
        line_plot({})
