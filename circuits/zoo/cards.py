"""Model cards (README.md in each zoo folder), written from measured numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from circuits.io import atomic_write_text
from circuits.zoo import ZOO_DIR

WHY_SIZE = {
    "toyworld": (
        "d_model 128, 4 layers, 4 heads (d_head 32), d_mlp 512, context 64, chosen so that the recipe "
        "trains in about 80 minutes on one CPU core (62.7 min for the first phase and 17.4 min of consolidation, "
        "each measured while another training shared the machine). Four layers give room for two-hop composition "
        "(reasoning) and induction-style copying (IOI, colored objects); the word-level vocabulary keeps "
        "the embedding small, so the model and its checkpoints stay well inside the 60 MiB zoo budget."
    ),
    "reasoner": (
        "Qwen2 with grouped-query attention: 8 layers of 8 query heads sharing 2 key/value heads, hidden 64 "
        "(d_head 8), MLP 256, tied embeddings. Eight layers give the decision to think short room to sit "
        "in heads other than the layer-0 heads that arithmetic needs (the ThinkEdit setting); the width keeps "
        "the family (base, sft, distill, grpo and four checkpoints of each post-training regime) inside the "
        "60 MiB zoo budget and trainable in well under an hour on one CPU core."
    ),
}


def _kind(name: str) -> str:
    return "toyworld" if name.startswith("toyworld") else "reasoner"


TRAINING_DATA = {
    "toyworld": (
        "Every task of the suite as prompt + answer rows (the loss only on the answer), *repeats* rows "
        "and filler sentences. Repeats rows (18%): a random word sequence followed by its repeat, the loss "
        "on every predictable token of the repeat. Words in a repeats row come from a pool of 12, so a word "
        "often recurs and the next word is fixed only by the words before it. The repeats rows are what "
        "make content-matching induction heads form: without them, earlier toyworlds solved the "
        "induction task by position (its answer sat at a fixed offset from END) and colored objects "
        "stayed at the one-in-three plateau in every run (35%). The induction task itself is trained and "
        "evaluated with sequence lengths 3-10, so only a content match solves it. Colored-objects scenes "
        "list 2-5 objects in training: a build trained on three-object scenes only reached 78.5% and "
        "found the colour partly by position (2 objects: 2%, 4 objects: 23%). Filler sentences (2%): "
        "plain sentences over the same words, full LM loss. No part of the mixture exceeds 22%. "
        "Consolidation: after the first 10000 steps, 3000 more on the same mixture with mental math at 30% "
        "(fresh rows), a fresh optimizer, lr 1e-3 and weight decay 0.5 instead of 0.1. The first phase "
        "memorized every trained sum but answered held-out (operands, phrasing) pairs at 88%, mostly "
        "\"What is a - b ?\" with a + b; consolidation brings them to the target. Stronger weight decay "
        "(1.0) reached 98% but blurred the IOI circuit: the first phase's 8-node IOI circuit kept "
        "0.50 of the model's logit difference, against 0.94 before consolidation and 0.76 after this one."
    ),
}

TRAINING_DATA["reasoner"] = (
    "Arithmetic chains of 3-4 operands in 0..9 with every running value in 0..30, drawn from the train "
    "split of a deterministic 1-in-5 hold-out (the `arithmetic` task's split: its `split=\"test\"` prompts "
    "are problems no stage trained on). base: direct answers. sft: graded thinking traces - full, one or "
    "two steps merged, or none (`<think> </think>`) - whose mix depends on the problem's difficulty (easy: "
    "three operands and every value <= 12, short 60% of the time; hard: four operands passing 15, short 3%; "
    "medium in between), and whose answers are wrong at 0% (full), 12% / 25% (one / two merges) and 40% "
    "(short): thinking less costs accuracy and the decision to think short is computed from the problem. "
    "distill: base fine-tuned on 20000 traces sampled from a teacher (base fine-tuned on full, correct traces; "
    "trained by the recipe, not bundled). grpo: sft trained by group-relative policy gradient on final-answer "
    "correctness. Checkpoints `@<step>` of sft, distill and grpo are bundled for the regime comparison "
    "(`make compare-regimes`)."
)

HELD_OUT = (
    "Every task is evaluated on `split=\"test\"`: a deterministic 1-in-5 hold-out of the task's combinations "
    "that training never saw. IOI: name x template combinations; colored objects: object sets x queried "
    "object x lead-in; reasoning: item/container/city chains x premise order; induction: sequences (of lengths 3-10); "
    "greater-than: years; recall: facts seen in training asked through held-out (fact, phrasing) pairs; "
    "mental math: held-out (operands, form, phrasing) triples - the sums are memorized facts, and 94% of "
    "held-out triples have their sum trained under another phrasing, so this mostly measures transfer "
    "across phrasings (the other 6% were never trained under any phrasing).")


def card_text(name: str, recipe: dict[str, Any], measured: dict[str, Any]) -> str:
    """The Markdown model card of zoo model ``name`` from its recipe and its measured numbers."""
    lines = [f"# zoo:{name}", ""]
    lines.append(f"A model organism of the `circuits` toolkit, trained by `{recipe.get('recipe')}` "
                 f"(seed {recipe.get('seed')}). Rebuild with `make zoo`; check with `make zoo-check`.")
    lines.append("Load with `circuits.models.load_model('zoo:" + name + "')`, or with plain transformers: "
                 "`AutoModelForCausalLM.from_pretrained(dir)` and `PreTrainedTokenizerFast.from_pretrained(dir)`.")
    lines.append("")
    lines.append(f"- parameters: {measured.get('n_params', 'n/a'):,}")
    if "step" in recipe:
        c = recipe.get("consolidation")
        if c:
            lines.append(f"- training steps: {recipe['step']} + {c['steps']} of consolidation (weight decay "
                         f"{c['weight_decay']}, lr {c['lr']}, shares {c['shares']})")
        else:
            lines.append(f"- training step: {recipe['step']} of {recipe.get('settings', {}).get('steps')}")
    if "stage" in recipe:
        lines.append(f"- stage: {recipe['stage']}" + (f" (starting point: {recipe['starting_point']})"
                                                      if recipe.get("starting_point") else ""))
    if "train_seconds" in recipe:
        lines.append(f"- training time: {recipe['train_seconds']} s, single-threaded (one CPU core)")
    lines += ["", "## Why this size", "", WHY_SIZE[_kind(name)], ""]
    if _kind(name) in TRAINING_DATA:
        lines += ["## Training data", "", TRAINING_DATA[_kind(name)], ""]
    lines += ["## Measured (make zoo-check)", ""]
    if "tasks" in measured:
        lines += [HELD_OUT, ""]
        lines += ["| task | held-out top-1 accuracy | mean logit diff | n |", "|---|---|---|---|"]
        for task, r in measured["tasks"].items():
            lines.append(f"| {task} | {r['accuracy']:.1%} | {r['logit_diff']:.2f} | {r['n']} |")
        if measured.get("probes"):
            lines += ["", "Colored objects by scene size (every size it was trained on; the target above is "
                      "measured on three-object scenes):", "",
                      "| scene | held-out top-1 accuracy | mean logit diff | n |", "|---|---|---|---|"]
            for task, r in measured["probes"].items():
                lines.append(f"| {task} | {r['accuracy']:.1%} | {r['logit_diff']:.2f} | {r['n']} |")
    else:
        for k, v in measured.items():
            if k != "n_params":
                lines.append(f"- {k}: {v}")
    lines += ["", "## Recipe", "", "```json", json.dumps(recipe, indent=2, default=str), "```", ""]
    return "\n".join(lines)


def write_cards(measured: dict[str, dict[str, Any]], root: Path = ZOO_DIR) -> None:
    """Write the model card (README.md) of every measured model into its folder under ``root``."""
    for name, m in measured.items():
        recipe = json.loads((root / name / "recipe.json").read_text())
        atomic_write_text(root / name / "README.md", card_text(name, recipe, m))
