"""load_model: four architectures x two tokenizers, real loading path, clear errors."""

from __future__ import annotations

import pytest
import torch

from circuits import metrics
from circuits.models import ModelLoadError, load_model, model_info, resolve_spec
from circuits.tasks import build_task
from tests.conftest import ARCHS, TOKENIZERS


@pytest.mark.parametrize("kind", TOKENIZERS)
@pytest.mark.parametrize("arch", ARCHS)
def test_loaded_bridge_matches_hf_logits(arch, kind, model_dirs, loaded_models):
    from transformers import AutoModelForCausalLM

    model = loaded_models(arch, kind)
    assert not model.training
    ps = build_task("ioi", model.tokenizer, n=6, seed=0)
    hf = AutoModelForCausalLM.from_pretrained(model_dirs[(arch, kind)], attn_implementation="eager").eval()
    with torch.no_grad():
        ours = model(ps.clean)
        ref = hf(ps.clean).logits
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", TOKENIZERS)
@pytest.mark.parametrize("arch", ARCHS)
def test_right_padding_is_exact(arch, kind, loaded_models):
    """END logits of a padded batch equal those of each prompt run alone."""
    model = loaded_models(arch, kind)
    ps = build_task("mental_math", model.tokenizer, n=8, seed=1)
    assert len(set(ps.lengths.tolist())) > 1
    with torch.no_grad():
        batched = metrics.end_logits(model(ps.clean), ps)
        alone = torch.stack([model(ps.clean[i : i + 1, : int(n)])[0, -1] for i, n in enumerate(ps.lengths)])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_model_info_and_hooks(arch, loaded_models):
    model = loaded_models(arch)
    info = model_info(model)
    assert info["numerics"] == "raw-hf" and info["n_layers"] == 2 and info["n_heads"] == 4
    assert info["n_kv_heads"] == (2 if arch in ("llama", "qwen2") else 4)
    ps = build_task("induction", model.tokenizer, n=2, seed=0)
    _, cache = model.run_with_cache(ps.clean, names_filter=lambda n: n.endswith(("hook_z", "hook_pattern")))
    z = cache["blocks.0.attn.hook_z"]
    assert z.shape == (2, ps.n_pos, 4, info["d_head"])
    pat = cache["blocks.1.attn.hook_pattern"]
    torch.testing.assert_close(pat.sum(-1), torch.ones_like(pat.sum(-1)))


def test_dtype_and_device_arguments(model_dirs):
    m = load_model(model_dirs[("gpt2", "word")], device="cpu", dtype="bfloat16")
    assert model_info(m)["dtype"] == "bfloat16" and model_info(m)["device"] == "cpu"
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model(model_dirs[("gpt2", "word")], dtype="float7")


def test_unknown_zoo_name_lists_the_zoo():
    from circuits.zoo import list_zoo

    with pytest.raises(KeyError) as e:
        load_model("zoo:no-such-organism")
    msg = str(e.value)
    assert "no-such-organism" in msg and "available zoo models" in msg
    for name in list_zoo():
        assert f"zoo:{name}" in msg


def test_directory_without_config_is_a_clear_error(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no such model directory"):
        load_model(str(tmp_path / "absent"))


def test_hub_id_offline_says_the_hub_needs_a_network(monkeypatch):
    import circuits.models as cm

    monkeypatch.setattr(cm, "_cached_snapshot", lambda *a: None)
    monkeypatch.setattr(cm, "hub_reachable", lambda *a, **k: False)
    with pytest.raises(ModelLoadError) as e:
        load_model("some-org/some-model")
    msg = str(e.value)
    assert "network" in msg and "local directory" in msg and "zoo:" in msg


def test_hub_reachable_honours_offline_env(monkeypatch):
    from circuits.models import hub_reachable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_reachable() is False


def test_resolve_spec_kinds(model_dirs):
    assert resolve_spec(model_dirs[("gpt2", "word")])[0] == "local"
    assert resolve_spec("gpt2") == ("hub", "gpt2", None)
    assert resolve_spec("Qwen/Qwen2.5-0.5B@main") == ("hub", "Qwen/Qwen2.5-0.5B", "main")
    with pytest.raises(ModelLoadError):
        resolve_spec("")
