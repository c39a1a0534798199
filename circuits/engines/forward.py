"""The plain forward pass every engine shares: hooks in, logits at END out.

Engines never ask the model for full logits: the run is stopped where the final
norm begins (an exception raised from that hook), and only the rows the metric
reads (each prompt's END) are pushed through the final norm and the
unembedding; within :func:`restricted_vocab` only the few token columns a
metric reads are unembedded. The last block's MLP runs at END only (checked
once per model, see ``circuits.engines.fastpaths``).

Batches are *tiled*: ``T`` interventions x ``b`` prompts run as one batch of
``T*b`` rows, row ``t*b + i`` being prompt ``i`` under intervention ``t``;
:func:`rows_per_forward` sizes ``T`` to a memory budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuits.engines import fastpaths
from circuits.engines.sites import block_prefix, hook_at

Hook = tuple[str, Callable[[Tensor, Any], Tensor | None]]

DEFAULT_MEMORY_BUDGET = 2 * 1024**3  # bytes of activations one tiled forward may hold


class StopForward(Exception):
    """Raised from the final-norm hook: everything after it is done by hand."""


def final_residual(model: Any, tokens: Int[Tensor, "batch pos"], fwd_hooks: Sequence[Hook] = ()) -> Tensor:
    """Residual stream entering the final norm, [batch, pos, d_model], under ``fwd_hooks``."""
    box: dict[str, Tensor] = {}

    def grab(x: Tensor, hook: Any) -> None:
        box["resid"] = x
        raise StopForward

    try:
        model.run_with_hooks(tokens, fwd_hooks=[*fwd_hooks, (hook_at("final_in"), grab)], return_type=None)
    except StopForward:
        pass
    if "resid" not in box:
        raise RuntimeError("the model never reached ln_final.hook_in; engines need a final norm hook")
    return box["resid"]


_VOCAB: ContextVar[Tensor | None] = ContextVar("restricted_vocab", default=None)


@contextmanager
def restricted_vocab(token_ids: Tensor | None) -> Iterator[None]:
    """Within this context ``unembed`` returns logits of ``token_ids`` only ([..., k]).

    For metrics that read a few known tokens (logit difference): the unembedding
    of a 50k vocabulary then costs nothing. ``None`` leaves the full vocabulary.
    """
    token = _VOCAB.set(token_ids)
    try:
        yield
    finally:
        _VOCAB.reset(token)


def unembed(model: Any, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
    """Final norm + unembedding of residual vectors (any leading shape)."""
    lead = resid.shape[:-1]
    flat = resid.reshape(-1, 1, resid.shape[-1])
    ids = _VOCAB.get()
    if ids is None:
        return model.unembed(model.ln_final(flat))[:, 0].reshape(*lead, -1)
    normed = model.ln_final(flat)[:, 0]
    out = normed @ model.W_U[:, ids.to(normed.device)]
    b_u = getattr(model, "b_U", None)
    if b_u is not None:
        out = out + b_u[ids.to(normed.device)]
    return out.reshape(*lead, -1)


# hook names that read the last block's MLP or what follows it at every position
_LAST_MLP_SITES = ("mlp", "hook_mlp", "hook_resid_post", "ln2")
# what a once-per-model check may meet on an architecture it does not fit (anything else is a bug: raised)
CHECK_ERRORS = (RuntimeError, TypeError, ValueError, IndexError, KeyError, AttributeError)


def failure_reason(e: BaseException) -> str:
    """How a failed check reads in the fast-path record."""
    return f"{type(e).__name__}: {e}"


@contextmanager
def end_only_last_mlp(model: Any, end: Int[Tensor, " rows"], fwd_hooks: Sequence[Hook] = (),
                      force: bool = False) -> Iterator[None]:
    """Within this context the last block's MLP runs at each row's END position only.

    The last MLP's output at other positions reaches nothing the metric reads
    (no block follows it), so it is left at zero: on a small model most of the
    last block's work saved. Applied only on models where it was checked to give
    the same END logits (see :func:`check_end_only_last_mlp`; ``force`` applies it
    for that check), and not when a hook reads the last block's MLP, its output
    or the residual after it (those would see the zeros).
    """
    last = len(model.blocks) - 1
    mlp = getattr(model.blocks[last], "mlp", None)
    prefixes = tuple(block_prefix(last) + site for site in _LAST_MLP_SITES)
    if mlp is None or not (force or fastpaths.is_on(model, "end_only_last_mlp")) \
            or any(name.startswith(prefixes) for name, _ in fwd_hooks):
        yield
        return
    rows_cols: list[tuple[Tensor, Tensor, int]] = []

    def keep_end(module: Any, args: tuple) -> tuple | None:  # [R, P, d] -> [R, 1, d]
        x = args[0] if args else None
        if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[0] != end.shape[0]:
            return None
        rows, cols = torch.arange(x.shape[0], device=x.device), end.to(x.device)
        rows_cols.append((rows, cols, x.shape[1]))
        return (x[rows, cols][:, None], *args[1:])

    def scatter(module: Any, args: tuple, out: Any) -> Any:  # [R, 1, d] -> [R, P, d], zeros off END
        if not rows_cols or not isinstance(out, Tensor):
            return None
        rows, cols, length = rows_cols.pop()
        full = out.new_zeros((out.shape[0], length, out.shape[-1]))
        full[rows, cols] = out[:, 0]
        return full

    handles = [mlp.register_forward_pre_hook(keep_end), mlp.register_forward_hook(scatter)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def check_end_only_last_mlp(model: Any, tokens: Tensor, end: Tensor) -> None:
    """Once per model: does the END-only last MLP give the END residual of a full forward?

    The outcome goes to the fast-path record; an interrupted check records nothing.
    """
    name = "end_only_last_mlp"
    if fastpaths.get(model, name) is not None:
        return
    if getattr(model.blocks[-1], "mlp", None) is None:
        fastpaths.record(model, name, False, "the last block has no `mlp` module to restrict")
        return
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    try:
        with end_only_last_mlp(model, end, force=True):
            fast = final_residual(model, tokens)[rows, end.to(tokens.device)]
    except CHECK_ERRORS as e:
        fastpaths.record(model, name, False, f"the last MLP cannot run on END rows alone ({failure_reason(e)})")
        return
    full = final_residual(model, tokens)[rows, end.to(tokens.device)]
    diff = float((fast - full).abs().max())
    ok = bool(torch.allclose(fast, full, atol=1e-5, rtol=1e-4))
    fastpaths.record(model, name, ok, f"END residual {'equals' if ok else 'differs from'} a full forward's "
                                      f"(max difference {diff:.1e})")


def end_logits(model: Any, tokens: Int[Tensor, "batch pos"], end: Int[Tensor, " batch"],
               fwd_hooks: Sequence[Hook] = ()) -> Float[Tensor, "batch vocab"]:
    """Logits at one position per row (``end[i]``), unembedding nothing else."""
    check_end_only_last_mlp(model, tokens, end)
    with end_only_last_mlp(model, end, fwd_hooks):
        resid = final_residual(model, tokens, fwd_hooks)
    rows = torch.arange(tokens.shape[0], device=resid.device)
    return unembed(model, resid[rows, end.to(resid.device)])


def run_with_store(model: Any, tokens: Int[Tensor, "batch pos"], end: Int[Tensor, " batch"],
                   names: Sequence[str], fwd_hooks: Sequence[Hook] = ()) -> tuple[Tensor, dict[str, Tensor]]:
    """(END logits [batch, vocab], {hook name: activation}) in one forward pass."""
    store: dict[str, Tensor] = {}

    def saver(name: str):
        def save(x: Tensor, hook: Any) -> None:
            store[name] = x.detach().clone()
        return save

    hooks = [*fwd_hooks, *[(n, saver(n)) for n in names]]
    return end_logits(model, tokens, end, hooks), store


def tile(x: Tensor, n: int) -> Tensor:
    """[b, ...] -> [n*b, ...]: the batch repeated n times (row t*b + i = x[i])."""
    return x.repeat(n, *([1] * (x.ndim - 1)))


def rows_per_forward(model: Any, seq_len: int, memory_budget: int | None = None) -> int:
    """How many sequences one forward may hold within ``memory_budget`` bytes (>= 1).

    A rough upper bound of what is alive at once in a no-grad forward: a layer's
    residual-sized tensors, its MLP hidden layer and its attention scores, plus the
    END logits row.
    """
    if memory_budget is not None and (isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, float))
                                      or not memory_budget > 0):
        raise ValueError(f"memory_budget must be a positive number of bytes (e.g. 2 * 1024**3), "
                         f"got {memory_budget!r}")
    cfg = model.cfg
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
    elem = torch.finfo(cfg.dtype).bits // 8 if getattr(cfg, "dtype", None) is not None else 4
    d_mlp = getattr(cfg, "d_mlp", None) or 4 * cfg.d_model
    per_row = elem * (seq_len * (12 * cfg.d_model + 3 * d_mlp + 4 * cfg.n_heads * seq_len) + 2 * cfg.d_vocab)
    return max(1, int(budget // per_row))


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of ``items`` of at most ``size`` elements (the last may be shorter)."""
    for start in range(0, len(items), size):
        yield items[start:start + size]
