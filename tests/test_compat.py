"""The KV cache works on every architecture, whichever name transformers gives it.

transformers 5.24 passes the cache to attention as ``cache``; transformer-lens 4.3's
attention bridges read ``past_key_values``. A cached forward must still extend the
cache and give the logits of a full forward, or say that it cannot.
"""

from __future__ import annotations

import random

import pytest
import torch

from circuits import compat
from circuits.engines import fastpaths
from circuits.engines.replay import BlockReplay
from circuits.tasks import build_task
from tests.conftest import ARCHS, write_tiny_model


@pytest.mark.parametrize("arch", ARCHS)
def test_a_cached_forward_equals_a_full_forward(arch, loaded_models):
    model = loaded_models(arch)
    assert compat.ensure_kv_cache(model) in ("native", "shimmed")
    hf = compat.hf_model(model)
    ids = torch.tensor([[1, 5, 9, 12, 7, 30, 4]])
    with torch.no_grad():
        full = hf(ids).logits[:, -1]
        first = compat.cached_forward(hf, ids[:, :4])
        cache = compat.output_cache(first)
        assert compat.cache_length(cache) == 4
        out = None
        for t in range(4, ids.shape[1]):
            out = compat.cached_forward(hf, ids[:, t:t + 1], cache)
            cache = compat.output_cache(out)
        assert compat.cache_length(cache) == ids.shape[1]
    torch.testing.assert_close(out.logits[:, -1], full, atol=1e-5, rtol=1e-5)


def test_reasoner_sampling_reads_the_prompt():
    """Greedy sampling through the cache equals greedy decoding by full forwards."""
    from circuits.models import load_model
    from circuits.zoo.recipes import arithmetic as ar
    from circuits.zoo.recipes import reasoner

    model = load_model("zoo:reasoner-sft", device="cpu")
    hf, tok = compat.hf_model(model), model.tokenizer
    rng = random.Random(3)
    problems = [ar.sample_problem(rng) for _ in range(3)]
    got = reasoner.sample(hf, tok, problems, temperature=0)
    end_id = tok.convert_tokens_to_ids(ar.END_THINK)
    for p, comps in zip(problems, got):
        ids = [tok.bos_token_id] + tok(p.prompt, add_special_tokens=False)["input_ids"]
        want: list[int] = []
        with torch.no_grad():
            for _ in range(len(comps[0])):
                want.append(int(hf(torch.tensor([ids + want])).logits[0, -1].argmax()))
        assert comps[0] == want
        assert end_id in want  # the trace closes: the model read the problem


def _without_kv_cache(model):
    """Make every attention bridge drop the cache, as transformer-lens 4.3 does on transformers 5.24."""
    for m in compat.hf_model(model).modules():
        if callable(getattr(m, "_update_kv_cache", None)):
            def ignore(k, v, **kwargs):
                return k, v
            ignore.circuits_shim = True  # not wrapped again
            m._update_kv_cache = ignore


def test_a_model_whose_cache_stays_empty_is_named_and_never_used(tmp_path, word_tokenizer):
    from circuits.models import load_model
    from circuits.zoo.recipes import arithmetic as ar
    from circuits.zoo.recipes import reasoner

    model = load_model(write_tiny_model(tmp_path, "qwen2", word_tokenizer), device="cpu")
    _without_kv_cache(model)
    assert compat.ensure_kv_cache(model, recheck=True).startswith("unavailable")
    ps = build_task("colored_objects", model.tokenizer, n=3, seed=0)
    replay = BlockReplay(model, ps.corrupted, ps.positions["END"])
    entry = fastpaths.get(model, "prefix_skip")
    assert entry is not None and not entry.on and "KV cache unavailable" in entry.reason
    assert not replay.supports_skip(4)
    with pytest.raises(RuntimeError, match="KV cache"):
        reasoner.sample(compat.hf_model(model), model.tokenizer, [ar.sample_problem(random.Random(0))])
