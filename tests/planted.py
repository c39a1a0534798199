"""A GPT-2 with hand-set weights whose circuit is known: a previous-token head
(a0.h0) and an induction/copy head (a1.h0) among six distractor heads.

Residual layout (d_model 80): token one-hot [0, 15), position one-hot [15, 31),
previous-token slot [31, 46), output slot [46, 61), junk [61, 78) and a large
constant pair (+C, -C) in [78, 80). The constant dominates LayerNorm's scale and
has zero mean, so every LayerNorm acts as (nearly) x - mean(x): the model is an
attention-only circuit we can read off.

- a0.h0 attends from p to p-1 (positions) and writes the previous token into the
  previous-token slot;
- a1.h0 attends from a token to the position whose previous token equals it
  (K-composition with a0.h0) and copies that position's token into the output slot;
- distractors attend uniformly and write token identities into junk dimensions no
  later component reads. MLPs are zero. The unembedding reads the output slot.

The task: [BOS, x1..x7, x1, x2, x3] -> x4 (x3 followed by x4 earlier). The
corruption replaces the first x3 so the induction head finds no match.
"""

from __future__ import annotations

import torch

V, P, D, H, DH = 15, 16, 80, 4, 20
TOK, POS, PREV, OUT, JUNK, CONST = 0, 15, 31, 46, 61, 78
C, BETA, GAMMA = 50.0, 60.0, 20.0


def planted_words() -> list[str]:
    return [f"w{i:02d}" for i in range(1, 13)]  # ids 3..14 in the word-level tokenizer


def write_planted_model(path) -> str:
    from transformers import GPT2Config, GPT2LMHeadModel

    from circuits.tokenization import word_level_tokenizer

    tok = word_level_tokenizer(planted_words())
    assert len(tok) == V
    cfg = GPT2Config(vocab_size=V, n_positions=P, n_embd=D, n_layer=2, n_head=H, n_inner=4 * D,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
                     tie_word_embeddings=False, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     layer_norm_epsilon=1e-12)
    m = GPT2LMHeadModel(cfg).eval()
    sigma = C * (2 / D) ** 0.5  # LayerNorm's scale, fixed by the constant pair
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        wte, wpe = m.transformer.wte.weight, m.transformer.wpe.weight
        for t in range(V):
            wte[t, TOK + t] = 1.0
            wte[t, CONST], wte[t, CONST + 1] = C, -C
        for p in range(P):
            wpe[p, POS + p] = 1.0
        for block in m.transformer.h:
            for ln in (block.ln_1, block.ln_2):
                ln.weight.fill_(sigma)
        m.transformer.ln_f.weight.fill_(sigma)

        def head_cols(h: int, which: int) -> slice:  # which: 0 q, 1 k, 2 v
            return slice(which * D + h * DH, which * D + (h + 1) * DH)

        a0, a1 = m.transformer.h[0].attn, m.transformer.h[1].attn
        # a0.h0: previous-token head (query position p matches key position p-1)
        q, k, v = (a0.c_attn.weight[:, head_cols(0, i)] for i in range(3))
        for p in range(P):
            q[POS + p, p] = BETA
            if p + 1 < P:
                k[POS + p, p + 1] = 1.0
        for t in range(V):
            v[TOK + t, t] = 1.0
            a0.c_proj.weight[0 * DH + t, PREV + t] = 1.0
        # a1.h0: induction head (query token t matches keys whose previous token is t), copies the key's token
        q, k, v = (a1.c_attn.weight[:, head_cols(0, i)] for i in range(3))
        for t in range(V):
            q[TOK + t, t] = BETA
            k[PREV + t, t] = 1.0
            v[TOK + t, t] = 1.0
            a1.c_proj.weight[0 * DH + t, OUT + t] = 1.0
        # distractors: uniform attention, token identity into junk dimensions
        for attn in (a0, a1):
            for h in range(1, H):
                v = attn.c_attn.weight[:, head_cols(h, 2)]
                for t in range(V):
                    v[TOK + t, t] = 1.0
                    attn.c_proj.weight[h * DH + t, JUNK + (t + h) % (CONST - JUNK)] = 1.0
        for t in range(V):
            m.lm_head.weight[t, OUT + t] = GAMMA
    m.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def planted_prompts(tokenizer, n: int = 12, seed: int = 0):
    """Induction prompts for the planted model (see the module docstring)."""
    from circuits.prompts import PromptSet

    g = torch.Generator().manual_seed(seed)
    ids = torch.tensor(tokenizer.convert_tokens_to_ids(planted_words()))
    clean, corrupted, ans, wrong = [], [], [], []
    for _ in range(n):
        perm = ids[torch.randperm(len(ids), generator=g)]
        xs, spare = perm[:7], perm[7]
        row = torch.cat([torch.tensor([tokenizer.bos_token_id]), xs, xs[:3]])
        bad = row.clone()
        bad[3] = spare  # the first x3 is gone: nothing to induct from
        clean.append(row), corrupted.append(bad), ans.append(xs[3]), wrong.append(xs[0])
    b = len(clean)
    clean, corrupted = torch.stack(clean), torch.stack(corrupted)
    L = clean.shape[1]
    return PromptSet(task="planted_induction", clean=clean, corrupted=corrupted, answers=torch.stack(ans),
                     wrong_answers=torch.stack(wrong), lengths=torch.full((b,), L),
                     positions={"PREV": torch.full((b,), 3), "SRC": torch.full((b,), 4), "END": torch.full((b,), L - 1)},
                     groups=torch.zeros(b, dtype=torch.long), pad_token_id=tokenizer.pad_token_id,
                     group_names=["planted"], provenance={"task": "planted_induction", "seed": seed})


# ----------------------------------------------------------------------------------------------------------
# The same circuit in a Qwen2 with grouped-query attention (4 query heads, 2 KV groups) and RoPE.
#
# Residual layout (d_model 64): token one-hot [0, 15), previous-token slot [15, 30), output slot [30, 45),
# junk [45, 62) and the constant pair (+C, -C) in [62, 64), which fixes RMSNorm's scale (norm weights undo
# it). No position embedding: the previous-token head gets its position from RoPE alone. Its query and key
# are constant (biases only) and RoPE rotates them by position, so its score depends on m - n only; the
# key is the query turned by one step of each of the three fastest RoPE frequencies, so the score peaks
# at n = m - 1. Content matching (the induction head) uses the slowest RoPE dimensions (rotated by at most
# 0.2 rad over the 12 positions), where RoPE is nearly the identity.
#
# - a0.h0 (group 0): previous-token head; writes the previous token into the previous-token slot;
# - a1.h2 (group 1): induction head (query: the token; key: the previous-token slot); copies into the output;
# - a0.h1 shares a0.h0's keys and values (same group) with a zero query: uniform, writes junk; a0.h2, a0.h3,
#   a1.h0, a1.h1, a1.h3: uniform, token identity into junk. MLPs are zero.
# ----------------------------------------------------------------------------------------------------------
GQA_D, GQA_DH, GQA_H, GQA_KV = 64, 40, 4, 2
G_TOK, G_PREV, G_OUT, G_JUNK, G_CONST = 0, 15, 30, 45, 62
ROPE_THETA = 10000.0
A_PREV, B_MATCH = 16.0, 12.0
# RoPE pairs dimension i with i + DH/2 at frequency theta^(-2i/DH): pairs 0-2 turn fastest, 10-19 slowest
FAST_PAIRS, SLOW_DIMS = (0, 1, 2), [*range(10, 20), *range(30, 35)]


def write_planted_gqa_model(path) -> str:
    import math

    from transformers import Qwen2Config, Qwen2ForCausalLM

    from circuits.tokenization import word_level_tokenizer

    tok = word_level_tokenizer(planted_words())
    cfg = Qwen2Config(vocab_size=V, hidden_size=GQA_D, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=GQA_H, num_key_value_heads=GQA_KV, head_dim=GQA_DH, max_position_embeddings=P,
                      rope_theta=ROPE_THETA, rms_norm_eps=1e-12, tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    m = Qwen2ForCausalLM(cfg).eval()
    sigma = C * (2 / GQA_D) ** 0.5  # RMSNorm's scale, fixed by the constant pair
    half = GQA_DH // 2
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        emb = m.model.embed_tokens.weight
        for t in range(V):
            emb[t, G_TOK + t] = 1.0
            emb[t, G_CONST], emb[t, G_CONST + 1] = C, -C
        for layer in m.model.layers:
            layer.input_layernorm.weight.fill_(sigma)
            layer.post_attention_layernorm.weight.fill_(sigma)
        m.model.norm.weight.fill_(sigma)

        def rows(h: int) -> slice:  # a head's (or a KV group's) rows in q_proj / k_proj / v_proj
            return slice(h * GQA_DH, (h + 1) * GQA_DH)

        def junk(o_proj, h: int) -> None:  # a distractor writes its values' token identity into junk
            for t in range(V):
                o_proj.weight[G_JUNK + (t + h) % (G_CONST - G_JUNK), h * GQA_DH + t] = 1.0

        a0, a1 = m.model.layers[0].self_attn, m.model.layers[1].self_attn
        # a0.h0: previous-token head through RoPE. The query/key biases are constant; for each fast pair
        # (i, i + half) the key is the query turned by +f_i, so q(m) . k(n) peaks where n = m - 1.
        for i in FAST_PAIRS:
            f = ROPE_THETA ** (-2 * i / GQA_DH)
            a0.q_proj.bias[0 * GQA_DH + i] = A_PREV
            a0.k_proj.bias[0 * GQA_DH + i] = A_PREV * math.cos(f)
            a0.k_proj.bias[0 * GQA_DH + i + half] = A_PREV * math.sin(f)
        for g in range(GQA_KV):  # both groups' values: the token identity
            for t in range(V):
                a0.v_proj.weight[g * GQA_DH + t, G_TOK + t] = 1.0
                a1.v_proj.weight[g * GQA_DH + t, G_TOK + t] = 1.0
        for t in range(V):
            a0.o_proj.weight[G_PREV + t, 0 * GQA_DH + t] = 1.0
        for h in (1, 2, 3):
            junk(a0.o_proj, h)
        # a1.h2 (group 1): induction. Query: the token; key: the previous-token slot; on slow RoPE dims.
        for t, d in zip(range(V), SLOW_DIMS):
            a1.q_proj.weight[2 * GQA_DH + d, G_TOK + t] = B_MATCH
            a1.k_proj.weight[1 * GQA_DH + d, G_PREV + t] = B_MATCH
            a1.o_proj.weight[G_OUT + t, 2 * GQA_DH + t] = 1.0
        for h in (0, 1, 3):
            junk(a1.o_proj, h)
        for t in range(V):
            m.lm_head.weight[t, G_OUT + t] = GAMMA
    m.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
