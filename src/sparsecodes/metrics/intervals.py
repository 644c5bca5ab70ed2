"""Confidence intervals for the scores of automated interpretability (and any per-item score).

Every interval is a :class:`Interval` ``(low, high, level, method)``:

- :func:`bootstrap_interval`: percentile bootstrap of a statistic of two groups (positives and
  negatives), resampled **within each group** (stratified), so every resample keeps both classes.
  Seeded; ``n_boot`` resamples drawn at once with numpy. Used for balanced accuracy and ROC AUC.
- :func:`wilson_interval`: the Wilson score interval of a binomial proportion (intruder accuracy).
- :func:`correlation_interval`: Fisher's z interval of a Pearson correlation of ``n`` pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata

from sparsecodes.metrics.ranking import roc_auc_from_arrays


@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval ``[low, high]`` at ``level`` (e.g. 0.95)."""

    low: float
    high: float
    level: float
    method: str

    def to_dict(self) -> dict[str, float | str]:
        return {"low": self.low, "high": self.high, "level": self.level, "method": self.method}


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def bootstrap_interval(
    statistic: Callable[[np.ndarray, np.ndarray], np.ndarray],
    pos: np.ndarray,
    neg: np.ndarray,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of ``statistic(pos_samples, neg_samples)``.

    ``pos`` ``[n_pos, ...]`` and ``neg`` ``[n_neg, ...]`` are resampled with replacement within
    each group; ``statistic`` receives ``[n_boot, n_pos, ...]`` and ``[n_boot, n_neg, ...]`` and
    returns ``[n_boot]``.
    """
    _check_level(level)
    pos, neg = np.asarray(pos), np.asarray(neg)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"bootstrap needs both groups, got {len(pos)} and {len(neg)} items")
    if n_boot < 10:
        raise ValueError(f"n_boot must be at least 10, got {n_boot}")
    rng = np.random.default_rng(seed)
    ip = rng.integers(0, len(pos), size=(n_boot, len(pos)))
    ineg = rng.integers(0, len(neg), size=(n_boot, len(neg)))
    stats = np.asarray(statistic(pos[ip], neg[ineg]), dtype=np.float64)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return Interval(float(low), float(high), level, f"stratified percentile bootstrap ({n_boot})")


def balanced_accuracy_interval(
    pos_correct: np.ndarray, neg_correct: np.ndarray, **kwargs: float | int
) -> Interval:
    """Interval of ``(mean(pos_correct) + mean(neg_correct)) / 2`` (balanced accuracy), from the
    per-item correctness of positives ``[n_pos]`` and negatives ``[n_neg]`` (bool)."""
    return bootstrap_interval(
        lambda p, n: 0.5 * (p.mean(axis=1) + n.mean(axis=1)),
        np.asarray(pos_correct, dtype=np.float64),
        np.asarray(neg_correct, dtype=np.float64),
        **kwargs,  # type: ignore[arg-type]
    )


def auroc(pos_scores: np.ndarray, neg_scores: np.ndarray) -> float:
    """ROC AUC of positives' scores ``[n_pos]`` against negatives' ``[n_neg]`` (ties count 1/2)."""
    pos, neg = np.asarray(pos_scores, np.float64), np.asarray(neg_scores, np.float64)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"ROC AUC needs positives and negatives, got {len(pos)} and {len(neg)}")
    y = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
    return roc_auc_from_arrays(y, np.r_[pos, neg])


def _auroc_batch(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """``[B]`` ROC AUCs of ``pos`` ``[B, P]`` against ``neg`` ``[B, N]`` (Mann-Whitney, ranks)."""
    n_pos, n_neg = pos.shape[1], neg.shape[1]
    ranks = rankdata(np.concatenate([pos, neg], axis=1), method="average", axis=1)
    u = ranks[:, :n_pos].sum(axis=1) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def auroc_interval(
    pos_scores: np.ndarray, neg_scores: np.ndarray, **kwargs: float | int
) -> Interval:
    """Stratified bootstrap interval of :func:`auroc`."""
    return bootstrap_interval(
        _auroc_batch,
        np.asarray(pos_scores, np.float64),
        np.asarray(neg_scores, np.float64),
        **kwargs,  # type: ignore[arg-type]
    )


def wilson_interval(successes: int, n: int, *, level: float = 0.95) -> Interval:
    """Wilson score interval of a proportion ``successes / n``."""
    _check_level(level)
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    z = float(norm.ppf(0.5 + level / 2.0))
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(max(0.0, centre - half), min(1.0, centre + half), level, "wilson")


def correlation_interval(r: float, n: int, *, level: float = 0.95) -> Interval:
    """Fisher z interval of a Pearson correlation ``r`` over ``n > 3`` independent pairs."""
    _check_level(level)
    if n <= 3:
        raise ValueError(f"a correlation interval needs more than 3 pairs, got {n}")
    if not -1.0 <= r <= 1.0:
        raise ValueError(f"r must be in [-1, 1], got {r}")
    z = float(norm.ppf(0.5 + level / 2.0))
    zr = math.atanh(max(-1 + 1e-12, min(1 - 1e-12, r)))
    half = z / math.sqrt(n - 3)
    return Interval(math.tanh(zr - half), math.tanh(zr + half), level, "fisher z")


def mean_interval(
    values: np.ndarray, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> Interval:
    """Percentile bootstrap interval of the mean of ``values`` ``[n]`` (n >= 2)."""
    _check_level(level)
    v = np.asarray(values, np.float64)
    if v.ndim != 1 or len(v) < 2:
        raise ValueError(f"a mean interval needs at least 2 values, got shape {v.shape}")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return Interval(float(low), float(high), level, f"percentile bootstrap ({n_boot})")
