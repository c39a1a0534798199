"""MLP-neuron activations and ablations against slow, obvious references (one forward per variant,
a hand-written hook), on GPT-2 and on Llama's gated MLP; bad input fails with a clear error."""

from __future__ import annotations

import pytest
import torch

from circuits import metrics
from circuits.engines.neurons import ablate_neurons, neuron_activations, selectivity, top_neurons
from circuits.tasks import build_task
from tests.reference_engines import block, metric_full

VARIANTS = [[(0, 3)], [(1, 5), (0, 7)], [(0, 1), (0, 2), (1, 0), (1, 63)], [], [(1, 2)]]


def post(layer: int) -> str:
    return block(layer) + "mlp.hook_post"


def at_end(acts, ps):
    return acts[torch.arange(len(ps)), ps.positions["END"]]


def naive_ablation(model, ps, variant, value_of, metric=None):
    """One forward: each neuron (layer, i) of the variant set to value_of[layer][i] at END, all else untouched."""
    end = ps.positions["END"]
    rows = torch.arange(len(ps))
    hooks = []
    for layer in sorted({lay for lay, _ in variant}):
        idx = [i for lay, i in variant if lay == layer]

        def hook(act, hook, idx=idx, layer=layer):
            act = act.clone()
            for i in idx:
                act[rows, end, i] = value_of[layer][i]
            return act
        hooks.append((post(layer), hook))
    if metric is None:
        return metric_full(model, ps.clean, ps, hooks)
    return metric(model.run_with_hooks(ps.clean, fwd_hooks=hooks), ps, reduce="none")


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def setup(request, engine_models):
    model = engine_models(request.param)
    ps = build_task("recall", model.tokenizer, n=8, seed=2)  # four phrasings: prompts of several lengths
    return model, ps


def test_activations_are_what_the_down_projection_reads(setup):
    model, ps = setup
    got = neuron_activations(model, ps)
    assert got.shape == (2, len(ps), model.cfg.d_mlp)
    seen = {}
    handles = [model.blocks[layer].mlp.out.register_forward_pre_hook(
        lambda mod, args, layer=layer: seen.__setitem__(layer, args[0].detach().clone())) for layer in range(2)]
    try:
        with torch.no_grad():
            model(ps.clean)
    finally:
        for h in handles:
            h.remove()
    for layer in range(2):
        torch.testing.assert_close(got[layer], at_end(seen[layer], ps), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(neuron_activations(model, ps, memory_budget=1), got)  # one prompt per forward
    only = neuron_activations(model, ps, layers=[1], tokens="corrupted")
    _, cache = model.run_with_cache(ps.corrupted)
    torch.testing.assert_close(only[0], at_end(cache[post(1)], ps), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("values", ["mean", "zero"])
def test_ablations_match_one_forward_per_variant(setup, values):
    model, ps = setup
    _, cache = model.run_with_cache(ps.corrupted)
    value_of = {layer: at_end(cache[post(layer)], ps).mean(0) if values == "mean"
                else torch.zeros(model.cfg.d_mlp) for layer in range(2)}
    got = ablate_neurons(model, ps, VARIANTS, values=values)
    assert got.shape == (len(VARIANTS), len(ps))
    ref = torch.stack([naive_ablation(model, ps, v, value_of) for v in VARIANTS])
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert (got[0] - got[3]).abs().max() > 1e-3  # the intervention moves the metric: the check has teeth
    one = ablate_neurons(model, ps, VARIANTS[1], values=values)  # a single variant: a list of pairs
    torch.testing.assert_close(one, got[1:2], atol=1e-6, rtol=1e-6)
    alone = ablate_neurons(model, ps, VARIANTS, values=values, memory_budget=1)  # one variant per forward
    torch.testing.assert_close(alone, got, atol=1e-5, rtol=1e-5)


def test_the_mean_can_come_from_another_reference(setup):
    model, ps = setup
    other = build_task("recall", model.tokenizer, n=6, seed=9)
    _, cache = model.run_with_cache(other.clean)
    value_of = {layer: at_end(cache[post(layer)], other).mean(0) for layer in range(2)}
    acc = ablate_neurons(model, ps, VARIANTS[:3], reference=other, reference_tokens="clean", metric="accuracy")
    ref = torch.stack([naive_ablation(model, ps, v, value_of, metrics.accuracy) for v in VARIANTS[:3]])
    torch.testing.assert_close(acc, ref)
    ld = ablate_neurons(model, ps, VARIANTS[:3], reference=other, reference_tokens="clean")
    ref = torch.stack([naive_ablation(model, ps, v, value_of) for v in VARIANTS[:3]])
    torch.testing.assert_close(ld, ref, atol=1e-5, rtol=1e-5)


def test_bad_input_fails_clearly(setup):
    model, ps = setup
    d = model.cfg.d_mlp
    with pytest.raises(ValueError, match=rf"neuron {d} out of range at layer 0.*0\.\.{d - 1}"):
        ablate_neurons(model, ps, [(0, d)])
    with pytest.raises(ValueError, match=r"layer 5 out of range.*layers 0\.\.1"):
        ablate_neurons(model, ps, [[(0, 1)], [(5, 0)]])
    with pytest.raises(ValueError, match=r"layer 2 out of range"):
        neuron_activations(model, ps, layers=[0, 2])
    with pytest.raises(ValueError, match="values must be one of"):
        ablate_neurons(model, ps, [(0, 1)], values="median")
    with pytest.raises(ValueError, match="position 'IO' is not named"):
        ablate_neurons(model, ps, [(0, 1)], position="IO")
    with pytest.raises(TypeError, match=r"\(layer, neuron\) pair"):
        ablate_neurons(model, ps, [[(0, 1, 2)]])
    with pytest.raises(TypeError, match="must be an integer"):
        ablate_neurons(model, ps, [(0, 1.5)])
    with pytest.raises(TypeError, match="PromptSet"):
        neuron_activations(model, "the key is in")


def test_selectivity_and_top_neurons_by_hand():
    a = torch.tensor([[1.0, 0.0, 5.0], [3.0, 0.0, 5.0]])  # [samples, units]
    b = torch.tensor([[0.0, 2.0, 5.0], [2.0, 4.0, 5.0], [1.0, 0.0, 5.0]])
    # unit 0: means 2 and 1, variances 2 and 1, pooled (1*2 + 2*1) / 3 = 4/3
    s = selectivity(a, b, eps=0.0)
    assert s[0].item() == pytest.approx(1 / (4 / 3) ** 0.5)
    assert s[1].item() == pytest.approx(-2 / ((0 + 2 * 4) / 3) ** 0.5)  # unit 1: means 0 and 2, pooled 8/3
    assert selectivity(a, b)[2].item() == 0.0  # a constant unit scores 0, not NaN
    scores = torch.tensor([[0.5, -2.0, 3.0], [3.0, 1.0, -0.1]])
    assert top_neurons(scores, 3) == [(0, 2), (1, 0), (1, 1)]  # tie (3.0) to the lower flat index
    assert top_neurons(scores, 2, largest=False) == [(0, 1), (1, 2)]
    assert top_neurons(scores, 1, layers=[4, 7]) == [(4, 2)]
    with pytest.raises(ValueError, match="at least 2 samples"):
        selectivity(a[:1], b)
