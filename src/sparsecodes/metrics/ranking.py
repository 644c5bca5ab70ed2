"""Ranking metrics of scores against binary labels: ROC AUC (Mann-Whitney) and average precision.

Both take plain arrays (``y`` ``[n]`` bool labels, ``s`` ``[n]`` finite scores) and equal
scikit-learn's ``roc_auc_score`` and ``average_precision_score`` (tested against them), without
depending on scikit-learn.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def roc_auc_from_arrays(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC of scores ``s`` ``[n]`` for binary labels ``y`` ``[n]`` (both classes present).

    The Mann-Whitney U statistic over ``n_pos * n_neg``: the probability that a random member
    outscores a random non-member, ties counting 1/2 (average ranks). Equals scikit-learn's
    ``roc_auc_score`` (the trapezoidal area under the ROC curve).
    """
    y = np.asarray(y, dtype=bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    ranks = rankdata(np.asarray(s, dtype=np.float64), method="average")
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def average_precision_from_arrays(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision of scores ``s`` ``[n]`` for binary labels ``y`` ``[n]`` (members present).

    As scikit-learn's ``average_precision_score`` defines it: ``sum_k (R_k - R_{k-1}) P_k`` over
    the distinct score thresholds ``k`` taken from the highest down (tied scores enter together),
    with ``R_0 = 0``; no interpolation.
    """
    y = np.asarray(y, dtype=bool)
    s = np.asarray(s, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    # the last position of each run of equal scores: one threshold per distinct score
    ends = np.r_[np.flatnonzero(np.diff(s_sorted)), s.size - 1]
    tps = np.cumsum(y_sorted)[ends].astype(np.float64)
    precision = tps / (ends + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))
