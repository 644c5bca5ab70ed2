"""One call from a prompt and a target token to a pruned, scored attribution graph (JSON dict)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor

from sparsecodes.graphs.attribution import attribute
from sparsecodes.graphs.heads import head_scores, target_head_scores
from sparsecodes.graphs.io import graph_json
from sparsecodes.graphs.prune import graph_scores, prune
from sparsecodes.graphs.replacement import ReplacementModel
from sparsecodes.graphs.transcoder import Transcoder, hook_layer
from sparsecodes.interp.annotate import TokenStrings
from sparsecodes.models.adapter import ModelAdapter

__all__ = ["build_graph", "single_token"]

logger = logging.getLogger(__name__)


def single_token(adapter: ModelAdapter, text: str) -> int:
    """The id of ``text`` if it is exactly one token of ``adapter``'s tokenizer; else ValueError."""
    ids = adapter.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(
            f"target {text!r} is {len(ids)} tokens for {adapter.name} ({ids}); give a single "
            "token, usually with its leading space (e.g. ' Mary')"
        )
    return int(ids[0])


def _normalised(scores: Tensor) -> list[list[float]]:
    """``[L, H]`` scores divided by their sum, rounded for JSON."""
    total = float(scores.sum())
    return [[float(f"{float(v) / total:.5g}") if total > 0 else 0.0 for v in row] for row in scores]


def build_graph(
    adapter: ModelAdapter,
    transcoders: Sequence[Transcoder],
    prompt: str,
    target: str,
    contrast: str | None = None,
    *,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    batch_size: int = 64,
    max_feature_nodes: int | None = None,
    all_nodes: bool = False,
    feature_pages: Mapping[int, str] | None = None,
    heads: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The attribution graph of ``prompt`` for the logit of ``target`` (minus ``contrast``'s) at
    the last position, pruned and scored, as the JSON dict of docs/graphs.md.

    ``feature_pages`` maps a layer to the URL prefix of its coder's feature-browser pages
    (``{prefix}{latent}.html``); its feature nodes then link there. With ``heads`` the JSON
    carries the graph's attention-head scores (:func:`~sparsecodes.graphs.head_scores`, and the
    target's own term), each normalised to sum 1, as ``heads``. ``max_feature_nodes`` caps the
    feature rows computed (:func:`~sparsecodes.graphs.attribute`; what stays exact is in
    docs/graphs.md).
    """
    tid = single_token(adapter, target)
    cid = single_token(adapter, contrast) if contrast is not None else None
    ids, _ = adapter.encode(prompt)
    rm = ReplacementModel(adapter, transcoders)
    run = rm.run(ids[0])
    graph = attribute(
        rm,
        run,
        tid,
        cid,
        batch_size=batch_size,
        max_feature_nodes=max_feature_nodes,
        progress=progress,
    )
    logger.info("attribution: %d features, %.2f s", graph.n_features, graph.seconds)
    pr = prune(graph, node_threshold, edge_threshold)
    data = graph_json(
        graph,
        pr,
        graph_scores(graph),
        graph_scores(graph, pr.node_mask),
        TokenStrings(adapter.tokenizer).sequence(graph.input_ids),
        prompt=prompt,
        model=adapter.name,
        target_token=target,
        contrast_token=contrast,
        transcoders=[
            {
                "layer": hook_layer(tc.in_hook, "mlp_in"),
                "in_hook": tc.in_hook,
                "out_hook": tc.out_hook,
                "n_latents": int(tc.W_dec_out.shape[0]),
            }
            for tc in transcoders
        ],
        all_nodes=all_nodes,
    )
    if heads:
        kept = head_scores(rm, run, graph, pr)
        own = target_head_scores(rm, run, graph)
        data["heads"] = {
            "n_layers": rm.L,
            "n_heads": rm.H,
            "scores": _normalised(kept),
            "target_only": _normalised(own),
        }
    pages = feature_pages or {}
    for node in data["nodes"]:
        if node["kind"] == "feature" and node["layer"] in pages:
            node["href"] = f"{pages[node['layer']]}{node['feature']}.html"
    return data
