"""Where transformer-lens and transformers disagree across versions, and how we bridge it.

One gap is known and handled here: the **KV cache argument**. transformers 5.24
renamed the cache that decoder layers hand to their attention from
``past_key_values`` to ``cache`` (the old name stays a deprecated alias at the
model's entry point until 5.40). transformer-lens 4.3's attention bridges, which
replace the HF attention modules, still read only ``past_key_values`` (or
``layer_past``), so on 5.24 they never write their keys and values into the
cache: a cached forward attends to the new tokens alone. Incremental sampling
then ignores the prompt, and a forward restarted from a cached prefix sees no
prefix.

:func:`ensure_kv_cache` checks this once per model, by behaviour rather than by
version number: a two-token forward with ``use_cache=True`` must leave keys in
the cache. Where it does not, each attention bridge's cache update is wrapped to
read ``cache`` too, and the check runs again. The outcome is kept per model and
reported by :func:`kv_cache_status` (results record it through the fast-path
record, see ``circuits.engines.fastpaths``).
"""

from __future__ import annotations

import inspect
import logging
import weakref
from typing import Any

import torch

log = logging.getLogger(__name__)

_STATUS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> status string


def hf_model(model: Any) -> Any:
    """The Hugging Face model inside a TransformerBridge (or the model itself)."""
    return getattr(model, "original_model", model)


def cache_kwarg(hf: Any) -> str:
    """The name this HF model's ``forward`` takes its KV cache under: ``cache`` (5.24+) or ``past_key_values``."""
    params = inspect.signature(hf.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(output: Any) -> Any:
    """The KV cache an HF model output carries, under either name (None if it has none)."""
    for name in ("cache", "past_key_values"):
        value = getattr(output, name, None) if not isinstance(output, dict) else output.get(name)
        if value is not None:
            return value
    return None


def cached_forward(hf: Any, input_ids: torch.Tensor, cache: Any = None) -> Any:
    """``hf(input_ids)`` extending ``cache`` (None: start one); returns the HF output."""
    return hf(input_ids, use_cache=True, **({cache_kwarg(hf): cache} if cache is not None else {}))


def cache_length(cache: Any) -> int:
    """Positions held by a KV cache (0 for an empty or missing one)."""
    if cache is None:
        return 0
    layers = getattr(cache, "layers", None)
    if layers is not None:
        keys = getattr(layers[0], "keys", None) if len(layers) else None
        return 0 if keys is None or keys.numel() == 0 else int(keys.shape[-2])
    return int(cache.get_seq_length())


def _reads_cache_kwarg(update: Any) -> Any:
    """Wrap an attention bridge's ``_update_kv_cache`` so that it also finds the cache under ``cache``."""

    def update_kv_cache(k: torch.Tensor, v: torch.Tensor, **kwargs: Any):
        if kwargs.get("past_key_values") is None and kwargs.get("layer_past") is None \
                and kwargs.get("cache") is not None:
            kwargs = {**kwargs, "past_key_values": kwargs["cache"]}
        return update(k, v, **kwargs)

    update_kv_cache.circuits_shim = True  # type: ignore[attr-defined]
    return update_kv_cache


def _probe(hf: Any) -> bool:
    device = next(hf.parameters()).device
    ids = torch.zeros((1, 2), dtype=torch.long, device=device)
    with torch.no_grad():
        out = cached_forward(hf, ids)
    return cache_length(output_cache(out)) == 2


def ensure_kv_cache(model: Any, recheck: bool = False) -> str:
    """Make ``model``'s cached forward keep its keys and values; once per model (``recheck``: again).

    Returns the status: ``"native"`` (works as loaded), ``"shimmed"`` (works after
    wrapping the attention bridges' cache update, see the module docstring) or
    ``"unavailable: <reason>"`` (a cached forward cannot be trusted on this model;
    callers must not use one).
    """
    if model in _STATUS and not recheck:
        return _STATUS[model]
    hf = hf_model(model)
    if _probe(hf):
        status = "native"
    else:
        bridges = [m for m in hf.modules() if callable(getattr(m, "_update_kv_cache", None))]
        for m in bridges:
            if not getattr(m._update_kv_cache, "circuits_shim", False):
                m._update_kv_cache = _reads_cache_kwarg(m._update_kv_cache)
        if bridges and _probe(hf):
            status = "shimmed"
            log.info("KV cache: transformer-lens attention ignored transformers' `cache` argument; "
                     "%d attention bridges now read it", len(bridges))
        else:
            status = "unavailable: a cached forward leaves the KV cache empty"
            log.warning("KV cache unavailable on %s: %s", type(hf).__name__, status)
    _STATUS[model] = status
    if hf is not model:
        _STATUS[hf] = status
    return status


def kv_cache_status(model: Any) -> str | None:
    """The status :func:`ensure_kv_cache` found for ``model`` (None: not checked yet)."""
    return _STATUS.get(model)
