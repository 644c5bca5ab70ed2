"""Metrics: reconstruction, sparsity, and recovery of known latents (MCC, support F1).

Definitions are written out in ``docs/metrics.md`` (the code follows them exactly). Codes may be
dense tensors/arrays ``[n_samples, n_latents]`` or :class:`~sparsecodes.codes.SparseCodes`.
"""

from sparsecodes.metrics.atoms import (
    aip,
    aip_coherence,
    aip_gram,
    aip_norms,
    coherence_pair,
    threshold_recovery_condition,
    uniqueness_bound,
    whitening_matrix,
)
from sparsecodes.metrics.evaluate import evaluate
from sparsecodes.metrics.features import (
    Absorption,
    AbsorptionCounter,
    FiringCounter,
    FiringScores,
    Uniqueness,
    absorption,
    code_shrinkage,
    firing_scores,
    match_latents,
    norm_shrinkage,
    recovery_rate,
    uniqueness,
)
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
    "Absorption",
    "AbsorptionCounter",
    "FiringCounter",
    "FiringScores",
    "MCCResult",
    "Uniqueness",
    "abs_correlation",
    "abs_cosine",
    "absorption",
    "aip",
    "aip_coherence",
    "aip_gram",
    "aip_norms",
    "code_mcc",
    "code_shrinkage",
    "coherence_pair",
    "cosine_similarity",
    "dead_latents",
    "dense_latents",
    "dictionary_mcc",
    "evaluate",
    "explained_variance",
    "feature_density",
    "firing_scores",
    "fvu",
    "fvu_from_sums",
    "l0",
    "match_latents",
    "max_weight_matching",
    "mse",
    "norm_shrinkage",
    "recovery_rate",
    "support_metrics",
    "threshold_recovery_condition",
    "uniqueness",
    "uniqueness_bound",
    "whitening_matrix",
]
