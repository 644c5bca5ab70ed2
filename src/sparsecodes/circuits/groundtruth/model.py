"""``HeadTransformer``: a small transformer with explicit per-head weights and no layer norm.

The one model class behind every ground-truth model in this subpackage (hand-built weights,
tracr-compiled programs converted to torch, the tiny trained induction model). Weights:

- ``W_E`` ``[vocab, d_model]``, ``W_pos`` ``[max_len, d_model]``, ``W_U`` ``[d_model, n_out]``;
- per layer ``l``: ``W_Q[l]``, ``W_K[l]``, ``W_V[l]`` ``[n_heads, d_model, d_head]`` with biases
  ``b_Q[l]`` ... ``[n_heads, d_head]``, ``W_O[l]`` ``[n_heads, d_head, d_model]``, ``b_O[l]``
  ``[d_model]``; optionally an MLP ``W_in[l]`` ``[d_model, d_mlp]`` / ReLU / ``W_out[l]``.

``run`` returns the logits and the per-head outputs ``z`` (attention-weighted values, before
``W_O``) as ``[B, T, n_heads, d_head]`` per layer: the same quantity as the
``blocks.{i}.attn.heads`` hook of the real-model adapters. ``head_edits`` replaces chosen heads'
``z`` during the forward (used for ablations).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

Head = tuple[int, int]
HeadEdit = Callable[[Tensor], Tensor]
"""Maps one head's ``z`` ``[B, T, d_head]`` to its replacement (same shape)."""


@dataclass
class RunOutput:
    """``logits`` ``[B, T, n_out]``; ``heads[l]`` ``[B, T, n_heads, d_head]``;
    ``pattern[l]`` ``[B, n_heads, T, T]``; ``resid`` ``[B, T, d_model]`` (final residual)."""

    logits: Tensor
    heads: list[Tensor]
    pattern: list[Tensor]
    resid: Tensor


class HeadTransformer(nn.Module):
    """Attention (+ optional ReLU MLP) transformer without layer norm; see the module docstring.

    Args:
        vocab: input vocabulary size.
        max_len: longest sequence (rows of ``W_pos``).
        d_model, n_layers, n_heads, d_head: sizes.
        n_out: output logits width (``W_U`` columns).
        d_mlp: MLP width, or 0 for an attention-only model.
        causal: causal attention mask (tracr programs are compiled non-causal).
        attn_scale: multiplies ``q . k``; None means ``1 / sqrt(d_head)``.
    """

    def __init__(
        self,
        vocab: int,
        max_len: int,
        d_model: int,
        n_layers: int,
        n_heads: int,
        d_head: int,
        n_out: int,
        *,
        d_mlp: int = 0,
        causal: bool = True,
        attn_scale: float | None = None,
    ) -> None:
        super().__init__()
        for name, v in (
            ("vocab", vocab),
            ("max_len", max_len),
            ("d_model", d_model),
            ("n_layers", n_layers),
            ("n_heads", n_heads),
            ("d_head", d_head),
            ("n_out", n_out),
        ):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.vocab, self.max_len, self.d_model = vocab, max_len, d_model
        self.n_layers, self.n_heads, self.d_head, self.n_out = n_layers, n_heads, d_head, n_out
        self.d_mlp, self.causal = d_mlp, causal
        self.attn_scale = float(attn_scale) if attn_scale is not None else d_head**-0.5
        L, H, D, dh = n_layers, n_heads, d_model, d_head

        def z(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.zeros(*shape))

        self.W_E, self.W_pos, self.W_U = z(vocab, D), z(max_len, D), z(D, n_out)
        self.W_Q, self.W_K, self.W_V = z(L, H, D, dh), z(L, H, D, dh), z(L, H, D, dh)
        self.b_Q, self.b_K, self.b_V = z(L, H, dh), z(L, H, dh), z(L, H, dh)
        self.W_O, self.b_O = z(L, H, dh, D), z(L, D)
        if d_mlp:
            self.W_in, self.b_in = z(L, D, d_mlp), z(L, d_mlp)
            self.W_out, self.b_out = z(L, d_mlp, D), z(L, D)

    @property
    def heads(self) -> list[Head]:
        """All ``(layer, head)`` pairs in order."""
        return [(layer, h) for layer in range(self.n_layers) for h in range(self.n_heads)]

    def run(
        self,
        ids: Tensor,
        *,
        head_edits: dict[Head, HeadEdit] | None = None,
        key_mask: Tensor | None = None,
    ) -> RunOutput:
        """Forward ``ids`` ``[B, T]`` (int64); see :class:`RunOutput`.

        ``key_mask`` ``[B, T]`` bool: keys that may be attended (False = padding).
        """
        if ids.dim() != 2:
            raise ValueError(f"ids must have shape [batch, seq], got {tuple(ids.shape)}")
        B, T = ids.shape
        if T > self.max_len:  # noqa: SIM300
            raise ValueError(f"sequence length {T} exceeds max_len={self.max_len}")
        if int(ids.min()) < 0 or int(ids.max()) >= self.vocab:
            raise ValueError(f"ids must lie in [0, vocab={self.vocab})")
        edits = head_edits or {}
        for hd in edits:
            if hd not in set(self.heads):
                raise ValueError(f"head_edits names {hd}, not a (layer, head) of this model")
        x = self.W_E[ids] + self.W_pos[:T]
        allowed = torch.ones(T, T, dtype=torch.bool, device=ids.device)
        if self.causal:
            allowed = torch.tril(allowed)
        allowed = allowed.expand(B, 1, T, T)
        if key_mask is not None:
            allowed = allowed & key_mask[:, None, None, :].bool()
        heads: list[Tensor] = []
        patterns: list[Tensor] = []
        for layer in range(self.n_layers):
            q = torch.einsum("btd,hde->bthe", x, self.W_Q[layer]) + self.b_Q[layer]
            k = torch.einsum("btd,hde->bthe", x, self.W_K[layer]) + self.b_K[layer]
            v = torch.einsum("btd,hde->bthe", x, self.W_V[layer]) + self.b_V[layer]
            scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * self.attn_scale
            scores = scores.masked_fill(~allowed, float("-inf"))
            pattern = torch.softmax(scores, dim=-1)
            zs = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
            if edits:
                cols = [
                    edits[(layer, h)](zs[:, :, h]) if (layer, h) in edits else zs[:, :, h]
                    for h in range(self.n_heads)
                ]
                zs = torch.stack(cols, dim=2)
            heads.append(zs)
            patterns.append(pattern)
            x = x + torch.einsum("bthe,hed->btd", zs, self.W_O[layer]) + self.b_O[layer]
            if self.d_mlp:
                hidden = torch.relu(x @ self.W_in[layer] + self.b_in[layer])
                x = x + hidden @ self.W_out[layer] + self.b_out[layer]
        return RunOutput(logits=x @ self.W_U, heads=heads, pattern=patterns, resid=x)

    def forward(self, ids: Tensor) -> Tensor:
        """Logits ``[B, T, n_out]``."""
        return self.run(ids).logits


def zero_ablation() -> HeadEdit:
    """A head edit that zeroes the head's output."""
    return torch.zeros_like


def mean_ablation(mean: Tensor) -> HeadEdit:
    """A head edit that replaces the head's output by ``mean`` ``[T, d_head]`` or ``[d_head]``."""

    def edit(z: Tensor) -> Tensor:
        m = mean[: z.shape[1]] if mean.dim() == 2 else mean
        return m.to(z).expand_as(z)

    return edit
