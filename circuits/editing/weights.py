"""Each attention head's slice of a model's output projection, read and written in place.

The projection is the Hugging Face module inside the TransformerBridge (the bridge reads its
weights live, so an in-place change is what every engine then sees). Head h of layer L owns
the ``d_head`` input features ``h * d_head : (h + 1) * d_head`` of that projection: rows of a
GPT-2 ``Conv1D`` weight ``[in, out]``, columns of an ``nn.Linear`` weight ``[out, in]``. Per query
head also under grouped-query attention (the output projection is never grouped). ``d_head``
comes from the model's config, never from hidden size / heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuits import compat

_NAMES = ("o_proj", "c_proj", "out_proj", "dense")  # Llama/Qwen/Mistral, GPT-2, OPT/BART, GPT-NeoX/Phi


@dataclass(frozen=True)
class OutputProjection:
    """The output projection of one attention layer: its weight Parameter and whether head slices are
    its rows (GPT-2 Conv1D, weight [in, out]) or its columns (nn.Linear, weight [out, in])."""

    weight: torch.nn.Parameter
    rows: bool
    d_head: int
    n_heads: int
    name: str

    def head_slice(self, head: int) -> slice:
        """The input features of ``head``."""
        return slice(head * self.d_head, (head + 1) * self.d_head)


def d_head_of(model: Any) -> int:
    """The per-head width from the config (``cfg.d_head``; HF ``head_dim`` where present)."""
    hf_cfg = getattr(compat.hf_model(model), "config", None)
    explicit = getattr(hf_cfg, "head_dim", None)
    return int(explicit) if explicit else int(model.cfg.d_head)


def check_head(model: Any, layer: Any, head: Any) -> tuple[int, int]:
    """(layer, head) as ints, or a ValueError naming the bad index and the model's range."""
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    for what, v, n in (("layer", layer, n_layers), ("head", head, n_heads)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n:
            raise ValueError(f"{what} {v!r} does not exist: the model has {n} {what}s (0..{n - 1})")
    return layer, head


def output_projection(model: Any, layer: int) -> OutputProjection:
    """The output projection of attention ``layer`` (see the module docstring)."""
    check_head(model, layer, 0)
    attn = model.blocks[layer].attn
    hf_attn = getattr(attn, "_original_component", attn)
    for name in _NAMES:
        mod = getattr(hf_attn, name, None)
        if mod is None:
            continue
        mod = getattr(mod, "_original_component", mod)
        weight = getattr(mod, "weight", None)
        if isinstance(weight, torch.nn.Parameter) and weight.ndim == 2:
            d_head, n_heads = d_head_of(model), int(model.cfg.n_heads)
            rows = type(mod).__name__ == "Conv1D"
            width = weight.shape[0] if rows else weight.shape[1]
            if width != d_head * n_heads:
                raise ValueError(f"layer {layer}: output projection {name} reads {width} features, not n_heads x "
                                 f"d_head = {n_heads} x {d_head}")
            return OutputProjection(weight, rows, d_head, n_heads, name)
    raise ValueError(f"layer {layer}: no output projection among {_NAMES} in {type(hf_attn).__name__}")


def read_head(model: Any, layer: int, head: int) -> Float[Tensor, "d_head d_model"]:
    """A copy of W_O of (layer, head) in transformer-lens orientation [d_head, d_model]."""
    check_head(model, layer, head)
    p = output_projection(model, layer)
    w = p.weight.detach()
    return (w[p.head_slice(head)] if p.rows else w[:, p.head_slice(head)].T).clone()


@torch.no_grad()
def write_head(model: Any, layer: int, head: int, value: Float[Tensor, "d_head d_model"]) -> None:
    """Set W_O of (layer, head) (transformer-lens orientation [d_head, d_model]) in place, cast to the
    weight's dtype."""
    check_head(model, layer, head)
    p = output_projection(model, layer)
    if p.rows:
        target = p.weight[p.head_slice(head)]
    else:
        target = p.weight[:, p.head_slice(head)].T
    if tuple(value.shape) != tuple(target.shape):
        raise ValueError(f"W_O of a{layer}.h{head} is {tuple(target.shape)}, got a value of {tuple(value.shape)}")
    target.copy_(value.to(device=target.device, dtype=target.dtype))
