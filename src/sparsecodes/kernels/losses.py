"""Reconstruction loss with a one-pass backward.

:func:`squared_error_per_token` is :func:`sparsecodes.encoders.base.mse_per_token` (squared error
summed over the last dimension, averaged over tokens) as one autograd node: the forward keeps the
residual ``r = x_hat - x`` and the backward is one scaled copy of it, ``2 r / tokens``, where
plain autograd runs the subtraction, square, row sums and mean backwards as separate passes over
``[batch, d]`` tensors (each costing as much as the decode it follows on CPU).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


class SquaredError(torch.autograd.Function):
    """``forward(x [..., d], x_hat [..., d]) -> sum((x_hat - x)^2) / tokens`` (0-dim), ``tokens``
    = ``x.numel() / d``; gradients for both inputs."""

    @staticmethod
    def forward(ctx, x: Tensor, x_hat: Tensor) -> Tensor:  # type: ignore[override]
        r = x_hat - x
        tokens = max(1, r.numel() // r.shape[-1]) if r.dim() else 1
        ctx.save_for_backward(r)
        ctx.tokens = tokens
        return r.pow(2).sum() / tokens  # pairwise summation: float32-accurate for large batches

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (r,) = ctx.saved_tensors
        g = r * (grad * (2.0 / ctx.tokens))
        gx = -g if ctx.needs_input_grad[0] else None
        return gx, (g if ctx.needs_input_grad[1] else None)


def squared_error_per_token(x: Tensor, x_hat: Tensor) -> Tensor:
    """``mse_per_token(x, x_hat)`` (0-dim) for ``x``, ``x_hat`` ``[..., d]``, with the one-pass
    backward of :class:`SquaredError`; equal up to float32 rounding."""
    if x.shape != x_hat.shape:
        raise ValueError(f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} must match")
    return SquaredError.apply(x, x_hat)
