"""Edge-level circuit evaluation: run the model with only a circuit's edges intact.

For a circuit C (a boolean mask over the edge graph) every reader v reads

    x_v = (its live residual input) + sum over edges u->v not in C of (a_u(ablated) - a_u(live))

so an edge outside the circuit carries the writer's ablated value (its output on
the corrupted prompt, or its mean over a reference set, or zero) while edges in
the circuit carry the live value - MIB's and EAP-IG's definition. Head readers
get their own input: each head's q (k, v per head or KV group) is recomputed from
its own residual through the layer's input norm and W_Q (W_K, W_V).

Many circuits share tiled forward passes (``evaluate_edge_circuits``), so a whole
faithfulness curve costs about one forward pass per circuit.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuits.engines import forward
from circuits.engines.ablation import masked_mean, positional_mean
from circuits.engines.common import (
    EngineRun,
    Metric,
    check_fits,
)
from circuits.engines.edges import EdgeGraph, edge_graph
from circuits.engines.sites import hook_at
from circuits.engines.stream import check_receiver_inputs, writer_hooks, writer_outputs
from circuits.names import Reader
from circuits.prompts import PromptSet

ABLATIONS = ("corrupted", "mean", "zero")


def _ablated_writers(model: Any, ps: PromptSet, ablation: str, reference: PromptSet | None) -> Tensor:
    """[b, p, W, d] the value each writer takes on an ablated edge."""
    n_layers = int(model.cfg.n_layers)
    names = writer_hooks(n_layers)
    end = ps.positions["END"]
    if ablation == "corrupted":
        _, store = forward.run_with_store(model, ps.corrupted, end, names)
        return writer_outputs(model, store)
    if ablation == "zero":
        _, store = forward.run_with_store(model, ps.clean, end, names)
        return torch.zeros_like(writer_outputs(model, store))
    if reference is not None:
        check_fits(model, reference, "the ablation's reference PromptSet")
    ref = (reference or ps).to(ps.clean.device)
    _, store = forward.run_with_store(model, ref.clean, ref.positions["END"], names)
    acts = writer_outputs(model, store)  # [n_ref, P_ref, W, d]
    mask = ref.attention_mask
    pos_mean = positional_mean(acts, mask, ps.clean.shape[1], masked_mean(acts, mask))  # [P, W, d]
    return pos_mean[None].expand(len(ps), *pos_mean.shape)


_READERS_OK: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> None (fine) or the reason


def _check_reader_inputs(model: Any, graph: EdgeGraph, ps: PromptSet) -> None:
    """Once per model: are each head's q/k/v its input norm then W_Q/W_K/W_V? A clear error if not."""
    if model not in _READERS_OK:
        layers = range(graph.n_layers)
        names = [hook_at("resid_pre", layer) for layer in layers]
        names += [hook_at(c, layer) for layer in layers for c in "qkv"]
        _, store = forward.run_with_store(model, ps.clean[:2], ps.positions["END"][:2], names)
        ok, why = check_receiver_inputs(model, store, [(layer, 0, c) for layer in layers for c in "qkv"])
        _READERS_OK[model] = None if ok else why
    why = _READERS_OK[model]
    if why is not None:
        raise ValueError("edge-level evaluation needs each head's q/k/v to be its input norm followed by "
                         f"W_Q/W_K/W_V (true for GPT-2, Llama, Qwen2, GPT-NeoX); on this model {why}")


def _edge_hooks(model: Any, graph: EdgeGraph, masks: Tensor, ablated: Tensor, n: int, b: int) -> list:
    """Hooks running ``n`` tiles, tile t keeping only the edges in ``masks[t]`` ([W, R] bool, or [P, W, R]:
    an edge kept or ablated at each token position)."""
    positional = masks.dim() == 4
    off = (~masks).to(ablated.dtype).transpose(-1, -2).contiguous()  # [n, (P,) R, W] 1 = ablated edge
    _, p, n_w, d = ablated.shape
    abl = ablated.permute(2, 0, 1, 3).reshape(n_w, b * p * d)  # [W, b*p*d]
    diff = ablated.new_zeros(n, n_w, b * p * d)  # ablated - live, filled as writers fire
    state = {"k": 0}
    saved: dict[str, Tensor] = {}

    def add_writers(live: Tensor) -> None:
        """live [n*b, p, w, d] outputs of the next w writers."""
        w = live.shape[2]
        k = state["k"]
        lay = live.reshape(n, b, p, w, d).permute(0, 3, 1, 2, 4).reshape(n, w, b * p * d)
        diff[:, k:k + w] = abl[k:k + w][None] - lay
        state["k"] = k + w

    def shifted(x: Tensor, readers: list[int], upto: int | None = None) -> Tensor:
        """x [n*b, p, d] + per-reader ablation shift -> [n*b, p, len(readers), d]."""
        k = state["k"] if upto is None else upto
        if positional:  # the reader at position q reads each writer's shift at q only if that edge is off at q
            sel = off[:, :, readers, :k]  # [n, P, r, k]
            shift = torch.einsum("nqrk,nkbqd->nbqrd", sel, diff[:, :k].reshape(n, k, b, p, d))
            return x[:, :, None] + shift.reshape(n * b, p, len(readers), d)
        sel = off[:, readers, :k]  # [n, r, k]
        shift = torch.bmm(sel, diff[:, :k])  # [n, r, b*p*d]
        shift = shift.reshape(n, len(readers), b, p, d).permute(0, 2, 3, 1, 4).reshape(n * b, p, len(readers), d)
        return x[:, :, None] + shift

    hooks: list = [(hook_at("resid_pre", 0), lambda x, hook: add_writers(x[:, :, None]) or x)]
    for layer in range(graph.n_layers):
        attn = model.blocks[layer].attn

        def save_in(x, hook, layer=layer):
            if not saved.get("busy"):  # our own per-reader norm calls below fire this hook too
                saved[f"in.{layer}"] = x
                saved["k_in"] = state["k"]
            return x
        hooks.append((hook_at("ln1_in", layer), save_in))
        for comp, w, bname in (("q", attn.W_Q, "b_Q"), ("k", attn.W_K, "b_K"), ("v", attn.W_V, "b_V")):
            n_idx = w.shape[0]
            if comp == "q" or not graph.gqa:
                names = [Reader("head", layer, h, comp).name for h in range(n_idx)]
            else:
                names = [Reader("group", layer, g, comp).name for g in range(n_idx)]
            ridx = [graph.reader_index[nm] for nm in names]

            def recompute(act, hook, layer=layer, w=w, bname=bname, ridx=ridx):
                x = saved[f"in.{layer}"]
                xs = shifted(x, ridx, saved["k_in"])  # [n*b, p, r, d]
                saved["busy"] = True
                try:
                    normed = model.blocks[layer].ln1(xs.permute(2, 0, 1, 3).reshape(-1, *x.shape[1:]))
                finally:
                    saved["busy"] = False
                normed = normed.reshape(len(ridx), *x.shape).permute(1, 2, 0, 3)
                new = torch.einsum("bprd,rde->bpre", normed, w.to(normed.dtype))
                bias = getattr(model.blocks[layer].attn, bname, None)
                return new if bias is None else new + bias
            hooks.append((hook_at(comp, layer), recompute))

        def take_heads(z, hook, layer=layer):
            add_writers(torch.einsum("bphe,hed->bphd", z, model.blocks[layer].attn.W_O.to(z.dtype)))
            return z
        hooks.append((hook_at("z", layer), take_heads))
        r_mlp = [graph.reader_index[Reader("mlp", layer).name]]

        def mlp_in(x, hook, r_mlp=r_mlp):
            # parallel blocks: the MLP reads the layer input, so this layer's heads are not upstream
            upto = saved["k_in"] if graph.parallel_attn_mlp else None
            return shifted(x, r_mlp, upto)[:, :, 0]
        hooks.append((hook_at("ln2_in", layer), mlp_in))
        hooks.append((hook_at("mlp_out", layer), lambda x, hook: add_writers(x[:, :, None]) or x))
    r_log = [graph.reader_index[Reader("logits").name]]
    hooks.append((hook_at("final_in"), lambda x, hook: shifted(x, r_log)[:, :, 0]))
    return hooks


class EdgeEvaluator:
    """Evaluates many edge circuits of one prompt set, preparing once: the prompts checked and on the
    model's device, the reader check (once per model), and the writers' ablated values (one forward).

    ``logits(circuits)``: END logits [n, b, vocab] of each circuit (boolean [W, R] masks, True = kept,
    or [P, W, R] masks that keep or ablate each edge per token position),
    in tiled forward passes sized to ``memory_budget``; ``metric(circuits)``: the metric per prompt [n, b].
    """

    def __init__(self, model: Any, ps: PromptSet, *, ablation: str = "corrupted", reference: PromptSet | None = None,
                 metric: str | Metric = "logit_diff", memory_budget: int | None = None):
        if ablation not in ABLATIONS:
            raise ValueError(f"edge ablation must be one of {ABLATIONS}, got {ablation!r}")
        self.model, self.graph, self.memory_budget = model, edge_graph(model), memory_budget
        self.run = EngineRun(model, ps, metric)  # metric(): only the tokens the metric reads are unembedded
        self.ps = self.run.ps
        _check_reader_inputs(model, self.graph, self.ps)
        with torch.no_grad():
            self.ablated = _ablated_writers(model, self.ps, ablation, reference)

    def _check(self, circuits: Sequence[Tensor]) -> None:
        shapes = {tuple(c.shape) for c in circuits}
        edge_shape = tuple(self.graph.mask.shape)
        positional = (self.ps.clean.shape[1], *edge_shape)
        for i, c in enumerate(circuits):
            if tuple(c.shape) not in (edge_shape, positional):
                raise ValueError(f"circuit {i} has shape {tuple(c.shape)}; the edge graph is {edge_shape} "
                                 f"([W, R]), or {positional} per token position ([P, W, R], P = the prompts' length)")
        if len(shapes) > 1:
            raise ValueError(f"circuits of one call must all be [W, R] or all [P, W, R], got shapes {sorted(shapes)}")

    @torch.no_grad()
    def logits(self, circuits: Sequence[Tensor], progress: bool = False) -> Tensor:
        """END logits [n_circuits, b, vocab] over the whole vocabulary (on the model's device)."""
        return self._logits(circuits, progress)

    def _logits(self, circuits: Sequence[Tensor], progress: bool) -> Tensor:
        self._check(circuits)
        b, p = self.ps.clean.shape
        d = int(self.model.cfg.d_model)
        budget = forward.DEFAULT_MEMORY_BUDGET if self.memory_budget is None else self.memory_budget
        row_bytes = budget // forward.rows_per_forward(self.model, p, budget) + 3 * 4 * len(self.graph.writers) * d * p
        per = max(1, budget // (b * row_bytes))
        out = []
        groups = list(forward.chunks(list(circuits), per))
        mask = self.graph.mask.to(self.ablated.device)
        for chunk in tqdm(groups, desc="edge circuits", disable=not progress or len(groups) < 2, leave=False):
            n = len(chunk)
            masks = torch.stack([c.to(self.ablated.device).bool() & mask for c in chunk])
            hooks = _edge_hooks(self.model, self.graph, masks, self.ablated, n, b)
            logits = forward.end_logits(self.model, forward.tile(self.ps.clean, n),
                                        forward.tile(self.ps.positions["END"], n), hooks)
            out.append(logits.reshape(n, b, -1))
        return torch.cat(out) if out else torch.empty(0, b, 0)

    @torch.no_grad()
    def metric(self, circuits: Sequence[Tensor], progress: bool = False) -> Tensor:
        """The metric per prompt [n_circuits, b] (on the CPU)."""
        with self.run:
            logits = self._logits(circuits, progress)
            return torch.stack([self.run.evaluate(lg) for lg in logits]).cpu() if len(logits) else torch.empty(0)


def evaluate_edge_circuits(model: Any, ps: PromptSet, circuits: Sequence[Tensor], *, ablation: str = "corrupted",
                           reference: PromptSet | None = None, metric: str | Metric = "logit_diff",
                           memory_budget: int | None = None, progress: bool = False,
                           return_logits: bool = False) -> Tensor:
    """Per-prompt metric [n_circuits, b] of each edge circuit (boolean [W, R] masks, True = kept; or
    [P, W, R]: per token position).

    With ``return_logits`` the END logits [n_circuits, b, vocab] are returned instead. For many
    calls on one prompt set, build an :class:`EdgeEvaluator` once.
    """
    ev = EdgeEvaluator(model, ps, ablation=ablation, reference=reference, metric=metric, memory_budget=memory_budget)
    return ev.logits(circuits, progress).cpu() if return_logits else ev.metric(circuits, progress)
