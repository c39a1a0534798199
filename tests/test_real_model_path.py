"""The real-model path without the network: every analysis that takes a model accepts a local Hugging Face
directory of each architecture the papers use (Llama, Qwen2 with GQA, GPT-NeoX; GPT-2 is run by each
analysis's own tests), through the same ``load_model`` call as a hub id. The tiny models are random, so
accuracy floors are lowered where an analysis has one; an analysis that finds the model does not do its
task must say so by name (``ModelFailsTask``), never crash."""

from __future__ import annotations

import pytest

from circuits.cli import ModelFailsTask

ARCHS = ["llama", "qwen2", "neox"]


@pytest.fixture(scope="module")
def reasoner_dirs(tmp_path_factory):
    """arch -> a tiny random checkpoint with the zoo reasoners' tokenizer (it has <think> and </think>)."""
    from circuits.models import load_local_tokenizer
    from circuits.zoo import zoo_path
    from tests.conftest import write_tiny_model

    tok = load_local_tokenizer(str(zoo_path("reasoner-sft")))
    cache: dict[str, str] = {}

    def get(arch: str) -> str:
        if arch not in cache:
            cache[arch] = write_tiny_model(tmp_path_factory.mktemp(f"reasoner-{arch}"), arch, tok)
        return cache[arch]

    return get


def _ioi(d):
    from analyses import ioi

    r = ioi.run(d, n=8, device="cpu", progress=False)
    assert r.trace.steps["logits"]["effect_percent"] and "IOI on" in ioi.summary(r)


def _colored_objects(d):
    from analyses import colored_objects as co

    r = co.run(d, n=8, device="cpu", progress=False, floor=0.0, min_n=4)
    assert set(r.figures) >= {"patching", "circuit"} and "colored" in co.summary(r).lower()


def _mental_math(d):
    """A random model answers no sum (All-for-One's faithfulness is relative to the model's accuracy, so
    the search refuses it by name); the knockout curve, which needs no accuracy, runs on every arch."""
    from analyses import mental_math as mm
    from circuits.models import load_model
    from circuits.tasks import build_task

    model = load_model(d, device="cpu")
    ps = build_task("mental_math", model.tokenizer, n=8, seed=0, forms=("add",))
    curve = mm.knockout(model, {"forms": {"add": {"prompts": ps}}})["add"]
    assert len(curve.layers) == int(model.cfg.n_layers) + 1
    with pytest.raises(ModelFailsTask, match="solves none of its mental_math forms"):
        mm.run(d, n=8, device="cpu", floor=0.0, min_n=4)


def _recall_reasoning(d):
    from analyses import recall_reasoning as rr

    r = rr.run(d, n=16, device="cpu", floor=0.0, min_items=4, keep="all", n_controls=3, n_neurons=4,
               n_neuron_controls=3)
    assert "recall vs reasoning on" in rr.summary(r)


def _discover(d):
    from analyses import discover

    r = discover.run(d, task="ioi", n=6, device="cpu", steps=2, n_boot=2, progress=False)
    methods = {"EAP", "EAP-IG-inputs", "EAP-IG-activations", "ACDC", discover.SINGLE_EDGE}
    # the per-position curve exists exactly when EAP-IG (inputs) could score per position
    if r.scores["EAP-IG-inputs"].per_position is not None:
        methods.add(discover.PER_POSITION)
    assert set(r.curves) == methods
    assert set(r.data()["cpr_of_reference"]) == methods


def _compare_tasks(d):
    from analyses import compare_tasks as ct

    r = ct.run(d, tasks=["ioi", "colored_objects"], n=16, device="cpu", progress=False, floor=0.0)
    assert set(r.circuits) == {"ioi", "colored_objects"}


def _repair(d):
    from analyses import repair

    r = repair.run(d, n=16, device="cpu", heads=["a0.h0", "a1.h1"])
    assert "before" in r.results and "after" in r.results


def _thinkedit(d):
    """ThinkEdit needs a tokenizer with the thinking tokens (a real reasoning model's has them): the tiny
    checkpoint gets the reasoners' tokenizer. A random model writes no short and long traces to contrast,
    which the analysis refuses by name after sampling."""
    from analyses import thinkedit as te

    te.run(d, n_direction=20, n_select=20, n_eval=20, seed=0, device="cpu", n_random=1)


ANALYSES = {"ioi": _ioi, "colored_objects": _colored_objects, "mental_math": _mental_math,
            "recall_reasoning": _recall_reasoning, "discover": _discover, "compare_tasks": _compare_tasks,
            "repair": _repair, "thinkedit": _thinkedit}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("analysis", list(ANALYSES))
def test_analysis_accepts_a_local_checkpoint(analysis, arch, model_dirs, reasoner_dirs):
    try:
        if analysis == "thinkedit":
            ANALYSES[analysis](reasoner_dirs(arch))
        else:
            ANALYSES[analysis](model_dirs[(arch, "word")])
    except ModelFailsTask as refusal:  # a random model may answer nothing: a named refusal, not a crash
        assert any(w in str(refusal) for w in ("floor", "none of", "does not think both ways")), refusal


def test_device_auto_splits_with_accelerate_and_keeps_the_numbers(model_dirs):
    """device="auto" loads through accelerate's device_map (here everything lands on the CPU) and gives
    the same logits as a plain load: the path a model too large for one GPU takes."""
    import torch

    from circuits.models import ModelLoadError, load_model

    d = model_dirs[("llama", "word")]
    plain, split = load_model(d, device="cpu"), load_model(d, device="auto")
    from circuits.models import model_info

    assert model_info(split)["device_map"] and model_info(plain)["device_map"] is None
    tokens = torch.tensor([[plain.tokenizer.bos_token_id, 5, 6, 7]])
    torch.testing.assert_close(split(tokens), plain(tokens))
    with pytest.raises(ModelLoadError, match="exclude each other"):
        load_model(d, device="cpu", device_map="auto")
