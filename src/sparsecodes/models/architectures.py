"""Where each hook point lives inside a Hugging Face model, per architecture family.

An :class:`Architecture` names, for one block (layer) module, the sub-modules whose inputs or
outputs are the hook points of :mod:`sparsecodes.models.hooks`:

- ``resid_pre``  = the block's first input (forward pre-hook on the block)
- ``resid_post`` = the block's output (forward hook on the block)
- ``attn_out``   = output of ``attn_out_module`` (first element if it returns a tuple)
- ``mlp_in``     = first input of ``mlp_in_module`` (the MLP's input: after the norm that
  precedes it in pre-norm models; forward pre-hook)
- ``mlp_out``    = output of ``mlp_out_module``
- ``attn.heads`` = first input of ``heads_module`` (the attention output projection), reshaped
  from ``[..., n_heads * d_head]`` to ``[..., n_heads, d_head]``

Families:

- ``llama``: pre-norm decoders with ``self_attn.o_proj`` and ``mlp`` (Llama, Mistral, Qwen2/3,
  SmolLM, OLMo, ...). ``resid_post = resid_pre + attn_out + mlp_out`` exactly (``additive``),
  except for variants with extra sub-layer norms (Gemma 2/3), which are marked not additive.
- ``bert``: post-norm encoders (BERT, RoBERTa, MiniLM). ``attn_out`` is the attention output
  projection ``attention.output.dense`` and ``mlp_out`` the MLP's ``output.dense``, both before
  the residual add and LayerNorm, so ``resid_post = LN(LN(resid_pre + attn_out) + mlp_out)``
  (not additive).
- ``gpt2``: pre-norm GPT-2 (``attn.c_proj``, ``mlp``); additive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

# candidate attribute paths of the list of blocks, tried in order
_LAYER_PATHS = (
    "model.layers",
    "layers",
    "model.model.layers",
    "language_model.layers",
    "model.language_model.layers",
    "encoder.layer",
    "bert.encoder.layer",
    "roberta.encoder.layer",
    "transformer.h",
    "h",
)


def _get(obj: object, path: str) -> object | None:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


@dataclass(frozen=True)
class Architecture:
    """Accessors from one block module to the sub-modules that carry its hook points."""

    family: str
    attn_out_module: Callable[[nn.Module], nn.Module]
    mlp_out_module: Callable[[nn.Module], nn.Module]
    heads_module: Callable[[nn.Module], nn.Module]
    additive: bool
    """True when ``resid_post == resid_pre + attn_out + mlp_out`` for every block."""
    mlp_in_module: Callable[[nn.Module], nn.Module] = lambda b: b.mlp
    """The module whose first input is ``mlp_in`` (``mlp_out_module`` applied to its output
    chain gives ``mlp_out``)."""


LLAMA = Architecture(
    family="llama",
    attn_out_module=lambda b: b.self_attn,
    mlp_out_module=lambda b: b.mlp,
    heads_module=lambda b: b.self_attn.o_proj,
    additive=True,
)
LLAMA_EXTRA_NORMS = Architecture(
    family="llama",
    attn_out_module=LLAMA.attn_out_module,
    mlp_out_module=LLAMA.mlp_out_module,
    heads_module=LLAMA.heads_module,
    additive=False,
    mlp_in_module=LLAMA.mlp_in_module,
)
BERT = Architecture(
    family="bert",
    attn_out_module=lambda b: b.attention.output.dense,
    mlp_out_module=lambda b: b.output.dense,
    heads_module=lambda b: b.attention.output.dense,
    additive=False,
    mlp_in_module=lambda b: b.intermediate,
)
GPT2 = Architecture(
    family="gpt2",
    attn_out_module=lambda b: b.attn,
    mlp_out_module=lambda b: b.mlp,
    heads_module=lambda b: b.attn.c_proj,
    additive=True,
)


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The ``nn.ModuleList`` of transformer blocks of ``model``; ``ValueError`` if none found."""
    for path in _LAYER_PATHS:
        blocks = _get(model, path)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            return blocks
    raise ValueError(
        f"cannot find the transformer blocks of {type(model).__name__}: looked for "
        f"{', '.join(_LAYER_PATHS)}; supported families are llama-style decoders, "
        "BERT-style encoders and GPT-2"
    )


def detect_architecture(block: nn.Module) -> Architecture:
    """The :class:`Architecture` of a block module, by its structure."""
    if _get(block, "self_attn.o_proj") is not None and _get(block, "mlp") is not None:
        extra = any(
            hasattr(block, n)
            for n in ("post_feedforward_layernorm", "pre_feedforward_layernorm", "post_attn_norm")
        )
        return LLAMA_EXTRA_NORMS if extra else LLAMA
    if (
        _get(block, "attention.output.dense") is not None
        and _get(block, "output.dense") is not None
    ):
        return BERT
    if _get(block, "attn.c_proj") is not None and _get(block, "mlp") is not None:
        return GPT2
    raise ValueError(
        f"unsupported block type {type(block).__name__}: expected a llama-style decoder "
        "layer (self_attn.o_proj, mlp), a BERT layer (attention.output.dense, output.dense) "
        "or a GPT-2 block (attn.c_proj, mlp)"
    )
