"""Recipe for ``zoo:toyworld``: one GPT-2 trained on every task of the suite.

Deterministic: ``build(seed)`` gives the same weights on the same machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from circuits.zoo.recipes import corpus
from circuits.zoo.recipes.train import TrainSettings, train

# task -> (share of the training mixture, build options). Zoo-specific options keep
# answers single tokens in the word-level vocabulary and the model small.
# colored_objects uses the "the_is" phrasing ("the cup is blue, ... A: the cup is"): the
# colour follows "cup is", so a two-token content match (an induction head keyed on
# the queried object and "is") finds it. Its scenes list 2-5 objects: trained on three
# objects only, the model found the colour partly by position and failed scenes of
# other sizes (2 objects: 2%, 4 objects: 23%).
# "repeats" rows (corpus.repeat_sequences: a word sequence and its repeat, LM loss on the
# repeat) are what make such content-matching induction heads form. Without them the
# answer-only losses never did: induction was solved by position (fixed offset) and
# colored objects stayed at the one-in-three plateau in every run (colour-first,
# object-first and the_is phrasings; 2-5 objects; single-task training; up to 8000 steps).
# The induction task mixes lengths 3-10, so its answer sits at no fixed offset.
# "filler" rows are plain sentences over the same words with a full LM loss.
# The order of the entries matters: entry i draws its rows with seed + i.
MIXTURE: dict[str, tuple[float, dict[str, Any]]] = {
    "ioi": (0.10, {}),
    "colored_objects": (0.22, {"order": "the_is", "n_objects": (2, 3, 4, 5)}),
    "mental_math": (0.19, {"forms": ("add", "sub"), "max_value": 20, "phrasings": ("eq", "what", "is")}),
    "recall": (0.08, {}),
    "reasoning": (0.13, {}),
    "induction": (0.05, {"seq_len": (3, 4, 5, 6, 7, 8, 9, 10)}),
    "greater_than": (0.03, {}),
    "repeats": (0.18, {}),
    "filler": (0.02, {}),
}
# Balanced reasoning (the question about X1 or X2, the corruption about the other) is not learned yet.
# Measured (seed 0, the full two phases, held-out n = 200; session of 2026-12-01):
#   this mixture (reasoning 13%):                                  reasoning 69%, colored objects 89%
#   reasoning 8% + "reasoning_pairs" 14% (both questions of a pair
#   in one row), colored objects 22%, the rest scaled down:         reasoning 52% (chance), colored objects 42.5%
# Denser reasoning signal did not teach the two-hop lookup and cost colored objects its content matching;
# the bundled weights are still the earlier build (reasoning by shortcut: strict xfails in the zoo tests).
PAIRS = "_pairs"  # "<task>_pairs": rows asking both questions of a counterfactual pair (corpus.counterfactual_pair_sequences)
NOT_TASKS = ("filler", "repeats", "reasoning_pairs", "reasoning_hops")  # corpus parts that are not tasks of the suite
# The accuracy targets are measured on the task's standard three-object scenes; zoo-check
# also reports every scene size it was trained on (check.measure, "probes").
EVAL_OVERRIDES: dict[str, dict[str, Any]] = {"colored_objects": {"n_objects": 3}}


def eval_options(task_options: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-task options to evaluate with, from the options a model was trained with."""
    return {t: {**o, **EVAL_OVERRIDES.get(t, {})} for t, o in task_options.items() if t not in NOT_TASKS}


EVAL_TASKS = eval_options({t: opts for t, (_, opts) in MIXTURE.items()})

MODEL = dict(n_embd=128, n_layer=4, n_head=4, n_positions=64)
SETTINGS = dict(steps=10000, lr=2e-3, warmup=200, weight_decay=0.1)
# Consolidation: a second, shorter phase from the final weights of the first, on the same
# tasks with more mental math (30%; fresh rows, seed + 1000), a fresh optimizer and stronger
# weight decay. After the first phase mental math sat at 88%: every trained sum was
# memorized (100% on the training split) but held-out (operands, phrasing) pairs failed,
# mostly "What is a - b ?" answered with a + b. Measured continuations (lr 1e-3 unless said;
# held-out mental math at n = 200;
# faithfulness of the first phase's 8-node IOI circuit, 0.94 before):
#   weight decay 0.1, lr 5e-4, 2000 steps, mixture unchanged: 88%; IOI circuit 0.91
#   weight decay 0.5, 3000 steps (this one):         96%; IOI circuit 0.76
#   weight decay 1.0, 3000 steps:                    98%; IOI circuit 0.50
#   weight decay 2.0, 2000 steps, 35% mental math:   94.5%; colored objects fell to 68%
CONSOLIDATION = dict(steps=3000, lr=1e-3, warmup=50, weight_decay=0.5, shares={"mental_math": 0.30})
BATCH_SIZE = 128
MAX_ROWS = 300_000  # unique training rows; batches cycle through them
CHECKPOINTS = [200, 500, 1000, 2000, 4000]
SEED = 0


def make_tokenizer():
    """The word-level tokenizer over the zoo vocabulary (every task word plus filler words)."""
    from circuits.tokenization import word_level_tokenizer

    return word_level_tokenizer(corpus.zoo_vocabulary())


def rebalanced(mixture: dict[str, tuple[float, dict[str, Any]]], shares: dict[str, float]
               ) -> dict[str, tuple[float, dict[str, Any]]]:
    """``mixture`` with the parts in ``shares`` set to those shares and the rest scaled to fill
    the remainder (order and options kept)."""
    unknown = sorted(set(shares) - set(mixture))
    if unknown:
        raise ValueError(f"rebalanced: unknown mixture parts {unknown}; the mixture has {list(mixture)}")
    fixed = sum(shares.values())
    rest = sum(share for task, (share, _) in mixture.items() if task not in shares)
    return {task: (shares[task] if task in shares else share * (1 - fixed) / rest, opts)
            for task, (share, opts) in mixture.items()}


def make_corpus(tokenizer, n_total: int, seed: int,
                mixture: dict[str, tuple[float, dict[str, Any]]] | None = None) -> corpus.Sequences:
    """About ``n_total`` training rows drawn as ``mixture`` (default MIXTURE) says, merged and shuffled.

    Each part gets max(1, share x n_total) rows: task prompts (train split), repeat rows or filler rows.
    """
    parts = []
    for i, (task, (share, opts)) in enumerate((mixture or MIXTURE).items()):
        n = max(1, int(share * n_total))
        if task == "filler":
            parts.append(corpus.filler_sequences(tokenizer, n, seed + i))
        elif task == "repeats":
            parts.append(corpus.repeat_sequences(tokenizer, n, seed + i, **opts))
        elif task == "reasoning_hops":
            parts.append(corpus.reasoning_hop_sequences(tokenizer, n, seed + i, "train"))
        elif task.endswith(PAIRS):
            parts.append(corpus.counterfactual_pair_sequences(task[:-len(PAIRS)], tokenizer, n, seed + i, "train", opts))
        else:
            parts.append(corpus.task_sequences(task, tokenizer, n, seed + i, "train", opts))
    return corpus.merge(parts, seed)


def make_model(tokenizer, seed: int):
    """A fresh GPT2LMHeadModel of size MODEL for ``tokenizer``, no dropout, seeded with ``seed``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **MODEL)
    return GPT2LMHeadModel(cfg)


def consolidation(model, tokenizer, seed: int = SEED) -> list[float]:
    """The second phase (CONSOLIDATION), in place on ``model``; returns its loss curve."""
    c = {k: v for k, v in CONSOLIDATION.items() if k != "shares"}
    seqs = make_corpus(tokenizer, c["steps"] * BATCH_SIZE, seed + 1000, rebalanced(MIXTURE, CONSOLIDATION["shares"]))
    batches = corpus.batches(seqs, BATCH_SIZE, tokenizer.pad_token_id, seed + 1000, epochs=1000)
    return train(model, batches, TrainSettings(**c), desc="toyworld consolidation")


# Reasoning phase (experimental; not part of build() until it teaches balanced reasoning): a third
# phase from the consolidated weights, with more reasoning rows and one-hop rows over the same
# contexts (corpus.reasoning_hop_sequences: each hop of the two-hop lookup asked on its own),
# fresh rows (seed + 2000), a fresh optimizer. Measured from the bundled weights (balanced held-out
# reasoning accuracy; colored objects in brackets): these settings 0.705 (counterfactual 0.65);
# steps 6000 with shares 0.40 / 0.15: 0.535 (0.665) at 500 steps, 0.68 (0.84) at 1000, 0.69 (0.91) at
# 1500, 0.675 (0.865) at 2000, a plateau far from the 0.95 target; steps 8000 at lr 2e-3 lost colored
# objects. So the bundled weights stay, and the task is refused on them (tests/test_zoo_models.py).
REASONING_PHASE = dict(steps=2000, lr=1e-3, warmup=50, weight_decay=0.1,
                       shares={"reasoning": 0.30, "reasoning_hops": 0.15})


def reasoning_phase(model, tokenizer, seed: int = SEED, settings: dict[str, Any] | None = None,
                    on_checkpoint=None, checkpoint_steps: list[int] | None = None) -> list[float]:
    """The reasoning phase (REASONING_PHASE, or ``settings``), in place on ``model``; returns its
    loss curve. ``on_checkpoint(step, model)`` is called after each of ``checkpoint_steps``."""
    r = {**REASONING_PHASE, **(settings or {})}
    c = {k: v for k, v in r.items() if k != "shares"}
    mixture = rebalanced({**MIXTURE, "reasoning_hops": (0.0, {})}, r["shares"])
    seqs = make_corpus(tokenizer, c["steps"] * BATCH_SIZE, seed + 2000, mixture)
    batches = corpus.batches(seqs, BATCH_SIZE, tokenizer.pad_token_id, seed + 2000, epochs=1000)
    return train(model, batches, TrainSettings(**c, checkpoint_steps=checkpoint_steps or []),
                 on_checkpoint=on_checkpoint, desc="toyworld reasoning phase")


def build(out_dir: str | Path, seed: int = SEED, steps: int | None = None,
          save_checkpoints: bool = True, consolidate: bool = True) -> dict[str, Any]:
    """Train toyworld (and its checkpoints) into ``out_dir``/toyworld[@step].

    ``steps`` shortens the first phase (quick experiments); ``consolidate=False`` skips the
    second (CONSOLIDATION)."""
    from circuits.zoo.recipes.save import save_zoo_model

    torch.manual_seed(seed)
    tok = make_tokenizer()
    s = TrainSettings(**{**SETTINGS, **({"steps": steps} if steps else {})},
                      checkpoint_steps=CHECKPOINTS if save_checkpoints else [])
    n_rows = min(MAX_ROWS, s.steps * BATCH_SIZE)
    seqs = make_corpus(tok, n_rows, seed)
    model = make_model(tok, seed)
    recipe = {"recipe": "circuits.zoo.recipes.toyworld", "seed": seed, "model": MODEL, "settings": {**SETTINGS, "steps": s.steps},
              "batch_size": BATCH_SIZE, "mixture": {k: v[0] for k, v in MIXTURE.items()},
              "task_options": {k: v[1] for k, v in MIXTURE.items()}, "eval_task_options": EVAL_TASKS,
              "training_rows": n_rows}

    def on_ckpt(step: int, m) -> None:
        if step < s.steps:
            save_zoo_model(m, tok, Path(out_dir) / f"toyworld@{step}", {**recipe, "step": step})

    batches = corpus.batches(seqs, BATCH_SIZE, tok.pad_token_id, seed, epochs=1000)
    losses = train(model, batches, s, on_checkpoint=on_ckpt, desc="toyworld")
    seconds = model.train_seconds
    if consolidate:
        losses = consolidation(model, tok, seed)
        seconds += model.train_seconds
        recipe["consolidation"] = CONSOLIDATION
    recipe["train_seconds"] = round(seconds, 1)
    recipe["final_loss"] = round(sum(losses[-50:]) / 50, 4)
    save_zoo_model(model, tok, Path(out_dir) / "toyworld", {**recipe, "step": s.steps})
    return recipe


if __name__ == "__main__":  # quick experiment: python -m circuits.zoo.recipes.toyworld OUT [steps]
    import sys

    from circuits.zoo.evaluate import evaluate_tasks

    out = sys.argv[1]
    torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else torch.get_num_threads())
    r = build(out, steps=int(sys.argv[2]) if len(sys.argv) > 2 else None, save_checkpoints=True)
    from transformers import AutoModelForCausalLM

    from circuits.models import load_local_tokenizer

    m = AutoModelForCausalLM.from_pretrained(Path(out) / "toyworld").eval()
    print(json.dumps(r, indent=1))
    print(json.dumps(evaluate_tasks(m, load_local_tokenizer(str(Path(out) / "toyworld")), EVAL_TASKS), indent=1))
