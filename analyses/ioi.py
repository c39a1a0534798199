"""IOI analysis (Wang et al. 2022) on any model; `make ioi` runs it on zoo:toyworld.

Steps, all on IOI prompts with the ABC corruption (p_ABC):
1. baseline: logit difference (IO - S) clean and corrupted, accuracy;
2. head patching by position (IO, S1, S1+1, S2, END), noising and denoising;
3. path patching backwards, as in the paper (noising, MLPs on the paths):
   logits -> heads with direct effects (name movers if END attends to IO more than
   to S, S-suppression heads if it attends to S); their queries at END -> S-inhibition
   heads, their keys and values -> duplicate-token / induction heads (K- and V-composition);
   S-inhibition values at S2 -> induction / duplicate-token heads;
   induction keys at S1+1 -> previous-token heads;
4. the circuit: heads of each class at their position, classified by path
   patching and attention signatures;
5. faithfulness of the circuit and of its complement (mean ablation over p_ABC
   per template), completeness by class, minimality.

Writes results/ioi/<model>/: ioi.json (numbers, settings, provenance),
patching.pdf/png, path_patching.pdf/png, circuit.pdf/png. Prints a summary table.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from analyses.common import safe_name, versions

POSITIONS = ["IO", "S1", "S1+1", "S2", "END"]
CLASSES = ["name mover", "negative name mover", "s-suppression", "s-inhibition", "induction", "duplicate token",
           "other upstream", "previous token"]


def pick(effect: torch.Tensor, exclude: set[tuple[int, int]], sign: int = -1, rel: float = 0.25,
         cap: int = 4, floor: float = 2.0) -> list[tuple[int, int]]:
    """Heads whose Wang effect (percent) has ``sign`` and magnitude >= rel x the largest (and >= floor %)."""
    e = effect.clone()
    for h in exclude:
        e[h] = 0.0
    e = torch.nan_to_num(e * sign, nan=0.0)
    top = float(e.max())
    if top < floor:
        return []
    idx = torch.nonzero(e >= max(rel * top, floor))
    ranked = sorted(((int(a), int(b)) for a, b in idx), key=lambda h: -float(e[h]))
    return ranked[:cap]


def attention_at(model: Any, ps: Any, heads: list[tuple[int, int]], query: str, keys: list[str]) -> dict:
    """Mean attention of each head from position ``query`` to each position in ``keys``."""
    from circuits.engines.detectors import attention_patterns

    pat = attention_patterns(model, ps.clean)  # [L, b, h, q, k]
    rows = torch.arange(len(ps))
    q = ps.positions[query]
    out = {}
    for layer, h in heads:
        out[f"a{layer}.h{h}"] = {k: float(pat[layer, rows, h, q, ps.positions[k]].mean()) for k in keys}
    return out


def main(model: str = "zoo:toyworld", n: int = 64, seed: int = 0, device: str | None = None,
         out: str = "results") -> int:
    """Run the analysis; results/ioi/<model>/ is replaced as a unit when the run succeeds."""
    from circuits.io import run_folder
    from circuits.tasks.base import check_n, check_seed

    check_n(n)  # clear errors for bad settings, before anything is loaded or computed
    check_seed(seed)
    final = os.path.join(out, "ioi", safe_name(model))
    with run_folder(final) as stage:  # fails here, before any compute, if ``out`` is not writable
        _run(model, n, seed, device, str(stage))
    print(f"wrote {final}")
    return 0


@torch.no_grad()
def _run(model: str, n: int, seed: int, device: str | None, folder: str) -> None:
    from circuits import metrics
    from circuits.engines import fastpaths
    from circuits.engines.ablation import Ablation
    from circuits.engines.detectors import copy_scores
    from circuits.engines.faithfulness import completeness, faithfulness, minimality
    from circuits.engines.forward import end_logits
    from circuits.engines.patching import activation_patching
    from circuits.engines.path_patching import path_patching, wang_effect
    from circuits.figures import circuit_figure, heatmaps, save_figure
    from circuits.io import atomic_write_json
    from circuits.models import load_model, model_info
    from circuits.tasks import build_task

    t0 = time.time()
    m = load_model(model, device=device)
    split = "test" if model.startswith("zoo:") else "all"  # zoo models never saw these combinations
    ps = build_task("ioi", m.tokenizer, n=n, seed=seed, split=split).to(m.cfg.device)
    flip = build_task("ioi", m.tokenizer, n=n, seed=seed, split=split, corruption="s2_io").to(m.cfg.device)
    baseline = {}
    for name, p in (("abc", ps), ("s2_io", flip)):
        clean = end_logits(m, p.clean, p.positions["END"])  # only the row the metrics read
        corr = end_logits(m, p.corrupted, p.positions["END"])
        baseline[name] = {"logit_diff_clean": float(metrics.logit_diff(clean, p)),
                          "logit_diff_corrupted": float(metrics.logit_diff(corr, p)),
                          "accuracy_clean": float(metrics.accuracy(clean, p)), "prompts": p.describe()}

    # 2. head patching by position
    patch = {d: activation_patching(m, ps, "z", direction=d, positions=POSITIONS, progress=True)
             for d in ("noise", "denoise")}
    panels = {f"noising: LD lost @ {pos}": 1 - patch["noise"].normalized()[:, i] for i, pos in enumerate(POSITIONS)}
    panels |= {f"denoising: LD restored @ {pos}": patch["denoise"].normalized()[:, i]
               for i, pos in enumerate(POSITIONS)}
    figs = save_figure(heatmaps(panels, center=0.0, cbar="fraction of clean-corrupted LD",
                                title=f"IOI head patching by position ({model})"), os.path.join(folder, "patching"))

    # 3. path patching, backwards
    steps, classes = {}, {}
    nl = int(m.cfg.n_layers)

    def step(name: str, receivers: list, receiver_position: str | None) -> torch.Tensor:
        sc = path_patching(m, ps, receivers, receiver_position=receiver_position, progress=True)
        eff = wang_effect(sc)
        steps[name] = {"receivers": receivers, "receiver_position": receiver_position,
                       "effect_percent": eff.tolist(), "base_logit_diff": sc.baseline["base"]}
        return eff

    e1 = step("logits", ["logits"], None)
    direct = pick(e1, set())
    negative = pick(e1, set(direct), sign=+1, cap=2)
    end_att = attention_at(m, ps, direct + negative, "END", ["IO", "S1", "S2"])

    def reads_io(h: tuple[int, int]) -> bool:  # the name-mover signature: END attends to IO more than to S
        a = end_att[f"a{h[0]}.h{h[1]}"]
        return a["IO"] > a["S1"] + a["S2"]

    movers = [h for h in direct if reads_io(h)]
    other = [h for h in direct if not reads_io(h)]
    negative = [h for h in negative if reads_io(h)]
    chosen = set(direct) | set(negative)
    sinh, keyed = [], []
    receivers = [h for h in movers + other if h[0] > 0]
    if receivers:  # who feeds the direct heads: through their queries at END (S-inhibition) or their keys
        e2 = step("direct heads' queries", [f"a{a}.h{b}<q>" for a, b in receivers], "END")
        sinh = pick(e2, chosen)
        chosen |= set(sinh)
        e2k = step("direct heads' keys", [f"a{a}.h{b}<k>" for a, b in receivers], None)
        keyed = pick(e2k, chosen)
        chosen |= set(keyed)
        e2v = step("direct heads' values", [f"a{a}.h{b}<v>" for a, b in receivers], None)
        valued = pick(e2v, chosen)
        keyed += valued
        chosen |= set(valued)
    ind_dup = list(keyed)
    if sinh:
        e3 = step("s-inhibition values", [f"a{a}.h{b}<v>" for a, b in sinh], "S2")
        found = pick(e3, chosen)
        ind_dup += found
        chosen |= set(found)
    att = attention_at(m, ps, ind_dup, "S2", ["S1", "S1+1"]) if ind_dup else {}

    def attends(h: tuple[int, int], pos: str) -> float:
        return att[f"a{h[0]}.h{h[1]}"][pos]

    induction = [h for h in ind_dup if attends(h, "S1+1") >= max(attends(h, "S1"), 0.2)]
    duplicate = [h for h in ind_dup if h not in induction and attends(h, "S1") >= 0.2]
    upstream = [h for h in ind_dup if h not in induction and h not in duplicate]
    prev = []
    if induction:
        e4 = step("induction keys", [f"a{a}.h{b}<k>" for a, b in induction], "S1+1")
        prev = pick(e4, chosen)
    for cls, heads, pos in (("name mover", movers, "END"), ("negative name mover", negative, "END"),
                            ("s-suppression", other, "END"),
                            ("s-inhibition", sinh, "END"), ("induction", induction, "S2"),
                            ("duplicate token", duplicate, "S2"), ("other upstream", upstream, "S2"),
                            ("previous token", prev, "S1+1")):
        for layer, h in heads:
            classes[f"a{layer}.h{h}@{pos}"] = cls
    figs += save_figure(heatmaps({k: torch.tensor(v["effect_percent"]) for k, v in steps.items()}, ncols=4,
                                 cbar="effect on LD (%)", title="Path patching (noising): 100 (LD_patched - LD) / LD"),
                        os.path.join(folder, "path_patching"))

    # 4-5. circuit, faithfulness, completeness, minimality
    circuit = list(classes)
    ablation = Ablation("mean", by_group=True)  # means over p_ABC per template, as the paper
    faith = faithfulness(m, ps, circuit, ablation=ablation) if circuit else None
    by_class: dict[str, list[str]] = {}
    for node, cls in classes.items():
        by_class.setdefault(cls, []).append(node.split("@")[0])
    comp = completeness(m, ps, circuit, classes=by_class, n_random=10, seed=seed, ablation=ablation) if circuit else []
    mini = minimality(m, ps, circuit, n_random=5, seed=seed, ablation=ablation) if circuit else {}
    copy = copy_scores(m, ps, ["IO", "S1"])
    def layer_of(node: str) -> int:
        return int(node[1:].split(".")[0])

    direct_cls = ("name mover", "negative name mover", "s-suppression")
    edges = [(n, "logits") for n, c in classes.items() if c in direct_cls]
    edges += [(s, t) for s, cs in classes.items() if cs == "s-inhibition" for t, ct in classes.items()
              if ct in direct_cls and layer_of(t) > layer_of(s)]
    edges += [(s, t) for s, cs in classes.items() if cs in ("induction", "duplicate token", "other upstream")
              for t, ct in classes.items() if ct in ("s-inhibition",) + direct_cls and layer_of(t) > layer_of(s)]
    edges += [(s, t) for s, cs in classes.items() if cs == "previous token" for t, ct in classes.items()
              if ct == "induction"]
    figs += save_figure(circuit_figure(classes, edges, nl, classes_order=CLASSES, title=f"IOI circuit in {model}"),
                        os.path.join(folder, "circuit"))

    result = {
        "analysis": "ioi", "model": model_info(m),
        "settings": {"n": n, "seed": seed, "split": split, "corruption": "abc", "positions": POSITIONS,
                     "path_patching": "noising, MLPs recomputed (Wang et al.)",
                     "ablation": ablation.describe(),
                     "selection": "heads with Wang effect of the step's sign >= 25% of the largest and >= 2%, "
                                  "at most 4 per class"},
        "baseline": baseline,
        "head_patching": {d: {"normalized": patch[d].normalized().tolist(), "values": patch[d].values.tolist(),
                              "baseline": patch[d].baseline, "axes": list(patch[d].axes),
                              "ci95": [x.tolist() for x in patch[d].ci()]} for d in patch},
        "path_patching": steps,
        "circuit": {"nodes": classes, "edges": edges, "attention_at_END": end_att, "attention_at_S2": att},
        "faithfulness": faith.to_dict() if faith else None,
        "completeness": comp, "minimality": mini,
        "copy_scores": copy.values.tolist(),
        "figures": [os.path.relpath(f, folder) for f in figs],
        "versions": versions(), "fast_paths": fastpaths.report(m),
        "seconds": round(time.time() - t0, 2),
    }
    path = os.path.join(folder, "ioi.json")
    atomic_write_json(path, result)

    print(f"\nIOI on {model} ({n} prompts, seed {seed}, split {split})")
    print(f"{'corruption':12s} {'LD clean':>9s} {'LD corr':>9s} {'acc':>6s}")
    for k, r in baseline.items():
        print(f"{k:12s} {r['logit_diff_clean']:9.3f} {r['logit_diff_corrupted']:9.3f} {r['accuracy_clean']:6.2f}")
    print(f"\n{'class':22s} heads (position)")
    for cls in CLASSES:
        members = [n for n, c in classes.items() if c == cls]
        if members:
            print(f"{cls:22s} {', '.join(members)}")
    if faith:
        print(f"\nF(model) {faith.full:.3f}  F(circuit) {faith.circuit:.3f}  F(empty) {faith.empty:.3f}  "
              f"F(complement) {faith.complement:.3f}")
        ci = faith.ci["faithfulness"]
        ci_text = "undefined" if ci is None else f"{ci[0]:.3f}..{ci[1]:.3f}"
        print(f"normalized faithfulness {faith.faithfulness:.3f} (95% CI {ci_text}); complement "
              f"{faith.complement_faithfulness:.3f}; |F(M)-F(C)| {faith.wang_gap:.3f}")
        worst = comp[0] if comp else None
        if worst:
            print(f"completeness: largest |F(C\\K)-F(M\\K)| = {worst['gap']:.3f} ({worst['kind']}, K={worst['K']})")
        low = [k for k, v in mini.items() if v["fraction_of_full"] is None or v["fraction_of_full"] < 0.01]
        print(f"minimality: {len(mini) - len(low)}/{len(mini)} nodes matter by >= 1% of F(M)")
    print(f"\n{os.path.basename(path)} and {len(figs)} figure files in {time.time() - t0:.1f} s")
