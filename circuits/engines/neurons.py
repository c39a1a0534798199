"""MLP neurons: their activations at a named position, and ablations of any subset of them.

A neuron is ``(layer, index)``: one unit of the MLP hidden layer after the
nonlinearity (site ``mlp_post``, ``[b, p, d_mlp]``; for gated MLPs the product
``act(gate) * up`` that the down projection reads). Shapes: b = prompts,
d_mlp = MLP width; activations are in the model's own units (no normalization).

- :func:`neuron_activations` - activations at one named position (END by default):
  ``[layers, b, d_mlp]``;
- :func:`ablate_neurons` - the per-prompt metric ``[variants, b]`` with each variant's
  neurons set, at that position only, to their mean over a reference PromptSet
  (default: the evaluated prompts' corrupted run) or to zero; every other neuron,
  position and layer runs as usual (a neuron in a later layer sees the effect of
  ablations in earlier ones). Variants share tiled forward passes, restarted at the
  first layer they change (``BlockReplay``);
- :func:`selectivity` and :func:`top_neurons` - a standardized mean difference
  between two sets of activations, and the neurons that score highest.

Neuron subsets are written by a small hook on the ``mlp_post`` site (an ``Edit``
writes a whole site, so it cannot leave the other neurons of a row to the run).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuits.engines import forward
from circuits.engines.common import EngineRun, Metric, as_list, prepare_prompts
from circuits.engines.replay import BlockReplay
from circuits.engines.sites import as_index, check_layer, hook_at
from circuits.prompts import PromptSet

__all__ = ["Neuron", "neuron_width", "check_neurons", "neuron_activations", "ablate_neurons", "selectivity",
           "top_neurons"]

Neuron = tuple[int, int]  # (layer, neuron index)
SITE = "mlp_post"
VALUES = ("mean", "zero")


def neuron_width(model: Any, layer: int = 0) -> int:
    """Neurons per MLP (``d_mlp``), read from the model's config; a clear error where it has none."""
    d = getattr(model.cfg, "d_mlp", None)
    if not d:
        raise ValueError(f"the model's config gives no MLP width (d_mlp), so its neurons at layer {layer} "
                         "cannot be indexed")
    return int(d)


def _check_site(model: Any, layer: int) -> str:
    name = hook_at(SITE, layer)
    hooks = getattr(model, "hook_dict", None)
    if hooks is not None and name not in hooks:
        raise ValueError(f"the model has no MLP-neuron hook {name!r} (site {SITE!r}) at layer {layer}; "
                         "its blocks may have no MLP")
    return name


def check_neurons(model: Any, neurons: Any, what: str = "neurons") -> list[Neuron]:
    """``neurons`` (an iterable of (layer, index) pairs) as a list of int pairs; TypeError or
    ValueError naming the first bad one (a layer or an index the model does not have)."""
    out = []
    for i, pair in enumerate(as_list(neurons, what)):
        try:
            layer, idx = pair
        except (TypeError, ValueError):
            raise TypeError(f"{what}[{i}] must be a (layer, neuron) pair, got {pair!r}") from None
        try:
            layer = check_layer(model, layer)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{what}[{i}] = {pair!r}: {e}") from None
        idx = as_index(idx, f"{what}[{i}] neuron index")
        d = neuron_width(model, layer)
        if not 0 <= idx < d:
            raise ValueError(f"{what}[{i}]: neuron {idx} out of range at layer {layer}: the MLP has neurons "
                             f"0..{d - 1}")
        out.append((layer, idx))
    return out


def _is_pair(x: Any) -> bool:
    """A (layer, index) pair rather than a list of pairs."""
    if isinstance(x, (str, bytes)):
        return False
    try:
        items = list(x)
    except TypeError:
        return False
    return len(items) == 2 and all(not isinstance(v, (list, tuple)) and getattr(v, "ndim", 0) == 0 for v in items)


def _variants(model: Any, neurons: Any) -> list[list[Neuron]]:
    """One variant (a list of pairs) or several (a list of lists of pairs), checked."""
    items = as_list(neurons, "neurons")
    if not items or all(_is_pair(x) for x in items):
        return [check_neurons(model, items)]
    return [check_neurons(model, v, f"neurons of variant {i}") for i, v in enumerate(items)]


def _position(ps: PromptSet, position: str) -> Tensor:
    if position not in ps.positions:
        raise ValueError(f"position {position!r} is not named in this PromptSet; it has {sorted(ps.positions)}")
    return ps.positions[position].long()


def _tokens(ps: PromptSet, which: str) -> Tensor:
    if which not in ("clean", "corrupted"):
        raise ValueError(f"tokens must be 'clean' or 'corrupted', got {which!r}")
    return ps.clean if which == "clean" else ps.corrupted


def _grab(got: dict[str, Tensor], name: str, pos: Tensor, stop: bool):
    """A hook keeping each row's activation at ``pos`` [rows] in ``got[name]`` (then stopping the run)."""

    def hook(x: Tensor, hook: Any) -> None:
        rows = torch.arange(x.shape[0], device=x.device)
        got[name] = x[rows, pos.to(x.device)].detach().clone()
        if stop:
            raise forward.StopForward

    return hook


def _read_at(model: Any, tokens: Tensor, pos: Tensor, layers: list[int],
             memory_budget: int | None) -> Float[Tensor, "layer batch d_mlp"]:
    """``mlp_post`` at ``pos`` [b] of every layer in ``layers``, the forward stopped after the last one."""
    names = [_check_site(model, layer) for layer in layers]
    last = names[layers.index(max(layers))]
    per = forward.rows_per_forward(model, tokens.shape[1], memory_budget)
    out: list[list[Tensor]] = [[] for _ in layers]
    for start in range(0, tokens.shape[0], per):
        got: dict[str, Tensor] = {}
        p = pos[start:start + per]
        try:
            model.run_with_hooks(tokens[start:start + per], return_type=None,
                                 fwd_hooks=[(n, _grab(got, n, p, n == last)) for n in names])
        except forward.StopForward:
            pass
        for i, n in enumerate(names):
            out[i].append(got[n])
    return torch.stack([torch.cat(x) for x in out])


@torch.no_grad()
def neuron_activations(model: Any, ps: PromptSet, layers: Sequence[int] | None = None, position: str = "END",
                       *, tokens: str = "clean", memory_budget: int | None = None
                       ) -> Float[Tensor, "layer batch d_mlp"]:
    """MLP neuron activations (site ``mlp_post``) at each prompt's ``position``: [layers, b, d_mlp].

    ``layers``: which layers, in the order given (default: all); ``tokens``: the clean or the
    corrupted prompts. Every prompt must have the position (no -1 entries). CPU float tensor.
    """
    with EngineRun(model, ps, "logit_diff", full_vocabulary=True) as run:
        ps = run.ps
        layer_list = [check_layer(model, x) for x in (range(model.cfg.n_layers) if layers is None
                                                       else as_list(layers, "layers"))]
        if not layer_list:
            raise ValueError("layers is empty: name at least one layer")
        pos = _position(ps, position)
        if (pos < 0).any():
            raise ValueError(f"position {position!r} is missing (-1) in {int((pos < 0).sum())} prompts; "
                             "activations can only be read where every prompt has it")
        return _read_at(model, _tokens(ps, tokens), pos, layer_list, memory_budget).float().cpu()


def _values(model: Any, ps: PromptSet, layers: list[int], values: str, reference: PromptSet | None,
            reference_tokens: str, position: str, memory_budget: int | None) -> dict[int, Tensor]:
    """{layer: [d_mlp]} replacement values: the reference's mean at ``position``, or zeros."""
    if values not in VALUES:
        raise ValueError(f"values must be one of {VALUES}, got {values!r}")
    if not layers:
        return {}
    if values == "zero":
        return {layer: torch.zeros(neuron_width(model, layer), device=ps.device) for layer in layers}
    ref = ps if reference is None else prepare_prompts(model, reference, "the reference PromptSet")
    pos = _position(ref, position)
    keep = pos >= 0
    if not keep.any():
        raise ValueError(f"no reference prompt has position {position!r}; the mean is undefined")
    acts = _read_at(model, _tokens(ref, reference_tokens), pos.clamp_min(0), layers, memory_budget)
    return {layer: acts[i][keep.to(acts.device)].mean(0) for i, layer in enumerate(layers)}


def _hook(n: int, b: int, rows: Tensor, cols: Tensor, mask: Tensor, value: Tensor):
    """Rows are ``n`` tiled copies of ``b`` prompts; in copy t, neurons ``mask[t]`` of prompt ``rows``
    at position ``cols`` take ``value``."""

    def hook(act: Tensor, hook: Any) -> Tensor:
        a = act.clone().reshape(n, b, *act.shape[1:])
        r, c = rows.to(a.device), cols.to(a.device)
        cur = a[:, r, c]  # [n, rows, d_mlp]
        a[:, r, c] = torch.where(mask.to(a.device)[:, None, :], value.to(a.device, a.dtype), cur)
        return a.reshape(act.shape)

    return hook


@torch.no_grad()
def ablate_neurons(model: Any, ps: PromptSet, neurons: Any, *, values: str = "mean",
                   reference: PromptSet | None = None, reference_tokens: str = "corrupted", tokens: str = "clean",
                   position: str = "END", metric: str | Metric = "logit_diff", memory_budget: int | None = None
                   ) -> Float[Tensor, "variant batch"]:
    """Per-prompt metric [variants, b] with each variant's neurons ablated at ``position`` only.

    ``neurons``: one variant, a list of (layer, index) pairs (an empty list: nothing ablated,
    the plain run), or a list of such lists, one per variant. ``values``: "mean" (each neuron's
    mean activation at ``position`` over ``reference``'s ``reference_tokens`` prompts, default
    the evaluated prompts' corrupted run) or "zero". ``tokens``: which prompts of ``ps`` run.
    Prompts where ``position`` is -1 are left alone. Metric units: those of ``metric``
    (logit_diff: logits). CPU float tensor.
    """
    variants = _variants(model, neurons)
    with EngineRun(model, ps, metric) as run:
        ps = run.ps
        toks = _tokens(ps, tokens)
        _tokens(ps, reference_tokens)  # checked before any compute
        pos = _position(ps, position)
        layers = sorted({layer for v in variants for layer, _ in v})
        names = {layer: _check_site(model, layer) for layer in layers}
        vals = _values(model, ps, layers, values, reference, reference_tokens, position, memory_budget)
        b, end = toks.shape[0], ps.positions["END"]
        replay = BlockReplay(model, toks, end)
        rows = torch.nonzero(pos >= 0).flatten()
        cols = pos[rows]
        starts = [min((layer for layer, _ in v), default=int(model.cfg.n_layers)) for v in variants]
        per = max(1, forward.rows_per_forward(model, toks.shape[1], memory_budget) // b)
        order = sorted(range(len(variants)), key=lambda i: -starts[i])
        groups: list[list[int]] = []  # a chunk restarts at its first changed layer: never mix start layers
        for i in order:
            if not groups or len(groups[-1]) >= per or starts[groups[-1][0]] != starts[i]:
                groups.append([])
            groups[-1].append(i)
        out: list[Tensor | None] = [None] * len(variants)
        for ids in groups:
            n = len(ids)
            hooks = []
            for layer in sorted({layer for i in ids for layer, _ in variants[i]}):
                mask = torch.zeros(n, neuron_width(model, layer), dtype=torch.bool)
                for t, i in enumerate(ids):
                    for lay, idx in variants[i]:
                        if lay == layer:
                            mask[t, idx] = True
                hooks.append((names[layer], _hook(n, b, rows, cols, mask, vals[layer])))
            if hooks:
                logits = replay.end_logits_from(starts[ids[0]], n, hooks)
            else:
                logits = forward.tile(replay.base_logits, n)
            for t, i in enumerate(ids):
                out[i] = run.evaluate(logits[t * b:(t + 1) * b])
        return torch.stack(out).cpu()


def selectivity(a: Float[Tensor, "... n_a d"], b: Float[Tensor, "... n_b d"], eps: float = 1e-6
                ) -> Float[Tensor, "... d"]:
    """(mean(a) - mean(b)) / pooled standard deviation, per unit, over the sample axis (-2).

    The pooled variance weighs each set's unbiased variance by its degrees of freedom;
    ``eps`` is added to the pooled deviation (a unit constant in both sets scores 0).
    Unitless (a Cohen's d); each set needs at least two samples.
    """
    na, nb = a.shape[-2], b.shape[-2]
    if na < 2 or nb < 2:
        raise ValueError(f"selectivity needs at least 2 samples in each set, got {na} and {nb}")
    a, b = a.double(), b.double()
    pooled = ((na - 1) * a.var(-2) + (nb - 1) * b.var(-2)) / (na + nb - 2)
    return ((a.mean(-2) - b.mean(-2)) / (pooled.sqrt() + eps)).float()


def top_neurons(scores: Float[Tensor, "layer d"], k: int, largest: bool = True,
                layers: Sequence[int] | None = None) -> list[Neuron]:
    """The ``k`` (layer, index) cells of ``scores`` with the largest (or smallest) values, best first;
    ``layers`` names the layer of each row (default 0..n-1). Ties go to the lower flat index."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if scores.ndim != 2:
        raise ValueError(f"scores must be [layer, d], got shape {tuple(scores.shape)}")
    flat = scores.detach().flatten().double().cpu()
    if not torch.isfinite(flat).all():
        raise ValueError("scores hold NaN or infinite values; rank finite scores only")
    order = torch.sort(-flat if largest else flat, stable=True).indices[:k].tolist()
    names = list(range(scores.shape[0])) if layers is None else [int(x) for x in layers]
    if len(names) != scores.shape[0]:
        raise ValueError(f"layers names {len(names)} rows, scores has {scores.shape[0]}")
    d = scores.shape[1]
    return [(names[j // d], j % d) for j in order]
