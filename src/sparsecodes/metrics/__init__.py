"""Metrics: reconstruction, sparsity, and recovery of known latents (MCC, support F1).

Definitions are written out in ``docs/metrics.md`` (the code follows them exactly). Codes may be
dense tensors/arrays ``[n_samples, n_latents]`` or :class:`~sparsecodes.codes.SparseCodes`.
"""

from sparsecodes.metrics.evaluate import evaluate
from sparsecodes.metrics.matching import max_weight_matching
from sparsecodes.metrics.mcc import MCCResult, code_mcc, dictionary_mcc
from sparsecodes.metrics.reconstruction import (
    cosine_similarity,
    explained_variance,
    fvu,
    fvu_from_sums,
    mse,
)
from sparsecodes.metrics.similarity import abs_correlation, abs_cosine
from sparsecodes.metrics.sparsity import (
    dead_latents,
    dense_latents,
    feature_density,
    l0,
    support_metrics,
)

__all__ = [
    "MCCResult",
    "abs_correlation",
    "abs_cosine",
    "code_mcc",
    "cosine_similarity",
    "dead_latents",
    "dense_latents",
    "dictionary_mcc",
    "evaluate",
    "explained_variance",
    "feature_density",
    "fvu",
    "fvu_from_sums",
    "l0",
    "max_weight_matching",
    "mse",
    "support_metrics",
]
