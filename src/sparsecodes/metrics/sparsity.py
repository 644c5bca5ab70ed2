"""Sparsity and support metrics of codes (dense tensors, arrays or ``SparseCodes``).

- ``l0``: mean over tokens of the number of nonzero latents (a count, not a fraction).
- ``feature_density``: ``[N]`` fraction of tokens on which each latent is nonzero.
- ``dead_latents``: ``[N]`` bool, never nonzero on the evaluation set.
- ``dense_latents``: ``[N]`` bool, nonzero on more than ``threshold`` (default 0.1 = 10%) of tokens.
- ``support_metrics``: precision / recall / F1 of the inferred support against the true support
  after matching latents one-to-one (the code-MCC matching by default). Counted over all
  (token, latent) pairs: a true positive is a true latent active on a token whose matched inferred
  latent is also active there; every active inferred latent counts as a prediction (an active
  latent with no match is a false positive); every active true latent counts as a truth (one
  with no match is a false negative). ``F1 = 2 P R / (P + R)`` (0 when both are 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from sparsecodes.metrics._inputs import as_codes
from sparsecodes.metrics.mcc import MCCResult, code_mcc


def _support(codes: Any, name: str) -> sp.csr_matrix:
    """Bool-valued CSR ``[n, N]`` of nonzero entries."""
    c = as_codes(codes, name)
    if sp.issparse(c):
        m = c.copy()
    else:
        r, col = torch.nonzero(c, as_tuple=True)
        m = sp.csr_matrix((np.ones(r.numel()), (r.numpy(), col.numpy())), shape=tuple(c.shape))
    m.data = np.ones_like(m.data)
    return m


def l0(codes: Any) -> float:
    """Mean per-token count of nonzero latents."""
    m = _support(codes, "codes")
    return m.nnz / m.shape[0]


def feature_density(codes: Any) -> Tensor:
    """``[N]`` float64 fraction of tokens on which each latent is nonzero."""
    m = _support(codes, "codes")
    return torch.from_numpy(np.asarray(m.sum(axis=0)).ravel() / m.shape[0])


def dead_latents(codes: Any) -> Tensor:
    """``[N]`` bool: latents never active on these tokens."""
    return feature_density(codes) == 0


def dense_latents(codes: Any, threshold: float = 0.1) -> Tensor:
    """``[N]`` bool: latents active on more than ``threshold`` of the tokens (default 10%)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a firing fraction in [0, 1], got {threshold}")
    return feature_density(codes) > threshold


def support_metrics(
    true_codes: Any,
    codes: Any,
    matching: MCCResult | tuple[Any, Any] | None = None,
) -> dict[str, float]:
    """Support precision, recall and F1 after matching latents (see the module docstring).

    Args:
        true_codes: ``[S, N_true]`` true codes.
        codes: ``[S, N_inf]`` inferred codes.
        matching: an :class:`MCCResult` or ``(true_indices, inferred_indices)``; None computes the
            code-MCC matching.

    Returns:
        ``{"precision", "recall", "f1", "true_positives", "n_predicted", "n_true"}``.
    """
    t, p = _support(true_codes, "true_codes"), _support(codes, "codes")
    if t.shape[0] != p.shape[0]:
        raise ValueError(
            f"true_codes has {t.shape[0]} samples but codes has {p.shape[0]}; they must match"
        )
    if matching is None:
        matching = code_mcc(true_codes, codes, return_matching=True)
    if isinstance(matching, MCCResult):
        ti, ii = matching.true_indices, matching.inferred_indices
    else:
        ti, ii = (np.asarray(a, dtype=np.int64) for a in matching)
    if ti.shape != ii.shape or (ti.size and (ti.max() >= t.shape[1] or ii.max() >= p.shape[1])):
        raise ValueError("matching indices do not fit the code shapes (true_codes, codes)")
    tp = int(t[:, ti].multiply(p[:, ii]).sum())
    n_pred, n_true = int(p.nnz), int(t.nnz)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "true_positives": float(tp),
        "n_predicted": float(n_pred),
        "n_true": float(n_true),
    }
