"""Shared fixtures: tokenizers and tiny random HF models of several architectures.

Each model is written by the tests to a temp dir as an ordinary HF checkpoint
and loaded back through ``circuits.models.load_model`` - the real loading path,
offline.
"""

from __future__ import annotations

import pytest
import torch

ARCHS = ["gpt2", "llama", "qwen2", "neox"]
TOKENIZERS = ["word", "bpe"]


def train_bpe_tokenizer(vocab_size: int = 1200):
    """A GPT-2-like byte-level BPE trained on task text (digits cut into pairs)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from circuits.tasks import TASKS

    texts = []
    for name, task in TASKS.items():
        for prompt, answer, _ in task.texts(300, seed=1):
            texts.append(prompt + ("" if name == "greater_than" else " ") + answer)
    texts += [p + " " + a for p, a, _ in TASKS["recall"].texts(100, seed=1, facts="world")]
    texts += [f"from the year 17{y:02d} to" for y in range(100)] * 20
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r" ?\d{1,2}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    fast.name_or_path = "test-bpe"
    return fast


@pytest.fixture(scope="session")
def word_tokenizer():
    from circuits.tasks import all_task_words
    from circuits.tokenization import word_level_tokenizer

    tok = word_level_tokenizer(all_task_words())
    tok.name_or_path = "test-word-level"
    return tok


@pytest.fixture(scope="session")
def bpe_tokenizer():
    return train_bpe_tokenizer()


@pytest.fixture(scope="session")
def tokenizers(word_tokenizer, bpe_tokenizer):
    return {"word": word_tokenizer, "bpe": bpe_tokenizer}


def tiny_config(arch: str, vocab_size: int, bos: int, pad: int):
    """A 2-layer, d_model 32 config; Llama and Qwen2 use grouped-query attention (4 q / 2 kv heads)."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, bos_token_id=bos, eos_token_id=bos, pad_token_id=pad)
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, **common)
    if arch == "llama":
        return tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, **common)
    if arch == "qwen2":
        return tf.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, **common)
    if arch == "neox":
        return tf.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, max_position_embeddings=128, rotary_pct=0.5, **common)
    raise ValueError(arch)


def write_tiny_model(path, arch: str, tokenizer, seed: int = 0, initializer_range: float | None = None) -> str:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(arch, len(tokenizer), tokenizer.bos_token_id, tokenizer.pad_token_id or tokenizer.bos_token_id)
    if initializer_range is not None:
        cfg.initializer_range = initializer_range
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory, tokenizers):
    """{(arch, tokenizer_kind): checkpoint dir} for every architecture and tokenizer."""
    out = {}
    for arch in ARCHS:
        for kind, tok in tokenizers.items():
            out[(arch, kind)] = write_tiny_model(tmp_path_factory.mktemp(f"{arch}-{kind}"), arch, tok)
    return out


@pytest.fixture(scope="session")
def loaded_models(model_dirs):
    """Lazily loaded bridges, cached per (arch, tokenizer)."""
    from circuits.models import load_model

    cache = {}

    def get(arch: str, kind: str = "word"):
        if (arch, kind) not in cache:
            cache[(arch, kind)] = load_model(model_dirs[(arch, kind)], device="cpu")
        return cache[(arch, kind)]

    return get


ENGINE_ARCHS = ["gpt2", "llama", "qwen2"]


@pytest.fixture(scope="session")
def engine_models(tmp_path_factory, word_tokenizer):
    """Tiny models with large random weights (so interventions move the metric), word tokenizer."""
    from circuits.models import load_model

    cache = {}

    def get(arch: str):
        if arch not in cache:
            path = write_tiny_model(tmp_path_factory.mktemp(f"engine-{arch}"), arch, word_tokenizer, seed=3,
                                    initializer_range=0.3)
            cache[arch] = load_model(path, device="cpu")
        return cache[arch]

    return get
