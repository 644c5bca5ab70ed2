"""Reconstruction metrics (DESIGN.md definitions, exact).

All take ``x`` and ``x_hat`` of equal shape ``[n_tokens, d]`` (leading dims are flattened) and
return Python floats; sums are accumulated in float64.

- ``fvu = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``: the denominator is the variance about
  the evaluation set's per-dimension mean, *not* about zero.
- ``explained_variance = 1 - fvu``.
- ``mse = mean over tokens of sum over dims (x - x_hat)^2``.
- ``cosine_similarity = mean over tokens of cos(x, x_hat)`` (a zero vector gives cosine 0).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sparsecodes.metrics._inputs import as_dense_2d

_ROWS = 65536  # rows per float64 block


def _pair(x: Any, x_hat: Any) -> tuple[Tensor, Tensor]:
    tx, th = as_dense_2d(x, "x"), as_dense_2d(x_hat, "x_hat")
    if tx.shape != th.shape:
        raise ValueError(
            f"x has shape {tuple(tx.shape)} but x_hat has {tuple(th.shape)}; "
            "pass the reconstruction of exactly these rows"
        )
    return tx, th


def _sq_err_sum(tx: Tensor, th: Tensor) -> float:
    return sum(
        float((tx[i : i + _ROWS].double() - th[i : i + _ROWS].double()).pow(2).sum())
        for i in range(0, tx.shape[0], _ROWS)
    )


def fvu(x: Any, x_hat: Any) -> float:
    """Fraction of variance unexplained, variance taken about the mean of ``x`` ``[n, d]``."""
    tx, th = _pair(x, x_hat)
    mean = tx.sum(dim=0, dtype=torch.float64) / tx.shape[0]
    total = sum(
        float((tx[i : i + _ROWS].double() - mean).pow(2).sum())
        for i in range(0, tx.shape[0], _ROWS)
    )
    if total == 0.0:
        raise ValueError(
            "x has zero variance about its mean (every row identical), so FVU is undefined; "
            "evaluate on more than one distinct activation"
        )
    return _sq_err_sum(tx, th) / total


def explained_variance(x: Any, x_hat: Any) -> float:
    """``1 - fvu(x, x_hat)``."""
    return 1.0 - fvu(x, x_hat)


def mse(x: Any, x_hat: Any) -> float:
    """Squared error summed over dimensions, averaged over tokens."""
    tx, th = _pair(x, x_hat)
    return _sq_err_sum(tx, th) / tx.shape[0]


def cosine_similarity(x: Any, x_hat: Any) -> float:
    """Mean over tokens of the cosine between ``x`` and ``x_hat`` rows (0 where a row is zero)."""
    tx, th = _pair(x, x_hat)
    total = 0.0
    for i in range(0, tx.shape[0], _ROWS):
        a, b = tx[i : i + _ROWS].double(), th[i : i + _ROWS].double()
        na, nb = a.norm(dim=1), b.norm(dim=1)
        denom = na * nb
        cos = torch.where(denom > 0, (a * b).sum(dim=1) / torch.where(denom > 0, denom, 1.0), 0.0)
        total += float(cos.sum())
    return total / tx.shape[0]
