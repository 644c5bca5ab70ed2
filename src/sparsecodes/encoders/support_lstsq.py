"""Least squares on each row's support, batched over rows.

Shared by OMP (its refit after every selection, :mod:`sparsecodes.encoders.pursuit`) and the
debiasing refit of ISTA/FISTA (:mod:`sparsecodes.encoders.ista`). Each row ``i`` has a padded
support of ``s`` slots (atom ids, with a mask of the slots in use); the ``[s, s]`` Gram systems of
all rows are solved together by a batched Cholesky factorisation, no Python loop over rows
(:func:`solve_on_support`), or, for supports that grow by one slot per step, by extending each
row's inverse Cholesky factor (:class:`GrowingSupport`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparsecodes.codes import to_sparse

#: the debiasing refit gathers ``[rows, s, d]`` atoms; rows are processed in chunks of at most
#: this many gathered elements (64 MiB in float32)
_GATHER_MAX = 2**24


def solve_on_support(
    G: Tensor, rhs: Tensor, valid: Tensor, *, nonneg: bool
) -> tuple[Tensor, Tensor]:
    """Least squares on each row's valid slots; returns ``(coef [B, s], valid [B, s])``.

    ``G`` ``[B, s, s]`` is the Gram of the slots' atoms and ``rhs`` ``[B, s]`` their correlations
    with the target, so ``coef`` minimises ``||r - coef D_S||^2`` on the valid slots. Unused slots
    are solved as identity rows with zero right-hand side, so their coefficient is exactly 0. A row
    whose Cholesky factorisation fails (singular Gram: collinear atoms, or more atoms than
    dimensions) gets the minimum-norm solution from a pseudo-inverse.

    With ``nonneg`` slots whose coefficient is negative are dropped (``valid`` becomes False) and
    the rest re-solved, repeated until none is negative: an active-set heuristic for non-negative
    least squares, not an exact NNLS solver.
    """
    s = valid.shape[1]
    eye = torch.eye(s, dtype=G.dtype, device=G.device)
    while True:
        vm = valid.to(G.dtype)
        Gm = G * vm[:, :, None] * vm[:, None, :] + eye * (1.0 - vm)[:, None, :]
        b = (rhs * vm)[:, :, None]
        L, info = torch.linalg.cholesky_ex(Gm)
        coef = torch.cholesky_solve(b, L).squeeze(2)
        bad = info != 0
        if bool(bad.any()):  # singular support (collinear atoms): minimum-norm solution
            coef[bad] = (torch.linalg.pinv(Gm[bad], hermitian=True) @ b[bad]).squeeze(2)
        coef = coef * vm
        if not nonneg:
            return coef, valid
        neg = valid & (coef < 0)
        if not bool(neg.any()):
            return coef.clamp_min(0.0), valid
        valid = valid & ~neg


@torch.no_grad()
def refit_support(
    z: Tensor, r: Tensor, W: Tensor, *, nonneg: bool, zW: Tensor | None = None
) -> tuple[Tensor, int]:
    """Debiasing refit: ``z``'s nonzeros per row re-solved by least squares against ``r``.

    ``z`` ``[B, n]`` dense codes, ``r`` ``[B, d]`` the centred input (``x - b_dec``), ``W``
    ``[n, d]`` the atoms; ``zW`` (optional) is ``z @ W`` when already known. Each row's support
    ``S`` (its nonzeros, padded to ``s`` = the most nonzeros of any row) is kept and the
    coefficients replaced by ``argmin_c ||r - c W_S||^2`` via :func:`solve_on_support` (with
    ``nonneg``, negative coefficients are dropped and the rest re-solved, so the support can only
    shrink). Rows keep their original values when their support has more atoms than dimensions
    (``|S| > d``: the least-squares coefficients are not identified, any solution interpolates
    ``r``; a converged lasso solution in general position has at most ``d`` nonzeros, so this
    only catches unconverged rows) and when the refit would not lower their squared error
    (possible only through ``nonneg`` drops or round-off), so no row's error rises.

    Returns ``(codes [B, n], s)``; the codes are dense with exact zeros off the support.
    """
    B, d = r.shape
    nnz = (z != 0).sum(dim=1)
    s = int(nnz.max()) if B else 0
    if s == 0:
        return z, 0
    sp = to_sparse(z, s)
    idx, val = sp.indices, sp.values  # [B, s]; unused slots hold value 0
    identified = nnz <= d  # [B]
    valid = (val != 0) & identified[:, None]
    coef = torch.empty_like(val)
    step = max(1, _GATHER_MAX // (s * d))
    for i in range(0, B, step):
        A = W[idx[i : i + step]]  # [b, s, d]
        rc = r[i : i + step]
        G = A @ A.transpose(1, 2)
        rhs = (A @ rc[:, :, None]).squeeze(2)
        c, _ = solve_on_support(G, rhs, valid[i : i + step], nonneg=nonneg)
        old_fit = (val[i : i + step, None, :] @ A).squeeze(1) if zW is None else zW[i : i + step]
        err_new = (rc - (c[:, None, :] @ A).squeeze(1)).pow(2).sum(dim=1)
        err_old = (rc - old_fit).pow(2).sum(dim=1)
        better = (err_new <= err_old) & identified[i : i + step]
        coef[i : i + step] = torch.where(better[:, None], c, val[i : i + step])
    return torch.zeros_like(z).scatter_(1, idx, coef), s


class GrowingSupport:
    """Least squares on supports that grow by one slot per step, for every row of a batch.

    Signed OMP from a cold start fills slot ``t`` at step ``t`` (a row that stops never resumes),
    so each step's Gram is the previous one bordered by one row and column. Instead of a fresh
    ``[B, s, s]`` Cholesky factorisation per step (``B s^3 / 3``), this keeps each row's inverse
    Cholesky factor ``L^-1`` and ``z = L^-1 rhs`` and extends them by one row: with ``g`` the new
    atom's Gram entries against the support and ``y = L^-1 g``, the new row of ``L`` is
    ``[y, sqrt(G_tt - |y|^2)]``, so one step costs ``O(B s^2)`` batched products. A row that does
    not add an atom this step gets an identity row and ``z_t = 0``, so its coefficients stay as
    they were (the convention of :func:`solve_on_support` for unused slots).

    A new atom whose Gram pivot ``G_tt - |y|^2`` falls to ``SINGULAR_RTOL * G_tt`` or below (it lies
    numerically in the span of the row's support) marks the row singular; from then on the row is
    solved by :func:`solve_on_support` (which takes the pseudo-inverse where its factorisation
    fails), so the results agree with solving from scratch up to float rounding.
    """

    #: relative Gram pivot at or below which a new atom counts as collinear with the support
    SINGULAR_RTOL = 1e-5

    def __init__(self, batch: int, slots: int, dtype: torch.dtype, device: torch.device) -> None:
        self.linv = torch.zeros(batch, slots, slots, dtype=dtype, device=device)
        self.z = torch.zeros(batch, slots, dtype=dtype, device=device)
        self.singular = torch.zeros(batch, dtype=torch.bool, device=device)
        self.t = 0

    def add(self, G: Tensor, rhs: Tensor, valid: Tensor, live: Tensor) -> Tensor:
        """Slot ``t`` (this step's) joins the support of the ``live`` rows; returns ``coef
        [B, s]``, the least-squares coefficients on every row's valid slots (0 elsewhere).

        ``G`` ``[B, s, s]``, ``rhs`` ``[B, s]`` and ``valid`` ``[B, s]`` are the full systems as
        :func:`solve_on_support` takes them, already holding slot ``t`` of the live rows."""
        t, s = self.t, self.z.shape[1]
        if t >= s:
            raise ValueError(f"GrowingSupport: all {s} slots are already in use")
        li = self.linv[:, :t, :t]
        g = G[:, t, :t]  # [B, t]
        y = (li @ g[:, :, None]).squeeze(2)  # the new row of L
        gtt = G[:, t, t]
        pivot = gtt - y.pow(2).sum(dim=1)
        ok = live & (pivot > self.SINGULAR_RTOL * gtt)
        self.singular |= live & ~ok
        d = torch.where(ok, pivot, torch.ones_like(pivot)).sqrt()
        new_row = (y[:, None, :] @ li).squeeze(1).div_(d[:, None]).neg_()  # [B, t]
        self.linv[:, t, :t] = torch.where(ok[:, None], new_row, 0.0)
        self.linv[:, t, t] = torch.where(ok, d.reciprocal(), 1.0)
        z_t = (rhs[:, t] - (y * self.z[:, :t]).sum(dim=1)) / d
        self.z[:, t] = torch.where(ok, z_t, 0.0)
        self.t = t + 1
        n = t + 1
        coef = torch.zeros_like(self.z)
        coef[:, :n] = (self.linv[:, :n, :n].transpose(1, 2) @ self.z[:, :n, None]).squeeze(2)
        if bool(self.singular.any()):
            bad = self.singular.nonzero().squeeze(1)
            c, _ = solve_on_support(G[bad], rhs[bad], valid[bad], nonneg=False)
            coef[bad] = c
        return coef
