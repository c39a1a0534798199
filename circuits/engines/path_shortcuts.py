"""Path patching's exact shortcuts for frozen MLPs (direct paths), behind ``path_patching``.

With every MLP frozen, a sender's effect on the receivers is linear up to them:
the receivers' inputs are the base residual plus the sender's change through W_O,
pushed through ``ln1`` and W_Q/W_K/W_V, so pass C needs no forward at all
(fast path ``path_direct_shortcut``). When every receiver sits in one layer, only
the receiver heads of that layer are recomputed by hand and the rest of the
layer is shifted by their change (fast path ``path_one_layer_receivers``; checked
once per call against the generic pass, not used with rotary embeddings or
parallel attention/MLP blocks).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from tqdm.auto import tqdm

from circuits.engines import fastpaths, forward
from circuits.engines.replay import BlockReplay
from circuits.engines.sites import hook_at
from circuits.engines.stream import receiver_input
from circuits.names import Node


class DirectPaths:
    """END logits of pass D for every sender chunk, computed from sender deltas (no pass C).

    ``one_layer`` says whether the one-layer shortcut is (still) in use; the first chunk
    checks it against the generic pass D and turns it off on a mismatch.
    """

    def __init__(self, model: Any, replay: BlockReplay, base_store: dict, src_store: dict, base_tok: torch.Tensor,
                 end: torch.Tensor, heads_recv: list, group: int, s_pos, r_pos, one_layer: bool):
        self.model, self.replay, self.base_store, self.src_store = model, replay, base_store, src_store
        self.base_tok, self.end, self.heads_recv, self.group = base_tok, end, heads_recv, group
        self.s_pos, self.r_pos, self.one_layer = s_pos, r_pos, one_layer
        self._checked = False

    def logits(self, chunks: list[list[Node]], progress: bool) -> Iterator[tuple[list[Node], torch.Tensor]]:
        """(senders, END logits [n, b, vocab]) chunk by chunk."""
        b = self.end.shape[0]
        first_recv = min((layer for layer, _, _ in self.heads_recv), default=None)
        for chunk in tqdm(chunks, desc="path patching (direct)", disable=not progress, leave=False):
            deltas = sender_deltas(self.model, chunk, self.base_store, self.src_store, self.s_pos)  # [n, b, P, d]
            n = len(chunk)
            if not self.heads_recv:  # the logits receiver
                final = forward.final_residual(self.model, self.base_tok)
                rows = torch.arange(b, device=final.device)
                logits = forward.unembed(self.model, final[rows, self.end][None] + deltas[:, rows, self.end])
                yield chunk, logits
                continue
            inputs = direct_receiver_inputs(self.model, chunk, deltas, self.base_store, self.heads_recv,
                                            self.group, self.end)
            logits = None
            if self.one_layer:
                logits, self.one_layer = one_layer_checked(self.model, self.replay, self.base_store, inputs, n,
                                                           self.group, self.r_pos, self.end, self._checked)
                self._checked = True
            if logits is None:
                logits = self.replay.end_logits_from(first_recv, n, direct_receiver_hooks(inputs, n, self.r_pos))
            yield chunk, logits.reshape(n, b, -1)


def sender_deltas(model: Any, chunk: list, base_store: dict, src_store: dict, s_pos) -> torch.Tensor:
    """[n, b, P, d_model]: each sender's source-minus-base write into the residual stream."""
    out = []
    for s in chunk:
        name = hook_at("z", s.layer)
        dz = src_store[name][:, :, s.head] - base_store[name][:, :, s.head]
        if s_pos is not None:
            keep = torch.zeros(dz.shape[:2], dtype=torch.bool, device=dz.device)
            rows = torch.nonzero(s_pos >= 0).flatten()
            keep[rows, s_pos[rows]] = True
            dz = dz * keep[..., None]
        out.append(dz @ model.blocks[s.layer].attn.W_O[s.head])
    return torch.stack(out)


def direct_receiver_inputs(model: Any, chunk: list, deltas: torch.Tensor, base_store: dict,
                            heads_recv: list, group: int, end: torch.Tensor) -> list[tuple[int, str, list[int], torch.Tensor]]:
    """(layer, comp, heads, new [n*b, P, len(heads), d_head]): each receiver's q/k/v computed from
    the base residual plus the sender's delta (senders at or after the receiver's layer add nothing).

    Queries of the last layer matter at END only: they are computed there and keep their
    base value elsewhere.
    """
    n, b = deltas.shape[:2]
    out = []
    rows = torch.arange(b, device=deltas.device)
    for layer in sorted({layer for layer, _, _ in heads_recv}):
        gate = torch.tensor([s.layer < layer for s in chunk], dtype=deltas.dtype, device=deltas.device)
        resid = base_store[hook_at("resid_pre", layer)]
        for comp in sorted({c for ly, _, c in heads_recv if ly == layer}):
            idx = sorted({h if comp == "q" else h // group for ly, h, c in heads_recv if ly == layer and c == comp})
            if comp == "q" and layer == len(model.blocks) - 1:
                x = resid[rows, end][None] + deltas[:, rows, end] * gate[:, None, None]  # [n, b, d]
                new = forward.tile(base_store[hook_at("q", layer)][:, :, idx], n).clone()
                at_end = receiver_input(model, layer, comp, x.reshape(n * b, 1, -1), idx)[:, 0]
                new[torch.arange(n * b, device=new.device), forward.tile(end, n).to(new.device)] = at_end.to(new.dtype)
            else:
                x = (resid[None] + deltas * gate[:, None, None, None]).reshape(n * b, *resid.shape[1:])
                new = receiver_input(model, layer, comp, x, idx)
            out.append((layer, comp, idx, new))
    return out


def direct_receiver_hooks(inputs: list, n: int, r_pos) -> list:
    """Pass-D hooks giving each receiver its input from ``_direct_receiver_inputs``."""
    hooks = []
    for layer, comp, idx, new in inputs:
        def put(act, hook, new=new, idx=idx):
            a = act.clone()
            if r_pos is None:
                a[:, :, idx] = new.to(a.dtype)
            else:
                p = forward.tile(r_pos, n)
                rows = torch.nonzero(p >= 0).flatten()
                for j, h in enumerate(idx):
                    a[rows, p[rows], h] = new[rows, p[rows], j].to(a.dtype)
            return a
        hooks.append((hook_at(comp, layer), put))
    return hooks


def one_layer_checked(model: Any, replay: BlockReplay, base_store: dict, inputs: list, n: int,
                       group: int, r_pos, end: torch.Tensor, checked: bool) -> tuple[torch.Tensor | None, bool]:
    """(``_one_layer_logits`` or None, whether to keep using it). The first call checks the
    shortcut against the generic pass D on up to two senders; a mismatch (an attention this
    hand computation does not cover: rotary, ALiBi, soft-capping, parallel MLP...) turns it off."""
    name = "path_one_layer_receivers"
    try:
        logits = one_layer_logits(model, replay, base_store, inputs, n, group, r_pos, end)
    except forward.CHECK_ERRORS as e:
        fastpaths.record(model, name, False, f"the receiver layer cannot be computed by hand "
                                             f"({type(e).__name__}: {e})")
        return None, False
    if checked:
        return logits, True
    b = end.shape[0]
    k = min(2, n)
    few = [(ly, c, idx, new[:k * b]) for ly, c, idx, new in inputs]
    ref = replay.end_logits_from(inputs[0][0], k, direct_receiver_hooks(few, k, r_pos))
    diff = float((logits[:k * b] - ref).abs().max())
    ok = bool(torch.allclose(logits[:k * b], ref, atol=1e-4, rtol=1e-4))
    fastpaths.record(model, name, ok, f"hand-computed receiver layer {'equals' if ok else 'differs from'} "
                                      f"the generic pass (max difference {diff:.1e})")
    return (logits, True) if ok else (None, False)


def one_layer_store_names(layer: int) -> list[str]:
    """Base activations ``_one_layer_logits`` reads."""
    return [hook_at(c, layer) for c in "qkvz"] + [hook_at("resid_mid", layer)]


def one_layer_logits(model: Any, replay: BlockReplay, base_store: dict, inputs: list, n: int,
                      group: int, r_pos, end: torch.Tensor) -> torch.Tensor:
    """END logits [n*b, vocab] of pass D when every receiver sits in one layer, without running it.

    Only the receiver heads of that layer see new inputs, so only their outputs are
    recomputed (by hand: softmax(q k^T / sqrt(d_head)) v, causal), and the layer's
    attention output moves by their change times W_O. The layer's MLP runs on the new
    residual; if it is the last layer, at END rows only, else the later blocks are
    replayed from it. The caller checks the result against the generic pass once.
    """
    layer = inputs[0][0]
    heads = sorted({h for ly, comp, idx, _ in inputs for hk in idx
                    for h in ([hk] if comp == "q" else range(hk * group, (hk + 1) * group))})
    kv = [h // group for h in heads]
    b = end.shape[0]
    # [n, b, P, A, d_head]: base values shared by every tile (a view) unless a receiver changes them
    sel = {"q": base_store[hook_at("q", layer)][:, :, heads], "k": base_store[hook_at("k", layer)][:, :, kv],
           "v": base_store[hook_at("v", layer)][:, :, kv]}
    sel = {c: t[None].expand(n, *t.shape) for c, t in sel.items()}
    keep = None
    if r_pos is not None:  # receivers take new inputs at their position only
        keep = torch.zeros(sel["q"].shape[1:3], dtype=torch.bool, device=r_pos.device)
        ok = torch.nonzero(r_pos >= 0).flatten()
        keep[ok, r_pos[ok]] = True
    for _, comp, idx, new in inputs:
        new = new.reshape(n, b, *new.shape[1:])
        sel[comp] = sel[comp].clone()
        for j, h in enumerate(heads):
            own = h if comp == "q" else h // group  # the query or KV head this receiver input belongs to
            if own not in idx:
                continue
            val = new[..., idx.index(own), :].to(sel[comp].dtype)
            sel[comp][..., j, :] = val if keep is None else torch.where(keep[..., None], val, sel[comp][..., j, :])
    last = layer == len(model.blocks) - 1
    rows = torch.arange(b, device=end.device)
    n_pos = sel["k"].shape[2]
    scale = getattr(model.cfg, "attn_scale", None)  # transformer-lens: -1 means sqrt(d_head)
    scale = scale if scale and scale > 0 else model.cfg.d_head ** 0.5
    z_base = base_store[hook_at("z", layer)][:, :, heads]  # [b, P, A, d_head]
    key_pos = torch.arange(n_pos, device=end.device)
    w_o = model.blocks[layer].attn.W_O[heads]  # [A, d_head, d_model]
    mid = base_store[hook_at("resid_mid", layer)]  # [b, P, d_model]
    block = model.blocks[layer]
    if last:  # queries at END only
        scores = torch.einsum("nbad,nbpad->nbap", sel["q"][:, rows, end], sel["k"]) / scale
        scores = scores.masked_fill((key_pos[None] > end[:, None])[None, :, None], float("-inf"))
        dz = torch.einsum("nbap,nbpad->nbad", scores.softmax(-1), sel["v"]) - z_base[rows, end]
        x = (mid[rows, end] + torch.einsum("nbad,adm->nbm", dz, w_o)).reshape(n * b, 1, -1)
        x = x + block.mlp(block.ln2(x))
        return forward.unembed(model, x[:, 0])
    scores = torch.einsum("nbqad,nbkad->nbaqk", sel["q"], sel["k"]) / scale
    scores = scores.masked_fill(key_pos[None, :] > key_pos[:, None], float("-inf"))
    dz = torch.einsum("nbaqk,nbkad->nbqad", scores.softmax(-1), sel["v"]) - z_base
    x = (mid + torch.einsum("nbqad,adm->nbqm", dz, w_o)).reshape(n * b, n_pos, -1)
    x = x + block.mlp(block.ln2(x))
    out = replay.end_logits_given(layer + 1, x)
    if out is None:
        raise RuntimeError("block replay unavailable")
    return out
