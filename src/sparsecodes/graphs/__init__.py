"""Attribution graphs from transcoders: the replacement model, graphs, pruning, scores, viewer.

See docs/graphs.md. ``build_graph(adapter, transcoders, prompt, target, contrast)`` is the one
call; the pieces are :class:`ReplacementModel` (frozen, linear replacement of a llama-family
model), :func:`attribute` (the full graph), :func:`prune` and :func:`graph_scores`.
"""

from sparsecodes.graphs.attribution import AttributionGraph, attribute
from sparsecodes.graphs.build import build_graph, single_token
from sparsecodes.graphs.heads import head_scores, target_head_scores
from sparsecodes.graphs.io import graph_json, load_transcoder, save_transcoder, write_graph
from sparsecodes.graphs.prune import GraphScores, PruneResult, graph_scores, influence, prune
from sparsecodes.graphs.replacement import ReplacementModel, ReplacementRun
from sparsecodes.graphs.transcoder import DenseTranscoder, Transcoder, fit_transcoder
from sparsecodes.graphs.validate import (
    AblationCheck,
    AblationResult,
    ablation_check,
    first_order_change,
    frozen_change,
    partly_frozen_change,
    predicted_change,
    real_change,
    replacement_change,
    top_features,
)
from sparsecodes.graphs.viewer import write_graph_page

__all__ = [
    "AblationCheck",
    "AblationResult",
    "AttributionGraph",
    "DenseTranscoder",
    "GraphScores",
    "PruneResult",
    "ReplacementModel",
    "ReplacementRun",
    "Transcoder",
    "ablation_check",
    "attribute",
    "build_graph",
    "first_order_change",
    "fit_transcoder",
    "frozen_change",
    "graph_json",
    "graph_scores",
    "head_scores",
    "influence",
    "load_transcoder",
    "partly_frozen_change",
    "predicted_change",
    "prune",
    "real_change",
    "replacement_change",
    "save_transcoder",
    "single_token",
    "target_head_scores",
    "top_features",
    "write_graph",
    "write_graph_page",
]
