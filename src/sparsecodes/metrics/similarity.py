"""Similarity matrices the MCC metrics match on: |Pearson correlation| and |cosine|.

:func:`abs_correlation` is vectorised and picks the cheapest exact route:

- ``"dense"``: standardise each column (float64 statistics, float32 values), one matmul.
- sparse codes (``SparseCodes``, or dense codes with few nonzeros): a sparse product, then
  ``corr = (sum_s a b - S mu_a mu_b) / (S sd_a sd_b)``. When only one side is sparse the dense side
  is centred, which makes the product exact without touching the sparse side:
  ``sum_s a (b - mu_b) = sum_s (a - mu_a)(b - mu_b)``.

Columns with zero variance (constant latents, latents that never fire) correlate 0 with
everything, never NaN. A column counts as constant when its standard deviation is at most
``1e-6`` times its root mean square (below float32 resolution).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from sparsecodes.metrics._inputs import as_codes, dense_to_csr

Backend = Literal["auto", "dense", "sparse"]

#: relative std below which a column is treated as constant
CONSTANT_RTOL = 1e-6
#: "auto" uses a sparse product when both sides have at most this fraction of nonzeros ...
SPARSE_BOTH_DENSITY = 0.05
#: ... or when one side has at most this fraction
SPARSE_ONE_DENSITY = 0.01
_CHUNK = 1 << 22  # elements per temporary block (32 MiB in float64)


def abs_correlation(a: Any, b: Any, *, backend: Backend = "auto") -> np.ndarray:
    """``|corr|`` between the columns of ``a`` ``[S, Na]`` and of ``b`` ``[S, Nb]`` across samples.

    Args:
        a, b: codes as torch tensors, numpy arrays or :class:`~sparsecodes.codes.SparseCodes`,
            with the same number of samples ``S >= 2``.
        backend: ``"dense"`` (one matmul of standardised columns), ``"sparse"`` (sparse products)
            or ``"auto"`` (sparse when the codes are sparse enough; see the module docstring).

    Returns:
        ``[Na, Nb]`` float32 numpy array in ``[0, 1]``; zero-variance columns give 0.
    """
    if backend not in ("auto", "dense", "sparse"):
        raise ValueError(f"backend must be 'auto', 'dense' or 'sparse', got {backend!r}")
    ca, cb = as_codes(a, "true_codes"), as_codes(b, "codes")
    s = ca.shape[0]
    if cb.shape[0] != s:
        raise ValueError(
            f"true_codes has {s} samples but codes has {cb.shape[0]}; "
            "both must be codes of the same samples, in the same order"
        )
    if s < 2:
        raise ValueError(f"correlation needs at least 2 samples, got {s}")
    da, db = _density(ca), _density(cb)
    if backend == "auto":
        if max(da, db) <= SPARSE_BOTH_DENSITY:
            backend = "sparse"
        elif min(da, db) <= SPARSE_ONE_DENSITY:
            backend = "sparse"
            # only the sparser side goes sparse; the other is centred densely
            if da <= db:
                cb = _as_dense(cb)
            else:
                ca = _as_dense(ca)
        else:
            backend = "dense"
    if backend == "dense":
        out = _dense_corr(_as_dense(ca), _as_dense(cb))
    else:
        a_sp, b_sp = sp.issparse(ca), sp.issparse(cb)
        if not a_sp and not b_sp:
            ca, cb, a_sp, b_sp = dense_to_csr(ca), dense_to_csr(cb), True, True
        if a_sp and b_sp:
            out = _sparse_sparse_corr(ca, cb)
        elif a_sp:
            out = _sparse_dense_corr(ca, cb)
        else:
            out = _sparse_dense_corr(cb, ca).T
    return out


def abs_cosine(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> np.ndarray:
    """``|cos|`` between the rows of ``a`` ``[Na, M]`` and of ``b`` ``[Nb, M]``; zero rows give 0.

    Returns a ``[Na, Nb]`` float32 numpy array.
    """
    ta = torch.as_tensor(a).detach().cpu()
    tb = torch.as_tensor(b).detach().cpu()
    for name, t in (("true_atoms", ta), ("atoms", tb)):
        if t.dim() != 2:
            raise ValueError(f"{name} must be [n_atoms, d_in], got shape {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or inf")
    if ta.shape[1] != tb.shape[1]:
        raise ValueError(
            f"true_atoms have dimension {ta.shape[1]} but atoms have {tb.shape[1]}; "
            "atoms must be rows [n_atoms, d_in] in the same space"
        )
    na = ta.double().norm(dim=1)
    nb = tb.double().norm(dim=1)
    ua = (ta.double() / torch.where(na > 0, na, 1.0)[:, None]).float()
    ub = (tb.double() / torch.where(nb > 0, nb, 1.0)[:, None]).float()
    out = (ua @ ub.T).abs_().clamp_(max=1.0)
    return out.numpy()


# ---------------------------------------------------------------------------------- internals
def _density(c: Tensor | sp.csr_matrix) -> float:
    numel = c.shape[0] * c.shape[1]
    if numel == 0:
        return 0.0
    nnz = c.nnz if sp.issparse(c) else int(torch.count_nonzero(c))
    return nnz / numel


def _as_dense(c: Tensor | sp.csr_matrix) -> Tensor:
    if sp.issparse(c):  # keep the CSR's float64: centring happens before any float32 cast
        return torch.from_numpy(c.toarray())
    return c


def _constant(sd: Tensor, rms: Tensor) -> Tensor:
    return (sd <= CONSTANT_RTOL * rms) | (rms == 0)


def _dense_stats(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Column mean, std (about the mean) and a bool mask of constant columns, float64."""
    s, n = x.shape
    mu = x.sum(dim=0, dtype=torch.float64) / s
    var = torch.empty(n, dtype=torch.float64)
    step = max(1, _CHUNK // s)
    for j in range(0, n, step):
        var[j : j + step] = (x[:, j : j + step].double() - mu[j : j + step]).pow(2).sum(0) / s
    sd = var.sqrt()
    return mu, sd, _constant(sd, (var + mu.pow(2)).sqrt())


def _sparse_stats(x: sp.csr_matrix) -> tuple[Tensor, Tensor, Tensor]:
    s = x.shape[0]
    mu = np.asarray(x.sum(axis=0)).ravel() / s
    ex2 = np.asarray(x.multiply(x).sum(axis=0)).ravel() / s
    var = np.maximum(ex2 - mu**2, 0.0)
    sd = np.sqrt(var)
    mu_t, sd_t = torch.from_numpy(mu), torch.from_numpy(sd)
    return mu_t, sd_t, _constant(sd_t, torch.from_numpy(np.sqrt(ex2)))


def _standardised(x: Tensor) -> Tensor:
    """``(x - mu) / (sd sqrt(S))`` float32, constant columns set to 0, so ``z_a . z_b = corr``."""
    s, n = x.shape
    mu, sd, const = _dense_stats(x)
    scale = torch.where(const, 0.0, 1.0 / (sd * s**0.5).clamp_min(1e-300))
    z = torch.empty(s, n, dtype=torch.float32)
    step = max(1, _CHUNK // s)
    for j in range(0, n, step):
        blk = (x[:, j : j + step].double() - mu[j : j + step]) * scale[j : j + step]
        z[:, j : j + step] = blk.float()
    return z


def _dense_corr(a: Tensor, b: Tensor) -> np.ndarray:
    za = _standardised(a)
    zb = za if b is a else _standardised(b)
    out = za.T @ zb
    return out.abs_().clamp_(max=1.0).numpy()


def _sparse_dense_corr(a: sp.csr_matrix, b: Tensor) -> np.ndarray:
    """``a`` sparse ``[S, Na]``, ``b`` dense ``[S, Nb]``: centre ``b`` only (exact)."""
    s = a.shape[0]
    mu_a, sd_a, const_a = _sparse_stats(a)
    zb = _standardised(b).numpy()  # centred and scaled; constant columns are 0
    g = a.T.astype(np.float32) @ zb  # [Na, Nb] = sum_s a (b - mu_b) / (sd_b sqrt(S))
    g = np.asarray(g, dtype=np.float32)
    scale = torch.where(const_a, 0.0, 1.0 / (sd_a * s**0.5).clamp_min(1e-300)).numpy()
    g *= scale.astype(np.float32)[:, None]
    # Columns of ``a`` with a large offset lose precision in float32: redo them centred.
    rms = np.sqrt(sd_a.numpy() ** 2 + mu_a.numpy() ** 2)
    ill = np.flatnonzero(~const_a.numpy() & (rms > 1e3 * sd_a.numpy()))
    if ill.size:
        cols = a[:, ill].toarray()
        za = (cols - mu_a.numpy()[ill]) / (sd_a.numpy()[ill] * s**0.5)
        g[ill] = (za.T @ zb.astype(np.float64)).astype(np.float32)
    np.abs(g, out=g)
    np.minimum(g, 1.0, out=g)
    return g


def _sparse_sparse_corr(a: sp.csr_matrix, b: sp.csr_matrix) -> np.ndarray:
    """Both sparse: ``G = a^T b`` (float64, sparse), dense correction in row blocks."""
    s = a.shape[0]
    mu_a, sd_a, const_a = (t.numpy() for t in _sparse_stats(a))
    mu_b, sd_b, const_b = (t.numpy() for t in _sparse_stats(b))
    g = (a.T.tocsr() @ b).tocsr()
    inv_a = np.where(const_a, 0.0, 1.0 / np.maximum(sd_a * s, 1e-300))
    inv_b = np.where(const_b, 0.0, 1.0 / np.maximum(sd_b, 1e-300))
    na, nb = g.shape
    out = np.empty((na, nb), dtype=np.float32)
    step = max(1, _CHUNK // max(nb, 1))
    for i in range(0, na, step):
        blk = g[i : i + step].toarray()
        blk -= s * mu_a[i : i + step, None] * mu_b[None, :]
        blk *= inv_a[i : i + step, None]
        blk *= inv_b[None, :]
        np.abs(blk, out=blk)
        out[i : i + step] = np.minimum(blk, 1.0)
    return out
