"""``load_model``: an embedded name, a local directory / GGUF file, or a hub name -> adapter."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from sparsecodes.devices import resolve_device
from sparsecodes.models.adapter import ModelAdapter
from sparsecodes.models.embedded import EMBEDDED_MODELS, ModelNotFoundError, load_embedded

_ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta", "mpnet"}
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A ``torch.dtype`` from a name like ``"bfloat16"``; None stays None (the model's own)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; use one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def _not_found(name: str, why: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"model {name!r} is not available: {why}. Embedded models that need no network: "
        f"{', '.join(EMBEDDED_MODELS)} (see `sparsecodes models`); otherwise pass a local "
        "directory holding config.json, the weights and the tokenizer files (or a .gguf file), "
        "or a hub name on a machine that can reach the model hub"
    )


def _is_causal(config: Any) -> bool:
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return True
    if archs:
        return False
    return config.model_type not in _ENCODER_TYPES


def _load_hf(source: str, *, local: bool, dtype: torch.dtype | None) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    kw: dict[str, Any] = {"local_files_only": local}
    path = Path(source)
    if local and path.is_file() and path.suffix == ".gguf":
        d, f = str(path.parent), path.name
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f, **kw)
        model = AutoModelForCausalLM.from_pretrained(
            d, gguf_file=f, **kw, **({"dtype": dtype} if dtype else {})
        )
        return model, tok
    config = AutoConfig.from_pretrained(source, **kw)
    cls = AutoModelForCausalLM if _is_causal(config) else AutoModel
    model = cls.from_pretrained(source, **kw, **({"dtype": dtype} if dtype else {}))
    tok = AutoTokenizer.from_pretrained(source, **kw)
    return model, tok


def _hub_resolves() -> bool:
    """Whether the model hub's host name resolves (a fast check that skips minutes of retries)."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.getaddrinfo(host or "huggingface.co", 443)
    except OSError:
        return False
    return True


def load_model(
    name_or_path: str | os.PathLike[str],
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
) -> ModelAdapter:
    """Load a model with named hook points.

    ``name_or_path`` is an embedded name (:data:`EMBEDDED_MODELS`: ``smollm2-135m``,
    ``minilm-l6``, ``tiny-llama``; never uses the network), a local transformers directory or
    ``.gguf`` file, or a model-hub name (needs the network unless already in the local cache).
    ``device="auto"`` takes CUDA when present; ``dtype=None`` keeps the weights' dtype.
    Raises :class:`ModelNotFoundError` (a ``ValueError``) when the weights cannot be found.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    name = os.fspath(name_or_path)
    if name in EMBEDDED_MODELS:
        model, tok = load_embedded(name, dtype=dt)
    elif Path(name).exists():
        try:
            model, tok = _load_hf(name, local=True, dtype=dt)
        except (OSError, ValueError) as e:
            raise _not_found(name, f"the local path could not be loaded ({e})") from e
    else:
        try:  # the local hub cache first: no network
            model, tok = _load_hf(name, local=True, dtype=dt)
        except (OSError, ValueError) as e:
            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
            if offline:
                raise _not_found(
                    name,
                    "it is neither an embedded name, a local path nor in the local hub cache, "
                    "and HF_HUB_OFFLINE is set",
                ) from e
            if not _hub_resolves():
                raise _not_found(
                    name,
                    "it is neither an embedded name, a local path nor in the local hub cache, "
                    "and the model hub cannot be reached (no network)",
                ) from e
            try:
                model, tok = _load_hf(name, local=False, dtype=dt)
            except (OSError, ValueError) as e:
                raise _not_found(
                    name,
                    "it is neither an embedded name nor a local path, and the model hub did not "
                    f"provide it ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                ) from e
    return ModelAdapter(model.to(dev), tok, name=name)
