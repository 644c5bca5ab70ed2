"""Attention-output coders: each latent's share per head, and direct feature attribution (DFA).

An attention-output coder reads ``blocks.{i}.attn.heads``, the per-head outputs before the output
projection, concatenated: ``x = [z_0, ..., z_{H-1}]`` ``[H * d_head]`` (head ``h`` in columns
``h * d_head : (h + 1) * d_head``), as in the attention-output SAE paper (Kissane et al., 2024,
arXiv 2406.17759), where SAELens calls this hook ``hook_z``.

**Head share** (weight-based head attribution): the norm of each head's block of a latent's
decoder atom, normalised over heads::

    share[f, h] = ||W_dec[f, h-block]|| / sum_h' ||W_dec[f, h'-block]||

(``squared=True`` uses squared norms instead, i.e. the fraction of the atom's squared norm that
lies in each head's block). The shares of a latent sum to 1; an all-zero atom gets all-zero
shares.

**Direct feature attribution**: a linear-encoder coder (relu, topk, batchtopk,
matryoshka_batchtopk, jumprelu) computes the pre-activation ``pre_f(x) = x @ W[:, f] + b[f]`` with,
in the model's own units, ``W = s * W_enc`` and ``b = b_enc - b_dec @ W_enc`` (``s`` the coder's
input scale). With ``z_h(t) = sum_s A_h(t, s) v_h(s)`` (see
:mod:`sparsecodes.models.attention`) the pre-activation at destination ``t`` splits exactly into
one term per (head, source position) plus the bias::

    pre_f(t) = sum_h sum_s A_h(t, s) * (v_h(s) . W[h-block, f]) + b[f]

:func:`direct_feature_attribution` returns these terms in float64; they sum to the coder's own
pre-activation up to float32 rounding of the model's pass and the coder's matmul.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sparsecodes.encoders.relu import LinearEncoderParams
from sparsecodes.models.attention import AttentionInternals, attention_internals
from sparsecodes.models.hooks import is_hook_name

__all__ = [
    "DFA",
    "attention_layer",
    "direct_feature_attribution",
    "head_shares",
    "linear_preactivation",
    "model_dfa",
    "preactivation",
    "top_sources",
]


def attention_layer(hook: str | None) -> int | None:
    """The block index of an ``attn.heads`` hook (``blocks.3.attn.heads`` -> 3), else None."""
    if hook is None or not is_hook_name(hook) or not hook.endswith(".attn.heads"):
        return None
    return int(hook.split(".")[1])


def head_shares(coder: Any, n_heads: int, *, squared: bool = False) -> Tensor:
    """``[n_latents, n_heads]`` share of each latent's decoder atom per head block (rows sum to 1).

    ``coder.W_dec`` ``[n_latents, n_heads * d_head]``. Uses the L2 norm of each block (the
    attention-output SAE paper's weight-based head attribution) or, with ``squared``, its square.
    Scaling the atom (or the coder's input scale) leaves the shares unchanged.
    """
    w = coder.W_dec.detach().double()
    n_lat, d_in = w.shape
    if not isinstance(n_heads, int) or n_heads < 1 or d_in % n_heads:
        raise ValueError(
            f"n_heads={n_heads!r} must be a positive divisor of the coder's d_in={d_in}; an "
            "attention-output coder reads n_heads * d_head values (blocks.{i}.attn.heads)"
        )
    norms = w.view(n_lat, n_heads, d_in // n_heads).norm(dim=2)
    if squared:
        norms = norms.square()
    total = norms.sum(dim=1, keepdim=True)
    return (norms / total.clamp(min=1e-300)).float()


def linear_preactivation(coder: Any) -> tuple[Tensor, Tensor]:
    """``(W [d_in, n_latents], b [n_latents])`` float64 with ``pre = x @ W + b`` on raw inputs.

    Raises ``ValueError`` for an encoder without one linear pre-activation (gated, iterative,
    ...), naming those that have one.
    """
    enc = coder.encoder
    if not isinstance(enc, LinearEncoderParams):
        raise ValueError(
            f"direct feature attribution needs an encoder with a linear pre-activation "
            f"(x - b_dec) @ W_enc + b_enc; {enc.name!r} has none. Train the attention coder with "
            "relu, topk, batchtopk, matryoshka_batchtopk or jumprelu"
        )
    scale = float(coder.normaliser.scale) if coder.normaliser.kind != "none" else 1.0
    w_enc = enc.W_enc.detach().double()
    b = enc.b_enc.detach().double() - coder.dictionary.b_dec.detach().double() @ w_enc
    return w_enc * scale, b


@torch.no_grad()
def preactivation(coder: Any, x: Tensor) -> Tensor:
    """The coder's own pre-activations ``[n, n_latents]`` for raw inputs ``x`` ``[n, d_in]``."""
    linear_preactivation(coder)  # the same error for an encoder without one
    x = x.to(coder.device, coder.W_dec.dtype)
    return coder.encoder.pre_acts(coder.normaliser(x), coder.dictionary)


@dataclass
class DFA:
    """Direct feature attribution of ``M`` (row, destination, latent) triples.

    ``terms`` ``[M, H, T_src]`` float64: head ``h``'s contribution through source position ``s``
    (zero where the pattern is masked); ``bias`` ``[M]``; ``pre`` ``[M]`` the coder's own
    pre-activation at the destination (float32 arithmetic). ``terms.sum((1, 2)) + bias`` equals
    ``pre`` up to rounding; ``terms.sum(2)`` is the per-head split, ``terms.sum(1)`` the
    per-source split.
    """

    terms: Tensor
    bias: Tensor
    pre: Tensor

    @property
    def total(self) -> Tensor:
        """``[M]`` the sum of every term and the bias (float64)."""
        return self.terms.sum(dim=(1, 2)) + self.bias


@torch.no_grad()
def direct_feature_attribution(
    coder: Any,
    internals: AttentionInternals,
    rows: Sequence[int] | Tensor,
    positions: Sequence[int] | Tensor,
    latents: Sequence[int] | Tensor,
    *,
    chunk: int = 64,
) -> DFA:
    """Split the pre-activation of ``latents[m]`` at ``(rows[m], positions[m])`` per head and source.

    ``internals`` of the coder's block (:func:`sparsecodes.models.attention.attention_internals`);
    ``rows``, ``positions``, ``latents`` ``[M]`` index the batch row, destination position and
    latent of each triple. Memory is bounded by ``chunk * T * n_heads * d_head`` float64 values.
    """
    a, v, z = internals.pattern, internals.values, internals.z
    n_b, n_heads, n_t, _ = a.shape
    d_head = v.shape[-1]
    w, b = linear_preactivation(coder)
    if w.shape[0] != n_heads * d_head:
        raise ValueError(
            f"the coder reads d_in={w.shape[0]} but the attention has {n_heads} heads x "
            f"{d_head} = {n_heads * d_head}; pass the internals of the block it was trained on"
        )
    idx = [torch.as_tensor(t, dtype=torch.long).reshape(-1) for t in (rows, positions, latents)]
    r, t, f = (i.to(a.device) for i in idx)
    if not (len(r) == len(t) == len(f)):
        raise ValueError(f"rows, positions, latents differ in length: {len(r)}, {len(t)}, {len(f)}")
    if len(r) and (int(r.max()) >= n_b or int(t.max()) >= n_t or int(f.max()) >= w.shape[1]):
        raise ValueError("a row, position or latent index is out of range")
    w = w.to(a.device)
    w_heads = w.T.reshape(-1, n_heads, d_head)  # [L, H, d]
    terms = torch.zeros((len(r), n_heads, n_t), dtype=torch.float64, device=a.device)
    for i in range(0, len(r), chunk):
        rr, tt, ff = r[i : i + chunk], t[i : i + chunk], f[i : i + chunk]
        vw = torch.einsum("mshd,mhd->mhs", v[rr].double(), w_heads[ff])  # [m, H, S]
        terms[i : i + chunk] = a[rr, :, tt, :].double() * vw
    # the coder's own pre-activations, once per distinct (row, position): [U, L]
    flat = r * n_t + t
    uniq, which = torch.unique(flat, return_inverse=True)
    pre = preactivation(coder, z[uniq // n_t, uniq % n_t].flatten(1).float())
    pre_f = pre[which.to(pre.device), f.to(pre.device)].double().to(a.device)
    return DFA(terms=terms, bias=b.to(a.device)[f], pre=pre_f)


def model_dfa(
    coder: Any,
    adapter: Any,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    layer: int,
    rows: Sequence[int] | Tensor,
    positions: Sequence[int] | Tensor,
    latents: Sequence[int] | Tensor,
) -> DFA:
    """:func:`direct_feature_attribution` after one model pass for ``layer``'s internals."""
    internals = attention_internals(adapter, input_ids, attention_mask, layer)
    return direct_feature_attribution(coder, internals, rows, positions, latents)


def top_sources(dfa: DFA, m: int) -> tuple[Tensor, Tensor]:
    """The ``m`` source positions with the largest contribution (summed over heads) per triple.

    Returns ``(positions [M, m] int64, values [M, m] float32)``, largest first. Sources that no
    head can read (masked: every term exactly 0, e.g. later positions) are never chosen; a
    destination with fewer than ``m`` readable sources pads with position -1 and value 0.
    """
    per_src = dfa.terms.sum(dim=1)  # [M, S]
    readable = (dfa.terms != 0).any(dim=1)
    k = min(m, per_src.shape[1])
    vals, pos = per_src.masked_fill(~readable, -torch.inf).topk(k, dim=1)
    if k < m:
        pad = (0, m - k)
        pos = torch.nn.functional.pad(pos, pad, value=-1)
        vals = torch.nn.functional.pad(vals, pad, value=-torch.inf)
    empty = torch.isinf(vals)
    return pos.masked_fill(empty, -1), vals.masked_fill(empty, 0.0).float()
