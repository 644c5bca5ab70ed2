"""Input conversion shared by the metrics: tensors, arrays and :class:`SparseCodes`.

Codes arrive as a dense ``[n_samples, n_latents]`` torch tensor or numpy array, or as
:class:`~sparsecodes.codes.SparseCodes`. Metrics that only need the support or column sums work
on a ``scipy.sparse`` CSR matrix, so sparse codes are never densified.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from sparsecodes.codes import SparseCodes


def as_dense_2d(x: Any, name: str) -> Tensor:
    """``x`` as a CPU floating ``[n, d]`` tensor (leading dims flattened); numpy is not copied."""
    if isinstance(x, SparseCodes):
        x = x.to_dense()
    elif isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif sp.issparse(x):
        x = torch.from_numpy(np.asarray(x.toarray()))
    elif not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except Exception as e:
            raise TypeError(f"{name} must be a tensor, numpy array or SparseCodes: {e}") from e
    x = x.detach().cpu()
    if x.dim() == 1:
        raise ValueError(
            f"{name} must be at least 2-D [n_samples, n_features], got shape {tuple(x.shape)}; "
            "use x.reshape(-1, 1) for a single feature"
        )
    if x.dim() > 2:
        x = x.reshape(-1, x.shape[-1])
    if not x.is_floating_point():
        x = x.float()
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 samples)")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf; clean those rows first")
    return x


def as_codes(codes: Any, name: str) -> Tensor | sp.csr_matrix:
    """Codes as a dense CPU tensor ``[n, N]``, or a CSR matrix if given as ``SparseCodes``."""
    if isinstance(codes, SparseCodes):
        return sparse_codes_to_csr(codes)
    if sp.issparse(codes):
        m = sp.csr_matrix(codes, dtype=np.float64)
        m.sum_duplicates()
        m.eliminate_zeros()
        return m
    return as_dense_2d(codes, name)


def sparse_codes_to_csr(codes: SparseCodes) -> sp.csr_matrix:
    """``[batch, n_latents]`` float64 CSR matrix equal to ``codes.to_dense()`` (duplicates summed)."""
    idx = codes.indices.detach().cpu().numpy().astype(np.int64)
    val = codes.values.detach().cpu().double().numpy()
    if not np.isfinite(val).all():
        raise ValueError("SparseCodes.values contain NaN or inf")
    n, k = idx.shape
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    m = sp.csr_matrix((val.ravel(), (rows, idx.ravel())), shape=(n, codes.n_latents))
    m.sum_duplicates()
    m.eliminate_zeros()
    return m


def dense_to_csr(x: Tensor) -> sp.csr_matrix:
    """CSR (float64) of a dense ``[n, N]`` tensor, built from its nonzeros only."""
    r, c = torch.nonzero(x, as_tuple=True)
    vals = x[r, c].double().numpy()
    return sp.csr_matrix((vals, (r.numpy(), c.numpy())), shape=tuple(x.shape))


def n_rows(codes: Tensor | sp.csr_matrix) -> int:
    return int(codes.shape[0])
