"""Path patching (Wang et al. 2022, section 3.1) as four forward passes A-D, exact and batched.

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
patches the keys/values of the head's KV group, which every head of the group reads:
``a9.h6<k>`` and the group reader ``a9.g1<k>`` name the same patch (a head that shares the
group gets the same effect), and the result's ``kv_groups_patched`` lists the groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from circuits.engines import fastpaths, forward
from circuits.engines.common import (
    EngineRun,
    Metric,
    as_list,
    model_settings,
)
from circuits.engines.nodes import Node, all_heads, check_nodes, parse_node
from circuits.engines.path_shortcuts import DirectPaths, one_layer_store_names
from circuits.engines.replay import BlockReplay
from circuits.engines.sites import hook_at, n_kv_heads
from circuits.engines.stream import check_receiver_inputs
from circuits.names import BadName, Reader, parse_reader
from circuits.prompts import PromptSet
from circuits.scores import Scores


def parse_receiver(spec: Any, group_size: int = 1) -> tuple[int, int, str] | str:
    """'logits', 'a9.h6<q>', (9, 6, 'q') or a KV group reader 'a9.g1<k>' (its first head's keys, which the
    whole group shares; ``group_size`` = query heads per KV group) -> 'logits' | (layer, head, component)."""
    try:
        reader = parse_reader(spec)
    except BadName:
        reader = None
    if reader is None or reader.kind not in ("head", "group", "logits"):
        raise ValueError(f"bad receiver {spec!r}: expected 'logits', 'a{{L}}.h{{H}}<q|k|v>', 'a{{L}}.g{{G}}<k|v>' "
                         "or (L, H, 'q')")
    if reader.kind == "logits":
        return "logits"
    if reader.kind == "group":
        return reader.layer, int(reader.index) * group_size, str(reader.component)
    return reader.layer, int(reader.index), str(reader.component)


def _freeze_hook(base: torch.Tensor, keep_tiles: list[int], n: int):
    """Hook setting the activation to ``base`` (tiled) except in the tiles listed."""
    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        out = forward.tile(base, n).reshape(n, *base.shape).clone()
        if keep_tiles:
            mine = act.reshape(n, *base.shape)
            out[keep_tiles] = mine[keep_tiles]
        return out.reshape(act.shape)
    return hook


class GenericPasses:
    """Wang et al.'s passes C and D for one chunk of senders in the same layer, done literally
    (every attention output frozen at its base value except the sender's; MLPs recomputed or frozen)."""

    def __init__(self, replay: BlockReplay, src_store: dict, heads_recv: list, freeze_mlps: bool, group: int,
                 s_pos: torch.Tensor | None, r_pos: torch.Tensor | None):
        self.replay, self.src_store, self.heads_recv = replay, src_store, heads_recv
        self.freeze_mlps, self.group, self.s_pos, self.r_pos = freeze_mlps, group, s_pos, r_pos
        self.b = replay.tokens.shape[0]
        self.n_layers = len(replay.model.blocks)

    def pass_c_hooks(self, chunk: list[Node]) -> list[forward.Hook]:
        """Freeze attention outputs (except each tile's sender layer) and optionally MLPs; patch each
        tile's sender head from the source run."""
        n, b, base_store = len(chunk), self.b, self.replay.store
        hooks: list[forward.Hook] = []
        for layer in range(self.n_layers):
            own = [t for t, s in enumerate(chunk) if s.layer == layer and s.kind == "head"]
            own_mlp = [t for t, s in enumerate(chunk) if s.layer == layer and s.kind == "mlp"]
            hooks.append((hook_at("attn_out", layer), _freeze_hook(base_store[hook_at("attn_out", layer)], own, n)))
            if self.freeze_mlps:
                hooks.append((hook_at("mlp_out", layer), _freeze_hook(base_store[hook_at("mlp_out", layer)], [], n)))
            if own_mlp:  # an MLP sender: its output from the source run (after any freezing)
                def patch_mlp(act, hook, own_mlp=own_mlp, layer=layer):
                    a = act.clone().reshape(n, b, *act.shape[1:])
                    src = self.src_store[hook_at("mlp_out", layer)]
                    for t in own_mlp:
                        if self.s_pos is None:
                            a[t] = src
                        else:
                            rows = torch.nonzero(self.s_pos >= 0).flatten()
                            a[t, rows, self.s_pos[rows]] = src[rows, self.s_pos[rows]]
                    return a.reshape(act.shape)
                hooks.append((hook_at("mlp_out", layer), patch_mlp))
            if own:
                def patch_z(act, hook, own=own, layer=layer):
                    a = act.clone().reshape(n, b, *act.shape[1:])
                    src = self.src_store[hook_at("z", layer)]
                    for t in own:
                        h = chunk[t].head
                        if self.s_pos is None:
                            a[t, :, :, h] = src[:, :, h]
                        else:
                            rows = torch.nonzero(self.s_pos >= 0).flatten()
                            a[t, rows, self.s_pos[rows], h] = src[rows, self.s_pos[rows], h]
                    return a.reshape(act.shape)
                hooks.append((hook_at("z", layer), patch_z))
        return hooks

    def logits(self, chunk: list[Node]) -> torch.Tensor:
        """END logits [n, b, vocab] of pass D (pass C's logits for the logits receiver)."""
        n, b, base_store = len(chunk), self.b, self.replay.store
        hooks = self.pass_c_hooks(chunk)
        start = min(s.layer for s in chunk)
        if not self.heads_recv:
            return self.replay.end_logits_from(start, n, hooks).reshape(n, b, -1)
        inputs = sorted({(layer, "qkv".index(c), c) for layer, _, c in self.heads_recv})  # in firing order
        names = [hook_at(c, layer) for layer, _, c in inputs]
        got: dict[str, torch.Tensor] = {}
        capture = []
        for nm in names:
            def cap(act, hook, nm=nm):
                got[nm] = act.detach().clone()
            capture.append((nm, cap))
        self.replay.run_until(start, n, hooks + capture, names[-1])  # the receiver input that fires last
        # pass D: only the receivers' inputs take pass C's values
        d_hooks = []
        for (layer, _, comp), name in zip(inputs, names):
            idx = sorted({h if comp == "q" else h // self.group
                          for ly, h, c in self.heads_recv if ly == layer and c == comp})

            def set_recv(act, hook, name=name, idx=idx):
                a = act.clone()
                # a receiver at or before the chunk's sender layer has no path from it: base input
                c = got[name] if name in got else forward.tile(base_store[name], n)
                if self.r_pos is None:
                    a[:, :, idx] = c[:, :, idx]
                else:
                    rows = torch.nonzero(forward.tile(self.r_pos, n) >= 0).flatten()
                    p = forward.tile(self.r_pos, n)[rows]
                    for h in idx:
                        a[rows, p, h] = c[rows, p, h]
                return a
            d_hooks.append((name, set_recv))
        return self.replay.end_logits_from(inputs[0][0], n, d_hooks).reshape(n, b, -1)


@torch.no_grad()
def path_patching(model: Any, ps: PromptSet, receivers: Sequence[Any], *, senders: Sequence[Any] | None = None,
                  metric: str | Metric = "logit_diff", direction: str = "noise", freeze_mlps: bool = False,
                  sender_position: str | None = None, receiver_position: str | None = None,
                  memory_budget: int | None = None, progress: bool = True) -> Scores:
    """Effect of each sender (a head, or an MLP) on the metric through its paths to ``receivers`` only.

    Args:
        receivers: ["logits"] or head inputs (["a7.h3<q>", "a8.h6<q>"], ...), patched jointly.
        senders: heads to score (default: all); scores are [layer, head] with NaN
            for heads not scored and the base value for senders with no path. MLPs (``m{L}``)
            may be senders too (their output patched, all attention frozen): the scores then
            have one axis, ``sender``, labelled with the senders' names in the order given.
        direction: "noise" (the IOI paper: clean run, corrupted sender) or "denoise".
        sender_position / receiver_position: a named position to restrict the
            sender's patched output / the receivers' patched inputs to (default: all).

    Returns:
        Scores over (layer, head) with per-prompt values and baselines
        (``baseline["base"]`` is the unpatched run the effects are measured from).
    """
    with EngineRun(model, ps, metric) as run:
        ps, metric_name = run.ps, run.metric.name
        if direction not in ("noise", "denoise"):
            raise ValueError(f"direction must be 'noise' or 'denoise', got {direction!r}")
        group_size = int(model.cfg.n_heads) // n_kv_heads(model)
        recv = [parse_receiver(r, group_size) for r in as_list(receivers, "receivers")]
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
        if any(s.kind not in ("head", "mlp") for s in snd):
            raise ValueError(f"senders must be attention heads or MLPs, got {[s.name for s in snd if s.kind not in ('head', 'mlp')]}")
        if any(s.pos is not None for s in snd):
            raise ValueError("senders take no @POSITION; use sender_position")
        mlp_senders = any(s.kind == "mlp" for s in snd)

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
        recv_layers = recv_layers if len(recv_layers) == 1 else None
        if freeze_mlps and recv_layers:
            names = one_layer_store_names(recv_layers[0])
            if all(nm in model.hook_dict for nm in names):
                extra = sorted(set(extra) | set(names))
            else:
                fastpaths.record(model, "path_one_layer_receivers", False,
                                 "the model has no hook_resid_mid (attention and MLP in parallel)")
                recv_layers = None
        # the base run records what each block received, so later passes can restart at any layer
        replay = BlockReplay(model, base_tok, end, store=attn_names + mlp_names + extra)
        base_logits, base_store = replay.base_logits, replay.store
        src_names = {z_names[s.layer] if s.kind == "head" else hook_at("mlp_out", s.layer) for s in snd}
        src_logits, src_store = forward.run_with_store(model, src_tok, end, sorted(src_names))
        base_vals = run.evaluate(base_logits)
        s_pos = None if sender_position is None else ps.positions[sender_position].long()
        r_pos = None if receiver_position is None else ps.positions[receiver_position].long()
        group = int(model.cfg.n_heads) // n_kv_heads(model)

        last_recv = n_layers if recv == ["logits"] else max(layer for layer, _, _ in heads_recv)
        scored = [s for s in snd if s.layer < last_recv]
        per = torch.full((n_layers, int(model.cfg.n_heads), b), float("nan"))
        per_sender = {s.name: base_vals.cpu() for s in snd}  # senders with no path keep the base value
        for s in snd:
            if s.kind == "head":
                per[s.layer, s.head] = base_vals.cpu()
        per_chunk = max(1, forward.rows_per_forward(model, base_tok.shape[1], memory_budget) // b)
        scored = sorted(scored, key=lambda s: (s.layer, s.kind != "head", s.head if s.kind == "head" else 0))
        groups: list[list[Node]] = []  # one sender layer per chunk: pass C restarts at that layer
        for snd_i in scored:
            if not groups or len(groups[-1]) >= per_chunk or groups[-1][0].layer != snd_i.layer:
                groups.append([])
            groups[-1].append(snd_i)
        fast = False
        if freeze_mlps and not mlp_senders:  # the shortcut computes head senders' deltas only
            fast, why = check_receiver_inputs(model, base_store, heads_recv)
            fastpaths.record(model, "path_direct_shortcut", fast, why)
        # receivers all in one layer: their outputs by hand, not a forward of that layer
        one_layer = fast and recv_layers is not None and replay.ok
        if one_layer and getattr(model.cfg, "positional_embedding_type", None) == "rotary":
            one_layer = fastpaths.record(model, "path_one_layer_receivers", False,
                                         "rotary embeddings act after hook_q/hook_k, which the hand computation "
                                         "does not cover")
        if fast:  # direct paths are linear up to the receivers: no pass C forward at all
            direct = DirectPaths(model, replay, base_store, src_store, base_tok, end, heads_recv, group, s_pos,
                                 r_pos, one_layer)
            for chunk, logits in direct.logits(list(forward.chunks(scored, per_chunk)), progress):
                for t, snd_t in enumerate(chunk):
                    per[snd_t.layer, snd_t.head] = per_sender[snd_t.name] = run.evaluate(logits[t]).cpu()
            one_layer, groups = direct.one_layer, []
        passes = GenericPasses(replay, src_store, heads_recv, freeze_mlps, group, s_pos, r_pos)
        for chunk in tqdm(groups, desc="path patching", disable=not progress or len(groups) < 2, leave=False):
            logits = passes.logits(chunk)
            for t, s in enumerate(chunk):
                per_sender[s.name] = run.evaluate(logits[t]).cpu()
                if s.kind == "head":
                    per[s.layer, s.head] = per_sender[s.name]

        clean_logits, corrupted_logits = (base_logits, src_logits) if direction == "noise" else (src_logits, base_logits)
        if mlp_senders:  # one axis of named senders, heads and MLPs alike
            names = [s.name for s in snd]
            stacked = torch.stack([per_sender[nm] for nm in names])
            values, axes, labels = stacked.mean(-1), ("sender",), {"sender": names}
            per = stacked
        else:
            values, axes = per.mean(-1), ("layer", "head")
            labels = {"layer": [str(x) for x in range(n_layers)], "head": [str(h) for h in range(model.cfg.n_heads)]}
        return Scores(values, axes, per, labels,
                      {"clean": float(run.evaluate(clean_logits).mean()),
                       "corrupted": float(run.evaluate(corrupted_logits).mean()),
                       "base": float(base_vals.mean())},
                      {"engine": "path_patching", "receivers": [r if r == "logits" else Reader("head", *r).name
                                                                for r in recv],
                       "senders": [s.name for s in snd], "direction": direction, "freeze_mlps": freeze_mlps,
                       "direct_shortcut": bool(fast), "one_layer_shortcut": bool(one_layer),
                       "sender_position": sender_position, "receiver_position": receiver_position,
                       "kv_groups_patched": [f"a{layer}.g{h // group_size}<{c}>" for layer, h, c in heads_recv
                                             if c in ("k", "v") and group_size > 1],
                       "metric": metric_name, **model_settings(model), "n_prompts": b, "provenance": ps.provenance})


def wang_effect(scores: Scores) -> torch.Tensor:
    """The IOI paper's 100 * (m_patched - m_base) / m_base, per sender [layer, head]."""
    base = scores.baseline["base"]
    return 100 * (scores.values - base) / base


def pick_senders(effect: torch.Tensor, exclude: set[tuple[int, int]], sign: int = -1, rel: float = 0.25,
         cap: int = 4, floor: float = 2.0) -> list[tuple[int, int]]:
    """Senders (layer, head) whose Wang effect [layer, head] (percent) has ``sign`` and a magnitude
    >= ``rel`` x the largest and >= ``floor`` percent, largest first, at most ``cap``; ``exclude``d
    heads and NaN cells (not scored) never count."""
    e = effect.clone()
    for h in exclude:
        e[h] = 0.0
    e = torch.nan_to_num(e * sign, nan=0.0)
    top = float(e.max())
    if top < floor:
        return []
    idx = torch.nonzero(e >= max(rel * top, floor))
    ranked = sorted(((int(a), int(b)) for a, b in idx), key=lambda h: -float(e[h]))
    return ranked[:cap]
