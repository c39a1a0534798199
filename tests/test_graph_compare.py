"""circuits.graph.compare and circuits.graph.draw against hand-computed examples."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from scipy.cluster.hierarchy import dendrogram

from circuits.graph import Circuit, Shape, draw
from circuits.graph import compare as cmp
from circuits.graph import regimes as reg
from circuits.scores import Scores

S = Shape(3, 4, 4)
NAN = float("nan")


def heads(*names: str, shape: Shape = S, scores: dict[str, float] | None = None) -> Circuit:
    return Circuit.from_classes(dict.fromkeys(names), shape=shape, scores=scores)


PRE = heads("a0.h0", "a0.h1")
CKPTS = {"s100": heads("a0.h0", "a1.h0"), "s200": heads("a0.h0", "a1.h0", "a1.h1"), "s300": heads("a0.h0", "a1.h1")}


def roundtrip(record):
    back = type(record).from_dict(json.loads(json.dumps(record.to_dict(), allow_nan=False)))
    assert back == record
    return back


# ------------------------------------------------------------------------- set overlap
def test_overlap_counts_and_ratios_by_hand():
    a = heads("a0.h0", "a0.h1@END", "a1.h0", "a2.h3")
    b = Circuit.from_classes({"a0.h1@S2": None, "a1.h0": None}, [("a1.h0", "logits")], S)
    o = cmp.overlap(a, b)  # A = {a0.h0, a0.h1, a1.h0, a2.h3}, B = {a0.h1, a1.h0}: positions dropped
    assert (o.size_a, o.size_b, o.intersection, o.union) == (4, 2, 2, 4)
    assert o.jaccard == 0.5 and o.coefficient == 1.0 and o.share_of_a == 0.5 and o.share_of_b == 1.0
    assert cmp.node_jaccard(a, b, positions=True) == 1 / 5  # a1.h0 only; a0.h1@END != a0.h1@S2
    assert cmp.overlap_coefficient(a, b, positions=True) == 1 / 2
    assert cmp.edge_jaccard(a, b) == 0.0  # {} vs {a1.h0->logits}
    roundtrip(o)


def test_edge_jaccard_and_heads_of_edge_circuits_by_hand():
    a = Circuit.from_edges({"input->a0.h1<q>": 1.0, "a0.h1->a1.h0<v>": 2.0, "a1.h0->logits": 3.0}, S)
    b = Circuit.from_edges({"a0.h1->a1.h0<v>": 4.0, "a1.h0->logits": -1.0, "a0.h2->logits": 1.0}, S)
    assert cmp.edge_jaccard(a, b) == 2 / 4
    assert cmp.node_jaccard(a, b) == 3 / 5  # {input, a0.h1, a1.h0, logits} vs {a0.h1, a1.h0, logits, a0.h2}
    assert cmp.head_jaccard(a, b) == 2 / 3
    # edge scores: min/max per edge: input->a0.h1<q> 0/1, a0.h1->a1.h0<v> 2/4, a1.h0->logits 1/3, a0.h2->logits 0/1
    assert cmp.weighted_jaccard(a, b) == pytest.approx(3 / 9)


def test_weighted_jaccard_of_node_scores_by_hand():
    a = Circuit.from_classes({"a0.h0": None, "a0.h1": None, "m0": None}, shape=S, scores={"a0.h0": 2.0, "a0.h1": -1.0})
    b = Circuit.from_classes({"a0.h0": None, "a1.h1": None, "m0": None}, shape=S, scores={"a0.h0": 1.0, "a1.h1": 3.0,
                                                                                           "m0": 0.5})
    # a0.h0: min 1 max 2; a0.h1: 0 / 1; m0 (unscored in a: 1): 0.5 / 1; a1.h1: 0 / 3  ->  1.5 / 7
    assert cmp.weighted_jaccard(a, b) == pytest.approx(1.5 / 7)
    assert cmp.weighted_jaccard(a, b, of="heads") == pytest.approx(1 / 6)  # m0 left out
    # normalised: a = {a0.h0 1/2, a0.h1 1/4, m0 1/4}, b = {a0.h0 2/9, a1.h1 6/9, m0 1/9}:
    # (2/9 + 1/9) / (1/2 + 1/4 + 1/4 + 6/9) = (1/3) / (5/3)
    assert cmp.weighted_jaccard(a, b, normalize=True) == pytest.approx(0.2)
    assert cmp.weighted_jaccard(a, a) == 1.0


def test_empty_against_empty_is_undefined_never_nan():
    e, f = Circuit(shape=S), Circuit(shape=S)
    o = cmp.overlap(e, f)
    assert o.jaccard is None and o.coefficient is None and o.share_of_a is None
    assert cmp.node_jaccard(e, f) is None and cmp.edge_jaccard(e, f) is None
    assert cmp.weighted_jaccard(e, f) is None
    assert cmp.node_jaccard(e, heads("a0.h0")) == 0.0 and cmp.overlap_coefficient(e, heads("a0.h0")) is None
    with pytest.raises(ValueError, match="undefined"):
        cmp.similarity({"e": e, "a": heads("a0.h0")})


@pytest.mark.parametrize("fn", [cmp.overlap, cmp.node_jaccard, cmp.edge_jaccard, cmp.head_jaccard,
                                cmp.overlap_coefficient, cmp.weighted_jaccard, reg.symmetric_effect,
                                reg.regime_change])
def test_different_model_shapes_refuse_to_compare(fn):
    with pytest.raises(ValueError, match="different shapes"):
        fn(heads("a0.h0"), heads("a0.h0", shape=Shape(2, 4, 4)))


def test_several_circuits_of_different_shapes_refuse_to_compare():
    mixed = {"a": heads("a0.h0"), "b": heads("a0.h0", shape=Shape(2, 4, 4))}
    for fn in (cmp.similarity, cmp.shared_parts, reg.cohorts):
        with pytest.raises(ValueError, match="different shapes"):
            fn(mixed)
    with pytest.raises(ValueError, match="different shapes"):
        cmp.rank_correlation(np.zeros((3, 4)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="different shapes"):
        cmp.threshold_sweep(np.zeros((3, 4)), np.zeros((3, 5)))


def test_shared_core_and_task_specific_heads():
    parts = cmp.shared_parts({"ioi": heads("a0.h0", "a0.h1", "a1.h0", "a2.h3"), "co": heads("a0.h0", "a0.h1", "a2.h2"),
                              "gt": heads("a0.h0", "a1.h0@END", "a1.h2")})
    assert parts.core == ["a0.h0"]
    assert parts.only == {"ioi": ["a2.h3"], "co": ["a2.h2"], "gt": ["a1.h2"]}
    assert parts.partial == ["a0.h1", "a1.h0"]
    assert parts.count == {"a0.h0": 3, "a0.h1": 2, "a1.h0": 2, "a1.h2": 1, "a2.h2": 1, "a2.h3": 1}
    roundtrip(parts)


# ------------------------------------------------------------------------- score grids
def test_spearman_against_a_hand_ranking_skipping_nan_cells():
    a = [[1.0, 2.0, NAN], [3.0, 4.0, 5.0]]
    b = [[10.0, 20.0, 7.0], [40.0, 30.0, NAN]]
    # pairs (1,10) (2,20) (3,40) (4,30): ranks 1 2 3 4 vs 1 2 4 3, sum d^2 = 2, rho = 1 - 6*2 / (4*15) = 0.8
    assert cmp.rank_correlation(a, b) == pytest.approx(0.8)
    assert cmp.rank_correlation(a, [[4.0, 3.0, 0.0], [2.0, 1.0, NAN]]) == pytest.approx(-1.0)
    scores = Scores(torch.tensor(a), ("layer", "head"))
    assert cmp.rank_correlation(scores, torch.tensor(b)) == pytest.approx(0.8)
    # by |score|: |a| = 1 2 3 4, |b| = 4 3 2 1 on the four cells
    assert cmp.rank_correlation([[-1.0, 2.0], [-3.0, 4.0]], [[4.0, -3.0], [2.0, -1.0]], by_abs=True) == -1.0
    assert cmp.rank_correlation([[1.0, 1.0], [1.0, 1.0]], [[1.0, 2.0], [3.0, 4.0]]) is None
    assert cmp.rank_correlation([[1.0, NAN]], [[NAN, 2.0]]) is None


def test_closed_form_of_the_null_by_hand_and_against_the_permutation_draws():
    # N = 4, two random pairs: |A∩B| = 0, 1, 2 with probability 1/6, 4/6, 1/6 -> 0 + (1/3)(4/6) + 1 (1/6) = 7/18
    assert cmp.expected_random_jaccard(2, 2, 4) == pytest.approx(7 / 18)
    assert cmp.expected_random_jaccard(3, 4, 4) == pytest.approx(3 / 4)  # A inside B always
    assert cmp.expected_random_jaccard(0, 0, 4) is None
    exact = cmp.expected_random_jaccard(4, 5, 16)
    draws = cmp.random_jaccard_draws(4, 5, 16, n_draws=60_000, seed=3)
    assert draws.shape == (60_000,) and abs(draws.mean() - exact) < 0.004  # standard error about 0.0006
    assert not np.array_equal(draws, cmp.random_jaccard_draws(4, 5, 16, n_draws=60_000, seed=4))
    assert np.array_equal(draws, cmp.random_jaccard_draws(4, 5, 16, n_draws=60_000, seed=3))


def test_threshold_sweep_by_hand_with_its_null():
    a = np.arange(16, dtype=float).reshape(4, 4)  # top by |score|: cells 15, 14, 13, ...
    b = a.copy()
    b[0, 0], b[3, 3] = 100.0, -0.5  # b's top: 0, 14, 13, 12, ...; cell 15 falls to the bottom
    s = cmp.threshold_sweep(a, b, [0.5, 0.125, 0.25], n_null=4000, seed=1)
    assert s.fractions == [0.125, 0.25, 0.5] and s.k_a == [2, 4, 8] and s.k_b == [2, 4, 8]
    # top 2: {15, 14} vs {0, 14} -> 1/3; top 4: {15..12} vs {0, 14, 13, 12} -> 3/5; top 8: {15..8} vs {0, 14..8} -> 7/9
    assert s.jaccard == pytest.approx([1 / 3, 3 / 5, 7 / 9])
    assert s.area == pytest.approx(0.125 * (1 / 3 + 3 / 5) / 2 + 0.25 * (3 / 5 + 7 / 9) / 2)
    assert s.null_exact == pytest.approx([cmp.expected_random_jaccard(k, k, 16) for k in (2, 4, 8)])
    assert s.null_mean == pytest.approx(s.null_exact, abs=0.01)
    assert all(lo <= m <= hi for lo, m, hi in zip(s.null_low, s.null_mean, s.null_high))
    assert s.p_value < 0.01 and s.null_area_mean < s.area
    assert roundtrip(s).n_null == 4000
    same = cmp.threshold_sweep(a, b, [0.5, 0.125, 0.25], n_null=4000, seed=1)
    assert same == s
    reversed_ = cmp.threshold_sweep(a, a[::-1, ::-1], [0.125, 0.25, 0.5], n_null=2000)  # tops 0..7 vs 8..15
    assert reversed_.jaccard == [0.0, 0.0, 0.0] and reversed_.area == 0.0 and reversed_.p_value == 1.0


def test_threshold_sweep_with_unscored_cells_draws_from_the_scored_ones():
    a = np.arange(16, dtype=float).reshape(4, 4)
    b = a.copy()
    b[2:] = NAN  # 8 scored cells: b keeps at most 8 heads
    s = cmp.threshold_sweep(a, b, [0.25, 1.0], n_null=500)
    assert s.k_a == [4, 16] and s.k_b == [4, 8]
    assert s.jaccard == pytest.approx([0.0, 0.5])  # {12..15} vs {4..7}; all 16 vs {0..7}
    assert s.null_exact == [None, None]
    assert s.null_mean[1] == pytest.approx(0.5)  # every draw: B is all of b's 8 cells, A all 16


# -------------------------------------------------------------------- training regimes
def test_symmetric_effect_by_hand():
    pre = heads("a0.h0", "a0.h1", scores={"a0.h0": 3.0, "a0.h1": 1.0})  # I_pre = .75, .25
    post = heads("a0.h1", "a1.h0")  # unscored: I_post = .5, .5
    e = reg.symmetric_effect(pre, post)
    assert e == pytest.approx({"a0.h0": -1.0, "a0.h1": (0.5 - 0.25) / 0.75, "a1.h0": 1.0}, abs=1e-5)
    assert reg.symmetric_effect(pre, post, eps=0.25) == pytest.approx({"a0.h0": -0.75, "a0.h1": 0.25, "a1.h0": 0.5 / 0.75})
    r = reg.regime_change(pre, post)
    assert (r.emergent, r.retained, r.lost) == (["a1.h0"], ["a0.h1"], ["a0.h0"])
    assert r.importance_pre == {"a0.h0": 0.75, "a0.h1": 0.25}
    roundtrip(r)


def test_three_checkpoints_cohorts_and_head_sets():
    r = reg.regime_change(PRE, CKPTS["s300"])
    assert (r.emergent, r.retained, r.lost) == (["a1.h1"], ["a0.h0"], ["a0.h1"])
    c = reg.cohorts(CKPTS, PRE)
    t = c.table()
    assert [h.head for h in c.heads] == ["a0.h0", "a0.h1", "a1.h0", "a1.h1"]
    assert (t["a0.h0"].first, t["a0.h0"].count, t["a0.h0"].final, t["a0.h0"].cohort) == ("s100", 3, True, "pre")
    assert (t["a0.h1"].first, t["a0.h1"].count, t["a0.h1"].final, t["a0.h1"].in_pre) == (None, 0, False, True)
    assert (t["a1.h0"].first, t["a1.h0"].count, t["a1.h0"].final, t["a1.h0"].frequency) == ("s100", 2, False, 2 / 3)
    assert (t["a1.h1"].first, t["a1.h1"].count, t["a1.h1"].final, t["a1.h1"].cohort) == ("s200", 2, True, "s200")
    assert t["a1.h0"].present == [True, True, False]
    assert c.stack == {"s100": {"pre": 1, "s100": 1}, "s200": {"pre": 1, "s100": 1, "s200": 1},
                       "s300": {"pre": 1, "s200": 1}}
    assert roundtrip(c).to_dict()["heads"][3]["cohort"] == "s200"
    with pytest.raises(ValueError, match="labelled 'pre'"):
        reg.cohorts({"pre": PRE}, PRE)


def test_effects_over_checkpoints_by_hand():
    ce = reg.checkpoint_effects(PRE, CKPTS)  # unscored: I is uniform over each circuit's heads
    assert ce.steps == ["s100", "s200", "s300"] and ce.heads == ["a0.h0", "a0.h1", "a1.h0", "a1.h1"]
    # s200: a0.h0 (1/3 - 1/2) / (1/3 + 1/2) = -0.2
    expected = {"a0.h0": [0, -0.2, 0], "a0.h1": [-1, -1, -1], "a1.h0": [1, 1, 0], "a1.h1": [0, 1, 1]}
    for h, v in expected.items():
        assert ce.effect[h] == pytest.approx(v, abs=1e-5)
    assert ce.mean == pytest.approx({"a0.h0": -0.2 / 3, "a0.h1": -1.0, "a1.h0": 2 / 3, "a1.h1": 2 / 3}, abs=1e-5)
    roundtrip(ce)


# ------------------------------------------------------------------- many circuits
CIRCUITS = {"ioi": heads("a0.h0", "a0.h1", "a1.h0"), "gt": heads("a2.h2", "a2.h3"),
            "co": heads("a0.h0", "a0.h1", "a1.h1"), "gt2": heads("a2.h2", "a2.h3", "a1.h3")}


def test_similarity_matrix_clusters_and_embedding():
    sim = cmp.similarity(CIRCUITS)
    # ioi-co 2/4; gt-gt2 2/3; every other pair shares nothing
    assert np.allclose(sim.matrix, [[1, 0, 0.5, 0], [0, 1, 0, 2 / 3], [0.5, 0, 1, 0], [0, 2 / 3, 0, 1]])
    assert sim.names == ["ioi", "gt", "co", "gt2"] and sim.labels == [0, 1, 0, 1]
    assert np.asarray(sim.linkage)[:, 2] == pytest.approx([1 / 3, 0.5, 1.0])  # merge heights: 1 - similarity
    assert cmp.similarity(CIRCUITS, n_clusters=3).labels == [0, 1, 2, 1]
    assert cmp.similarity(CIRCUITS, distance_threshold=0.4).labels == [0, 1, 2, 1]  # only gt-gt2 under 0.4
    again = cmp.similarity(CIRCUITS)
    assert again.coords == sim.coords and np.asarray(sim.coords).shape == (4, 2)
    xy = np.asarray(sim.coords)
    near, far = np.linalg.norm(xy[0] - xy[2]), np.linalg.norm(xy[0] - xy[1])
    assert near < far
    roundtrip(sim)
    w = cmp.similarity(CIRCUITS, metric="weighted_jaccard")
    assert np.allclose(w.matrix, sim.matrix)  # unscored: weighted = plain Jaccard
    with pytest.raises(ValueError, match="metric must be"):
        cmp.similarity(CIRCUITS, metric="cosine")


def test_similarity_of_identical_circuits_is_one_point():
    sim = cmp.similarity({"a": CIRCUITS["ioi"], "b": CIRCUITS["ioi"]}, n_clusters=1)
    assert sim.matrix == [[1.0, 1.0], [1.0, 1.0]] and sim.coords == [[0.0, 0.0], [0.0, 0.0]] and sim.labels == [0, 0]


# ---------------------------------------------------------------------------- drawings
def test_head_heatmap_outlines_each_circuit_head_and_centres_on_zero():
    grid = np.array([[1.0, -3.0, 0.5, NAN], [0.0, 2.0, -1.0, 0.2], [0.1, 0.2, 0.3, 0.4]])
    c = heads("a0.h1@END", "a0.h1@S2", "a1.h1", "a2.h3")
    fig = draw.head_heatmap(Scores(torch.tensor(grid, dtype=torch.float32), ("layer", "head")), c, cbar="logit diff")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    boxes = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_gid() == "circuit-head"]
    assert len(boxes) == len(c.heads()) == 3
    assert sorted((b.get_y() + 0.5, b.get_x() + 0.5) for b in boxes) == [(0, 1), (1, 1), (2, 3)]
    assert ax.images[0].get_clim() == (-3.0, 3.0)
    assert len(draw.head_heatmap(grid).axes[0].patches) == 0
    with pytest.raises(ValueError, match="score grid"):
        draw.head_heatmap(np.zeros((2, 4)), c)


def test_head_heatmaps_side_by_side_share_a_scale_and_outline_each_panels_circuit():
    grids = {"ioi": np.array([[1.0, -3.0], [0.0, 2.0]]), "co": np.array([[0.5, 0.0], [4.0, NAN]])}
    fig = draw.head_heatmaps(grids, {"ioi": heads("a0.h1", "a1.h1"), "co": heads("a1.h0")})
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["ioi", "co"]
    assert all(ax.images[0].get_clim() == (-4.0, 4.0) for ax in panels)
    boxes = [sorted((p.get_y() + 0.5, p.get_x() + 0.5) for p in ax.patches if p.get_gid() == "circuit-head")
             for ax in panels]
    assert boxes == [[(0, 1), (1, 1)], [(1, 0)]]
    with pytest.raises(ValueError, match="not among"):
        draw.head_heatmaps(grids, {"nosuch": heads("a0.h0")})
    with pytest.raises(ValueError, match="outside"):
        draw.head_heatmaps(grids, {"ioi": heads("a3.h0")})


def test_matrix_figure_annotates_every_cell_and_marks_missing_ones():
    fig = draw.matrix_figure([[0.5, None], [1.0, float("nan")]], ["a", "b"], ["x", "y"], cbar="f")
    ax = fig.axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["0.50", "1.00", "n/a", "n/a"]
    with pytest.raises(ValueError, match="does not match"):
        draw.matrix_figure([[1.0]], ["a", "b"], ["x"])


def test_sweep_figure_draws_the_curve_and_its_null_band():
    a = np.arange(16, dtype=float).reshape(4, 4)
    sweeps = {"x": cmp.threshold_sweep(a, a, [0.125, 0.5], n_null=50),
              "y": cmp.threshold_sweep(a, -a[::-1], [0.125, 0.5], n_null=50)}
    fig = draw.sweep_figure(sweeps)
    ax = fig.axes[0]
    bands = [c for c in ax.collections if c.get_gid() == "null-band"]
    assert len(bands) == 2
    verts = bands[0].get_paths()[0].vertices
    assert verts[:, 1].max() == pytest.approx(max(sweeps["x"].null_high))
    means = [ln for ln in ax.lines if ln.get_gid() == "null-mean"]
    assert len(means) == 2 and all(ln.get_linestyle() == "--" for ln in means)
    observed = [ln for ln in ax.lines if ln.get_gid() == "observed"]
    assert list(observed[0].get_ydata()) == [1.0, 1.0] and list(observed[0].get_xdata()) == [12.5, 50.0]


def test_similarity_figure_rows_follow_the_dendrogram():
    sim = cmp.similarity(CIRCUITS)
    fig = draw.similarity_figure(sim)
    ax = next(a for a in fig.axes if a.get_label() == "matrix")
    leaves = dendrogram(np.asarray(sim.linkage), no_plot=True)["leaves"]
    assert leaves == sim.order
    drawn = np.asarray(ax.images[0].get_array())
    assert np.allclose(drawn, np.asarray(sim.matrix)[np.ix_(leaves, leaves)])
    assert [t.get_text() for t in ax.get_yticklabels()] == [sim.names[i] for i in leaves]
    tree = next(a for a in fig.axes if a.get_label() == "dendrogram")
    assert len(tree.collections) + len(tree.lines) >= 1  # the dendrogram's links are drawn
    # leaf i of the dendrogram sits at y = 10 i + 5, level with matrix row i (y = i)
    assert tree.get_ylim() == (0, 40) and ax.get_ylim() == (-0.5, 3.5)


def test_effect_and_cohort_figures():
    ce = reg.checkpoint_effects(PRE, CKPTS)
    fig = draw.effect_heatmap(ce)
    im = fig.axes[0].images[0]
    assert im.get_array().shape == (4, 4) and im.get_clim() == (-1.0, 1.0)  # 3 checkpoints + mean, 4 heads
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["s100", "s200", "s300", "mean"]
    regimes = {"SFT": reg.regime_change(PRE, CKPTS["s300"]), "GRPO": {"a2.h0": 0.5}}
    assert draw.effect_heatmap(regimes).axes[0].images[0].get_array().shape == (2, 4)

    c = reg.cohorts(CKPTS, PRE)
    fig = draw.cohort_figure(c)
    presence = next(a for a in fig.axes if a.get_label() == "presence")
    drawn = np.asarray(presence.images[0].get_array()) > 0
    expected = [[True, True, True, True], [True, False, False, False], [False, True, True, False],
                [False, False, True, True]]  # columns: pre, s100, s200, s300
    assert drawn.tolist() == expected
    assert [t.get_text() for t in presence.get_xticklabels()] == ["pre", "s100", "s200", "s300"]
    bold = [t.get_fontweight() == "bold" for t in presence.get_yticklabels()]
    assert bold == [True, False, False, True]
    counts = next(a for a in fig.axes if a.get_label() == "counts")
    assert sum(p.get_height() for p in counts.patches) == 2 + 2 + 3 + 2
