"""zoo-check: load every bundled model through ``load_model`` and test its targets.

Targets (issue: the zoo):
  * toyworld: >= 95% held-out top-1 accuracy on every task, and >= 95% on the counterfactual
    prompts scored against their own answers (the audit: the model reads the question);
  * toyworld@<step>: at least four checkpoints; the earliest fails a task (< 60%);
  * reasoner-sft: short thinking in 10-40% of samples, and its accuracy at least
    10 points below long thinking;
  * reasoner-sft, what ThinkEdit needs (``evaluate.thinking_gates``): per-prompt P(short) std >= 0.15;
    a length direction stable across two draws (cosine >= 0.9 at every layer); steering along it
    lowers P(short) monotonically and, towards long, keeps the accuracy (within 5 points);
  * reasoner-grpo: at least 5 points of accuracy over reasoner-sft;
  * reasoner-distill bundled; reasoner-sft, -distill and -grpo: at least four checkpoints each;
  * all bundled weights together <= 60 MiB.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from circuits.zoo import ZOO_DIR, list_zoo, recipe, task_options

SIZE_BUDGET_MIB = 60.0


def weights_mib(root: Path = ZOO_DIR) -> float:
    """Total size of the bundled model.safetensors files under ``root``, in MiB."""
    return sum(p.stat().st_size for p in root.glob("*/model.safetensors")) / 2**20


def checkpoints(names: list[str]) -> list[str]:
    """The ``toyworld@<step>`` names among ``names``, ordered by step."""
    return sorted((n for n in names if re.fullmatch(r"toyworld@\d+", n)), key=lambda n: int(n.split("@")[1]))


def trained_tasks(name: str) -> dict[str, dict]:
    """Options to evaluate a bundled model with, from its recipe.json (see ``circuits.zoo.task_options``)."""
    return task_options(f"zoo:{name}")


def scene_size_probes(model: Any, tok: Any, name: str, options: dict, n: int) -> dict[str, dict]:
    """Colored-objects accuracy at every scene size the model was trained on (no targets:
    a test that the colour is found by content, not by position)."""
    from circuits.zoo.evaluate import evaluate_tasks

    sizes = recipe(name).get("task_options", {}).get("colored_objects", {}).get("n_objects", 3)
    out = {}
    for k in (sizes if isinstance(sizes, (list, tuple)) else [sizes]):
        r = evaluate_tasks(model, tok, {"colored_objects": {**options, "n_objects": k}}, n=n)
        out[f"colored_objects n={k}"] = r["colored_objects"]
    return out


def ioi_counterfactual(model: Any, tok: Any, options: dict, n: int) -> float | None:
    """IOI's audit: its ABC corruption has no answer of its own, so score the S2 := IO corruption
    ("... Mary gave a drink to" after "Mary and John": John) against its answers."""
    from circuits.zoo.evaluate import evaluate_tasks

    return evaluate_tasks(model, tok, {"ioi": {**options, "corruption": "s2_io"}}, n=n)["ioi"]["counterfactual_accuracy"]


def measure(names: list[str] | None = None, n: int = 200) -> dict[str, Any]:
    """Measured numbers for each bundled model (loaded through load_model, on CPU)."""
    from circuits.models import load_model
    from circuits.zoo.evaluate import evaluate_reasoner, evaluate_tasks, thinking_gates

    names = names or list_zoo()
    out: dict[str, Any] = {}
    for name in names:
        model = load_model(f"zoo:{name}", device="cpu")
        tok = model.tokenizer
        if name.startswith("toyworld"):
            tasks = trained_tasks(name)
            out[name] = {"tasks": evaluate_tasks(model, tok, tasks, n=n)}
            if name == "toyworld":
                out[name]["probes"] = scene_size_probes(model, tok, name, tasks["colored_objects"], n)
                out[name]["tasks"]["ioi"]["counterfactual_accuracy"] = ioi_counterfactual(model, tok, tasks["ioi"], n)
        elif name == "reasoner-base":
            out[name] = evaluate_reasoner(model.original_model, tok, n=2 * n, direct=True)
        elif name.startswith("reasoner-"):
            out[name] = evaluate_reasoner(model.original_model, tok, n=3 * n)
            if name == "reasoner-sft":
                out[name]["thinking"] = thinking_gates(model, n=max(100, n))
        out[name]["n_params"] = sum(p.numel() for p in model.original_model.parameters())
    return out


def pct(x: float | None) -> str:
    """A rate as a percentage; None (no samples to take it over) says so."""
    return "undefined (no samples)" if x is None else f"{x:.1%}"


def record(measured: dict[str, Any], rows: list[tuple[str, bool, str]]) -> dict[str, Any]:
    """The zoo-check result as plain data (zoo-check.json): the measured numbers and every target's verdict."""
    return {"measured": measured, "targets": [{"target": t, "passed": ok, "detail": d} for t, ok, d in rows]}


def verdicts(measured: dict[str, Any], names: list[str]) -> list[tuple[str, bool, str]]:
    """(target, passed, detail) rows."""
    rows: list[tuple[str, bool, str]] = []
    if "toyworld" in measured:
        for task, r in measured["toyworld"]["tasks"].items():
            rows.append((f"toyworld {task} >= 95%", r["accuracy"] >= 0.95, f"{r['accuracy']:.1%}"))
        for task, r in measured["toyworld"]["tasks"].items():  # the audit: does it read the question?
            if r.get("counterfactual_accuracy") is not None:
                cf = r["counterfactual_accuracy"]
                rows.append((f"toyworld {task} counterfactual >= 95%", cf >= 0.95, f"{cf:.1%}"))
    ck = checkpoints(names)
    rows.append(("toyworld has >= 4 checkpoints", len(ck) >= 4, ", ".join(ck) or "none"))
    if ck and ck[0] in measured:
        worst = min(measured[ck[0]]["tasks"].items(), key=lambda kv: kv[1]["accuracy"])
        rows.append((f"earliest checkpoint {ck[0]} fails a task (< 60%)", worst[1]["accuracy"] < 0.60,
                     f"{worst[0]} {worst[1]['accuracy']:.1%}"))
    sft = measured.get("reasoner-sft")
    if sft:
        rows.append(("reasoner-sft short thinking in 10-40%", 0.10 <= sft["short_rate"] <= 0.40,
                     f"{sft['short_rate']:.1%}"))
        short, long_ = sft["accuracy_short"], sft["accuracy_long"]
        defined = short is not None and long_ is not None  # a gap needs samples of both kinds
        rows.append(("reasoner-sft short accuracy >= 10 pts below long", defined and long_ - short >= 0.10,
                     f"long {pct(long_)} vs short {pct(short)}"))
    th = (sft or {}).get("thinking")
    if sft and "p_short" in sft:
        rows.append(("reasoner-sft per-prompt P(short) std >= 0.15", sft["p_short"]["std"] >= 0.15,
                     f"std {sft['p_short']['std']:.3f} (mean {sft['p_short']['mean']:.3f})"))
    if th:
        cos = th["direction_cosine"]
        rows.append(("reasoner-sft length direction stable (cosine >= 0.9 at every layer)", min(cos) >= 0.9,
                     "cosine per layer " + " ".join(f"{c:.2f}" for c in cos)))
        curve = " ".join(f"{r['p_short']:.3f}" for r in th["steering"])
        accs = " ".join(f"{r['accuracy']:.2f}" for r in th["steering"])
        rows.append(("reasoner-sft steering lowers P(short) monotonically", th["monotone"], f"P(short) {curve}"))
        rows.append(("reasoner-sft steering towards long keeps accuracy", th["accuracy_kept"], f"accuracy {accs}"))
    rows.append(("reasoner-distill is bundled", "reasoner-distill" in names, "present" if "reasoner-distill" in names
                 else "missing"))
    for regime in ("sft", "distill", "grpo"):
        ck = [n for n in names if n.startswith(f"reasoner-{regime}@")]
        rows.append((f"reasoner-{regime} has >= 4 checkpoints", len(ck) >= 4, ", ".join(sorted(ck)) or "none"))
    grpo = measured.get("reasoner-grpo")
    if grpo and sft:
        defined = grpo["accuracy"] is not None and sft["accuracy"] is not None
        rows.append(("reasoner-grpo >= +5 pts over reasoner-sft", defined and grpo["accuracy"] - sft["accuracy"] >= 0.05,
                     f"{pct(sft['accuracy'])} -> {pct(grpo['accuracy'])}"))
    mib = weights_mib()
    rows.append((f"bundled weights <= {SIZE_BUDGET_MIB:.0f} MiB", mib <= SIZE_BUDGET_MIB, f"{mib:.1f} MiB"))
    return rows


def report(measured: dict[str, Any], rows: list[tuple[str, bool, str]]) -> str:
    """The zoo-check report as text: measured numbers per model, then one PASS/FAIL line per target."""
    lines = ["model                 task/metric          accuracy  logit diff  counterfactual"]
    for name, r in measured.items():
        if "tasks" in r:
            for task, v in {**r["tasks"], **r.get("probes", {})}.items():
                cf = v.get("counterfactual_accuracy")
                lines.append(f"{name:21s} {task:20s} {v['accuracy']:8.1%}  {v['logit_diff']:9.2f}  "
                             f"{'n/a' if cf is None else format(cf, '.1%'):>14s}")
        else:
            extra = "" if "short_rate" not in r else (
                f"  short {r['short_rate']:.1%} (acc {pct(r['accuracy_short'])}), long acc {pct(r['accuracy_long'])}")
            lines.append(f"{name:21s} {'arithmetic':20s} {pct(r['accuracy']):>8s}{extra}")
    lines.append("")
    for target, ok, detail in rows:
        lines.append(f"[{'PASS' if ok else 'FAIL'}] {target}: {detail}")
    return "\n".join(lines)
