"""FLOP-counting primitives shared by the encoders' analytical formulas.

Convention: one multiply-add = 2 FLOPs; elementwise ops = 1 FLOP per element. Each encoder states
its own formula in ``inference_flops``/``train_step_flops`` using these; ``docs/flops.md`` lists
them. Iterative encoders' costs grow with their iteration count and say so.
"""

from __future__ import annotations


def matmul(m: int, k: int, n: int) -> int:
    """``[m, k] @ [k, n]``: ``2 m k n``."""
    return 2 * m * k * n


def dense_decode(batch: int, n_latents: int, d_in: int) -> int:
    """``codes @ W_dec + b_dec`` with dense codes."""
    return matmul(batch, n_latents, d_in) + batch * d_in


def sparse_decode(batch: int, k: int, d_in: int) -> int:
    """Decode from ``k`` active latents per row (gather + weighted sum) plus bias."""
    return 2 * batch * k * d_in + batch * d_in


def backward_of(forward: int) -> int:
    """Backward pass of a matmul-dominated forward: grads w.r.t. inputs and weights (~2x)."""
    return 2 * forward


def adam(n_params: int) -> int:
    """Adam update, ~10 elementwise FLOPs per parameter."""
    return 10 * n_params
