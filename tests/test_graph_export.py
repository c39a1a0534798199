"""Circuit exports: lossless round trips (JSON, networkx, GraphML, MIB / EAP-IG JSON), EAP-IG's own
layout read and written, DOT and TikZ text, figures, deterministic bytes, bad input, and the CLI."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from circuits.cli import main
from circuits.graph import Circuit, NodeInfo, Shape
from circuits.graph.export import FORMATS, export, render_dot, to_dot, to_tikz
from circuits.graph.mib import from_mib, load_mib, save_mib, to_mib
from circuits.graph.serialize import (
    from_networkx,
    load_circuit,
    read_graphml,
    save_circuit,
    to_networkx,
    write_graphml,
)
from circuits.names import BadName

GPT2 = Shape(2, 2, 2)  # 2 layers x 2 heads, no GQA
GQA = Shape(2, 4, 2)  # 4 query heads in 2 KV groups
TRICKY = "a_b & 50% #1 {x} ~^\\ <y>"  # LaTeX's and DOT's special characters in a class label


def classes_circuit() -> Circuit:
    """Heads at positions with classes and scores, GQA group readers, unscored edges, metadata."""
    return Circuit.from_classes(
        {"a1.h0@END": "name mover", "a0.h2@S2": "induction", "a0.h1@S2": "induction", "a1.h3": None, "m0": TRICKY},
        [("a0.h2@S2", "a1.h0<k>"), ("a0.h2@S2", "a1.h0<q>"), ("a0.h1@S2", "a1.h3<v>"), ("a1.h0@END", "logits"),
         ("m0", "a1.h0<q>")],
        GQA, task="ioi", model="zoo:toy", method="path patching", scores={"a1.h0@END": -12.5, "m0": 0.25},
        settings={"positions": ["S2", "END"], "nested": {"a": None, "b": 1.5}}, provenance={"git": "abc"})


def edges_circuit() -> Circuit:
    """Scored edges (one unscored) into heads, KV groups, MLPs and the logits."""
    return Circuit.from_edges({"input->a0.h1<q>": 0.5, "a0.h1->m0": -1.25, "m0->a1.g0<k>": 2.0,
                               "a0.h3->a1.g1<v>": None, "a1.h1->logits": 0.3, "input->m1": 1e-7},
                              GQA, task="induction", method="EAP-IG")


def heads_circuit() -> Circuit:
    """A node circuit: heads with scores, no edges."""
    return Circuit({"a0.h1": NodeInfo("x", 1.0), "a1.h0": NodeInfo(None, -2.0)}, shape=GPT2, task="t")


CIRCUITS = {"classes": classes_circuit, "edges": edges_circuit, "heads": heads_circuit}


# ---------------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("make", CIRCUITS.values(), ids=CIRCUITS)
def test_json_round_trip_is_lossless(make, tmp_path):
    c = make()
    save_circuit(c, tmp_path / "c.json")
    back = load_circuit(tmp_path / "c.json")
    assert back == c and back.to_dict() == c.to_dict()
    save_circuit(back, tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "c.json").read_bytes()


@pytest.mark.parametrize("make", CIRCUITS.values(), ids=CIRCUITS)
def test_networkx_round_trip_is_exact(make):
    c = make()
    back = from_networkx(to_networkx(c))
    assert back == c
    assert json.dumps(back.to_dict()) == json.dumps(c.to_dict())  # same order of nodes and edges too


def test_networkx_graph_reads_like_the_circuit():
    g = to_networkx(classes_circuit())
    assert g.nodes["a1.h0@END"] == {"kind": "head", "layer": 1, "level": 1.0, "head": 0, "pos": "END",
                                    "in_circuit": True, "cls": "name mover", "score": -12.5}
    assert "cls" not in g.nodes["a1.h3"] and "score" not in g.nodes["a1.h3"]  # None: absent
    # an edge end without a position meets the circuit's only node of that head, at its position
    assert g.edges["a0.h2@S2", "a1.h0@END", "a0.h2->a1.h0<q>"]["component"] == "q"
    # a KV group reader's edge goes to the group, which says what it is
    group = g.nodes["a1.g0"]
    assert group["kv_group"] and group["kind"] == "kv_group" and not group["in_circuit"]
    assert group["heads"] == "a1.h0 a1.h1"
    edge = g.edges["a0.h2@S2", "a1.g0", "a0.h2->a1.g0<k>"]
    assert edge["kv_group"] and edge["component"] == "k" and "score" not in edge
    assert g.nodes["logits"]["layer"] == 2 and g.nodes["m0"]["level"] == 0.5
    assert json.loads(g.graph["shape"]) == {"n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "parallel_attn_mlp": False}
    assert json.loads(g.graph["settings"])["nested"] == {"a": None, "b": 1.5}
    assert g.graph["task"] == "ioi" and g.number_of_edges() == 5


@pytest.mark.parametrize("make", CIRCUITS.values(), ids=CIRCUITS)
def test_graphml_round_trip_is_exact_and_plain_graphml(make, tmp_path):
    c = make()
    write_graphml(c, tmp_path / "c.graphml")
    assert read_graphml(tmp_path / "c.graphml") == c
    # standard GraphML, as Gephi and Cytoscape read it: declared keys, scalar typed values, known ends
    ns = {"g": "http://graphml.graphdrawing.org/xmlns"}
    root = ET.parse(tmp_path / "c.graphml").getroot()
    assert root.tag == "{http://graphml.graphdrawing.org/xmlns}graphml"
    keys = {k.get("id"): k.get("attr.type") for k in root.findall("g:key", ns)}
    assert set(keys.values()) <= {"boolean", "int", "long", "float", "double", "string"}
    assert all(d.get("key") in keys for d in root.iter("{http://graphml.graphdrawing.org/xmlns}data"))
    ids = {n.get("id") for n in root.iter("{http://graphml.graphdrawing.org/xmlns}node")}
    edges = list(root.iter("{http://graphml.graphdrawing.org/xmlns}edge"))
    assert len(edges) == len(c.edges) and all(e.get("source") in ids and e.get("target") in ids for e in edges)


@pytest.mark.parametrize("make", CIRCUITS.values(), ids=CIRCUITS)
def test_mib_round_trip_is_lossless(make, tmp_path):
    c = make()
    save_mib(c, tmp_path / "c.mib.json")
    assert load_mib(tmp_path / "c.mib.json") == c


def test_a_mib_file_whose_in_graph_edges_were_changed_is_read_from_its_edges(tmp_path):
    """The circuit embedded in cfg restores classes and positions only while the edges are its own."""
    data = to_mib(edges_circuit())
    data["edges"]["input->a0.h1<q>"]["in_graph"] = False
    back = from_mib(json.loads(json.dumps(data)))
    assert set(back.edges) == set(edges_circuit().edges) - {"input->a0.h1<q>"}
    assert back.edges["a0.h3->a1.g1<v>"] == 0.0  # written as 0.0: the table is what counts now
    assert back.task == "induction"


# ------------------------------------------------------------------------- EAP-IG's own layout

def eap_ig_edges(n_layers: int, n_heads: int) -> tuple[list[str], list[str]]:
    """(nodes, edges) the way EAP-IG's Graph.from_model builds them (not parallel): every earlier writer
    feeds each head's q, k and v and the layer's MLP (which also reads its own layer's heads)."""
    residual, edges = ["input"], []
    for layer in range(n_layers):
        heads = [f"a{layer}.h{h}" for h in range(n_heads)]
        edges += [f"{w}->{h}<{c}>" for w in residual for h in heads for c in "qkv"]
        residual += heads
        edges += [f"{w}->m{layer}" for w in residual]
        residual.append(f"m{layer}")
    edges += [f"{w}->logits" for w in residual]
    return residual + ["logits"], edges


EAP_CHOSEN = {"input->a0.h1<q>", "a0.h1->a1.h0<k>", "a0.h1->a1.h0<v>", "a1.h0->logits", "input->m0", "m0->logits"}


def eap_ig_file(node_dicts: bool = False) -> dict:
    """A graph JSON in EAP-IG's Graph.to_json layout for a 2-layer, 2-head GPT-2-like model."""
    nodes, edges = eap_ig_edges(2, 2)
    on = {"input", "a0.h1", "a1.h0", "m0", "logits"}
    return {"cfg": {"n_layers": 2, "n_heads": 2, "parallel_attn_mlp": False, "d_model": 8},
            "nodes": {n: {"in_graph": n in on} if node_dicts else n in on for n in nodes},
            "edges": {e: {"score": round(math.sin(i + 1), 6), "in_graph": e in EAP_CHOSEN} for i, e in enumerate(edges)}}


@pytest.mark.parametrize("node_dicts", [False, True], ids=["bool nodes", "dict nodes"])
def test_an_eap_ig_graph_json_loads_with_its_in_graph_edges_and_scores(node_dicts, tmp_path):
    data = eap_ig_file(node_dicts)
    (tmp_path / "graph.json").write_text(json.dumps(data))
    c = load_mib(tmp_path / "graph.json")
    assert c.shape == GPT2
    assert c.edges == {e: data["edges"][e]["score"] for e in EAP_CHOSEN}
    assert set(c.nodes) == {"input", "a0.h1", "a1.h0", "m0", "logits"}


def test_the_model_graph_has_46_edges_in_eap_ig_and_in_our_mib_export(tmp_path):
    # 2 layers x 2 heads: layer-0 q/k/v (6 readers) read input: 6; m0 reads input, a0.h0, a0.h1: 3;
    # layer-1 q/k/v (6 readers) read input, a0.h0, a0.h1, m0: 24; m1 reads those and a1.h0, a1.h1: 6;
    # logits read all 7 writers: 7. 6 + 3 + 24 + 6 + 7 = 46.
    assert len(eap_ig_edges(2, 2)[1]) == 46
    c = Circuit.from_edges({"input->a0.h1<q>": 0.5, "a0.h1->a1.h0<k>": -2.0, "a1.h0->logits": 1.25}, GPT2)
    save_mib(c, tmp_path / "ours.json", d_model=8)
    data = json.loads((tmp_path / "ours.json").read_text())  # read independently: plain json
    assert set(data) == {"cfg", "nodes", "edges"}
    assert (data["cfg"]["n_layers"], data["cfg"]["n_heads"], data["cfg"]["parallel_attn_mlp"],
            data["cfg"]["d_model"]) == (2, 2, False, 8)
    assert len(data["edges"]) == 46 and list(data["edges"]) == eap_ig_edges(2, 2)[1]  # EAP-IG's names and order
    assert {e: v["score"] for e, v in data["edges"].items() if v["in_graph"]} == c.edges
    assert all(v["score"] == 0.0 for e, v in data["edges"].items() if e not in c.edges)
    assert list(data["nodes"]) == ["input", "a0.h0", "a0.h1", "m0", "a1.h0", "a1.h1", "m1", "logits"]
    assert {n for n, on in data["nodes"].items() if on} == {"input", "a0.h1", "a1.h0", "logits"}


def test_an_eap_ig_file_round_trips_through_a_circuit_when_kept(tmp_path):
    data = eap_ig_file()
    c = from_mib(data, keep=True)
    assert len(c.settings["mib_scores"]) == 46
    back = to_mib(c)
    assert back["nodes"] == data["nodes"] and back["edges"] == data["edges"]
    assert data["cfg"].items() <= back["cfg"].items()  # d_model carried over


def test_eap_ig_per_head_key_and_value_readers_join_their_kv_group():
    nodes, edges = eap_ig_edges(2, 4)  # EAP-IG names k/v readers per head, also for a GQA model
    scores = {e: round(0.01 * (i + 1), 6) for i, e in enumerate(edges)}
    chosen = {"a0.h1->a1.h2<k>", "a0.h1->a1.h3<k>", "input->a1.h0<v>", "a0.h1->a1.h2<q>"}
    data = {"cfg": {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": False}, "nodes": dict.fromkeys(nodes, False),
            "edges": {e: {"score": scores[e], "in_graph": e in chosen} for e in edges}}
    c = from_mib(data, shape=GQA, keep=True)
    assert c.edges == {"a0.h1->a1.g1<k>": math.fsum([scores["a0.h1->a1.h2<k>"], scores["a0.h1->a1.h3<k>"]]),
                       "input->a1.g0<v>": math.fsum([scores["input->a1.h0<v>"], scores["input->a1.h1<v>"]]),
                       "a0.h1->a1.h2<q>": scores["a0.h1->a1.h2<q>"]}
    assert "merged into their KV groups" in c.settings["mib_gqa"]
    assert len(c.settings["mib_scores"]) == 82  # the GQA graph: per-group k/v readers
    with pytest.raises(ValueError, match="disagrees"):
        from_mib(data, shape=Shape(3, 4, 2))


def test_unknown_names_in_a_mib_file_are_named_and_nothing_is_built(tmp_path):
    data = eap_ig_file()
    data["nodes"]["a7.h0"] = True
    data["edges"]["a0.h0->a1.h9<q>"] = {"score": 1.0, "in_graph": True}
    data["edges"]["embed->a0.h0<q>"] = {"score": 1.0, "in_graph": False}
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(BadName) as e:
        load_mib(tmp_path / "bad.json")
    message = str(e.value)
    for name in ("bad.json", "'a7.h0'", "'a0.h0->a1.h9<q>'", "'embed->a0.h0<q>'"):
        assert name in message
    data = eap_ig_file()
    data["edges"]["input->m0"] = {"score": 1.0}  # no in_graph flag
    with pytest.raises(ValueError, match="input->m0"):
        from_mib(data)


# --------------------------------------------------------------------------------- DOT and TikZ

def test_dot_text_is_deterministic_and_holds_every_node_and_edge():
    c = classes_circuit()
    shuffled = Circuit(dict(reversed(c.nodes.items())), dict(reversed(c.edges.items())), c.shape, c.task, c.model,
                       c.method, c.settings, c.provenance)
    text = to_dot(c)
    assert text == to_dot(shuffled)
    assert "rankdir=BT" in text and text.startswith("digraph circuit {") and text.rstrip().endswith("}")
    for node in ("a1.h0@END", "a0.h2@S2", "a0.h1@S2", "a1.h3", "m0", "logits", "a1.g1"):
        assert re.search(rf'^    "{re.escape(node)}" \[label=', text, re.M), node
    for u, v, label in [("a0.h2@S2", "a1.h0@END", "q"), ("a0.h2@S2", "a1.g0", "k"), ("a0.h1@S2", "a1.g1", "v"),
                        ("a1.h0@END", "logits", None), ("m0", "a1.h0@END", "q")]:
        head = f'  "{u}" -> "{v}" [' + (f'label="{label}", ' if label else "penwidth")
        assert head in text, (u, v)
    assert text.count(" -> ") == len(c.edges) + 3  # and 3 invisible edges chaining the 4 levels
    ranks = re.findall(r"\{ rank=same;  // level (\S+)", text)
    assert ranks == ["0", "0.5", "1", "2"]
    widths = {m["name"]: m["w"] for m in re.finditer(r'penwidth=(?P<w>[\d.]+), color="[^"]+", tooltip="(?P<name>[^" ]+)',
                                                   to_dot(edges_circuit()))}
    assert (widths["input->a0.h1<q>"], widths["m0->a1.g0<k>"], widths["a0.h3->a1.g1<v>"]) == ("1.20", "3.00", "1.00")  # 0.6 + 2.4 |score| / max |score|


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_dot_renders_with_graphviz(tmp_path):
    text = to_dot(classes_circuit())
    assert render_dot(text, tmp_path / "c.svg", "svg") == str(tmp_path / "c.svg")
    svg = (tmp_path / "c.svg").read_text()
    assert "<svg" in svg and all(f"<title>{n}</title>" in svg for n in ("a1.h0@END", "logits", "a1.g0"))


def test_without_graphviz_render_says_so_in_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert render_dot(to_dot(heads_circuit()), tmp_path / "c.pdf") is None
    assert capsys.readouterr().out == "dot not found; wrote the .dot only\n"
    assert list(tmp_path.iterdir()) == []


def test_tikz_defines_the_class_colours_escapes_labels_and_has_a_legend():
    text = to_tikz(classes_circuit())
    assert text.startswith("% ") and r"\documentclass[tikz,border=4pt]{standalone}" in text
    assert len(re.findall(r"\\definecolor\{class\d\}\{HTML\}\{[0-9A-F]{6}\}", text)) == 3
    escaped = r"a\_b \& 50\% \#1 \{x\} \textasciitilde{}\textasciicircum{}\textbackslash{} \textless{}y\textgreater{}"
    assert escaped in text and TRICKY not in text
    assert re.search(r"\\node\[anchor=west, font=\\scriptsize\] at \([\d.]+,[\d.]+\) \{name mover\};", text)
    rows = re.findall(r"\\node\[row\] at \([-\d.]+,(-?\d+)\) \{(\w+)\};", text)
    assert rows == [("-1", "input"), ("0", "L0"), ("1", "L1"), ("2", "logits")]
    assert text.count(r"\draw[wire") == len(classes_circuit().edges)
    assert to_tikz(classes_circuit()) == text


def _tikz_ready() -> bool:
    if not shutil.which("pdflatex") or not shutil.which("kpsewhich"):
        return False
    found = subprocess.run(["kpsewhich", "standalone.cls"], capture_output=True, text=True)
    return bool(found.stdout.strip())


@pytest.mark.skipif(not _tikz_ready(), reason="pdflatex with the standalone class is not installed")
@pytest.mark.parametrize("make", CIRCUITS.values(), ids=CIRCUITS)
def test_tikz_compiles_with_pdflatex(make, tmp_path):
    export(make(), tmp_path / "c.tex", "tikz")
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", "c.tex"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:]
    assert "Output written on c.pdf (1 page," in " ".join(run.stdout.split())  # pdfTeX's object streams hide /Page
    assert (tmp_path / "c.pdf").read_bytes().startswith(b"%PDF")


# ------------------------------------------------------------------------------------- figures

def test_the_pdf_export_is_one_page_with_embedded_truetype_fonts(tmp_path):
    export(classes_circuit(), tmp_path / "c.pdf", "pdf")
    data = (tmp_path / "c.pdf").read_bytes()
    assert data.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page[^s]", data)) == 1
    assert b"/FontFile2" in data and b"/Type3" not in data


@pytest.mark.parametrize("fmt", FORMATS)
def test_two_exports_of_one_circuit_are_byte_identical(fmt, tmp_path):
    c = classes_circuit()
    export(c, tmp_path / f"one.{fmt}", fmt)
    export(Circuit.from_dict(json.loads(json.dumps(c.to_dict()))), tmp_path / "two" / f"two.{fmt}", fmt)
    one, two = (tmp_path / f"one.{fmt}").read_bytes(), (tmp_path / "two" / f"two.{fmt}").read_bytes()
    assert one == two and len(one) > 200


# ------------------------------------------------------------------------------------ bad input

def test_an_unknown_format_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="json, mib, graphml, dot, tikz, pdf, svg, png"):
        export(classes_circuit(), tmp_path / "sub" / "c.jpeg", "jpeg")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["json", "mib", "graphml", "dot", "pdf"])
def test_a_path_inside_a_regular_file_is_refused_naming_it(fmt, tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    with pytest.raises(OSError, match="notes.txt"):
        export(classes_circuit(), blocker / f"c.{fmt}", fmt)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"] and blocker.read_text() == "keep me"


def test_a_mib_export_needs_the_models_shape():
    with pytest.raises(ValueError, match="shape"):
        to_mib(Circuit.from_edges(["input->a0.h1<q>"]))


# ------------------------------------------------------------------------------------------ CLI

def test_cli_exports_an_ioi_result_file_and_a_plain_circuit_file(tmp_path, capsys):
    c = classes_circuit()
    (tmp_path / "ioi.json").write_text(json.dumps({"settings": {"n": 8}, "circuit": c.to_dict(), "seconds": 1.0}))
    assert main(["export", str(tmp_path / "ioi.json"), "--format", "dot", "--out", str(tmp_path / "c.dot")]) == 0
    assert (tmp_path / "c.dot").read_text() == to_dot(c)
    save_circuit(c, tmp_path / "c.json")
    assert main(["export", str(tmp_path / "c.json"), "--format", "pdf", "--out", str(tmp_path / "c.pdf")]) == 0
    assert (tmp_path / "c.pdf").read_bytes().startswith(b"%PDF")
    assert main(["export", str(tmp_path / "c.json"), "--format", "mib", "--out", str(tmp_path / "m.json")]) == 0
    assert main(["export", str(tmp_path / "m.json"), "--format", "graphml", "--out", str(tmp_path / "c.graphml")]) == 0
    assert read_graphml(tmp_path / "c.graphml") == c  # a MIB file is read as one
    assert capsys.readouterr().out.count("wrote ") == 4


def test_cli_bad_format_or_bad_names_exit_2_with_one_line(tmp_path, capsys):
    save_circuit(classes_circuit(), tmp_path / "c.json")
    assert main(["export", str(tmp_path / "c.json"), "--format", "jpeg", "--out", str(tmp_path / "c.jpeg")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown export format 'jpeg'" in err
    data = eap_ig_file()
    data["edges"]["a0.h0->a5.h0<q>"] = {"score": 1.0, "in_graph": True}
    (tmp_path / "bad.json").write_text(json.dumps(data))
    assert main(["export", str(tmp_path / "bad.json"), "--format", "dot", "--out", str(tmp_path / "b.dot")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a0.h0->a5.h0<q>" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "c.json"]


def test_export_all_writes_each_format_as_export_does(tmp_path):
    from circuits.graph.export import EXTENSIONS, export_all

    c = classes_circuit()
    paths = export_all(c, tmp_path / "out", "ioi")
    assert [os.path.basename(p) for p in paths] == [f"ioi.{EXTENSIONS[f]}" for f in FORMATS]
    for fmt, path in zip(FORMATS, paths):
        one = export(c, tmp_path / f"single.{EXTENSIONS[fmt]}", fmt)
        with open(one, "rb") as a, open(path, "rb") as b:
            assert a.read() == b.read(), fmt
    with pytest.raises(ValueError, match="unknown export format"):
        export_all(c, tmp_path / "bad", "x", formats=("json", "jpeg"))
    assert not (tmp_path / "bad").exists()
