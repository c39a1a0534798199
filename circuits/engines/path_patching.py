"""Path patching (Wang et al. 2022, section 3.1; methods.md section 4.3), exact and batched.

For each sender head s and a fixed set of receivers R:

A. run the *source* prompts (corrupted, p_ABC) and cache the senders' outputs;
B. run the *base* prompts (clean) and cache every attention output;
C. run the base prompts with every attention layer frozen at its B value except
   s, whose output is taken from A; MLPs are recomputed (``freeze_mlps=False``,
   the paper's default: paths through MLPs count) or frozen (direct paths only).
   Record the receivers' inputs: their q, k or v - or, for the logits receiver,
   the logits themselves;
D. run the base prompts with only the receivers' inputs replaced by C's values.

The metric after D, per sender, is the result. All senders share tiled forward
passes: C and D each cost (n_senders x batch) rows, not one forward per
(sender, receiver) pair. ``direction="denoise"`` swaps the roles (base =
corrupted, source = clean), which with ``freeze_mlps=True`` and one receiver
head equals transformer-lens's ``get_act_patch_direct_path``.

Receivers are ``"logits"`` or head inputs named as in EAP-IG/MIB: ``"a9.h6<q>"``
(also ``(9, 6, "q")``). With grouped-query attention a ``<k>``/``<v>`` receiver
patches the keys/values of the head's KV group, which every head of the group reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from circuits.engines import fastpaths, forward
from circuits.engines.common import (
    Metric,
    answer_vocab,
    as_list,
    evaluate_metric,
    model_settings,
    prepare_prompts,
    resolve_metric,
)
from circuits.engines.nodes import Node, all_heads, check_nodes, parse_node
from circuits.engines.replay import BlockReplay
from circuits.engines.sites import hook_at, n_kv_heads
from circuits.names import BadName, Reader, parse_reader
from circuits.prompts import PromptSet
from circuits.scores import Scores


def parse_receiver(spec: Any) -> tuple[int, int, str] | str:
    """'logits', 'a9.h6<q>' or (9, 6, 'q') -> 'logits' | (layer, head, component)."""
    try:
        reader = parse_reader(spec)
    except BadName:
        reader = None
    if reader is None or reader.kind not in ("head", "logits"):
        raise ValueError(f"bad receiver {spec!r}: expected 'logits', 'a{{L}}.h{{H}}<q|k|v>' or (L, H, 'q')")
    return "logits" if reader.kind == "logits" else (reader.layer, int(reader.index), str(reader.component))


def _freeze_hook(base: torch.Tensor, keep_tiles: list[int], n: int):
    """Hook setting the activation to ``base`` (tiled) except in the tiles listed."""
    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        out = forward.tile(base, n).reshape(n, *base.shape).clone()
        if keep_tiles:
            mine = act.reshape(n, *base.shape)
            out[keep_tiles] = mine[keep_tiles]
        return out.reshape(act.shape)
    return hook


@torch.no_grad()
def path_patching(model: Any, ps: PromptSet, receivers: Sequence[Any], *, senders: Sequence[Any] | None = None,
                  metric: str | Metric = "logit_diff", direction: str = "noise", freeze_mlps: bool = False,
                  sender_position: str | None = None, receiver_position: str | None = None,
                  memory_budget: int | None = None, progress: bool = True) -> Scores:
    """Effect of each sender head on the metric through its paths to ``receivers`` only.

    Args:
        receivers: ["logits"] or head inputs (["a7.h3<q>", "a8.h6<q>"], ...), patched jointly.
        senders: heads to score (default: all); scores are [layer, head] with NaN
            for heads not scored and the base value for senders with no path.
        direction: "noise" (the IOI paper: clean run, corrupted sender) or "denoise".
        sender_position / receiver_position: a named position to restrict the
            sender's patched output / the receivers' patched inputs to (default: all).

    Returns:
        Scores over (layer, head) with per-prompt values and baselines
        (``baseline["base"]`` is the unpatched run the effects are measured from).
    """
    fn, metric_name = resolve_metric(metric)
    ps = prepare_prompts(model, ps)
    ps_m, vocab = answer_vocab(ps, metric_name)
    with forward.restricted_vocab(vocab):
        if direction not in ("noise", "denoise"):
            raise ValueError(f"direction must be 'noise' or 'denoise', got {direction!r}")
        recv = [parse_receiver(r) for r in as_list(receivers, "receivers")]
        for name, pos in (("sender_position", sender_position), ("receiver_position", receiver_position)):
            if pos is not None and pos not in ps.positions:
                raise ValueError(f"{name} {pos!r} is not named in this PromptSet; it has {sorted(ps.positions)}")
        if not recv:
            raise ValueError("path_patching needs at least one receiver")
        if "logits" in recv and len(recv) > 1:
            raise ValueError("the logits receiver cannot be combined with head receivers")
        heads_recv = [r for r in recv if r != "logits"]
        check_nodes(model, [Node("head", layer, h) for layer, h, _ in heads_recv])
        snd = (check_nodes(model, [parse_node(s) for s in as_list(senders, "senders")]) if senders is not None
               else all_heads(model))
        if any(s.kind != "head" for s in snd):
            raise ValueError("senders must be attention heads")

        base_tok, src_tok = (ps.clean, ps.corrupted) if direction == "noise" else (ps.corrupted, ps.clean)
        end = ps.positions["END"]
        n_layers, b = int(model.cfg.n_layers), len(ps)
        z_names = [hook_at("z", layer) for layer in range(n_layers)]
        attn_names = [hook_at("attn_out", layer) for layer in range(n_layers)]
        mlp_names = [hook_at("mlp_out", layer) for layer in range(n_layers)] if freeze_mlps else []
        extra = sorted({hook_at(c, layer) for layer, _, c in heads_recv})  # receivers' base inputs
        if freeze_mlps:  # what the direct-path shortcut needs: sender z, receiver inputs and their outputs
            extra = sorted({z_names[s.layer] for s in snd})
            extra += sorted({hook_at("resid_pre", layer) for layer, _, _ in heads_recv})
            extra += sorted({hook_at(c, layer) for layer, _, c in heads_recv})
        recv_layers = sorted({layer for layer, _, _ in heads_recv})
        first_recv = recv_layers[0] if recv_layers else n_layers
        recv_layers = recv_layers if len(recv_layers) == 1 else None
        if freeze_mlps and recv_layers:
            names = _one_layer_store_names(recv_layers[0])
            if all(nm in model.hook_dict for nm in names):
                extra = sorted(set(extra) | set(names))
            else:
                fastpaths.record(model, "path_one_layer_receivers", False,
                                 "the model has no hook_resid_mid (attention and MLP in parallel)")
                recv_layers = None
        # the base run records what each block received, so later passes can restart at any layer
        replay = BlockReplay(model, base_tok, end, store=attn_names + mlp_names + extra)
        base_logits, base_store = replay.base_logits, replay.store
        src_logits, src_store = forward.run_with_store(model, src_tok, end, sorted({z_names[s.layer] for s in snd}))
        base_vals = evaluate_metric(fn, base_logits, ps_m)
        s_pos = None if sender_position is None else ps.positions[sender_position].long()
        r_pos = None if receiver_position is None else ps.positions[receiver_position].long()
        group = int(model.cfg.n_heads) // n_kv_heads(model)

        last_recv = n_layers if recv == ["logits"] else max(layer for layer, _, _ in heads_recv)
        scored = [s for s in snd if s.layer < last_recv]
        per = torch.full((n_layers, int(model.cfg.n_heads), b), float("nan"))
        for s in snd:
            per[s.layer, s.head] = base_vals.cpu()
        per_chunk = max(1, forward.rows_per_forward(model, base_tok.shape[1], memory_budget) // b)
        scored = sorted(scored, key=lambda s: (s.layer, s.head))
        groups: list[list[Node]] = []  # one sender layer per chunk: pass C restarts at that layer
        for snd_i in scored:
            if not groups or len(groups[-1]) >= per_chunk or groups[-1][0].layer != snd_i.layer:
                groups.append([])
            groups[-1].append(snd_i)
        fast = False
        if freeze_mlps:
            fast, why = _direct_inputs_check(model, base_store, heads_recv)
            fastpaths.record(model, "path_direct_shortcut", fast, why)
        # receivers all in one layer: their outputs by hand, not a forward of that layer
        one_layer, one_layer_checked = fast and recv_layers is not None and replay.ok, False
        if one_layer and getattr(model.cfg, "positional_embedding_type", None) == "rotary":
            one_layer = fastpaths.record(model, "path_one_layer_receivers", False,
                                         "rotary embeddings act after hook_q/hook_k, which the hand computation "
                                         "does not cover")
        if fast:  # direct paths are linear up to the receivers: no pass C forward at all
            groups = []
            for chunk in tqdm(list(forward.chunks(scored, per_chunk)), desc="path patching (direct)",
                              disable=not progress, leave=False):
                deltas = _sender_deltas(model, chunk, base_store, src_store, s_pos)  # [n, b, P, d]
                n = len(chunk)
                if recv == ["logits"]:
                    final = forward.final_residual(model, base_tok)
                    rows = torch.arange(b, device=final.device)
                    fe = final[rows, end]  # [b, d]
                    logits = forward.unembed(model, fe[None] + deltas[:, rows, end])
                else:
                    inputs = _direct_receiver_inputs(model, chunk, deltas, base_store, heads_recv, group, end)
                    logits = None
                    if one_layer:
                        logits, one_layer = _one_layer_checked(model, replay, base_store, inputs, n, group, r_pos,
                                                               end, one_layer_checked)
                        one_layer_checked = True
                    if logits is None:
                        logits = replay.end_logits_from(first_recv, n, _direct_receiver_hooks(inputs, n, r_pos))
                    logits = logits.reshape(n, b, -1)
                for t, snd_t in enumerate(chunk):
                    per[snd_t.layer, snd_t.head] = evaluate_metric(fn, logits[t], ps_m).cpu()
        for chunk in tqdm(groups, desc="path patching", disable=not progress or len(groups) < 2, leave=False):
            n = len(chunk)
            # pass C: freeze attention (except each tile's sender layer) and optionally MLPs
            hooks: list[forward.Hook] = []
            for layer in range(n_layers):
                own = [t for t, s in enumerate(chunk) if s.layer == layer]
                hooks.append((attn_names[layer], _freeze_hook(base_store[attn_names[layer]], own, n)))
                if freeze_mlps:
                    hooks.append((mlp_names[layer], _freeze_hook(base_store[mlp_names[layer]], [], n)))
                if own:
                    def patch_z(act, hook, own=own, layer=layer, n=n, chunk=chunk):
                        a = act.clone().reshape(n, b, *act.shape[1:])
                        src = src_store[z_names[layer]]
                        for t in own:
                            h = chunk[t].head
                            if s_pos is None:
                                a[t, :, :, h] = src[:, :, h]
                            else:
                                rows = torch.nonzero(s_pos >= 0).flatten()
                                a[t, rows, s_pos[rows], h] = src[rows, s_pos[rows], h]
                        return a.reshape(act.shape)
                    hooks.append((z_names[layer], patch_z))
            start = min(s.layer for s in chunk)
            if recv == ["logits"]:
                logits = replay.end_logits_from(start, n, hooks).reshape(n, b, -1)
            else:
                inputs = sorted({(layer, "qkv".index(c), c) for layer, _, c in heads_recv})  # in firing order
                names = [hook_at(c, layer) for layer, _, c in inputs]
                got: dict[str, torch.Tensor] = {}
                capture = []
                for nm in names:
                    def cap(act, hook, nm=nm, got=got):
                        got[nm] = act.detach().clone()
                    capture.append((nm, cap))
                replay.run_until(start, n, hooks + capture, names[-1])  # the receiver input that fires last
                # pass D: only the receivers' inputs take pass C's values
                d_hooks = []
                for (layer, _, comp), name in zip(inputs, names):
                    idx = sorted({h if comp == "q" else h // group for ly, h, c in heads_recv if ly == layer and c == comp})

                    def set_recv(act, hook, name=name, idx=idx, got=got, n=n):
                        a = act.clone()
                        # a receiver at or before the chunk's sender layer has no path from it: base input
                        c = got[name] if name in got else forward.tile(base_store[name], n)
                        if r_pos is None:
                            a[:, :, idx] = c[:, :, idx]
                        else:
                            rows = torch.nonzero(forward.tile(r_pos, n) >= 0).flatten()
                            p = forward.tile(r_pos, n)[rows]
                            for h in idx:
                                a[rows, p, h] = c[rows, p, h]
                        return a
                    d_hooks.append((name, set_recv))
                logits = replay.end_logits_from(inputs[0][0], n, d_hooks).reshape(n, b, -1)
            for t, s in enumerate(chunk):
                per[s.layer, s.head] = evaluate_metric(fn, logits[t], ps_m).cpu()

        clean_logits, corrupted_logits = (base_logits, src_logits) if direction == "noise" else (src_logits, base_logits)
        return Scores(per.mean(-1), ("layer", "head"), per,
                      {"layer": [str(x) for x in range(n_layers)], "head": [str(h) for h in range(model.cfg.n_heads)]},
                      {"clean": float(evaluate_metric(fn, clean_logits, ps_m).mean()),
                       "corrupted": float(evaluate_metric(fn, corrupted_logits, ps_m).mean()),
                       "base": float(base_vals.mean())},
                      {"engine": "path_patching", "receivers": [r if r == "logits" else Reader("head", *r).name
                                                                for r in recv],
                       "senders": [s.name for s in snd], "direction": direction, "freeze_mlps": freeze_mlps,
                       "direct_shortcut": bool(fast), "one_layer_shortcut": bool(one_layer),
                       "sender_position": sender_position, "receiver_position": receiver_position,
                       "metric": metric_name, **model_settings(model), "n_prompts": b, "provenance": ps.provenance})


def wang_effect(scores: Scores) -> torch.Tensor:
    """The IOI paper's 100 * (m_patched - m_base) / m_base, per sender [layer, head]."""
    base = scores.baseline["base"]
    return 100 * (scores.values - base) / base




def _receiver_input(model: Any, layer: int, comp: str, x: torch.Tensor,
                    heads: Sequence[int] | None = None) -> torch.Tensor:
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


def _direct_inputs_check(model: Any, base_store: dict, heads_recv: list) -> tuple[bool, str]:
    """(whether ln1 + W_Q/K/V reproduce the receivers' inputs, why). They do not under QK-norm,
    rotary applied before hook_q/k, or attention weights not exposed as W_Q/W_K/W_V."""
    try:
        for layer in sorted({layer for layer, _, _ in heads_recv}):
            x = base_store[hook_at("resid_pre", layer)]
            for comp in sorted({c for ly, _, c in heads_recv if ly == layer}):
                want = base_store[hook_at(comp, layer)]
                got = _receiver_input(model, layer, comp, x)
                if got.shape != want.shape:
                    return False, (f"ln1 + W_{comp.upper()} gives shape {tuple(got.shape)} at layer {layer}, "
                                   f"hook_{comp} has {tuple(want.shape)}")
                if not torch.allclose(got, want, atol=1e-4, rtol=1e-4):
                    diff = float((got - want).abs().max())
                    return False, (f"ln1 + W_{comp.upper()} does not reproduce layer {layer}'s hook_{comp} "
                                   f"(max difference {diff:.1e})")
        return True, "ln1 + W_Q/K/V reproduce the receivers' inputs"
    except forward.CHECK_ERRORS as e:
        return False, f"the attention weights cannot be applied by hand ({type(e).__name__}: {e})"


def _sender_deltas(model: Any, chunk: list, base_store: dict, src_store: dict, s_pos) -> torch.Tensor:
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


def _direct_receiver_inputs(model: Any, chunk: list, deltas: torch.Tensor, base_store: dict,
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
                at_end = _receiver_input(model, layer, comp, x.reshape(n * b, 1, -1), idx)[:, 0]
                new[torch.arange(n * b, device=new.device), forward.tile(end, n).to(new.device)] = at_end.to(new.dtype)
            else:
                x = (resid[None] + deltas * gate[:, None, None, None]).reshape(n * b, *resid.shape[1:])
                new = _receiver_input(model, layer, comp, x, idx)
            out.append((layer, comp, idx, new))
    return out


def _direct_receiver_hooks(inputs: list, n: int, r_pos) -> list:
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


def _one_layer_checked(model: Any, replay: BlockReplay, base_store: dict, inputs: list, n: int,
                       group: int, r_pos, end: torch.Tensor, checked: bool) -> tuple[torch.Tensor | None, bool]:
    """(``_one_layer_logits`` or None, whether to keep using it). The first call checks the
    shortcut against the generic pass D on up to two senders; a mismatch (an attention this
    hand computation does not cover: rotary, ALiBi, soft-capping, parallel MLP...) turns it off."""
    name = "path_one_layer_receivers"
    try:
        logits = _one_layer_logits(model, replay, base_store, inputs, n, group, r_pos, end)
    except forward.CHECK_ERRORS as e:
        fastpaths.record(model, name, False, f"the receiver layer cannot be computed by hand "
                                             f"({type(e).__name__}: {e})")
        return None, False
    if checked:
        return logits, True
    b = end.shape[0]
    k = min(2, n)
    few = [(ly, c, idx, new[:k * b]) for ly, c, idx, new in inputs]
    ref = replay.end_logits_from(inputs[0][0], k, _direct_receiver_hooks(few, k, r_pos))
    diff = float((logits[:k * b] - ref).abs().max())
    ok = bool(torch.allclose(logits[:k * b], ref, atol=1e-4, rtol=1e-4))
    fastpaths.record(model, name, ok, f"hand-computed receiver layer {'equals' if ok else 'differs from'} "
                                      f"the generic pass (max difference {diff:.1e})")
    return (logits, True) if ok else (None, False)


def _one_layer_store_names(layer: int) -> list[str]:
    """Base activations ``_one_layer_logits`` reads."""
    return [hook_at(c, layer) for c in "qkvz"] + [hook_at("resid_mid", layer)]


def _one_layer_logits(model: Any, replay: BlockReplay, base_store: dict, inputs: list, n: int,
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
