"""The atomic inner product (AIP) and the "atoms" paper's conditions (arXiv 2509.20784).

Definitions (written out in ``docs/atoms.md``):

- **Whitening matrix** ``S`` ``[d, d]``: the inverse of the activations' second-moment matrix,
  ``S = (E[(x - m)(x - m)^T] + ridge * tr/d * I)^{-1}`` with ``m`` the data mean (``center=True``,
  the inverse covariance) or ``m = 0`` (``center=False``, the paper's ``(E[k k^T])^{-1}``).
- **AIP**: ``<u, v>_S = u^T S v``; normalised, ``<u, v>_S / (||u||_S ||v||_S)``. For any
  invertible ``A`` ``[d, d]``, mapping the activations ``x -> A x`` maps ``S -> A^{-T} S A^{-1}``
  and atoms ``d -> A d``, so ``<A u, A v>_{S'} = <u, v>_S``: the AIP is invariant.
- **Coherence** ``mu``: the largest ``|normalised AIP|`` over distinct atom pairs.
- **Uniqueness condition**: ``mu < 1 / (2K - 1)`` for ``K``-sparse codes (a ``K``-sparse
  representation over the atoms is then the unique sparsest one).
- **Threshold recovery condition** (the paper's identifiability theorem for threshold SAEs):
  with the atoms at unit AIP norm, nonzero coefficients in ``[delta_min, delta_max]`` and at most
  ``K`` per sample, the encoder ``W_enc = D^T S`` followed by the threshold activation
  ``sigma_tau(p) = p * 1[p >= tau]`` keeps exactly the true support when
  ``mu K delta_max < tau < delta_min - mu (K - 1) delta_max``; such a ``tau`` exists iff
  ``delta_min > mu (2K - 1) delta_max``.

Everything is computed in float64 and returned as Python floats or float64 tensors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "MomentAccumulator",
    "RecoveryCondition",
    "aip",
    "aip_coherence",
    "aip_gram",
    "aip_norms",
    "coherence_pair",
    "threshold_recovery_condition",
    "uniqueness_bound",
    "whitening_from_moments",
    "whitening_matrix",
]


def _as_2d(x: Any, name: str) -> Tensor:
    t = torch.as_tensor(x)
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D [rows, d], got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")
    return t.detach().to(dtype=torch.float64)


class MomentAccumulator:
    """Streaming sums for :func:`whitening_matrix`: ``n``, ``sum x`` ``[d]``, ``sum x x^T`` ``[d, d]``
    in float64, so a whitening matrix can be estimated from batches in bounded memory."""

    def __init__(self, d: int) -> None:
        self.n = 0
        self.sum = torch.zeros(d, dtype=torch.float64)
        self.sum_outer = torch.zeros(d, d, dtype=torch.float64)

    def update(self, x: Any) -> None:
        """Add rows ``x`` ``[batch, d]``."""
        t = _as_2d(x, "x").to(self.sum.device)
        if t.shape[1] != self.sum.shape[0]:
            raise ValueError(f"x has {t.shape[1]} columns, expected {self.sum.shape[0]}")
        self.n += t.shape[0]
        self.sum += t.sum(dim=0)
        self.sum_outer += t.T @ t

    def whitening(self, *, center: bool = True, ridge: float = 1e-6) -> Tensor:
        """``[d, d]`` float64 whitening matrix of the rows seen so far."""
        return whitening_from_moments(self.n, self.sum, self.sum_outer, center=center, ridge=ridge)


def whitening_from_moments(
    n: int | float, sum_x: Tensor, sum_outer: Tensor, *, center: bool = True, ridge: float = 1e-6
) -> Tensor:
    """``[d, d]`` inverse of the (centred or raw) second moment from streaming sums.

    ``ridge`` adds ``ridge * trace(M) / d`` to the diagonal of the moment matrix ``M`` before the
    inverse (0 for none; a singular ``M`` then raises ``ValueError``).
    """
    if n < 2:
        raise ValueError(f"need at least 2 rows to estimate a whitening matrix, got {n}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    m = sum_outer.to(torch.float64) / n
    if center:
        mean = sum_x.to(torch.float64) / n
        m = m - torch.outer(mean, mean)
    m = 0.5 * (m + m.T)
    d = m.shape[0]
    if ridge > 0:
        m = m + (ridge * torch.trace(m) / d) * torch.eye(d, dtype=m.dtype, device=m.device)
    chol, info = torch.linalg.cholesky_ex(m)
    if int(info) != 0:
        raise ValueError(
            "the activations' second-moment matrix is singular (fewer independent rows than "
            f"dimensions, or constant directions; {n} rows in {d} dimensions); pass more rows or "
            "a ridge > 0"
        )
    s = torch.cholesky_inverse(chol)
    return 0.5 * (s + s.T)


def whitening_matrix(x: Any, *, center: bool = True, ridge: float = 0.0) -> Tensor:
    """``[d, d]`` float64 whitening matrix ``S`` of activations ``x`` ``[n, d]``.

    ``x`` may also be an iterable of ``[batch, d]`` chunks (streamed; memory ``O(d^2)``).
    ``center=True``: inverse covariance; ``center=False``: inverse raw second moment (the paper's
    ``(E[k k^T])^{-1}``).
    """
    chunks: Iterable[Any] = [x] if hasattr(x, "shape") else x
    acc: MomentAccumulator | None = None
    for chunk in chunks:
        t = _as_2d(chunk, "x")
        if acc is None:
            acc = MomentAccumulator(t.shape[1])
        acc.update(t)
    if acc is None:
        raise ValueError("x is empty; give activations [n, d] or an iterable of chunks")
    return acc.whitening(center=center, ridge=ridge)


def _check_s(s: Any, d: int) -> Tensor:
    s = torch.as_tensor(s).detach().to(torch.float64)
    if s.shape != (d, d):
        raise ValueError(f"S must be [d, d] = [{d}, {d}], got {tuple(s.shape)}")
    return s


def aip(u: Any, v: Any, s: Any, *, normalize: bool = True) -> Tensor:
    """``[n_u, n_v]`` atomic inner products ``u_i^T S v_j`` of the rows of ``u`` ``[n_u, d]`` and
    ``v`` ``[n_v, d]`` (normalised by ``||u_i||_S ||v_j||_S`` unless ``normalize=False``)."""
    u, v = _as_2d(u, "u"), _as_2d(v, "v")
    if u.shape[1] != v.shape[1]:
        raise ValueError(f"u and v must have the same width, got {u.shape[1]} and {v.shape[1]}")
    s = _check_s(s, u.shape[1])
    g = u @ s @ v.T
    if normalize:
        nu, nv = aip_norms(u, s), aip_norms(v, s)
        g = g / torch.outer(nu, nv)
    return g


def aip_norms(atoms: Any, s: Any) -> Tensor:
    """``[n]`` AIP norms ``||d_i||_S = sqrt(d_i^T S d_i)`` of the rows of ``atoms`` ``[n, d]``.

    A zero (or numerically non-positive) norm raises ``ValueError`` naming the row.
    """
    a = _as_2d(atoms, "atoms")
    s = _check_s(s, a.shape[1])
    sq = ((a @ s) * a).sum(dim=1)
    bad = (sq <= 0).nonzero().flatten()
    if bad.numel():
        raise ValueError(f"atom(s) {bad[:5].tolist()} have zero AIP norm (zero rows?)")
    return sq.sqrt()


def aip_gram(atoms: Any, s: Any) -> Tensor:
    """``[n, n]`` normalised AIP Gram matrix of the atoms ``[n, d]`` (unit diagonal)."""
    return aip(atoms, atoms, s)


def coherence_pair(atoms: Any, s: Any = None, *, block_size: int = 2048) -> tuple[float, int, int]:
    """``(mu, i, j)``: the coherence of the atoms ``[n, d]`` under ``S`` (Euclidean when ``s`` is
    None) and a pair ``i < j`` attaining it; ``(0.0, -1, -1)`` for fewer than two atoms.

    The Gram matrix is formed ``block_size`` rows at a time, so memory is ``O(block_size n)``.
    """
    a = _as_2d(atoms, "atoms")
    n, d = a.shape
    if n < 2:
        return 0.0, -1, -1
    s = torch.eye(d, dtype=torch.float64) if s is None else _check_s(s, d)
    unit = a / aip_norms(a, s)[:, None]
    sv = unit @ s  # [n, d]
    best, bi, bj = -1.0, -1, -1
    for start in range(0, n, block_size):
        g = (sv[start : start + block_size] @ unit.T).abs()
        rows = torch.arange(g.shape[0])
        g[rows, rows + start] = -1.0  # drop each atom's inner product with itself
        flat = int(g.argmax())
        r, c = divmod(flat, n)
        if float(g[r, c]) > best:
            best, bi, bj = float(g[r, c]), start + r, c
    return best, min(bi, bj), max(bi, bj)


def aip_coherence(atoms: Any, s: Any) -> float:
    """``mu = max_{i != j} |<d_i, d_j>_S| / (||d_i||_S ||d_j||_S)``; 0 for a single atom."""
    return coherence_pair(atoms, s)[0]


def uniqueness_bound(k: float) -> float:
    """``1 / (2K - 1)``: the coherence below which ``K``-sparse codes are unique (``K >= 1``)."""
    if not k >= 1:
        raise ValueError(f"K must be >= 1, got {k}")
    return 1.0 / (2.0 * k - 1.0)


@dataclass
class RecoveryCondition:
    """The threshold SAE's exact-support-recovery condition for given ``mu, K, delta``.

    Attributes:
        tau_low, tau_high: the open interval ``(mu K delta_max, delta_min - mu (K-1) delta_max)``
            of thresholds (in AIP-normalised coefficient units) that recover every support.
        feasible: ``delta_min > mu (2K - 1) delta_max`` (the interval is non-empty).
    """

    mu: float
    k: float
    delta_min: float
    delta_max: float
    tau_low: float
    tau_high: float
    feasible: bool

    def admits(self, tau: Any) -> bool:
        """Whether every threshold in ``tau`` (a number or ``[n]``) lies in the interval."""
        t = torch.as_tensor(tau, dtype=torch.float64)
        return bool(self.feasible and ((t > self.tau_low) & (t < self.tau_high)).all())


def threshold_recovery_condition(
    mu: float, k: float, delta_min: float, delta_max: float
) -> RecoveryCondition:
    """The paper's condition for a threshold SAE (``W_enc = D^T S``) to recover each support."""
    if not (0 <= delta_min <= delta_max):
        raise ValueError(f"need 0 <= delta_min <= delta_max, got {delta_min}, {delta_max}")
    if mu < 0 or k < 1:
        raise ValueError(f"need mu >= 0 and K >= 1, got mu={mu}, K={k}")
    low = mu * k * delta_max
    high = delta_min - mu * (k - 1) * delta_max
    return RecoveryCondition(
        mu=float(mu),
        k=float(k),
        delta_min=float(delta_min),
        delta_max=float(delta_max),
        tau_low=float(low),
        tau_high=float(high),
        feasible=bool(delta_min > mu * (2 * k - 1) * delta_max),
    )
