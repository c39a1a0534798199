"""The forward pass every engine shares: hooks in, logits at END out.

Engines never ask the model for full logits: the run is stopped where the final
norm begins, and only the rows the metric reads (each prompt's END) are pushed
through the final norm and the unembedding. With vocabularies of 50k tokens that
is most of a small model's forward pass saved.

Batches are *tiled*: ``T`` interventions x ``b`` prompts run as one batch of
``T*b`` rows, row ``t*b + i`` being prompt ``i`` under intervention ``t``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuits import compat
from circuits.engines import fastpaths
from circuits.engines.sites import block_prefix, hook_at

Hook = tuple[str, Callable[[Tensor, Any], Tensor | None]]

DEFAULT_MEMORY_BUDGET = 2 * 1024**3  # bytes of activations one tiled forward may hold


class _Stop(Exception):
    """Raised from the final-norm hook: everything after it is done by hand."""


def final_residual(model: Any, tokens: Int[Tensor, "batch pos"], fwd_hooks: Sequence[Hook] = ()) -> Tensor:
    """Residual stream entering the final norm, [batch, pos, d_model], under ``fwd_hooks``."""
    box: dict[str, Tensor] = {}

    def grab(x: Tensor, hook: Any) -> None:
        box["resid"] = x
        raise _Stop

    try:
        model.run_with_hooks(tokens, fwd_hooks=[*fwd_hooks, (hook_at("final_in"), grab)], return_type=None)
    except _Stop:
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


def _failure(e: BaseException) -> str:
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
        fastpaths.record(model, name, False, f"the last MLP cannot run on END rows alone ({_failure(e)})")
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
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _is_cache(x: Any) -> bool:
    return type(x).__name__.endswith("Cache")


class _NoSuffix(Exception):
    """A block argument with a sequence axis this module does not know how to cut."""


def _suffix_arg(name: str | None, x: Any, skip: int, length: int) -> Any:
    """A block argument as the query positions ``skip..length-1`` alone need it.

    Positions and rotary tables are cut to the suffix; 4-D attention masks keep
    every key column and lose the first ``skip`` query rows; 2-D (padding) masks
    index keys only and stay. Anything else with a sequence axis raises _NoSuffix.
    """
    if isinstance(x, tuple):
        if name == "position_embeddings":
            return tuple(t[..., skip:, :] for t in x)
        return tuple(_suffix_arg(None, v, skip, length) for v in x)
    if not isinstance(x, Tensor) or _is_cache(x):
        return x
    if name in ("position_ids", "cache_position"):
        return x[..., skip:]
    if x.ndim == 4 and x.shape[-2] == length and name in ("attention_mask", None):
        return x[..., skip:, :]
    if name == "attention_mask" and x.ndim == 2:
        return x
    if length in x.shape:
        raise _NoSuffix(name)
    return x


def _tile_any(x: Any, b: int, n: int) -> Any:
    """Tile tensors whose leading axis is the batch (size b); drop KV caches; leave everything else."""
    if _is_cache(x):
        return None  # a replayed block must not read or extend the base run's KV cache
    if isinstance(x, torch.Tensor) and x.ndim >= 1 and x.shape[0] == b and (b > 1 or x.ndim >= 2):
        return tile(x, n)
    if isinstance(x, tuple):
        return tuple(_tile_any(v, b, n) for v in x)
    return x


class BlockReplay:
    """Restart a forward pass at any layer from a base run's block inputs.

    The base run (``tokens``) records what each block received (hidden states and
    the rest: masks, rotary tables, ...). ``end_logits_from(layer, n, hooks)`` then
    runs only blocks ``layer..`` on ``n`` tiled copies of the recorded residual,
    with ``hooks`` active, and unembeds END rows - exact, because every block
    before ``layer`` would have seen the unmodified base run anyway. Checked once
    per model (fast path ``block_replay``); where replaying does not reproduce the
    base logits, it runs full forward passes instead.

    ``skip=k`` runs only positions ``k..`` and gives the blocks the base run's
    keys and values of positions ``< k`` (its KV cache): exact when no hook
    changes anything before position ``k``, which the caller guarantees (hooks
    then see activations of positions ``k..`` only). Checked once per model (fast
    path ``prefix_skip``); where it does not reproduce the base logits, ``skip``
    is ignored.
    """

    def __init__(self, model: Any, tokens: Int[Tensor, "batch pos"], end: Int[Tensor, " batch"],
                 store: Sequence[str] = ()):
        """``store``: hook names whose base-run activations to keep in ``self.store`` (same pass)."""
        self.model, self.tokens, self.end = model, tokens, end
        self.calls: list[tuple[tuple, dict]] = []
        kv_status = compat.ensure_kv_cache(model)  # before the base run: it must fill its KV cache
        check_end_only_last_mlp(model, tokens, end)  # its check passes run the blocks: not while recording
        handles = []

        def grab(module: Any, args: tuple, kwargs: dict) -> None:
            self.calls.append((args, dict(kwargs)))

        for block in model.blocks:
            handles.append(block.register_forward_pre_hook(grab, with_kwargs=True))
        try:
            self.base_logits, self.store = run_with_store(model, tokens, end, list(store))
        finally:
            for h in handles:
                h.remove()
        if len(self.calls) != len(model.blocks):
            fastpaths.record(model, "block_replay", False, f"one forward called the blocks {len(self.calls)} "
                                                           f"times for {len(model.blocks)} blocks")
        elif fastpaths.get(model, "block_replay") is None:
            self._check_replay()
        self.ok = len(self.calls) == len(model.blocks) and fastpaths.is_on(model, "block_replay")
        caches = [x for x in (*self.calls[0][0], *self.calls[0][1].values()) if _is_cache(x)] if self.ok else []
        self._cache = caches[0] if caches else None
        if self.ok and fastpaths.get(model, "prefix_skip") is None:
            if kv_status.startswith("unavailable"):
                fastpaths.record(model, "prefix_skip", False, f"KV cache {kv_status}")
            elif self._cache is None:
                fastpaths.record(model, "prefix_skip", False, "the blocks receive no KV cache to read a prefix from")
            elif int(self.end.min()) >= 2:  # checked on the first base run long enough to cut
                self._check_suffix()
        self.suffix_ok = self._cache is not None and fastpaths.is_on(model, "prefix_skip")
        self._skip_ok: dict[int, bool] = {}

    @torch.no_grad()
    def _check_replay(self) -> None:
        try:
            again = self._run(0, 1, ())
        except CHECK_ERRORS as e:
            fastpaths.record(self.model, "block_replay", False,
                             f"blocks cannot be re-entered with their recorded arguments ({_failure(e)})")
            return
        diff = float((again - self.base_logits).abs().max())
        ok = bool(torch.allclose(again, self.base_logits, atol=1e-4, rtol=1e-4))
        fastpaths.record(self.model, "block_replay", ok, f"replayed logits {'equal' if ok else 'differ from'} "
                                                         f"the base run's (max difference {diff:.1e})")

    @torch.no_grad()
    def _check_suffix(self) -> None:
        skip = int(self.end.min()) // 2
        starts = sorted({0, len(self.model.blocks) // 2})
        try:
            runs = [self._run(s, 1, (), skip=skip) for s in starts]
        except _NoSuffix as e:
            fastpaths.record(self.model, "prefix_skip", False, f"cannot cut the prefix: {e}")
            return
        except CHECK_ERRORS as e:
            fastpaths.record(self.model, "prefix_skip", False, f"a suffix-only replay failed ({_failure(e)})")
            return
        diff = max(float((r - self.base_logits).abs().max()) for r in runs)
        ok = all(torch.allclose(r, self.base_logits, atol=1e-4, rtol=1e-4) for r in runs)
        fastpaths.record(self.model, "prefix_skip", ok, f"suffix-only logits {'equal' if ok else 'differ from'} "
                                                        f"the base run's (max difference {diff:.1e})")

    def supports_skip(self, skip: int) -> bool:
        """Can ``end_logits_from(..., skip=skip)`` run positions ``skip..`` alone on this base run?"""
        if not (self.suffix_ok and 0 < skip <= int(self.end.min())):
            return False
        if skip not in self._skip_ok:
            length = self.tokens.shape[1]
            try:
                self._prefix_cache(skip, 1)
                for args, kwargs in self.calls:
                    for name, x in [*((None, a) for a in args[1:]), *kwargs.items()]:
                        _suffix_arg(name, x, skip, length)
                self._skip_ok[skip] = True
            except _NoSuffix:
                self._skip_ok[skip] = False
        return self._skip_ok[skip]

    def _prefix_cache(self, skip: int, n: int) -> Any:
        """A fresh KV cache holding the base run's keys/values of positions < skip, tiled n times."""
        from transformers import DynamicCache

        length = self.tokens.shape[1]
        cache = DynamicCache()
        for i, layer in enumerate(self._cache.layers):
            if layer.keys is None or layer.keys.shape[-2] != length:
                raise _NoSuffix(f"KV cache layer {i} does not hold the keys of all {length} positions")
            cache.update(tile(layer.keys[:, :, :skip], n), tile(layer.values[:, :, :skip], n), i)
        return cache

    def _run(self, layer: int, n: int, fwd_hooks: Sequence[Hook], hidden: Tensor | None = None,
             skip: int = 0) -> Tensor:
        b, length = self.tokens.shape
        if hidden is None:
            args0, _ = self.calls[layer]
            h = tile((args0[0] if args0 else self.calls[layer][1]["hidden_states"])[:, skip:], n)
        else:
            h = hidden
        cache = self._prefix_cache(skip, n) if skip else None
        end = tile(self.end, n) - skip

        def prepare(name: str | None, x: Any) -> Any:
            if skip and _is_cache(x):
                return cache
            return _tile_any(_suffix_arg(name, x, skip, length) if skip else x, b, n)

        with self.model.hooks(fwd_hooks=list(fwd_hooks)), end_only_last_mlp(self.model, end, fwd_hooks):
            for i in range(layer, len(self.model.blocks)):
                args, kwargs = self.calls[i]
                kw = {k: prepare(k, v) for k, v in kwargs.items() if k != "hidden_states"}
                if "use_cache" in kw:
                    kw["use_cache"] = bool(skip)
                rest = tuple(prepare(None, a) for a in args[1:])
                if args:
                    out = self.model.blocks[i](h, *rest, **kw)
                else:
                    out = self.model.blocks[i](hidden_states=h, **kw)
                h = out[0] if isinstance(out, tuple) else out
        rows = torch.arange(h.shape[0], device=h.device)
        return unembed(self.model, h[rows, end.to(h.device)])

    def end_logits_from(self, layer: int, n: int, fwd_hooks: Sequence[Hook] = (),
                        skip: int = 0) -> Float[Tensor, "rows vocab"]:
        """END logits [n*b, vocab] of ``n`` tiled copies of the base run, restarted at ``layer``.

        ``skip`` (see the class docstring) is used only where ``supports_skip(skip)``;
        callers check that to know which shapes their hooks will see.
        """
        if skip and self.supports_skip(skip):
            return self._run(max(layer, 0), n, fwd_hooks, skip=skip)
        if not self.ok or layer <= 0:
            return end_logits(self.model, tile(self.tokens, n), tile(self.end, n), fwd_hooks)
        return self._run(layer, n, fwd_hooks)

    def end_logits_given(self, layer: int, hidden: Float[Tensor, "rows pos d_model"]) -> Float[Tensor, "rows vocab"] | None:
        """END logits when block ``layer`` receives ``hidden`` ([n*b, pos, d_model], tiled rows)
        instead of the base run's input; ``None`` where this model cannot be replayed."""
        if not self.ok or not 0 < layer <= len(self.model.blocks):
            return None
        n = hidden.shape[0] // self.tokens.shape[0]
        if layer == len(self.model.blocks):
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            return unembed(self.model, hidden[rows, tile(self.end, n).to(hidden.device)])
        return self._run(layer, n, (), hidden)

    def run_until(self, layer: int, n: int, fwd_hooks: Sequence[Hook], stop_hook: str) -> None:
        """Run ``n`` tiled copies from ``layer`` (0: the whole model) with ``fwd_hooks`` active and
        stop as soon as ``stop_hook`` has fired (for passes that only record activations)."""

        def stop(x: Tensor, hook: Any) -> None:
            raise _Stop

        hooks = [*fwd_hooks, (stop_hook, stop)]
        try:
            if not self.ok or layer <= 0:
                self.model.run_with_hooks(tile(self.tokens, n), fwd_hooks=hooks, return_type=None)
            else:
                self._run(layer, n, hooks)
        except _Stop:
            return
        raise RuntimeError(f"hook {stop_hook!r} never fired")
