"""Weight editors and interventions: the ThinkEdit edit against a slow reference, safety (untouched
parameters, bit-exact reverts, saving), GQA and odd head widths, directions, steering, head scores,
attention overrides and head scaling."""

from __future__ import annotations

import pytest
import torch

from circuits.editing import attention, directions, edit, heads, steering, weights
from circuits.engines.sites import hook_at
from tests.conftest import write_tiny_model

ARCHS = ["gpt2", "llama", "qwen2"]


def tokens_for(model, b: int = 3, p: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, int(model.cfg.d_vocab), (b, p), generator=g)


def unit(d: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, generator=g)


def slow_projection(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """W (I - u u^T), element by element, in float64."""
    w, u = w.double(), u.double() / u.double().norm()
    out = torch.empty_like(w)
    for i in range(w.shape[0]):
        dot = sum(float(w[i, k]) * float(u[k]) for k in range(w.shape[1]))
        for j in range(w.shape[1]):
            out[i, j] = w[i, j] - dot * u[j]
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_the_edit_matches_the_slow_reference_and_touches_nothing_else(loaded_models, arch):
    model = loaded_models(arch)
    u = unit(int(model.cfg.d_model))
    before = {k: v.detach().clone() for k, v in model.original_model.named_parameters()}
    w0 = weights.read_head(model, 1, 2)
    assert torch.equal(w0, model.blocks[1].attn.W_O[2].detach())  # our slice is transformer-lens' W_O[h]
    with edit.edited(model, [(1, 2)], u) as e:
        w1 = weights.read_head(model, 1, 2)
        assert torch.allclose(w1.double(), slow_projection(w0, u), atol=1e-6)
        assert float((w1 @ (u / u.norm())).abs().max()) < 1e-5  # the head cannot write along u any more
        after = dict(model.original_model.named_parameters())
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        assert len(changed) == 1 and after[changed[0]] is weights.output_projection(model, 1).weight
        assert e.params_changed == int((w1 != w0).sum()) and e.heads == ["a1.h2"]
        assert e.percent == pytest.approx(100 * e.params_changed / sum(v.numel() for v in before.values()), rel=1e-2)
        d_head = int(model.cfg.d_head)
        diff = (after[changed[0]] != before[changed[0]]).nonzero()
        cols = diff[:, 0] if arch == "gpt2" else diff[:, 1]  # Conv1D rows / Linear columns
        assert set(cols.tolist()) <= set(range(2 * d_head, 3 * d_head))
    assert all(torch.equal(before[k], v) for k, v in model.original_model.named_parameters())


def test_the_revert_is_bit_exact_after_an_exception(loaded_models):
    model = loaded_models("qwen2")
    before = {k: v.detach().clone() for k, v in model.original_model.named_parameters()}
    x = tokens_for(model)
    base = model(x)
    with pytest.raises(RuntimeError, match="boom"):
        with edit.edited(model, [(0, 1), (1, 3)], {0: unit(32, 2), 1: unit(32, 3)}):
            assert not torch.equal(model(x), base)
            raise RuntimeError("boom")
    assert all(torch.equal(before[k], v) for k, v in model.original_model.named_parameters())
    assert torch.equal(model(x), base)


def test_an_edited_copy_leaves_the_original_alone(loaded_models):
    model = loaded_models("llama")
    x = tokens_for(model)
    base = model(x)
    twin, e = edit.edited_copy(model, [(1, 0)], unit(32))
    assert torch.equal(model(x), base) and not torch.equal(twin(x), base)
    assert e.params_changed > 0


def test_a_head_dim_that_is_not_hidden_over_heads(tmp_path, word_tokenizer):
    """Qwen2 with head_dim 16 while hidden / heads = 8: slices follow the config's head_dim."""
    import transformers as tf

    from circuits.models import load_model

    cfg = tf.Qwen2Config(vocab_size=len(word_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                         bos_token_id=word_tokenizer.bos_token_id, eos_token_id=word_tokenizer.bos_token_id,
                         pad_token_id=word_tokenizer.pad_token_id)
    torch.manual_seed(0)
    tf.Qwen2ForCausalLM(cfg).save_pretrained(tmp_path / "m")
    word_tokenizer.save_pretrained(tmp_path / "m")
    model = load_model(str(tmp_path / "m"), device="cpu")
    assert weights.d_head_of(model) == 16
    w0 = weights.read_head(model, 0, 3)
    assert w0.shape == (16, 32)
    u = unit(32)
    with edit.edited(model, [(0, 3)], u):
        assert torch.allclose(weights.read_head(model, 0, 3).double(), slow_projection(w0, u), atol=1e-6)


def test_save_and_load_an_edited_checkpoint(loaded_models, tmp_path):
    import json

    from transformers import AutoModelForCausalLM

    from circuits.models import load_model

    model = loaded_models("qwen2")
    x = tokens_for(model)
    with edit.edited(model, [(1, 1)], unit(32)) as e:
        want = model(x)
        path = edit.save_edited(model, tmp_path / "edited", e, "tiny-qwen2")
    assert json.loads((tmp_path / "edited" / "edit.json").read_text())["heads"] == ["a1.h1"]
    assert "a1.h1" in (tmp_path / "edited" / "README.md").read_text()
    assert torch.allclose(load_model(path, device="cpu")(x), want, atol=1e-5)
    hf = AutoModelForCausalLM.from_pretrained(path)
    assert torch.allclose(hf(x).logits, want, atol=1e-5)
    with pytest.raises(FileExistsError):
        edit.save_edited(model, path, e, "tiny-qwen2")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".edited-")]


@pytest.mark.parametrize("heads_, units, message", [
    ([(0, 9)], None, "head 9 does not exist"),
    ([(5, 0)], None, "layer 5 does not exist"),
    ([], None, "no head"),
    ([(0, 1)], torch.zeros(32), "zero"),
    ([(0, 1)], torch.ones(31), "shape"),
    ([(0, 1)], {1: torch.ones(32)}, "no direction given for layer 0"),
])
def test_bad_edits_are_refused_before_anything_changes(loaded_models, heads_, units, message):
    model = loaded_models("gpt2")
    before = {k: v.detach().clone() for k, v in model.original_model.named_parameters()}
    with pytest.raises(ValueError, match=message):
        edit.apply_edit(model, heads_, unit(32) if units is None else units)
    assert all(torch.equal(before[k], v) for k, v in model.original_model.named_parameters())


def test_the_difference_of_means_is_the_mean_of_the_cached_activations(loaded_models):
    model = loaded_models("gpt2")
    a, b = tokens_for(model, seed=1), tokens_for(model, seed=2)
    ma = torch.zeros_like(a, dtype=torch.bool)
    ma[:, -2:] = True
    mb = torch.ones_like(b, dtype=torch.bool)
    d = directions.mean_difference(model, a, ma, b, mb, site="resid_post", layers=[0, 1])
    _, cache_a = model.run_with_cache(a)
    _, cache_b = model.run_with_cache(b)
    for layer in (0, 1):
        name = hook_at("resid_post", layer)
        ref = cache_a[name][:, -2:].reshape(-1, 32).mean(0) - cache_b[name].reshape(-1, 32).mean(0)
        assert torch.allclose(d.vector(layer), ref, atol=1e-5)
    assert d.n_a == 6 and d.n_b == 18
    assert directions.cosine(d, d) == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match="selects no position"):
        directions.mean_difference(model, a, ma & False, b, mb)


def test_steering_adds_alpha_v_and_leaves_when_done(loaded_models):
    model = loaded_models("llama")
    x = tokens_for(model)
    v = unit(32)
    _, base = model.run_with_cache(x)
    with steering.steer(model, {0: v}, 0.5):
        _, cache = model.run_with_cache(x)
    assert torch.allclose(cache["blocks.0.hook_resid_post"], base["blocks.0.hook_resid_post"] + 0.5 * v, atol=1e-5)
    assert torch.equal(model.run_with_cache(x)[1]["blocks.1.hook_resid_post"], base["blocks.1.hook_resid_post"])
    with pytest.raises(ValueError, match="residual stream"):
        with steering.steer(model, {0: torch.ones(7)}, 1.0):
            pass


def test_head_scores_are_each_heads_write_along_the_unit(loaded_models):
    model = loaded_models("qwen2")
    x = tokens_for(model)
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[:, -1] = True
    u = unit(32)
    s = heads.head_direction_scores(model, x, mask, {1: u})
    assert torch.isnan(s[0]).all()
    _, cache = model.run_with_cache(x)
    z = cache["blocks.1.attn.hook_z"][:, -1]  # [b, heads, d_head]
    for h in range(4):
        ref = (z[:, h] @ model.blocks[1].attn.W_O[h].detach() @ (u / u.norm())).mean()
        assert float(s[1, h]) == pytest.approx(float(ref), abs=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_attention_override_is_exactly_the_pattern_the_head_uses(loaded_models, arch):
    model = loaded_models(arch)
    x = tokens_for(model, b=3, p=7)
    query, key = torch.tensor([6, 5, 6]), torch.tensor([1, 0, 3])
    _, base = model.run_with_cache(x)
    with attention.override_attention(model, [(1, 2)], query, key):
        _, cache = model.run_with_cache(x)
    pat = cache["blocks.1.attn.hook_pattern"]
    rows = torch.arange(3)
    want = torch.zeros(3, 7)
    want[rows, key] = 1.0
    assert torch.equal(pat[rows, 2, query], want)
    v = cache["blocks.1.attn.hook_v"]  # [b, p, kv heads, d_head]
    group = 2 // (int(model.cfg.n_heads) // v.shape[2])
    assert torch.allclose(cache["blocks.1.attn.hook_z"][rows, query, 2], v[rows, key, group], atol=1e-6)
    others = [h for h in range(4) if h != 2]
    assert torch.equal(pat[:, others], base["blocks.1.attn.hook_pattern"][:, others])
    assert torch.equal(cache["blocks.0.hook_resid_post"], base["blocks.0.hook_resid_post"])
    with pytest.raises(ValueError, match="causal"):
        with attention.override_attention(model, [(1, 2)], query, query + 1):
            pass


def test_scaling_and_zero_ablation_of_heads(loaded_models):
    model = loaded_models("gpt2")
    x = tokens_for(model)
    _, base = model.run_with_cache(x)
    with attention.scale_heads(model, [(0, 1)], 0.0):
        _, zero = model.run_with_cache(x)
    with attention.scale_heads(model, [(0, 1)], 1.3):
        _, up = model.run_with_cache(x)
    assert torch.equal(zero["blocks.0.attn.hook_z"][:, :, 1], torch.zeros_like(base["blocks.0.attn.hook_z"][:, :, 1]))
    assert torch.allclose(up["blocks.0.attn.hook_z"][:, :, 1], 1.3 * base["blocks.0.attn.hook_z"][:, :, 1])
    assert torch.equal(zero["blocks.0.attn.hook_z"][:, :, 0], base["blocks.0.attn.hook_z"][:, :, 0])


def test_write_tiny_model_helper_is_used(tmp_path, word_tokenizer):
    """The tiny checkpoints the suite writes load through the editors' projection lookup for every arch."""
    from circuits.models import load_model

    for arch in ("gpt2", "llama", "qwen2", "neox"):
        model = load_model(write_tiny_model(tmp_path / arch, arch, word_tokenizer), device="cpu")
        p = weights.output_projection(model, 0)
        assert p.d_head * p.n_heads == (p.weight.shape[0] if p.rows else p.weight.shape[1])


def test_attention_override_can_spread_uniformly_over_several_keys(loaded_models):
    model = loaded_models("llama")
    x = tokens_for(model, b=2, p=7)
    query = torch.tensor([6, 6])
    keys = torch.tensor([[1, 3, -1], [0, 2, 4]])
    with attention.override_attention(model, [(0, 1)], query, keys):
        _, cache = model.run_with_cache(x)
    row = cache["blocks.0.attn.hook_pattern"][torch.arange(2), 1, query]
    want = torch.zeros(2, 7)
    want[0, [1, 3]] = 0.5
    want[1, [0, 2, 4]] = 1 / 3
    assert torch.allclose(row, want)
    with pytest.raises(ValueError, match="no key position"):
        with attention.override_attention(model, [(0, 1)], query, torch.tensor([[1, -1], [-1, -1]])):
            pass
