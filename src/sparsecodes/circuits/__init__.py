"""Circuit discovery from discrete sparse codes of attention-head outputs.

Train one sparse coder on every head's output for a handful of prompts, discretise each head's
output into a code, and score heads (and forward head pairs) by codes seen only on prompts where
the model predicts the answer (positives) and never on matched prompts where it cannot
(negatives). No ablations: it runs in seconds. See ``docs/circuits.md``.

Model-agnostic entry points: :func:`score_heads` (activations in, :class:`HeadScores` out) and the
metrics :func:`roc_auc`, :func:`pr_auc`, :func:`select_circuit`, :func:`precision_recall_f1`.
"""

from sparsecodes.circuits.codes import SILENT, HeadCodes, discretise, head_codes
from sparsecodes.circuits.metrics import (
    evaluate,
    pr_auc,
    precision_recall_f1,
    roc_auc,
    select_circuit,
)
from sparsecodes.circuits.scores import (
    HeadScores,
    edge_counts,
    forward_pairs,
    node_counts,
    score_heads,
)

__all__ = [
    "SILENT",
    "HeadCodes",
    "HeadScores",
    "discretise",
    "edge_counts",
    "evaluate",
    "forward_pairs",
    "head_codes",
    "node_counts",
    "pr_auc",
    "precision_recall_f1",
    "roc_auc",
    "score_heads",
    "select_circuit",
]
