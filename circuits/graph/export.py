"""Exports of a circuit for papers and tools: DOT (Graphviz), TikZ (LaTeX), PDF/SVG/PNG figures, and the
data formats of :mod:`circuits.graph.serialize` (JSON, MIB / EAP-IG graph JSON, GraphML).

Every drawing is layered like :func:`circuits.figures.circuit_figure`: ``input`` at the bottom, the
heads of layer L in row L (the MLP half a row above), ``logits`` at the top; nodes coloured by class
(one fixed palette, matplotlib's tab10, in ``classes_order`` then any other classes sorted; no class:
light grey); edges as wide as their |score| (red positive, blue negative, grey unscored), labelled
q/k/v where they feed a head's (or a KV group's) query, key or value. Text outputs are deterministic
(sorted), figures byte-identical on repeat, and every file is written atomically.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from typing import Any

from circuits.graph.circuit import Circuit
from circuits.graph.mib import mib_text
from circuits.graph.serialize import graphml_bytes, n_layers_of, to_networkx
from circuits.io import atomic_write_bytes, dumps

FORMATS = ("json", "mib", "graphml", "dot", "tikz", "pdf", "svg", "png")
#: the file ending of each format
EXTENSIONS = {"json": "json", "mib": "mib.json", "graphml": "graphml", "dot": "dot", "tikz": "tex", "pdf": "pdf",
              "svg": "svg", "png": "png"}
#: matplotlib's tab10, the classes' colours in every drawing (circuit_figure uses the same)
PALETTE = ("#1F77B4", "#FF7F0E", "#2CA02C", "#D62728", "#9467BD", "#8C564B", "#E377C2", "#7F7F7F",
           "#BCBD22", "#17BECF")
NO_CLASS = "#D3D3D3"
POSITIVE, NEGATIVE, UNSCORED = "#B40426", "#3B4CC0", "#808080"  # coolwarm's ends, as circuit_figure


def check_format(format: str) -> str:
    """``format`` when it is one of :data:`FORMATS`, else ValueError listing them."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}: expected one of {', '.join(FORMATS)}")
    return format


def class_colors(circuit: Circuit, classes_order: Sequence[str] = ()) -> dict[str, str]:
    """{class label: hex colour}: ``classes_order`` first, then the circuit's other classes sorted."""
    present = {info.cls for info in circuit.nodes.values() if info.cls}
    classes = [c for c in classes_order if c in present] + sorted(present - set(classes_order))
    return {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(classes)}


def default_title(circuit: Circuit) -> str:
    """``"<task> circuit (<model>)"`` from what the circuit knows ("" when it knows neither)."""
    parts = ([f"{circuit.task} circuit"] if circuit.task else []) + ([f"({circuit.model})"] if circuit.model else [])
    return " ".join(parts)


# ---------------------------------------------------------------------------- the drawn graph

def _drawn(circuit: Circuit) -> tuple[list[tuple[str, dict]], list[tuple[str, str, dict]], list[tuple]]:
    """(nodes [(id, attrs)] sorted by level and place, edges [(u, v, attrs)] sorted, figure edges).

    Ids are :func:`circuits.graph.serialize.to_networkx`'s; figure edges are (source, target, score)
    for ``circuit_figure``, whose targets are readers (drawn at their owner, labelled q/k/v) unless the
    end met a node at a position."""
    g = to_networkx(circuit)
    kinds = ("input", "head", "kv_group", "mlp", "resid", "logits")

    def key(n: str) -> tuple:
        d = g.nodes[n]
        index = d.get("head", d.get("group", -1))
        return (d["level"], kinds.index(d["kind"]), index, d.get("pos", ""), n)

    nodes = [(n, g.nodes[n]) for n in sorted(g.nodes, key=key)]
    order = {n: i for i, (n, _) in enumerate(nodes)}
    edges = sorted(((u, v, d) for u, v, d in g.edges(data=True)),
                   key=lambda e: (order[e[0]], order[e[1]], e[2].get("component", ""), e[2]["name"]))
    figure_edges = [(u, d["reader"] if v == d["reader"].split("<")[0] else v, d.get("score"))
                    for u, v, d in edges]
    return nodes, edges, figure_edges


def _width(score: float | None, lim: float, low: float, span: float) -> float:
    return 1.0 if score is None else low + span * abs(score) / lim


def _edge_color(score: float | None) -> str:
    return UNSCORED if score is None or score == 0 else (POSITIVE if score > 0 else NEGATIVE)


def _lim(edges: list[tuple[str, str, dict]]) -> float:
    return max((abs(d["score"]) for *_, d in edges if d.get("score") is not None), default=0.0) or 1.0


# ------------------------------------------------------------------------------------------ DOT

def _dot_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(circuit: Circuit, *, title: str | None = None, classes_order: Sequence[str] = ()) -> str:
    """The circuit as Graphviz DOT text (written by hand; deterministic).

    ``rankdir=BT`` puts ``input`` at the bottom and ``logits`` at the top; each level is a
    ``rank=same`` subgraph, chained in order by invisible edges. Nodes are labelled with their name
    and class and filled with the class's colour; a KV group (the end of a group reader's edge) is a
    dashed box. Edges have ``penwidth`` 0.6-3.0 by |score| (1.0 unscored), red/blue by sign, label
    q/k/v where they feed an attention input, and a tooltip with the edge name and score."""
    nodes, edges, _ = _drawn(circuit)
    colors = class_colors(circuit, classes_order)
    title = default_title(circuit) if title is None else title
    lines = ["digraph circuit {",
             "  graph [rankdir=BT, newrank=true, nodesep=0.25, ranksep=0.5, fontname=\"Helvetica\""
             + (f", label={_dot_str(title)}, labelloc=t" if title else "") + "];",
             "  node [shape=ellipse, style=filled, fontname=\"Helvetica\", fontsize=10, penwidth=0.8];",
             "  edge [fontname=\"Helvetica\", fontsize=8, arrowsize=0.6];"]
    levels: dict[float, list[tuple[str, dict]]] = {}
    for n, d in nodes:
        levels.setdefault(d["level"], []).append((n, d))
    for lvl in sorted(levels):
        lines.append(f"  {{ rank=same;  // level {lvl:g}")
        for n, d in levels[lvl]:
            if d["kind"] == "kv_group":
                label = f"{n}\nKV group" + (f" ({d['heads']})" if d.get("heads") else "")
                attrs = f"label={_dot_str(label)}, shape=box, style=\"filled,dashed\", fillcolor=\"#FFFFFF\""
            else:
                label = n + (f"\n{d['cls']}" if d.get("cls") else "")
                fill = colors.get(d.get("cls") or "", NO_CLASS)
                attrs = f"label={_dot_str(label)}, fillcolor=\"{fill}\""
            lines.append(f"    {_dot_str(n)} [{attrs}];")
        lines.append("  }")
    firsts = [levels[lvl][0][0] for lvl in sorted(levels)]
    for a, b in zip(firsts, firsts[1:]):
        lines.append(f"  {_dot_str(a)} -> {_dot_str(b)} [style=invis];")
    lim = _lim(edges)
    for u, v, d in edges:
        score = d.get("score")
        tip = d["name"] + ("" if score is None else f" {score:.6g}")
        attrs = [f"penwidth={_width(score, lim, 0.6, 2.4):.2f}", f"color=\"{_edge_color(score)}\"",
                 f"tooltip={_dot_str(tip)}"]
        if d.get("component"):
            attrs.insert(0, f"label={_dot_str(d['component'])}")
        lines.append(f"  {_dot_str(u)} -> {_dot_str(v)} [{', '.join(attrs)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_dot(text: str, path: str | os.PathLike, format: str = "pdf") -> str | None:
    """Render DOT ``text`` to ``path`` with Graphviz's ``dot`` (format pdf, svg or png) and return the
    path; without ``dot`` on the PATH print one line and return None (the .dot file is the export)."""
    if format not in ("pdf", "svg", "png"):
        raise ValueError(f"unknown render format {format!r}: expected pdf, svg or png")
    exe = shutil.which("dot")
    if exe is None:
        print("dot not found; wrote the .dot only")
        return None
    env = {**os.environ, "SOURCE_DATE_EPOCH": "0"}  # cairo writes no date then
    proc = subprocess.run([exe, f"-T{format}"], input=text.encode("utf-8"), capture_output=True, env=env,
                          timeout=300)
    if proc.returncode != 0:
        err = " ".join(proc.stderr.decode("utf-8", "replace").split())
        raise RuntimeError(f"dot could not render {os.fspath(path)!r}: {err or f'exit code {proc.returncode}'}")
    _write(path, proc.stdout)
    return os.fspath(path)


# ----------------------------------------------------------------------------------------- TikZ

_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
        ">": r"\textgreater{}", "\n": " ", "\r": " "}


def tex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (usable in a paragraph or a TikZ node)."""
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def to_tikz(circuit: Circuit, *, title: str | None = None, classes_order: Sequence[str] = ()) -> str:
    """The circuit as a standalone LaTeX document (``\\documentclass[tikz]{standalone}``; pdflatex).

    Placed as :func:`circuits.figures.circuit_layout` places ``circuit_figure``'s nodes (a row per
    level, nodes one unit apart within it, ordered by layer and head); rows labelled input, L0, ...,
    logits; classes' colours defined with ``\\definecolor``; edges 0.4-2.4 pt wide by |score|, red/blue
    by sign, labelled q/k/v; a legend of the classes (and of the edge colours when edges are scored).
    Labels have LaTeX's special characters escaped. Deterministic text."""
    from circuits.figures import circuit_layout

    nodes, edges, figure_edges = _drawn(circuit)
    n_layers = n_layers_of(circuit)
    colors = class_colors(circuit, classes_order)
    title = default_title(circuit) if title is None else title
    pos = circuit_layout({n: d.get("cls") or "" for n, d in nodes if d["in_circuit"]},
                         [(u, t) for u, t, _ in figure_edges], n_layers)
    half = any(lvl != int(lvl) for _, lvl in pos.values())
    xs = [x for x, _ in pos.values()] or [0.0]
    left, right = min(xs) - 0.9, max(xs) + 0.9
    ids = {n: f"n{i}" for i, (n, _) in enumerate(nodes)}
    color_name = {c: f"class{i}" for i, c in enumerate(colors)}

    out = [f"% {tex_escape(title) or 'circuit'}: written by circuits.graph.export.to_tikz",
           r"\documentclass[tikz,border=4pt]{standalone}", r"\usetikzlibrary{arrows.meta}"]
    out += [rf"\definecolor{{{color_name[c]}}}{{HTML}}{{{colors[c][1:]}}}" for c in colors]
    out += [rf"\definecolor{{noclass}}{{HTML}}{{{NO_CLASS[1:]}}}",
            rf"\definecolor{{positive}}{{HTML}}{{{POSITIVE[1:]}}}",
            rf"\definecolor{{negative}}{{HTML}}{{{NEGATIVE[1:]}}}",
            rf"\definecolor{{unscored}}{{HTML}}{{{UNSCORED[1:]}}}",
            r"\begin{document}",
            rf"\begin{{tikzpicture}}[x=1.25cm, y={2.4 if half else 1.4}cm,",
            r"  unit/.style={circle, draw=black, line width=0.4pt, minimum size=9.5mm, inner sep=0.5pt,"
            r" font=\tiny, align=center},",
            r"  group/.style={rectangle, rounded corners=2pt, draw=black, dashed, line width=0.4pt, fill=white,"
            r" minimum height=6mm, inner sep=1pt, font=\tiny, align=center},",
            r"  wire/.style={-{Stealth[length=4pt]}},",
            r"  qkv/.style={fill=white, fill opacity=0.8, text opacity=1, inner sep=0.8pt, font=\tiny},",
            r"  row/.style={anchor=east, font=\scriptsize}]"]
    rows = ["input"] + [f"L{i}" for i in range(n_layers)] + ["logits"]
    for i, label in enumerate(rows):
        out.append(rf"\node[row] at ({left:.2f},{i - 1}) {{{label}}};")
    for n, d in nodes:
        x, y = pos[n]
        text = tex_escape(n).replace("@", r"\\@")
        if d["kind"] == "kv_group":
            out.append(rf"\node[group] ({ids[n]}) at ({x:.2f},{y:g}) {{{text}\\KV group}};")
        else:
            fill = color_name.get(d.get("cls") or "", "noclass")
            out.append(rf"\node[unit, fill={fill}] ({ids[n]}) at ({x:.2f},{y:g}) {{{text}}};")
    lim = _lim(edges)
    pairs: dict[tuple[str, str], int] = {}
    for u, v, _ in edges:
        pairs[(u, v)] = pairs.get((u, v), 0) + 1
    seen: dict[tuple[str, str], int] = {}
    for u, v, d in edges:
        k, j = pairs[(u, v)], seen.get((u, v), 0)
        seen[(u, v)] = j + 1
        bend = 22.0 * (j - (k - 1) / 2) if k > 1 else _detour(pos, u, v)
        path = "--" if bend == 0 else (f"to[bend left={bend:g}]" if bend > 0 else f"to[bend right={-bend:g}]")
        score = d.get("score")
        style = (f"wire, line width={_width(score, lim, 0.4, 2.0):.2f}pt, draw="
                 + {POSITIVE: "positive", NEGATIVE: "negative", UNSCORED: "unscored"}[_edge_color(score)])
        label = f" node[qkv] {{{d['component']}}}" if d.get("component") else ""
        out.append(rf"\draw[{style}] ({ids[u]}) {path}{label} ({ids[v]});  % {d['name']}")
    legend = [(color_name[c], tex_escape(c)) for c in colors]
    if any(not d.get("cls") and d["in_circuit"] for _, d in nodes) and legend:
        legend.append(("noclass", "no class"))
    y = n_layers
    for fill, text in legend:
        out.append(rf"\node[unit, fill={fill}, minimum size=2.5mm] at ({right + 0.3:.2f},{y:.2f}) {{}};")
        out.append(rf"\node[anchor=west, font=\scriptsize] at ({right + 0.45:.2f},{y:.2f}) {{{text}}};")
        y -= 0.35 if not half else 0.2
    if any(d.get("score") is not None for *_, d in edges):
        for name, text in (("positive", "edge score $>0$"), ("negative", "edge score $<0$")):
            out.append(rf"\draw[wire, line width=1.2pt, draw={name}] ({right + 0.15:.2f},{y:.2f}) -- "
                       rf"({right + 0.45:.2f},{y:.2f}) node[anchor=west, font=\scriptsize] {{{text}}};")
            y -= 0.35 if not half else 0.2
    if title:
        out.append(rf"\node[anchor=south, font=\small] at ({(left + right) / 2:.2f},{n_layers + 0.5}) "
                   rf"{{{tex_escape(title)}}};")
    out += [r"\end{tikzpicture}", r"\end{document}"]
    return "\n".join(out) + "\n"


def _detour(pos: dict[str, tuple[float, float]], u: str, v: str) -> float:
    """A bend (degrees) for an edge that would pass through another node, else 0."""
    (ax, ay), (bx, by) = pos[u], pos[v]
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy or 1.0
    for n, (cx, cy) in pos.items():
        if n in (u, v):
            continue
        t = ((cx - ax) * dx + (cy - ay) * dy) / length2
        side = (dx * (cy - ay) - dy * (cx - ax)) / math.sqrt(length2)
        if 0 < t < 1 and abs(side) < 0.4:
            return 25.0 if side <= 0 else -25.0
    return 0.0


# -------------------------------------------------------------------------------------- figures

def figure(circuit: Circuit, *, title: str | None = None, classes_order: Sequence[str] = ()) -> Any:
    """The circuit drawn by :func:`circuits.figures.circuit_figure` (a Figure; nothing written): its
    nodes coloured by class, its edges by score; an edge end at a node at a position is drawn there."""
    from circuits.figures import circuit_figure

    nodes, _, figure_edges = _drawn(circuit)
    return circuit_figure({n: d.get("cls") or "" for n, d in nodes if d["in_circuit"]}, figure_edges,
                          n_layers_of(circuit), classes_order=classes_order,
                          title=default_title(circuit) if title is None else title)


def _figure_bytes(circuit: Circuit, format: str, **options: Any) -> bytes:
    from circuits.figures import save_figure

    fig = figure(circuit, **options)
    with tempfile.TemporaryDirectory(prefix="circuits-export-") as tmp:
        (written,) = save_figure(fig, os.path.join(tmp, "circuit"), [format])
        with open(written, "rb") as f:
            return f.read()


# --------------------------------------------------------------------------------------- export

def _check_writable(path: str) -> None:
    """Fail, naming ``path``, when it cannot be written (nothing is created to find out)."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path!r}: it is a folder")
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"cannot write {path!r}: {folder!r} is a file, not a folder")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"cannot write {path!r}: the folder {folder!r} is not writable")


def _write(path: str | os.PathLike, data: bytes) -> None:
    target = os.fspath(path)
    _check_writable(target)
    try:
        atomic_write_bytes(target, data)
    except OSError as e:
        raise OSError(f"cannot write {target!r}: {e}") from None


def export_bytes(circuit: Circuit, format: str, *, title: str | None = None, classes_order: Sequence[str] = (),
                 all_scores: Any = None, d_model: int | None = None) -> bytes:
    """The bytes :func:`export` writes (see there)."""
    check_format(format)
    if format == "json":
        return (dumps(circuit.to_dict(), indent=2) + "\n").encode("utf-8")
    if format == "mib":
        return mib_text(circuit, all_scores, d_model=d_model).encode("utf-8")
    if format == "graphml":
        return graphml_bytes(circuit)
    if format == "dot":
        return to_dot(circuit, title=title, classes_order=classes_order).encode("utf-8")
    if format == "tikz":
        return to_tikz(circuit, title=title, classes_order=classes_order).encode("utf-8")
    return _figure_bytes(circuit, format, title=title, classes_order=classes_order)


def export(circuit: Circuit, path: str | os.PathLike, format: str, *, title: str | None = None,
           classes_order: Sequence[str] = (), all_scores: Any = None, d_model: int | None = None) -> str:
    """Write ``circuit`` to ``path`` as ``format`` (one of :data:`FORMATS`) and return the path.

    json: the Circuit record (:func:`circuits.graph.serialize.save_circuit`'s bytes); mib: the MIB /
    EAP-IG graph JSON (``all_scores`` and ``d_model`` as :func:`circuits.graph.serialize.to_mib`'s);
    graphml: GraphML; dot: :func:`to_dot`; tikz: :func:`to_tikz`; pdf/svg/png: :func:`figure` saved by
    :func:`circuits.figures.save_figure` (TrueType fonts in PDF, text as text in SVG, no dates).
    ``title`` (default :func:`default_title`) and ``classes_order`` go to the drawings. Output is
    byte-identical on repeat and written atomically. An unknown format (ValueError listing the
    formats) and a path that cannot be written (OSError naming it) fail before anything is written."""
    check_format(format)
    target = os.fspath(path)
    _check_writable(target)
    data = export_bytes(circuit, format, title=title, classes_order=classes_order, all_scores=all_scores,
                        d_model=d_model)
    _write(target, data)
    return target


def export_all(circuit: Circuit, folder: str | os.PathLike, stem: str, formats: Sequence[str] = FORMATS) -> list[str]:
    """Write ``circuit`` as ``folder/stem.<ending>`` in each of ``formats`` (default: every format; endings
    from :data:`EXTENSIONS`); returns the paths. The folder is created if missing."""
    for fmt in formats:
        check_format(fmt)
    os.makedirs(folder, exist_ok=True)
    return [export(circuit, os.path.join(folder, f"{stem}.{EXTENSIONS[fmt]}"), fmt) for fmt in formats]
