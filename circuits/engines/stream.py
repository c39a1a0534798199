"""The residual stream computed by hand: what writers put in and what readers take out.

Writers (the edge graph's, in its order): the embeddings (``input``, read at
``resid_pre`` of layer 0), each head's output through its W_O, each MLP's output.
Readers' inputs: a head's q, k or v is its layer's input norm (``ln1``) of the
residual followed by W_Q, W_K or W_V (plus bias). Edge attribution, edge-level
evaluation and path patching's shortcuts build on these; where a model computes
q/k/v differently (QK-norm, rotary before the hooks), :func:`check_receiver_inputs`
says so and the callers fall back or refuse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuits.engines.forward import CHECK_ERRORS, failure_reason
from circuits.engines.sites import hook_at


def writer_hooks(n_layers: int) -> list[str]:
    """Hook names whose activations give every writer's output: resid_pre of layer 0, then z and
    mlp_out of each layer."""
    return [hook_at("resid_pre", 0)] + [n for layer in range(n_layers)
                                        for n in (hook_at("z", layer), hook_at("mlp_out", layer))]


def writer_outputs(model: Any, store: dict[str, Tensor]) -> Float[Tensor, "batch pos writer d_model"]:
    """[b, p, W, d] what each writer adds to the residual stream (input, heads through W_O, MLPs),
    from a run's stored activations (:func:`writer_hooks`)."""
    n_layers = int(model.cfg.n_layers)
    parts = [store[hook_at("resid_pre", 0)][:, :, None]]
    for layer in range(n_layers):
        z = store[hook_at("z", layer)]
        parts.append(torch.einsum("bphe,hed->bphd", z, model.blocks[layer].attn.W_O.to(z.dtype)))
        parts.append(store[hook_at("mlp_out", layer)][:, :, None])
    return torch.cat(parts, 2)


def receiver_input(model: Any, layer: int, comp: str, x: Float[Tensor, "... pos d_model"],
                   heads: Sequence[int] | None = None) -> Float[Tensor, "... pos head d_head"]:
    """q/k/v [..., P, heads, d_head] that ``layer`` computes from the residual ``x`` [..., P, d_model].

    ``heads``: only these (query or KV-group) heads, in this order; default all.
    """
    attn = model.blocks[layer].attn
    normed = model.blocks[layer].ln1(x)
    w = {"q": attn.W_Q, "k": attn.W_K, "v": attn.W_V}[comp]
    bias = getattr(attn, {"q": "b_Q", "k": "b_K", "v": "b_V"}[comp], None)
    if heads is not None:
        w = w[list(heads)]
        bias = None if bias is None else bias[list(heads)]
    out = torch.einsum("bpd,hde->bphe", normed, w)
    return out if bias is None else out + bias


@torch.no_grad()
def check_receiver_inputs(model: Any, store: dict[str, Tensor], receivers: Sequence[tuple[int, int, str]]
                          ) -> tuple[bool, str]:
    """(whether :func:`receiver_input` reproduces the hooked q/k/v of ``receivers`` (layer, head, comp)
    on a stored run, why). ``store`` holds resid_pre and q/k/v of their layers."""
    try:
        for layer in sorted({layer for layer, _, _ in receivers}):
            x = store[hook_at("resid_pre", layer)]
            for comp in sorted({c for ly, _, c in receivers if ly == layer}):
                want = store[hook_at(comp, layer)]
                got = receiver_input(model, layer, comp, x)
                if got.shape != want.shape:
                    return False, (f"ln1 + W_{comp.upper()} gives shape {tuple(got.shape)} at layer {layer}, "
                                   f"hook_{comp} has {tuple(want.shape)}")
                if not torch.allclose(got, want, atol=1e-4, rtol=1e-4):
                    diff = float((got - want).abs().max())
                    return False, (f"ln1 + W_{comp.upper()} does not reproduce layer {layer}'s hook_{comp} "
                                   f"(max difference {diff:.1e})")
        return True, "ln1 + W_Q/K/V reproduce the receivers' inputs"
    except CHECK_ERRORS as e:
        return False, f"the attention weights cannot be applied by hand ({failure_reason(e)})"
