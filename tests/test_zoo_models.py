"""The bundled zoo: loads offline, meets its targets, and solves tasks through attention."""

from __future__ import annotations

import json

import pytest
import torch

from circuits import metrics
from circuits.engines.sites import hook_at
from circuits.models import load_model
from circuits.tasks import build_task
from circuits.zoo import ZOO_DIR, list_zoo
from circuits.zoo.check import trained_tasks
from circuits.zoo.recipes.toyworld import EVAL_TASKS

IN_CONTEXT = ["ioi", "colored_objects", "reasoning", "induction"]


@pytest.fixture(scope="module")
def toyworld():
    return load_model("zoo:toyworld", device="cpu")


def test_the_zoo_is_bundled():
    names = list_zoo()
    assert "toyworld" in names
    assert {"reasoner-base", "reasoner-sft", "reasoner-distill", "reasoner-grpo"} <= set(names)
    assert sum(n.startswith("toyworld@") for n in names) >= 4
    for n in names:
        for f in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "recipe.json"):
            assert (ZOO_DIR / n / f).is_file(), (n, f)


@pytest.mark.parametrize("name", ["toyworld", "reasoner-grpo"])
def test_plain_transformers_loads_the_checkpoint(name, toyworld):
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    path = ZOO_DIR / name
    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    tok = PreTrainedTokenizerFast.from_pretrained(path)
    assert tok("the key is in", add_special_tokens=False)["input_ids"] == \
        load_model(f"zoo:{name}", device="cpu").tokenizer("the key is in", add_special_tokens=False)["input_ids"]
    if name == "toyworld":
        ps = build_task("ioi", toyworld.tokenizer, n=4, seed=0)
        with torch.no_grad():
            torch.testing.assert_close(hf(ps.clean).logits, toyworld(ps.clean), atol=1e-4, rtol=1e-4)


# Targets the bundled weights are known to miss (see the zoo issue's note). Strict xfail:
# a target that starts to pass fails this test, so the list cannot go stale.
_SHORTCUT = ("the bundled toyworld answers the first item's city whatever the question (trained when every "
             "clean prompt asked about it); the recipe's retrain on balanced prompts reached reasoning 69% (and "
             "colored objects 89%, mental math 94%), so the older weights stay bundled")
KNOWN_SHORTFALLS: dict[str, str] = {
    "toyworld reasoning >= 95%": _SHORTCUT,
    "toyworld reasoning counterfactual >= 95%": _SHORTCUT,
    "reasoner-sft length direction stable (cosine >= 0.9 at every layer)":
        "stable at layers 0-6 (0.92-0.99) but not at the last layer (0.66 with 300 problems per draw)",
    "reasoner-sft steering towards long keeps accuracy":
        "steering every position at every layer lowers P(short) monotonically but breaks the arithmetic of the "
        "trace it then writes (accuracy 0.75 -> 0.07 at 10% of the residual norm)",
}

COUNTERFACTUAL = ["ioi", "colored_objects", "mental_math", "recall", "reasoning", "induction"]  # corruptions with answers
TARGETS = [f"toyworld {t} >= 95%" for t in EVAL_TASKS] + [f"toyworld {t} counterfactual >= 95%" for t in COUNTERFACTUAL] + [
    "toyworld has >= 4 checkpoints",
    "earliest checkpoint toyworld@200 fails a task (< 60%)",
    "reasoner-sft short thinking in 10-40%",
    "reasoner-sft short accuracy >= 10 pts below long",
    "reasoner-sft per-prompt P(short) std >= 0.15",
    "reasoner-sft length direction stable (cosine >= 0.9 at every layer)",
    "reasoner-sft steering lowers P(short) monotonically",
    "reasoner-sft steering towards long keeps accuracy",
    "reasoner-distill is bundled",
    "reasoner-sft has >= 4 checkpoints",
    "reasoner-distill has >= 4 checkpoints",
    "reasoner-grpo has >= 4 checkpoints",
    "reasoner-grpo >= +5 pts over reasoner-sft",
    "bundled weights <= 60 MiB",
]


@pytest.fixture(scope="module")
def verdicts():
    from circuits.zoo import check

    names = list_zoo()
    return {t: (ok, d) for t, ok, d in check.verdicts(check.measure(names, n=100), names)}


@pytest.mark.parametrize("target", [
    pytest.param(t, marks=pytest.mark.xfail(strict=True, reason=KNOWN_SHORTFALLS[t])) if t in KNOWN_SHORTFALLS else t
    for t in TARGETS
])
def test_zoo_target_on_a_small_held_out_sample(target, verdicts):
    assert target in verdicts, sorted(verdicts)
    ok, detail = verdicts[target]
    assert ok, f"{target}: {detail}"


def knock_out_end_attention(model, ps):
    """Hooks that let the END query read only itself, in every layer."""
    end = ps.positions["END"]
    rows = torch.arange(len(ps))

    def hook(pattern, hook):
        p = pattern.clone()
        p[rows, :, end, :] = 0.0
        p[rows, :, end, end] = 1.0
        return p

    return [(hook_at("pattern", layer), hook) for layer in range(model.cfg.n_layers)]




@pytest.mark.parametrize("task", [pytest.param(t, marks=pytest.mark.xfail(strict=True, reason=_SHORTCUT))
                                  if t == "reasoning" else t for t in IN_CONTEXT])
def test_in_context_tasks_go_through_attention(task, toyworld):
    ps = build_task(task, toyworld.tokenizer, n=100, seed=99, split="test",
                    **trained_tasks("toyworld")[task])
    with torch.no_grad():
        clean = metrics.accuracy(toyworld(ps.clean), ps).item()
        knocked = toyworld.run_with_hooks(ps.clean, fwd_hooks=knock_out_end_attention(toyworld, ps))
    assert clean >= 0.9  # before the knock-out means anything (chance is far below)
    assert metrics.accuracy(knocked, ps).item() < 0.5


@pytest.mark.parametrize("n_objects", [2, 3, 4])
def test_colored_objects_is_found_by_content_not_position(n_objects, toyworld):
    """Scenes of 2, 3 and 4 objects put the colours at different positions; a model that reads
    the colour off a position (as an earlier build did: 2 objects 2%, 4 objects 23%) fails."""
    opts = {**trained_tasks("toyworld")["colored_objects"], "n_objects": n_objects}
    ps = build_task("colored_objects", toyworld.tokenizer, n=100, seed=7, split="test", **opts)
    with torch.no_grad():
        assert metrics.accuracy(toyworld(ps.clean), ps).item() >= 0.9


def test_the_recipe_records_the_options_its_model_is_evaluated_with():
    """Analyses read a zoo model's task options from its recipe.json, not from the training code;
    what the bundled files say must be what the recipe computes."""
    from circuits.zoo import task_options

    assert task_options("zoo:toyworld") == json.loads(json.dumps(EVAL_TASKS))
    assert task_options("zoo:toyworld@200") == task_options("zoo:toyworld")
    assert task_options("path/to/any/model") == {}
