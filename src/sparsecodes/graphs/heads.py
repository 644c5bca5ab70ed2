"""Attention heads through which a graph's edges pass: per-head scores from an attribution graph.

With attention patterns frozen, each head's output at layer ``l`` is a linear function of the
sources below it, so a node's input splits exactly by head: the part of node ``i``'s incoming
edges whose paths pass through head ``(l, h)`` is ``c_i(l, h) = sum_t g_i[l, t] . o_{l,h}[t]``,
with ``g_i[l]`` the gradient of node ``i``'s input with respect to the residual stream right after
layer ``l``'s attention (through the frozen linear model, :meth:`ReplacementModel.backward`) and
``o_{l,h}`` ``[T, d]`` the head's output (its pattern-weighted values times its slice of
``W_O``). The **head score** weights these by how much each node matters to the target:

    score(l, h) = sum_{i kept} (I_i + w_i) |c_i(l, h)| / sum_j |A[i, j]|

over the target and the feature nodes kept by pruning (``I`` the influence on the target, ``w``
1 at the target; dividing by the row's absolute sum is the normalisation of the influence).
:func:`target_head_scores` is the target's term alone (``|c_target(l, h)|``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparsecodes.graphs.attribution import AttributionGraph
from sparsecodes.graphs.prune import PruneResult, target_weights
from sparsecodes.graphs.replacement import ReplacementModel, ReplacementRun

__all__ = ["head_outputs", "head_scores", "node_head_contributions", "target_head_scores"]


@torch.no_grad()
def head_outputs(rm: ReplacementModel, run: ReplacementRun) -> Tensor:
    """``[L, H, T, d]``: each head's output (what it adds to the residual stream, no bias)."""
    adapter = rm.adapter
    hooks = [f"blocks.{layer}.attn.heads" for layer in range(rm.L)]
    z = adapter.run(run.input_ids[None], hooks=hooks)
    out = []
    for layer, w in enumerate(rm.layers):
        zl = z[hooks[layer]][0].to(w.W_o.dtype)  # [T, H, dh]
        wo = w.W_o.view(rm.d, rm.H, rm.d_head)  # [d, H, dh]
        out.append(torch.einsum("thk,dhk->htd", zl, wo))
    return torch.stack(out)


@torch.no_grad()
def node_head_contributions(
    rm: ReplacementModel,
    run: ReplacementRun,
    graph: AttributionGraph,
    nodes: Tensor,
    outputs: Tensor | None = None,
    batch_size: int = 64,
) -> Tensor:
    """``[len(nodes), L, H]``: ``c_i(l, h)`` for the given nodes (features or the target)."""
    outputs = head_outputs(rm, run) if outputs is None else outputs
    T, dev, dt = graph.n_pos, run.embed.device, run.embed.dtype
    res = torch.zeros(len(nodes), rm.L, rm.H, device=dev, dtype=dt)

    def add(rows: Tensor, g_mid: list, top: int) -> None:
        for layer in range(min(top + 1, rm.L)):
            res[rows, layer] = torch.einsum("btd,htd->bh", g_mid[layer], outputs[layer])

    for k, node in enumerate(nodes.tolist()):
        if node == graph.target_index:
            u = rm.W_U[graph.target_id] - (
                rm.W_U[graph.contrast_id] if graph.contrast_id is not None else 0
            )
            cot = torch.zeros(1, T, rm.d, device=dev, dtype=dt)
            cot[0, -1] = rm.g_final * run.final_scale[-1] * u
            add(torch.tensor([k]), rm.backward(run, rm.L, at_final=cot)[2], rm.L)
        elif node >= graph.n_features:
            raise ValueError(f"node {node} is not a feature or the target; it has no input")
    feats = [(k, n) for k, n in enumerate(nodes.tolist()) if n < graph.n_features]
    by_layer: dict[int, list[tuple[int, int]]] = {}
    for k, n in feats:
        by_layer.setdefault(int(graph.features[n, 0]), []).append((k, n))
    for layer, items in by_layer.items():
        w_enc = rm.enc[layer][0]
        for s in range(0, len(items), batch_size):
            chunk = items[s : s + batch_size]
            rows = torch.tensor([k for k, _ in chunk])
            f = graph.features[[n for _, n in chunk]]
            cot = torch.zeros(len(chunk), T, rm.d, device=dev, dtype=dt)
            cot[torch.arange(len(chunk)), f[:, 1]] = w_enc[:, f[:, 2]].T
            add(rows, rm.backward(run, layer, at_mlp_in=cot)[2], layer)
    return res


def target_head_scores(
    rm: ReplacementModel, run: ReplacementRun, graph: AttributionGraph
) -> Tensor:
    """``[L, H]``: ``|c_target(l, h)|``, the part of the target passing through each head."""
    t = torch.tensor([graph.target_index])
    return node_head_contributions(rm, run, graph, t)[0].abs()


def head_scores(
    rm: ReplacementModel, run: ReplacementRun, graph: AttributionGraph, pruned: PruneResult
) -> Tensor:
    """``[L, H]``: influence-weighted share of the kept nodes' inputs through each head."""
    keep = pruned.node_mask.clone()
    keep[graph.n_features : graph.target_index] = False  # errors and embeddings have no input
    nodes = keep.nonzero().squeeze(1)
    c = node_head_contributions(rm, run, graph, nodes).abs()
    weight = (pruned.influence + target_weights(graph))[nodes]
    row = graph.adjacency[nodes].abs().sum(1).clamp(min=1e-30)
    return torch.einsum("n,nlh->lh", weight / row, c)
