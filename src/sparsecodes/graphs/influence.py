"""Influence on the target through a graph's normalised adjacency matrix (used by pruning,
the scores and the capped attribution's visiting order; definitions in
:mod:`sparsecodes.graphs.prune`)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

__all__ = ["influence", "normalise_rows", "partial_influence"]


def normalise_rows(adj: Tensor) -> Tensor:
    """``|adj|`` with each row divided by its sum (zero rows stay zero): ``[N, N]``."""
    a = adj.abs()
    return a / a.sum(1, keepdim=True).clamp(min=1e-30)


def _series(first: Tensor, step: Callable[[Tensor], Tensor | None], max_iter: int) -> Tensor:
    """``first + step(first) + step(step(first)) + ...`` until a term is all zero (``step`` may
    return None for that); ``RuntimeError`` after ``max_iter`` terms (a cycle)."""
    total, cur = first.clone(), first
    for _ in range(max_iter):
        cur = step(cur)
        if cur is None:
            return total
        total += cur
    raise RuntimeError(
        f"influence did not vanish after {max_iter} steps: the adjacency matrix has a cycle"
    )


def influence(norm_adj: Tensor, weights: Tensor, max_iter: int = 10_000) -> Tensor:
    """``w Â + w Â² + ...`` for ``weights`` ``[N]``: each node's total influence ``[N]``."""
    return _series(weights @ norm_adj, lambda c: c @ norm_adj if bool(c.any()) else None, max_iter)


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

    def step(c: Tensor) -> Tensor | None:
        c = c[row_nodes]
        return c @ norm if bool(c.any()) else None

    return _series(weights[row_nodes] @ norm, step, max_iter)
