"""Influence on the target through a graph's normalised adjacency matrix (used by pruning,
the scores and the capped attribution's visiting order; definitions in
:mod:`sparsecodes.graphs.prune`)."""

from __future__ import annotations

from torch import Tensor

__all__ = ["influence", "normalise_rows", "partial_influence"]


def normalise_rows(adj: Tensor) -> Tensor:
    """``|adj|`` with each row divided by its sum (zero rows stay zero): ``[N, N]``."""
    a = adj.abs()
    return a / a.sum(1, keepdim=True).clamp(min=1e-30)


def influence(norm_adj: Tensor, weights: Tensor, max_iter: int = 10_000) -> Tensor:
    """``w Â + w Â² + ...`` for ``weights`` ``[N]``: each node's total influence ``[N]``."""
    cur = weights @ norm_adj
    total = cur.clone()
    for _ in range(max_iter):
        if not bool(cur.any()):
            return total
        cur = cur @ norm_adj
        total += cur
    raise RuntimeError(
        f"influence did not vanish after {max_iter} steps: the adjacency matrix has a cycle"
    )


def partial_influence(
    rows: Tensor, row_nodes: Tensor, weights: Tensor, max_iter: int = 10_000
) -> Tensor:
    """:func:`influence` on a graph of which only some rows are known (the others counted as
    zero): ``rows`` ``[R, N]`` are the rows of nodes ``row_nodes`` ``[R]``; ``weights`` ``[N]``
    must be zero outside ``row_nodes``. Returns ``[N]``; it equals
    ``influence(normalise_rows(A), weights)`` with ``A`` the ``[N, N]`` matrix holding ``rows``
    at ``row_nodes`` and zeros elsewhere, at the cost of ``R x N`` products per step.
    """
    norm = normalise_rows(rows)
    cur = weights[row_nodes] @ norm
    total = cur.clone()
    for _ in range(max_iter):
        cur = cur[row_nodes]
        if not bool(cur.any()):
            return total
        cur = cur @ norm
        total += cur
    raise RuntimeError(
        f"influence did not vanish after {max_iter} steps: the adjacency matrix has a cycle"
    )
