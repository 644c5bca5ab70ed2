"""Exact maximum-weight one-to-one matching, fast enough for 16k x 16k similarity matrices.

:func:`max_weight_matching` returns the same optimum as
``scipy.optimize.linear_sum_assignment(w, maximize=True)``. Small problems go straight to that
dense solver. Large ones (dense LSA on a 16k x 16k noisy matrix takes minutes) are solved on a
sparse candidate graph and then *proved* optimal on the full matrix:

1. Candidates: each row's and each column's ``k`` largest weights, plus the pairs ``(i, i)`` so a
   full matching always exists in the sparse graph.
2. ``scipy.sparse.csgraph.min_weight_full_bipartite_matching`` (LAPJVsp) solves the sparse problem.
3. LP duality gives the certificate: shortest-path distances in the matching's residual graph
   (vectorised Bellman-Ford) are dual potentials ``u`` (rows) and ``v`` (columns) with
   ``u_i + v_j <= c_ij`` on every candidate edge and equality on matched ones (``c = const - w``).
4. Pricing: if some pair of the *full* matrix has ``c_ij - u_i - v_j < -tol``, the sparse optimum
   may not be the global one; those pairs join the candidates and the loop repeats. When no pair
   violates the duals, the matching is optimal for the full matrix (primal value = dual value).

If the loop does not settle in a few rounds, or the candidate graph grows large, it falls back to
the dense solver, so the answer is always exact. ``tol`` (in weight units, default ``1e-9``)
bounds how far from optimal any single pair's reduced cost may be.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import min_weight_full_bipartite_matching
from torch import Tensor

MatchMethod = Literal["auto", "dense", "sparse"]

#: float32 screening threshold on reduced costs (costs are O(1); float32 error is ~1e-6 smaller)
_SCREEN = 1e-4
#: problems with at most this many entries use the dense solver under ``method="auto"``
DENSE_MAX_ENTRIES = 2048 * 2048


def max_weight_matching(
    weights: np.ndarray | torch.Tensor,
    *,
    method: MatchMethod = "auto",
    k: int = 8,
    tol: float = 1e-9,
    max_rounds: int = 30,
) -> tuple[np.ndarray, np.ndarray]:
    """Optimal one-to-one matching maximising the summed weight.

    Args:
        weights: ``[n_rows, n_cols]`` finite weights (any sizes; ``min(n_rows, n_cols)`` pairs).
        method: ``"dense"`` (``linear_sum_assignment``), ``"sparse"`` (certified sparse solver,
            see the module docstring) or ``"auto"`` (dense up to ``DENSE_MAX_ENTRIES`` entries).
        k: candidates kept per row and per column by the sparse solver.
        tol: optimality tolerance of the sparse solver's dual check.
        max_rounds: pricing rounds before the sparse solver falls back to the dense one.

    Returns:
        ``(rows, cols)`` int64 arrays of length ``min(n_rows, n_cols)``, ``rows`` ascending.
    """
    w = weights.detach().cpu().numpy() if isinstance(weights, torch.Tensor) else np.asarray(weights)
    if w.ndim != 2:
        raise ValueError(f"weights must be a 2-D [n_rows, n_cols] array, got shape {w.shape}")
    if method not in ("auto", "dense", "sparse"):
        raise ValueError(f"method must be 'auto', 'dense' or 'sparse', got {method!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if min(w.shape) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy()
    if w.dtype not in (np.float32, np.float64):
        w = w.astype(np.float64)
    if not bool(torch.isfinite(torch.from_numpy(w)).all()):
        raise ValueError("weights contain NaN or inf; replace them (e.g. np.nan_to_num) first")
    if method == "dense" or (method == "auto" and w.size <= DENSE_MAX_ENTRIES):
        return _dense(w)
    # Orient so that rows are the smaller side: every row is matched.
    if w.shape[0] > w.shape[1]:
        cols, rows = _sparse(np.ascontiguousarray(w.T), k, tol, max_rounds)
        order = np.argsort(rows)
        return rows[order], cols[order]
    return _sparse(np.ascontiguousarray(w), k, tol, max_rounds)


def _dense(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = linear_sum_assignment(w, maximize=True)
    return rows.astype(np.int64), cols.astype(np.int64)


def _topk_candidates(w: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise and column-wise top-``k`` pairs plus the diagonal (guarantees a full matching)."""
    nr, nc = w.shape
    t = torch.from_numpy(w)
    kr, kc = min(k, nc), min(k, nr)
    col_of_row = t.topk(kr, dim=1, sorted=False).indices  # [nr, kr]
    # column-wise top-k on contiguous transposed blocks (a strided topk is slow)
    step = max(1, (1 << 22) // max(nr, 1))
    row_of_col = torch.cat(
        [
            t[:, j : j + step].T.contiguous().topk(kc, dim=1, sorted=False).indices
            for j in range(0, nc, step)
        ]
    )  # [nc, kc]
    diag = torch.arange(min(nr, nc))
    rows = torch.cat([torch.arange(nr).repeat_interleave(kr), row_of_col.reshape(-1), diag])
    cols = torch.cat([col_of_row.reshape(-1), torch.arange(nc).repeat_interleave(kc), diag])
    return rows.numpy().astype(np.int64), cols.numpy().astype(np.int64)


def _sparse(w: np.ndarray, k: int, tol: float, max_rounds: int) -> tuple[np.ndarray, np.ndarray]:
    """Certified sparse solver; ``w`` is ``[nr, nc]`` with ``nr <= nc``."""
    nr, nc = w.shape
    w_max = float(w.max())
    # Costs c = top - w lie in [1, range + 1]: strictly positive, as LAPJVsp requires.
    top = w_max + 1.0
    er, ec = _topk_candidates(w, k)
    for rnd in range(max_rounds):
        key = np.unique(er * nc + ec)
        if key.size > w.size // 4:
            break
        er, ec = key // nc, key % nc
        cost = top - w[er, ec].astype(np.float64)
        graph = sp.csr_matrix((cost, (er, ec)), shape=(nr, nc))
        try:
            mr, mc = min_weight_full_bipartite_matching(graph)
        except ValueError:  # cannot happen with the diagonal in the graph; be safe anyway
            break
        mr, mc = mr.astype(np.int64), mc.astype(np.int64)
        duals = _residual_potentials(nr, nc, key, cost, mr, mc)
        if duals is None:
            break
        u, v = duals
        br, bc = _violations(w, top, u, v, tol, k << min(rnd, 10))
        if br.size == 0:
            return mr, mc
        er, ec = np.concatenate([er, br]), np.concatenate([ec, bc])
    return _dense(w)


def _residual_potentials(
    nr: int, nc: int, key: np.ndarray, cost: np.ndarray, mr: np.ndarray, mc: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """Dual potentials ``(u [nr], v [nc])`` certifying the matching on the candidate graph.

    Residual graph: unmatched edge ``row i -> col j`` (cost ``c_ij``), matched edge
    ``col j -> row i`` (cost ``-c_ij``); when ``nc > nr`` a node ``T`` with ``free col -> T`` and
    ``T -> matched col`` (cost 0) lets a matched column swap for a free one. ``d`` = shortest
    distances from a virtual source joined to every node at cost 0. Then ``u_i = d_T - d_i``,
    ``v_j = d_j - d_T`` (matched) or ``0`` (free) satisfy ``u_i + v_j <= c_ij`` on candidates,
    equality on the matching, ``v <= 0``: the LP dual of the rectangular assignment problem.
    Returns None when a negative cycle appears (round-off), so the caller falls back.
    """
    mkey = mr * nc + mc
    pos = np.searchsorted(key, mkey)
    is_matched = np.zeros(key.size, dtype=bool)
    is_matched[pos] = True
    er, ec = key // nc, key % nc
    t_node = nr + nc
    src = [er[~is_matched], nr + mc]
    dst = [nr + ec[~is_matched], mr]
    wt = [cost[~is_matched], -cost[pos]]
    if nc > nr:
        free = np.ones(nc, dtype=bool)
        free[mc] = False
        fj = np.flatnonzero(free)
        src += [nr + fj, np.full(mc.size, t_node)]
        dst += [np.full(fj.size, t_node), nr + mc]
        wt += [np.zeros(fj.size), np.zeros(mc.size)]
    src_a, dst_a, wt_a = np.concatenate(src), np.concatenate(dst), np.concatenate(wt)
    # Two extreme feasible potentials: distances from a virtual source, and minus distances to a
    # virtual sink (Bellman-Ford on the reversed graph). Their midpoint is feasible too and sits
    # inside the dual face, which leaves far fewer violated pairs in the full matrix.
    d_from = _bellman_ford(t_node + 1, src_a, dst_a, wt_a)
    d_to = _bellman_ford(t_node + 1, dst_a, src_a, wt_a)
    if d_from is None or d_to is None:
        return None
    d = 0.5 * (d_from - d_to)
    if nc > nr:
        d_t = d[t_node]
        u = d_t - d[:nr]
        v = np.zeros(nc)
        v[mc] = d[nr + mc] - d_t
        return u, v
    return -d[:nr], d[nr : nr + nc]


def _bellman_ford(
    n: int, src: np.ndarray, dst: np.ndarray, wt: np.ndarray, eps: float = 1e-12
) -> np.ndarray | None:
    """Distances from a virtual source (cost-0 edges to all ``n`` nodes), label-correcting.

    Each sweep relaxes only the edges leaving nodes whose distance changed in the last sweep.
    Returns None if more than ``n`` sweeps are needed (a negative cycle).
    """
    order = np.argsort(src, kind="stable")
    src, dst, wt = src[order], dst[order], wt[order]
    ptr = np.searchsorted(src, np.arange(n + 1))
    d = np.zeros(n)
    active = np.arange(n)
    for _ in range(n + 1):
        starts, counts = ptr[active], ptr[active + 1] - ptr[active]
        total = int(counts.sum())
        if total == 0:
            return d
        offsets = np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(total)
        best = np.full(n, np.inf)
        np.minimum.at(best, dst[offsets], d[src[offsets]] + wt[offsets])
        improved = best < d - eps
        if not improved.any():
            return d
        d[improved] = best[improved]
        active = np.flatnonzero(improved)
    return None


def _violations(
    w: np.ndarray, top: float, u: np.ndarray, v: np.ndarray, tol: float, per_row: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs with reduced cost ``(top - w_ij) - u_i - v_j < -tol``, the ``per_row`` worst per row.

    A float32 pass over the full matrix flags every pair whose reduced cost could be negative
    (float32 error is far below ``_SCREEN``); flagged pairs are then checked exactly in float64.
    """
    nr, nc = w.shape
    tw = torch.from_numpy(w)
    a32 = torch.from_numpy(top - u).float()
    v32 = torch.from_numpy(v).float()
    cand_r: list[Tensor] = []
    cand_c: list[Tensor] = []
    chunk = max(1, (1 << 22) // max(nc, 1))
    for i in range(0, nr, chunk):
        slack = (a32[i : i + chunk, None] - v32[None, :]).sub_(tw[i : i + chunk].float())
        r, c = torch.nonzero(slack < _SCREEN, as_tuple=True)
        cand_r.append(r + i)
        cand_c.append(c)
    rr = torch.cat(cand_r).numpy().astype(np.int64)
    cc = torch.cat(cand_c).numpy().astype(np.int64)
    exact = (top - w[rr, cc].astype(np.float64)) - u[rr] - v[cc]
    bad = exact < -tol
    rr, cc, exact = rr[bad], cc[bad], exact[bad]
    if rr.size == 0:
        return rr, cc
    # keep the per_row most violated pairs of each row: sort by (row, reduced cost)
    order = np.lexsort((exact, rr))
    rr, cc = rr[order], cc[order]
    first = np.searchsorted(rr, rr)  # start of each row's run
    keep = (np.arange(rr.size) - first) < per_row
    return rr[keep], cc[keep]
