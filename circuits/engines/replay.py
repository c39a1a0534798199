"""Restarting a forward pass from a base run's block inputs (and its KV cache).

``BlockReplay`` records what each block received in a base run and reruns only
the blocks from the first layer an intervention changes; with ``skip=k`` it also
leaves out the positions before ``k`` (identical in the base run and every
variant), reading their keys and values from the base run's KV cache. Both are
checked once per model against the base run (fast paths ``block_replay`` and
``prefix_skip``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuits import compat
from circuits.engines import fastpaths
from circuits.engines.forward import (
    CHECK_ERRORS,
    Hook,
    StopForward,
    check_end_only_last_mlp,
    end_logits,
    end_only_last_mlp,
    failure_reason,
    run_with_store,
    tile,
    unembed,
)


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
                             f"blocks cannot be re-entered with their recorded arguments ({failure_reason(e)})")
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
            fastpaths.record(self.model, "prefix_skip", False, f"a suffix-only replay failed ({failure_reason(e)})")
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
            raise StopForward

        hooks = [*fwd_hooks, (stop_hook, stop)]
        try:
            if not self.ok or layer <= 0:
                self.model.run_with_hooks(tile(self.tokens, n), fwd_hooks=hooks, return_type=None)
            else:
                self._run(layer, n, hooks)
        except StopForward:
            return
        raise RuntimeError(f"hook {stop_hook!r} never fired")
