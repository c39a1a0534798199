"""Ablations of any set of nodes (heads, MLPs, residual positions).

Methods, as update formulas for an activation a of prompt x:

- ``zero``: a <- 0.
- ``mean``: a <- mean of a over a reference PromptSet; ``per_position`` keeps one
  mean per token position, ``by_group`` one per template group (the IOI paper's
  means over p_ABC per template).
- ``resample``: a(x) <- a(x') for a reference prompt x' drawn with ``seed`` (from
  the same template group with ``by_group``).
- ``corrupted``: a(x) <- a(x_corrupted), the paired corrupted prompt of the same
  row (MIB's "ablation by corrupted input"; the reference must be the evaluated set);
- ``cama`` (context-aware mean ablation, All-for-One): a_t <- mean of a_t over
  reference inputs that have the same token at position t; where no reference
  input has that token there, the positional mean is used.

The reference defaults to the evaluated PromptSet's *corrupted* prompts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from circuits.engines import forward
from circuits.engines.common import check_fits
from circuits.engines.interventions import Edit
from circuits.engines.nodes import Node
from circuits.engines.sites import Site, hook_name, site_of
from circuits.prompts import PromptSet

METHODS = ("zero", "mean", "resample", "cama", "corrupted")


@dataclass
class Ablation:
    """How ablated nodes are replaced (see the module docstring)."""

    method: str = "mean"
    reference: PromptSet | None = None
    reference_tokens: str = "corrupted"  # which prompts of the reference supply activations
    per_position: bool = True
    by_group: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"ablation method must be one of {METHODS}, got {self.method!r}")
        if self.reference_tokens not in ("clean", "corrupted"):
            raise ValueError(f"reference_tokens must be 'clean' or 'corrupted', got {self.reference_tokens!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"Ablation seed must be an integer, got {self.seed!r}")
        if self.reference is not None and not isinstance(self.reference, PromptSet):
            raise TypeError(f"Ablation reference must be a PromptSet, got {type(self.reference).__name__}")

    def describe(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict; ``reference`` becomes "evaluated prompts" or "<n> prompts"."""
        d = {k: v for k, v in asdict(self).items() if k != "reference"}
        d["reference"] = "evaluated prompts" if self.reference is None else f"{len(self.reference)} prompts"
        return d


def masked_mean(acts: Tensor, mask: Tensor) -> Tensor:
    """Mean over (row, position) cells where mask [n, p] is True: acts [n, p, ...] -> [...]."""
    m = mask.reshape(*mask.shape, *([1] * (acts.ndim - 2))).to(acts.dtype)
    return (acts * m).sum((0, 1)) / m.sum((0, 1)).clamp_min(1)


def positional_mean(acts: Tensor, mask: Tensor, n_pos: int, fallback: Tensor) -> Tensor:
    """Per-position mean [n_pos, ...] over rows real at that position (fallback where none)."""
    m = mask.reshape(*mask.shape, *([1] * (acts.ndim - 2))).to(acts.dtype)
    s, c = (acts * m).sum(0), m.sum(0)
    out = torch.where(c > 0, s / c.clamp_min(1), fallback.expand_as(s))
    return _fit_positions(out, n_pos, fallback)


def _fit_positions(x: Tensor, n_pos: int, fill: Tensor) -> Tensor:
    """Cut or extend (with ``fill``) the leading position axis of x to n_pos."""
    if x.shape[0] >= n_pos:
        return x[:n_pos]
    return torch.cat([x, fill.expand(n_pos - x.shape[0], *x.shape[1:])])


def _cama(acts: Tensor, mask: Tensor, ref_tokens: Tensor, tokens: Tensor, fallback: Tensor) -> Tensor:
    """Context-aware means for the evaluated ``tokens`` [b, P]: [b, P, ...]."""
    b, n_pos = tokens.shape
    p_ref = ref_tokens.shape[1]
    vocab = int(max(int(tokens.max()), int(ref_tokens.max()))) + 1
    pos_ids = torch.arange(p_ref, device=ref_tokens.device)[None].expand_as(ref_tokens)
    keys = (pos_ids * vocab + ref_tokens)[mask]
    flat = acts[mask]  # [cells, ...]
    uniq, inv = torch.unique(keys, return_inverse=True)
    sums = torch.zeros(len(uniq), *flat.shape[1:], dtype=acts.dtype, device=acts.device).index_add_(0, inv, flat)
    counts = torch.bincount(inv, minlength=len(uniq)).to(acts.dtype)
    means = sums / counts.reshape(-1, *([1] * (flat.ndim - 1)))
    positional = positional_mean(acts, mask, n_pos, fallback)  # [P, ...]
    q = (torch.arange(n_pos, device=tokens.device)[None] * vocab + tokens).flatten()
    j = torch.searchsorted(uniq, q).clamp_max(len(uniq) - 1)
    found = (uniq[j] == q) & (torch.arange(n_pos, device=tokens.device).repeat(b) < p_ref)
    out = positional[None].expand(b, *positional.shape).reshape(b * n_pos, *positional.shape[1:]).clone()
    out[found] = means[j[found]]
    return out.reshape(b, n_pos, *positional.shape[1:])


def _group_rows(ref: PromptSet, ps: PromptSet) -> list[Tensor]:
    """For each evaluated prompt's group, the reference rows of the same group name."""
    ref_names = [ref.group_names[g] if g < len(ref.group_names) else str(g) for g in ref.groups.tolist()]
    out = []
    for g in ps.groups.tolist():
        name = ps.group_names[g] if g < len(ps.group_names) else str(g)
        rows = torch.tensor([i for i, n in enumerate(ref_names) if n == name], dtype=torch.long)
        if len(rows) == 0:
            raise ValueError(f"by_group ablation: the reference has no prompt of group {name!r}")
        out.append(rows)
    return out


@torch.no_grad()
def ablation_values(model: Any, ps: PromptSet, tokens: Tensor, sites: Iterable[tuple[Site, int]],
                    ablation: Ablation) -> dict[str, Tensor]:
    """Replacement activations {hook name: [b, P, ...]} for the evaluated ``tokens`` of ``ps``."""
    sites = sorted(set(sites), key=lambda s: (s[1], s[0].name))
    if ablation.reference is not None:
        check_fits(model, ablation.reference, "the ablation's reference PromptSet")
    ref = (ablation.reference or ps).to(tokens.device)
    ref_tok = ref.corrupted if ablation.reference_tokens == "corrupted" else ref.clean
    names = [hook_name(s, layer) for s, layer in sites]
    _, store = forward.run_with_store(model, ref_tok, ref.positions["END"], names)
    mask = ref.attention_mask
    b, n_pos = tokens.shape
    g = torch.Generator().manual_seed(ablation.seed)
    groups = _group_rows(ref, ps) if ablation.by_group else None
    pick = None
    if ablation.method == "resample":
        if groups is None:
            pick = torch.randint(len(ref), (b,), generator=g)
        else:
            pick = torch.stack([rows[torch.randint(len(rows), (1,), generator=g)][0] for rows in groups])
    out = {}
    for name in names:
        acts = store[name]
        glob = masked_mean(acts, mask)
        if ablation.method == "corrupted":
            if ablation.reference is not None and ablation.reference is not ps:
                raise ValueError("corrupted ablation takes each prompt's own corrupted pair; drop reference=")
            val = _fit_positions(acts.transpose(0, 1), n_pos, glob[None]).transpose(0, 1) \
                if acts.shape[1] != n_pos else acts
        elif ablation.method == "zero":
            val = torch.zeros(b, n_pos, *acts.shape[2:], dtype=acts.dtype, device=acts.device)
        elif ablation.method == "resample":
            val = torch.stack([_fit_positions(acts[j], n_pos, glob[None]) for j in pick.tolist()])
        elif ablation.method == "cama":
            val = _cama(acts, mask, ref_tok, tokens, glob)
        elif not ablation.per_position:
            val = glob.expand(b, n_pos, *glob.shape).clone()
        elif groups is None:
            val = positional_mean(acts, mask, n_pos, glob)[None].expand(b, n_pos, *glob.shape).clone()
        else:
            cache: dict[tuple, Tensor] = {}
            rows_out = []
            for rows in groups:
                key = tuple(rows.tolist())
                if key not in cache:
                    cache[key] = positional_mean(acts[rows], mask[rows], n_pos, glob)
                rows_out.append(cache[key])
            val = torch.stack(rows_out)
        out[name] = val
    return out


def where_mask(ps: PromptSet, where: str) -> Tensor | None:
    """Cells an ablation writes: 'all' -> None; 'at:P' -> [b] positions; 'except:P' -> [b, p] mask."""
    if where == "all":
        return None
    kind, _, pos = where.partition(":")
    if pos not in ps.positions:
        raise ValueError(f"position {pos!r} is not named in this PromptSet; it has {sorted(ps.positions)}")
    idx = ps.positions[pos].long()
    if kind == "at":
        return idx
    if kind == "except":
        m = ps.attention_mask.clone()
        rows = torch.nonzero(idx >= 0).flatten()
        m[rows, idx[rows]] = False
        return m
    raise ValueError(f"bad ablation placement {where!r}: expected all, at:POS or except:POS")


def edits_for(ablated: Sequence[tuple[Node, str]], values: dict[str, Tensor], ps: PromptSet) -> list[Edit]:
    """Edits that ablate each (node, where) with the precomputed values."""
    edits = []
    for node, where in ablated:
        site = site_of(node)
        edits.append(Edit(site, node.layer, values[hook_name(site, node.layer)],
                          node.head if node.kind == "head" else None, where_mask(ps, where)))
    return edits


def placement(node: Node) -> tuple[Node, str]:
    """A positioned node ablates only at its position; an unpositioned one everywhere."""
    return (node.unpositioned(), f"at:{node.pos}") if node.pos else (node, "all")
