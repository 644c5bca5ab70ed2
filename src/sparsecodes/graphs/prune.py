"""Influence on the target, pruning, and the replacement and completeness scores of a graph.

Definitions (the method of circuit-tracer, Ameisen et al. 2025), with ``A`` the adjacency matrix
(``A[i, j]``: effect of node ``j`` on node ``i``) and ``w`` the target weights (1 at the target):

- **normalised adjacency** ``Â[i, j] = |A[i, j]| / sum_k |A[i, k]|`` (a zero row stays zero);
- **influence** of each node on the target: ``I = w Â + w Â² + w Â³ + ...`` (finite: the graph is
  acyclic, so ``Â`` is nilpotent);
- **node pruning**: sort the nodes by influence, keep the fewest whose cumulative influence reaches
  ``node_threshold`` (0.8) of the total, plus every embedding and the target;
- **edge pruning**: on the graph restricted to the kept nodes, the score of edge ``j -> i`` is
  ``Â'[i, j] (I'_i + w_i)`` with ``I'`` the influence in that graph; keep the fewest edges whose
  cumulative score reaches ``edge_threshold`` (0.98) of the total; then drop, repeatedly, feature
  and error nodes left with no kept outgoing edge and features with no kept incoming edge;
- **replacement score**: ``E / (E + R)`` with ``E`` the total influence of the embeddings and
  ``R`` that of the error nodes: the share of the target's (normalised) dependence that reaches
  the input through features rather than ending in an error node;
- **completeness score**: ``sum_i (1 - sum_{j error} Â[i, j]) (I_i + w_i) / sum_i (I_i + w_i)``:
  the influence-weighted share of each node's direct inputs that is not error.

Both scores are 1 when every error node is zero.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from sparsecodes.graphs.attribution import AttributionGraph
from sparsecodes.graphs.influence import influence, normalise_rows, partial_influence

__all__ = [
    "GraphScores",
    "PruneResult",
    "graph_scores",
    "influence",
    "normalise_rows",
    "partial_influence",
    "prune",
    "threshold_for",
]


def threshold_for(scores: Tensor, fraction: float) -> float:
    """The smallest score among the fewest top ``scores`` whose sum reaches ``fraction`` of all.

    Keeping every score ``>=`` it keeps at least ``fraction`` of the total (ties are all kept).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"a threshold fraction must be in [0, 1], got {fraction}")
    s = scores.flatten().sort(descending=True).values
    total = s.sum()
    if total <= 0:
        return float("inf")
    cum = s.cumsum(0) / total
    i = int(torch.searchsorted(cum, torch.tensor(fraction, dtype=cum.dtype)))
    return float(s[min(i, len(s) - 1)])


def target_weights(graph: AttributionGraph) -> Tensor:
    w = torch.zeros(graph.n_nodes, dtype=graph.adjacency.dtype, device=graph.adjacency.device)
    w[graph.target_index] = 1.0
    return w


@dataclass
class PruneResult:
    """Which nodes and edges are kept, and each node's influence on the target."""

    node_mask: Tensor
    """``[N]`` bool."""
    edge_mask: Tensor
    """``[N, N]`` bool, like the adjacency matrix."""
    influence: Tensor
    """``[N]``: influence on the target in the full graph."""
    kept_influence_fraction: float
    """Share of the total influence carried by the nodes kept by the node threshold."""
    seconds: float
    node_threshold: float = 0.8
    edge_threshold: float = 0.98


def prune(
    graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98
) -> PruneResult:
    """Prune ``graph`` by influence on the target (see the module doc)."""
    t0 = time.perf_counter()
    adj = graph.adjacency
    w = target_weights(graph)
    infl = influence(normalise_rows(adj), w)
    node_mask = infl >= threshold_for(infl, node_threshold)
    kept_fraction = float(infl[node_mask].sum() / infl.sum().clamp(min=1e-30))
    node_mask[graph.embed_slice] = True
    node_mask[graph.target_index] = True
    pruned = adj.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    norm = normalise_rows(pruned)
    scores = norm * (influence(norm, w) + w)[:, None]
    positive = scores > 0  # zeros add nothing to the sum: sort only the nonzero scores
    edge_mask = (scores >= threshold_for(scores[positive], edge_threshold)) & positive
    nf, inner = graph.n_features, graph.embed_slice.start  # features and errors: [0, inner)
    while True:
        before = node_mask.clone()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[:inner] &= edge_mask[:, :inner].any(0)
        node_mask[:nf] &= edge_mask[:nf].any(1)
        if bool((node_mask == before).all()):
            break
    return PruneResult(
        node_mask,
        edge_mask,
        infl,
        kept_fraction,
        time.perf_counter() - t0,
        node_threshold,
        edge_threshold,
    )


@dataclass
class GraphScores:
    replacement: float
    completeness: float


def graph_scores(graph: AttributionGraph, mask: Tensor | None = None) -> GraphScores:
    """Replacement and completeness scores of ``graph`` (see the module doc).

    With a node ``mask`` ``[N]`` (e.g. ``prune(...).node_mask``), the pruned graph's scores: the
    dropped feature nodes count as error (their edges are moved to the error of their layer and
    position; a convention of ours).
    """
    adj = graph.adjacency
    if mask is not None:
        adj = adj.clone()
        drop = (~mask[: graph.n_features]).nonzero().squeeze(1)
        if len(drop):
            layer, pos = graph.features[drop, 0], graph.features[drop, 1]
            err_col = graph.n_features + layer * graph.n_pos + pos
            adj.index_add_(1, err_col, adj[:, drop])
            adj[:, drop] = 0
            adj[drop] = 0
    w = target_weights(graph)
    norm = normalise_rows(adj)
    infl = influence(norm, w)
    err = float(infl[graph.error_slice].sum())
    emb = float(infl[graph.embed_slice].sum())
    replacement = emb / (emb + err) if emb + err > 0 else 1.0
    non_error = 1.0 - norm[:, graph.error_slice].sum(1)
    out = infl + w
    completeness = float((non_error * out).sum() / out.sum())
    return GraphScores(replacement, completeness)
