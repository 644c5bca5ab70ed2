"""Attribution graphs: the direct linear effect of every node on every other, for one prompt.

Nodes, in this order (the order of the adjacency matrix's rows and columns):

1. **features**: every active transcoder latent ``(layer, position, latent)``, layer-major;
2. **errors**: one per ``(layer, position)`` for every layer (an MLP without a transcoder is all
   error), index ``n_features + layer * T + position``;
3. **embeddings**: one per position (the token's embedding vector);
4. **target**: the logit of the target token at the last position, or the difference of two
   logits (target minus contrast).

``adjacency[i, j]`` (row = the node acted on, column = the acting node) is source ``j``'s value
(a feature's activation; 1 for errors and embeddings, whose vectors carry their size) times the
gradient of node ``i``'s input along ``j``'s output vector, through the frozen linear model of
:mod:`sparsecodes.graphs.replacement`: residual stream, attention with frozen patterns (OV only),
RMSNorm with frozen scales, skip paths. A feature's input is its pre-activation, the target's its
logit (difference). Because the model is linear in its sources, each node's input equals the sum
of its row plus ``bias[i]`` (its encoder bias, plus every decoder, attention and unembedding bias
carried to it). Rows are computed by batched backward passes, one cotangent per node acted on.

The first ``rm.zero_positions`` positions (the BOS attention sink) have no feature nodes (see
:mod:`sparsecodes.graphs.replacement`); their MLP outputs are constants of the prompt and are
carried into ``bias``, so their error nodes have no edges.

**Capped graphs** (``attribute(..., max_feature_nodes=N)`` with ``N`` below the number of active
features): the target's row is computed first, then feature rows are computed in order of their
*estimated* influence on the target, in rounds of ``update_interval * batch_size`` rows: before
each round the influence of every node is recomputed on the partial graph (the rows computed so
far, the others counted as zero; :func:`~sparsecodes.graphs.influence.partial_influence`), and the
unvisited features of largest estimated influence are visited next, until ``N`` features have
rows. Every active feature stays a node and a source (its column is complete), so:

- exact: every visited feature's row and the target's row are the rows of the full graph (each
  still reconstructs its node's input: sum of the row plus bias);
- not exact: unvisited features have an all-zero row and zero bias (their inputs are not
  reconstructed; ``visited`` marks them), so influence through them stops there; the prediction
  of an ablation (:func:`~sparsecodes.graphs.predicted_change`) treats them as held at their
  activations, and pruning and the scores see only the paths through visited features.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from sparsecodes.graphs.influence import partial_influence
from sparsecodes.graphs.replacement import ReplacementModel, ReplacementRun

__all__ = ["AttributionGraph", "attribute"]

logger = logging.getLogger(__name__)


@dataclass
class AttributionGraph:
    """Nodes, edges and each node's input for one prompt and target (see the module doc)."""

    input_ids: list[int]
    features: Tensor
    """``[n_features, 3]`` long: ``(layer, position, latent)``."""
    activations: Tensor
    """``[n_features]``: each feature's activation."""
    adjacency: Tensor
    """``[N, N]``: ``adjacency[target_node, source_node]`` (see the module doc)."""
    node_input: Tensor
    """``[N]``: the pre-activation of features, the logit (difference) of the target; NaN for
    errors and embeddings, which have no input."""
    bias: Tensor
    """``[N]``: what the biases contribute to ``node_input`` (0 for errors and embeddings)."""
    n_layers: int
    target_id: int
    contrast_id: int | None = None
    seconds: float = 0.0
    visited: Tensor | None = None
    """``[n_features]`` bool: which feature rows were computed (a capped graph, see the module
    doc); None when all were."""

    @property
    def n_pos(self) -> int:
        return len(self.input_ids)

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_nodes(self) -> int:
        return int(self.adjacency.shape[0])

    @property
    def error_slice(self) -> slice:
        return slice(self.n_features, self.n_features + self.n_layers * self.n_pos)

    @property
    def embed_slice(self) -> slice:
        s = self.error_slice.stop
        return slice(s, s + self.n_pos)

    @property
    def target_index(self) -> int:
        return self.n_nodes - 1

    def kinds(self) -> list[str]:
        """``"feature" | "error" | "embedding" | "target"`` per node."""
        return (
            ["feature"] * self.n_features
            + ["error"] * (self.n_layers * self.n_pos)
            + ["embedding"] * self.n_pos
            + ["target"]
        )

    def reconstruction(self) -> Tensor:
        """``[N]``: each node's input rebuilt as the sum of its incoming edges plus its bias."""
        return self.adjacency.sum(1) + self.bias


@torch.no_grad()
def attribute(
    rm: ReplacementModel,
    run: ReplacementRun,
    target_id: int,
    contrast_id: int | None = None,
    *,
    batch_size: int = 64,
    max_feature_nodes: int | None = None,
    update_interval: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> AttributionGraph:
    """The attribution graph of ``run`` for the logit of ``target_id`` at the last position
    (minus the logit of ``contrast_id`` when given). ``batch_size`` cotangents per backward pass;
    ``progress(done, total)`` is called after each batch of rows.

    ``max_feature_nodes``: compute at most this many feature rows, chosen by estimated influence
    on the target and re-ranked every ``update_interval`` batches (a capped graph: see the module
    doc for what stays exact). None, or a cap at least the number of active features: the full
    graph, every row computed.
    """
    import time

    if max_feature_nodes is not None and max_feature_nodes < 0:
        raise ValueError(f"max_feature_nodes must be >= 0 or None, got {max_feature_nodes}")
    if update_interval < 1:
        raise ValueError(f"update_interval must be >= 1, got {update_interval}")

    t0 = time.perf_counter()
    L, T = rm.L, len(run.input_ids)
    z = min(rm.zero_positions, T)
    feats, acts = [], []
    for layer in sorted(run.codes):
        nz = run.codes[layer].nonzero()
        feats.append(torch.cat([torch.full((len(nz), 1), layer, device=nz.device), nz], 1))
        acts.append(run.codes[layer][nz[:, 0], nz[:, 1]])
    dev, dt = run.embed.device, run.embed.dtype
    features = torch.cat(feats) if feats else torch.zeros(0, 3, dtype=torch.long, device=dev)
    activations = torch.cat(acts) if acts else torch.zeros(0, device=dev, dtype=dt)
    nf = len(features)
    n = nf + L * T + T + 1
    adj = torch.zeros(n, n, device=dev, dtype=dt)
    node_input = torch.full((n,), float("nan"), device=dev, dtype=dt)
    bias = torch.zeros(n, device=dev, dtype=dt)
    # per layer: which feature rows, their positions, their decoder rows [n_layer_features, d]
    by_layer: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
    for layer in sorted(run.codes):
        rows = (features[:, 0] == layer).nonzero().squeeze(1)
        dec = rm.transcoders[layer].W_dec_out[features[rows, 2]]
        by_layer[layer] = (rows, features[rows, 1], dec)
        node_input[rows] = run.pre[layer][features[rows, 1], features[rows, 2]]

    def fill(rows: Tensor, top: int, g_emb: Tensor, g_out: list, g_mid: list) -> None:
        vals = torch.zeros(len(rows), n, device=dev, dtype=dt)
        b = torch.zeros(len(rows), device=dev, dtype=dt)
        for layer in range(min(top, L)):
            g = g_out[layer]
            col = nf + layer * T
            vals[:, col : col + T] = (g * run.error[layer]).sum(-1)
            if z:  # the sink's MLP outputs are constants of the prompt: biases, not nodes
                b += vals[:, col : col + z].sum(1)
                vals[:, col : col + z] = 0
            if layer in by_layer:
                cols, pos, dec = by_layer[layer]
                # each source feature's decoder row against the gradient at its own position
                m = torch.einsum("bkd,kd->bk", g[:, pos], dec)  # [B, n_layer_features]
                vals[:, cols] = m * activations[cols]
                tc = rm.transcoders[layer]
                b += g.sum(1) @ tc.b_dec_out
        for layer in range(min(top + 1, L)):
            ab = rm.attn_bias(layer)
            if ab is not None:
                b += g_mid[layer].sum(1) @ ab
        e0 = nf + L * T
        vals[:, e0 : e0 + T] = (g_emb * run.embed).sum(-1)
        adj[rows] = vals
        bias[rows] += b

    total = nf + 1
    done = 0
    # the target: logit (difference) at the last position
    u = rm.W_U[target_id] - (rm.W_U[contrast_id] if contrast_id is not None else 0)
    cot = torch.zeros(1, T, rm.d, device=dev, dtype=dt)
    cot[0, -1] = rm.g_final * run.final_scale[-1] * u
    tgt = n - 1
    g_emb, g_out, g_mid = rm.backward(run, L, at_final=cot)
    fill(torch.tensor([tgt], device=dev), L, g_emb, g_out, g_mid)
    node_input[tgt] = run.logits[-1, target_id] - (
        run.logits[-1, contrast_id] if contrast_id is not None else 0
    )
    if rm.b_U is not None:
        bias[tgt] += rm.b_U[target_id] - (rm.b_U[contrast_id] if contrast_id is not None else 0)
    done += 1
    # features: the gradient of each pre-activation at its layer's MLP input
    w_enc_of = {layer: rm.enc[layer][0] for layer in by_layer}

    def feature_rows(r: Tensor, layer: int) -> None:
        p, f = features[r, 1], features[r, 2]
        b_enc = rm.enc[layer][1]
        cot = torch.zeros(len(r), T, rm.d, device=dev, dtype=dt)
        cot[torch.arange(len(r), device=dev), p] = w_enc_of[layer][:, f].T
        g_emb, g_out, g_mid = rm.backward(run, layer, at_mlp_in=cot)
        fill(r, layer, g_emb, g_out, g_mid)
        bias[r] += b_enc[f]

    visited: Tensor | None = None
    if max_feature_nodes is None or max_feature_nodes >= nf:
        for layer, (rows, _, _) in by_layer.items():
            for s in range(0, len(rows), batch_size):
                feature_rows(rows[s : s + batch_size], layer)
                done += len(rows[s : s + batch_size])
                if progress is not None:
                    progress(done, total)
    else:
        total = max_feature_nodes + 1
        visited = torch.zeros(nf, dtype=torch.bool, device=dev)
        known = [torch.tensor([tgt], device=dev)]  # node indices of the rows computed so far
        weights = torch.zeros(n, device=dev, dtype=dt)
        weights[tgt] = 1.0
        while int(visited.sum()) < max_feature_nodes:
            rows_known = torch.cat(known)
            est = partial_influence(adj[rows_known], rows_known, weights)[:nf]
            order = est.argsort(descending=True, stable=True)
            room = max_feature_nodes - int(visited.sum())
            queue = order[~visited[order]][: min(update_interval * batch_size, room)]
            visited[queue] = True
            layers = features[queue, 0]
            for layer in layers.unique().tolist():
                rows = queue[layers == layer].sort().values
                for s in range(0, len(rows), batch_size):
                    feature_rows(rows[s : s + batch_size], layer)
                    done += len(rows[s : s + batch_size])
                    if progress is not None:
                        progress(done, total)
            known.append(queue)
    return AttributionGraph(
        input_ids=[int(i) for i in run.input_ids],
        features=features,
        activations=activations,
        adjacency=adj,
        node_input=node_input,
        bias=bias,
        n_layers=L,
        target_id=int(target_id),
        contrast_id=None if contrast_id is None else int(contrast_id),
        seconds=time.perf_counter() - t0,
        visited=visited,
    )
