"""Model loading: ``load_model(spec)`` -> transformer-lens 4.x ``TransformerBridge``.

``spec`` is one of
  * ``zoo:<name>`` or ``zoo:<name>@<step>`` - a bundled zoo organism (offline);
  * a local directory holding a Hugging Face checkpoint (config.json + weights);
  * a Hugging Face hub id, optionally ``id@revision`` (needs the network unless
    it is already in the local HF cache).

Numerics convention: **raw HF** (``NUMERICS = "raw-hf"``). We boot the bridge
without ``enable_compatibility_mode()``: logits and activations equal the HF
model's (eager attention), which holds for every architecture the bridge
supports (compatibility mode is refused by some adapters and by offloaded
models), edited weights save back as ordinary HF checkpoints, and nothing is
folded or centred. Directions or means computed here must not be mixed with
ones computed under HookedTransformer's folded convention. ``model_info``
records the convention with every result.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from circuits import NUMERICS, compat


class ModelLoadError(RuntimeError):
    """A model spec that cannot be loaded, with the reason and what to do."""


def _resolve_dtype(dtype: Any):
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float64": torch.float64}
    if str(dtype) in names:
        return names[str(dtype)]
    raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)} or a torch.dtype")


def default_device() -> str:
    """The best available torch device name: "cuda", else "mps", else "cpu"."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (honours HF_ENDPOINT, HF_HUB_OFFLINE)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_spec(spec: str) -> tuple[str, str, str | None]:
    """``(kind, location, revision)`` for a spec; kind is 'zoo', 'local' or 'hub'.

    Raises ModelLoadError/KeyError with a clear message for a bad spec.
    """
    if not isinstance(spec, (str, os.PathLike)) or not str(spec).strip():
        raise ModelLoadError(f"model spec must be a non-empty string, got {spec!r}")
    spec = os.fspath(spec).strip()
    if spec.startswith("zoo:"):
        from circuits.zoo import zoo_path

        return "zoo", str(zoo_path(spec[4:])), None
    p = Path(spec).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelLoadError(
                f"directory {str(p)!r} has no config.json, so it is not a Hugging Face checkpoint "
                "(expected config.json, model.safetensors and tokenizer files)"
            )
        return "local", str(p.resolve()), None
    if spec.startswith((".", "/", "~")) or os.sep in spec.replace("/", "", 1) or p.exists():
        raise ModelLoadError(f"no such model directory: {spec!r}")
    hub_id, _, revision = spec.partition("@")
    return "hub", hub_id, revision or None


def _cached_snapshot(hub_id: str, revision: str | None) -> str | None:
    """The local HF cache's copy of a hub model (None if it has none)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        path = snapshot_download(hub_id, revision=revision, local_files_only=True)
    except HFValidationError as e:
        raise ModelLoadError(f"{hub_id!r} is not a local directory, a zoo model (zoo:<name>) or a valid "
                             f"Hugging Face hub id: {e}") from None
    except OSError:  # not in the local cache
        return None
    return path if (Path(path) / "config.json").is_file() else None


_GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")
# files that carry a vocabulary, one of which a checkpoint's tokenizer needs beside tokenizer_config.json
_VOCAB_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "vocab.txt", "spiece.model",
                "sentencepiece.bpe.model")


def check_tokenizer_files(directory: str) -> None:
    """Raise ModelLoadError unless ``directory`` holds a tokenizer that loads as saved.

    Without ``tokenizer_config.json`` the special tokens (BOS, padding, unknown) are
    unknown, and without a vocabulary file the loader falls back to another
    model's tokenizer: both would load silently and tokenize to garbage.
    """
    d = Path(directory)
    vocab = [f for f in _VOCAB_FILES if (d / f).is_file()]
    has_config = (d / "tokenizer_config.json").is_file()
    if vocab and has_config:
        return
    found = sorted(p.name for p in d.iterdir() if p.is_file())
    if not vocab:
        what = "no tokenizer (none of " + ", ".join(_VOCAB_FILES) + ")"
    else:
        what = f"{vocab[0]} but no tokenizer_config.json, so its special tokens (BOS, padding, unknown) are unknown"
    raise ModelLoadError(f"checkpoint directory {str(d)!r} has {what}; it holds {found}. Save the tokenizer "
                         "with the model (tokenizer.save_pretrained(directory)).")


def load_local_tokenizer(directory: str):
    """The tokenizer of a local checkpoint, honouring a generic declared class.

    transformers 5 picks the tokenizer class from the model type (Qwen2 ->
    Qwen2Tokenizer), which mangles a word-level ``tokenizer.json``. When the
    checkpoint declares a generic class, load exactly its ``tokenizer.json``.
    Returns None to let the bridge load the tokenizer its usual way.
    """
    import json

    check_tokenizer_files(directory)
    cfg_path = Path(directory) / "tokenizer_config.json"
    declared = json.loads(cfg_path.read_text()).get("tokenizer_class")
    if declared not in _GENERIC_TOKENIZERS or not (Path(directory) / "tokenizer.json").is_file():
        return None
    from transformers import PreTrainedTokenizerFast

    # add_bos_token=True: the bridge keeps a tokenizer that already has it, instead of
    # re-creating one through AutoTokenizer (which would pick the model-type class again)
    return PreTrainedTokenizerFast.from_pretrained(directory, add_bos_token=True)


def resolve_device(device: str | None) -> str:
    """``device`` checked against what this machine has (default: cuda, mps or cpu)."""
    import torch

    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelLoadError(f"unknown device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was asked for, but torch {torch.__version__} sees no CUDA GPU "
                             "here; use device='cpu' (or leave it unset)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelLoadError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelLoadError(f"device {device!r} was asked for, but MPS is not available here")
    return str(dev)


def load_model(spec: str, device: str | None = None, dtype: Any = None, **boot_kwargs: Any):
    """Load ``spec`` as a ``TransformerBridge`` in eval mode (raw-HF numerics).

    Args:
        spec: ``zoo:<name>[@step]``, a local HF checkpoint directory, or a hub id[@revision].
        device: "cpu", "cuda", ... (default: cuda if available, else cpu), or "auto": a model too large
            for one GPU is split across every visible GPU (and the CPU if they do not suffice) by
            accelerate's ``device_map="auto"``; ``boot_kwargs`` may instead give ``device_map``,
            ``n_devices`` or ``max_memory`` themselves (transformer-lens passes them to HF).
        dtype: torch dtype or name ("float32", "bfloat16", ...); default float32.
        boot_kwargs: passed on to ``TransformerBridge.boot_transformers``.
    """
    kind, location, revision = resolve_spec(spec)
    if kind == "hub":
        cached = _cached_snapshot(location, revision)
        if cached is not None:
            location, revision = cached, None
        elif not hub_reachable():
            raise ModelLoadError(
                f"cannot load {spec!r}: it is not a local directory or zoo model, so it would come from "
                "the Hugging Face hub, which needs a network connection this machine does not have "
                "(and it is not in the local HF cache). Pass a local directory holding an HF checkpoint "
                "(config.json + model.safetensors + tokenizer), or a bundled zoo model such as "
                "'zoo:toyworld' (see `circuits zoo list`)."
            )
    from safetensors import SafetensorError
    from transformer_lens.model_bridge import TransformerBridge

    torch_dtype = _resolve_dtype(dtype)
    if device == "auto":
        boot_kwargs.setdefault("device_map", "auto")
    split = any(boot_kwargs.get(k) is not None for k in ("device_map", "n_devices", "max_memory"))
    if split and device not in (None, "auto"):
        given = [k for k in ("device_map", "n_devices", "max_memory") if boot_kwargs.get(k) is not None]
        raise ModelLoadError(f"device={device!r} and a device_map split ({', '.join(given)}) exclude each other: "
                             "give one")
    dev = None if split else resolve_device(device)
    if revision is not None:
        boot_kwargs.setdefault("revision", revision)
    if kind in ("zoo", "local") and "tokenizer" not in boot_kwargs:
        tok = load_local_tokenizer(location)
        if tok is not None:
            boot_kwargs["tokenizer"] = tok
    try:
        model = TransformerBridge.boot_transformers(location, device=dev, dtype=torch_dtype, **boot_kwargs)
    except (OSError, ValueError, SafetensorError) as e:  # unreadable files: a truncated or corrupt checkpoint
        raise ModelLoadError(f"could not load {spec!r} from {location!r}: {type(e).__name__}: {e}") from e
    model.eval()
    model.circuits_spec = str(spec)  # type: ignore[attr-defined]
    model.circuits_device_map = (getattr(model.original_model, "hf_device_map", None)  # type: ignore[attr-defined]
                                 or boot_kwargs.get("device_map") if split else None)
    compat.ensure_kv_cache(model)  # cached forwards (sampling, prefix skipping) must see the prefix
    return model


def n_kv_heads(model: Any) -> int:
    """Key/value heads per layer: the KV groups under grouped-query attention, else the head count."""
    kv = getattr(model.cfg, "n_key_value_heads", None)
    return int(kv) if kv else int(model.cfg.n_heads)


def model_info(model: Any) -> dict[str, Any]:
    """Plain-data description of a loaded model, recorded with every result."""
    cfg = model.cfg
    first = next(iter(model.parameters()))
    return {
        "spec": getattr(model, "circuits_spec", None),
        "numerics": NUMERICS,
        "architecture": getattr(cfg, "architecture", None) or type(model.original_model).__name__,
        "n_layers": int(cfg.n_layers),
        "n_heads": int(cfg.n_heads),
        "n_kv_heads": n_kv_heads(model),
        "d_model": int(cfg.d_model),
        "d_head": int(cfg.d_head),
        "d_vocab": int(cfg.d_vocab),
        "dtype": str(first.dtype).replace("torch.", ""),
        "device": str(first.device),
        "device_map": getattr(model, "circuits_device_map", None),  # a split across devices (device="auto")
        "kv_cache": compat.kv_cache_status(model),
    }
