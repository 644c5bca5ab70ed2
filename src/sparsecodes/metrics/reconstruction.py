"""Reconstruction metrics (definitions in docs/metrics.md, exact).

All take ``x`` and ``x_hat`` of equal shape ``[n_tokens, d]`` (leading dims are flattened) and
return Python floats; sums are accumulated in float64.

- ``fvu = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``: the denominator is the variance about
  the evaluation set's per-dimension mean, *not* about zero. When that total variance is 0
  (every row of ``x`` identical) FVU is 0.0 if the reconstruction is exact and ``inf`` otherwise
  (:func:`fvu_from_sums`, the one place that divides; streaming evaluations call it too).
- ``explained_variance = 1 - fvu``.
- ``mse = mean over tokens of sum over dims (x - x_hat)^2``.
- ``cosine_similarity = mean over tokens of cos(x, x_hat)`` (a zero vector gives cosine 0).
"""

from __future__ import annotations

import math
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


def fvu_from_sums(sse: float, total_variance: float) -> float:
    """FVU from its two sums: ``sse / total_variance``.

    ``sse``: sum over tokens and dimensions of ``(x - x_hat)^2``; ``total_variance``: sum of
    ``(x - mean(x))^2`` over the same entries (about the evaluation set's mean). Zero total
    variance (constant ``x``; a value ``<= 0`` from rounding counts as zero): 0.0 when ``sse``
    is 0 (nothing is left unexplained), else ``inf`` (any error is infinitely many times the
    variance). Never NaN, never raises.
    """
    if total_variance > 0.0:
        return sse / total_variance
    return 0.0 if sse == 0.0 else math.inf


def fvu(x: Any, x_hat: Any) -> float:
    """Fraction of variance unexplained of ``x_hat`` for ``x`` ``[n, d]``, about the mean of ``x``.

    Constant ``x`` (zero variance): 0.0 for an exact reconstruction, else ``inf``.
    """
    tx, th = _pair(x, x_hat)
    mean = tx.sum(dim=0, dtype=torch.float64) / tx.shape[0]
    total = sum(
        float((tx[i : i + _ROWS].double() - mean).pow(2).sum())
        for i in range(0, tx.shape[0], _ROWS)
    )
    return fvu_from_sums(_sq_err_sum(tx, th), total)


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
