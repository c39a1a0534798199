"""Slow, obvious reference implementations the engines are tested against.

One intervention per forward pass, full logits, plain hooks: nothing clever.
"""

from __future__ import annotations

import torch

from circuits import metrics


def block(layer: int) -> str:
    """Hook names spelled out here, independently of the library's site table."""
    return "blocks." + str(layer) + "."


def metric_full(model, tokens, ps, hooks=()):
    logits = model.run_with_hooks(tokens, fwd_hooks=list(hooks))
    return metrics.logit_diff(logits, ps, reduce="none")


def naive_patch(model, ps, site_hook, index_fn, direction="denoise", cells=()):
    """For each cell: run base with activation[index_fn(cell)] := source activation."""
    base, src = (ps.corrupted, ps.clean) if direction == "denoise" else (ps.clean, ps.corrupted)
    _, cache = model.run_with_cache(src)
    out = []
    for cell in cells:
        name = site_hook(cell)
        src_act = cache[name]

        def hook(act, hook, cell=cell, src_act=src_act):
            act = act.clone()
            idx = index_fn(cell, act)
            act[idx] = src_act[idx]
            return act

        out.append(metric_full(model, base, ps, [(name, hook)]))
    return torch.stack(out)


def naive_path_patch(model, ps, sender, receivers, direction="noise", freeze_mlps=False,
                     sender_position=None, receiver_position=None):
    """Wang et al.'s four passes, literally, for one sender: a head (layer, head) or an MLP ("mlp", layer).

    ``sender_position`` / ``receiver_position``: a named position of ``ps``; the sender is
    patched there only / the receivers take pass C's input there only."""
    rows = torch.arange(len(ps))
    s_pos = None if sender_position is None else ps.positions[sender_position].long()
    r_pos = None if receiver_position is None else ps.positions[receiver_position].long()
    base, src = (ps.clean, ps.corrupted) if direction == "noise" else (ps.corrupted, ps.clean)
    _, bc = model.run_with_cache(base)
    _, sc = model.run_with_cache(src)
    n_layers = model.cfg.n_layers
    group = model.cfg.n_heads // (getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads)
    hooks = []
    mlp_sender = sender[0] == "mlp"
    for layer in range(n_layers):
        name = block(layer) + "attn.hook_z"

        def freeze_z(act, hook, name=name, layer=layer):
            out = bc[name].clone()
            if not mlp_sender and layer == sender[0]:
                if s_pos is None:
                    out[:, :, sender[1]] = sc[name][:, :, sender[1]]
                else:
                    out[rows, s_pos, sender[1]] = sc[name][rows, s_pos, sender[1]]
            return out
        hooks.append((name, freeze_z))
        mname = block(layer) + "hook_mlp_out"
        if freeze_mlps:
            hooks.append((mname, lambda act, hook, mname=mname: bc[mname].clone()))
        if mlp_sender and layer == sender[1]:
            def patch_mlp(act, hook, mname=mname):
                out = act.clone()
                if s_pos is None:
                    out[:] = sc[mname]
                else:
                    out[rows, s_pos] = sc[mname][rows, s_pos]
                return out
            hooks.append((mname, patch_mlp))
    if receivers == "logits":
        return metric_full(model, base, ps, hooks)
    captured = {}
    names = {block(layer) + "attn.hook_" + c for layer, _, c in receivers}
    for name in names:
        def cap(act, hook, name=name):
            captured[name] = act.clone()
        hooks.append((name, cap))
    model.run_with_hooks(base, fwd_hooks=hooks)
    d_hooks = []
    for layer, h, c in receivers:
        name = block(layer) + "attn.hook_" + c
        idx = h if c == "q" else h // group

        def put(act, hook, name=name, idx=idx):
            act = act.clone()
            if r_pos is None:
                act[:, :, idx] = captured[name][:, :, idx]
            else:
                act[rows, r_pos, idx] = captured[name][rows, r_pos, idx]
            return act
        d_hooks.append((name, put))
    return metric_full(model, base, ps, d_hooks)


def reader_gradient(model, ps, reader):
    """dM/dx_reader on the clean run, with only ``reader`` reading a leaf copy of the residual stream."""
    from circuits import metrics as M

    box = {}

    def leaf(x):
        y = x.detach().clone().requires_grad_(True)
        box["x"] = y
        return y

    if reader == "logits":
        hooks = [("ln_final.hook_in", lambda x, hook: leaf(x))]
    elif reader.startswith("m"):
        layer = int(reader[1:])
        hooks = [(block(layer) + "ln2.hook_in", lambda x, hook: leaf(x))]
    else:
        head_part, comp = reader[:-3], reader[-2]
        layer = int(head_part[1:].split(".")[0])
        idx = int(head_part.split(".")[1][1:])
        saved = {}

        def grab_resid(x, hook):
            saved["r"] = x
            return x

        def replace(act, hook):
            x = leaf(saved["r"])
            attn = model.blocks[layer].attn
            w = {"q": attn.W_Q, "k": attn.W_K, "v": attn.W_V}[comp][idx]
            b = getattr(attn, {"q": "b_Q", "k": "b_K", "v": "b_V"}[comp], None)
            new = model.blocks[layer].ln1(x) @ w + (0 if b is None else b[idx])
            act = act.clone()
            act[:, :, idx] = new
            return act

        hooks = [(block(layer) + "ln1.hook_in", grab_resid), (block(layer) + "attn.hook_" + comp, replace)]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            logits = model.run_with_hooks(ps.clean, fwd_hooks=hooks)
            M.logit_diff(logits, ps, reduce="sum").backward()
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    return box["x"].grad


def writer_delta(model, ps, writer):
    """a_writer(clean) - a_writer(corrupted) in the residual stream, [b, p, d]."""
    _, clean = model.run_with_cache(ps.clean)
    _, corr = model.run_with_cache(ps.corrupted)
    if writer == "input":
        name = "blocks.0.hook_resid_pre"
        return clean[name] - corr[name]
    if writer.startswith("m"):
        name = block(int(writer[1:])) + "hook_mlp_out"
        return clean[name] - corr[name]
    layer, h = int(writer[1:].split(".")[0]), int(writer.split(".")[1][1:])
    name = block(layer) + "attn.hook_z"
    w_o = model.blocks[layer].attn.W_O[h]
    return (clean[name][:, :, h] - corr[name][:, :, h]) @ w_o
