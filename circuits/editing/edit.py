"""The ThinkEdit weight edit: project a direction out of chosen heads' output weights.

For each chosen head, W_O^h <- W_O^h (I - u u^T) in transformer-lens orientation ([d_head, d_model];
the same map as (I - u u^T) applied to the head's columns of an HF output projection): the head can
no longer write along u. The arithmetic is done in float32 and cast back to the weight's dtype;
heads are query heads (also under grouped-query attention); ``d_head`` comes from the config.

Edits are safe: :func:`edited` applies an edit inside a ``with`` block and restores the original
weights bit for bit on exit, also after an exception; :func:`edited_copy` edits a deep copy;
:func:`save_edited` writes an edited model as an ordinary HF checkpoint with a card saying what
was edited.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from circuits import compat
from circuits.editing.weights import check_head, d_head_of, read_head, write_head
from circuits.records import Record


@dataclass
class HeadEdit(Record):
    """What an edit changed: the heads (``a{L}.h{H}``), how many parameters changed and their share of
    the model's parameters (percent), and the settings (the direction's layers, dtype)."""

    heads: list[str]
    params_changed: int
    params_total: int
    percent: float
    settings: dict[str, Any] = field(default_factory=dict)


def _heads(model: Any, heads: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    out = [check_head(model, *h) for h in heads]
    if not out:
        raise ValueError("no head to edit")
    if len(set(out)) != len(out):
        raise ValueError(f"a head is listed twice: {out}")
    return out


def _unit(model: Any, units: Mapping[int, Tensor] | Tensor, layer: int) -> Tensor:
    u = units if isinstance(units, Tensor) else units.get(layer)
    if u is None:
        raise ValueError(f"no direction given for layer {layer}")
    d = int(model.cfg.d_model)
    if u.ndim != 1 or u.shape[0] != d:
        raise ValueError(f"the direction for layer {layer} has shape {tuple(u.shape)}, the residual stream is [{d}]")
    u = u.detach().float().cpu()
    n = float(u.norm())
    if n == 0.0 or n != n:
        raise ValueError(f"the direction for layer {layer} is zero or not finite: nothing to project out")
    return u / n


def projected(w: Tensor, u: Tensor) -> Tensor:
    """W (I - u u^T) for W [d_head, d_model] and unit u [d_model], in float32."""
    w, u = w.float(), u.float().to(w.device)
    return w - torch.outer(w @ u, u)


def apply_edit(model: Any, heads: Sequence[tuple[int, int]], units: Mapping[int, Tensor] | Tensor) -> HeadEdit:
    """Project ``units`` (one unit direction [d_model], or one per layer) out of each head's W_O, in place."""
    heads = _heads(model, heads)
    plan = [(layer, h, _unit(model, units, layer)) for layer, h in heads]  # check everything before writing
    changed = 0
    for layer, h, u in plan:
        before = read_head(model, layer, h)
        after = projected(before, u).to(before.dtype)
        write_head(model, layer, h, after)
        changed += int((read_head(model, layer, h) != before).sum())
    total = sum(p.numel() for p in compat.hf_model(model).parameters())
    return HeadEdit([f"a{layer}.h{h}" for layer, h in heads], changed, total, 100.0 * changed / total,
                    {"edit": "W_O <- W_O (I - u u^T)", "arithmetic": "float32",
                     "dtype": str(next(compat.hf_model(model).parameters()).dtype), "d_head": d_head_of(model),
                     "layers": sorted({layer for layer, _ in heads})})


@contextmanager
def edited(model: Any, heads: Sequence[tuple[int, int]], units: Mapping[int, Tensor] | Tensor) -> Iterator[HeadEdit]:
    """Apply the edit inside the block; the original weights come back bit for bit on exit (also after
    an exception)."""
    heads = _heads(model, heads)
    saved = {(layer, h): read_head(model, layer, h) for layer, h in heads}
    try:
        yield apply_edit(model, heads, units)
    finally:
        for (layer, h), w in saved.items():
            write_head(model, layer, h, w)


def edited_copy(model: Any, heads: Sequence[tuple[int, int]], units: Mapping[int, Tensor] | Tensor
                ) -> tuple[Any, HeadEdit]:
    """(an edited deep copy of ``model``, the edit); ``model`` itself is untouched."""
    _heads(model, heads)
    twin = copy.deepcopy(model)
    return twin, apply_edit(twin, heads, units)


def plain_hf_copy(model: Any) -> Any:
    """A plain Hugging Face model (no bridge components inside) with ``model``'s current weights: the
    bridge grafts its components into the HF module tree, whose state dict then names each weight
    several times; this maps each of the plain architecture's names to its tensor."""
    from transformers import AutoModelForCausalLM

    hf = compat.hf_model(model)
    current = {k.replace("._original_component", "").replace("_original_component.", ""): v
               for k, v in hf.state_dict().items()}
    plain = AutoModelForCausalLM.from_config(hf.config)
    want = plain.state_dict()
    missing = [k for k in want if k not in current]
    if missing:
        raise ValueError(f"cannot map the bridged model's weights back to {type(plain).__name__}: missing "
                         f"{missing[:5]}")
    plain.load_state_dict({k: current[k].detach().to(want[k].dtype) for k in want})
    return plain.eval()


def save_edited(model: Any, path: str | os.PathLike, edit: HeadEdit, source: str) -> str:
    """Write ``model`` (already edited) as an HF checkpoint at ``path`` (weights, config, tokenizer, and
    edit.json + README.md saying what was edited, from ``source``), atomically: a failed save leaves
    nothing at ``path``. Returns the path."""
    from circuits.io import checked_folder

    path = os.fspath(path)
    parent = checked_folder(path)
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists; choose a new folder for the edited checkpoint")
    plain = plain_hf_copy(model)
    stage = tempfile.mkdtemp(prefix=".edited-", dir=parent)
    done = False
    try:
        plain.save_pretrained(stage)
        tok = getattr(model, "tokenizer", None)
        if tok is not None:
            tok.save_pretrained(stage)
        card = {"source": source, **edit.to_dict()}
        with open(os.path.join(stage, "edit.json"), "w") as f:
            json.dump(card, f, indent=1, sort_keys=True)
        with open(os.path.join(stage, "README.md"), "w") as f:
            f.write(f"# Edited checkpoint of {source}\n\nThinkEdit head edit: {edit.settings['edit']} on heads "
                    f"{', '.join(edit.heads)} ({edit.params_changed} parameters changed, {edit.percent:.3f}% of "
                    f"{edit.params_total}). Made by circuits.editing; see edit.json.\n")
        os.rename(stage, path)
        done = True
    finally:
        if not done:  # a failed save leaves nothing behind
            shutil.rmtree(stage, ignore_errors=True)
    return path
