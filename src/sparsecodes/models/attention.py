"""Attention internals of one block: the pattern and the per-head values that make ``attn.heads``.

For a llama-style attention layer the per-head output before the output projection (our hook
``blocks.{i}.attn.heads``) is, for query head ``h`` at destination position ``t``::

    z_h(t) = sum_s A_h(t, s) * v_h(s)

with ``A_h`` the softmax attention pattern (causal and padding masks applied) and ``v_h(s)`` the
value vector of the key/value head that query head ``h`` reads (grouped-query attention:
``n_heads / n_kv_heads`` query heads share one key/value head, query head ``h`` reads key/value head
``h // (n_heads / n_kv_heads)``, as Hugging Face's ``repeat_kv``).

:func:`attention_internals` reads ``A`` and ``v`` from the model's own computation, not a
re-implementation: the value projection's output is captured with a forward hook on ``v_proj``
(values get no rotary embedding), and the pattern is the attention weights that the layer returns
when it runs with the ``eager`` attention implementation (the model is switched to it for the call
and switched back after). So masks, scaling, rotary embeddings and any soft-capping are exactly
the model's; ``z`` is captured in the same pass, so ``A @ v == z`` up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sparsecodes.models.adapter import ModelAdapter


@dataclass
class AttentionInternals:
    """One block's attention on a batch (``H`` query heads, ``d`` = ``d_head``).

    ``pattern`` ``[B, H, T_dst, T_src]`` attention weights (rows sum to 1 over unmasked sources);
    ``values`` ``[B, T_src, H, d]`` value vectors per *query* head (key/value heads repeated);
    ``z`` ``[B, T, H, d]`` the ``attn.heads`` activation of the same pass.
    """

    pattern: Tensor
    values: Tensor
    z: Tensor


def attention_internals(
    adapter: ModelAdapter,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    layer: int,
) -> AttentionInternals:
    """Pattern, values and ``attn.heads`` of block ``layer`` (llama-style decoders only).

    One forward pass that stops after the block's attention. Raises ``ValueError`` for another
    architecture family or a layer out of range.
    """
    if adapter.family != "llama":
        raise ValueError(
            f"attention internals are implemented for llama-style decoders; {adapter.name!r} is "
            f"a {adapter.family} model (use a llama-family model such as smollm2-135m)"
        )
    if not 0 <= layer < adapter.n_layers:
        raise ValueError(f"layer {layer} is out of range; {adapter.name} has {adapter.n_layers}")
    attn = adapter.blocks[layer].self_attn
    got: dict[str, Tensor] = {}

    def grab_values(_m: Any, _args: Any, out: Tensor) -> None:
        got["v"] = out

    def grab_pattern(_m: Any, _args: Any, out: Any) -> None:
        if isinstance(out, tuple) and len(out) > 1 and isinstance(out[1], Tensor):
            got["pattern"] = out[1]

    model = adapter.model
    # Hugging Face keeps the chosen implementation in this config field; there is no public getter
    previous = getattr(model.config, "_attn_implementation", None)
    handles = [
        attn.v_proj.register_forward_hook(grab_values),
        attn.register_forward_hook(grab_pattern),  # before the adapter's stop hook
    ]
    try:
        if previous != "eager":
            model.set_attn_implementation("eager")
        heads, out = f"blocks.{layer}.attn.heads", f"blocks.{layer}.attn_out"
        z = adapter.run(input_ids, attention_mask, [heads, out])[heads]
    finally:
        for h in handles:
            h.remove()
        if previous is not None and previous != "eager":
            model.set_attn_implementation(previous)
    if "pattern" not in got:
        raise RuntimeError(
            f"block {layer}'s attention returned no weights under the eager implementation; "
            "this transformers version is not supported for attention attribution"
        )
    b, t = z.shape[:2]
    v = got["v"].view(b, t, adapter.n_kv_heads, adapter.d_head)
    v = v.repeat_interleave(adapter.n_heads // adapter.n_kv_heads, dim=2)
    return AttentionInternals(pattern=got["pattern"], values=v, z=z)


def check_recomposition(internals: AttentionInternals) -> float:
    """Largest ``|A @ v - z|`` relative to ``max |z|`` (0 for an exact capture); float64."""
    a, v, z = (x.double() for x in (internals.pattern, internals.values, internals.z))
    rebuilt = torch.einsum("bhts,bshd->bthd", a, v)
    return float((rebuilt - z).abs().max() / z.abs().max().clamp(min=1e-30))
