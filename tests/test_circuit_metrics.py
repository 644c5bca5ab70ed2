"""The scipy/numpy ROC AUC and average precision equal scikit-learn's, ties included."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import require
from sparsecodes.circuits.metrics import pr_auc, roc_auc
from sparsecodes.metrics.ranking import average_precision_from_arrays, roc_auc_from_arrays


def _random_cases(n_cases: int = 300):
    rng = np.random.default_rng(0)
    for i in range(n_cases):
        n = int(rng.integers(2, 60))
        y = rng.random(n) < rng.uniform(0.05, 0.95)
        y[rng.integers(n)] = True  # both classes present
        y[(rng.integers(n - 1) + 1 + np.flatnonzero(y)[0]) % n] = False
        if i % 3 == 0:  # continuous scores
            s = rng.standard_normal(n)
        else:  # few distinct values: many ties, across and within classes
            s = rng.integers(0, int(rng.integers(1, 5)) + 1, n).astype(float) * 0.5
        yield y, s


def test_roc_auc_equals_sklearn_with_ties():
    metrics = require("sklearn.metrics")
    for y, s in _random_cases():
        assert y.any() and not y.all()
        assert roc_auc_from_arrays(y, s) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)


def test_average_precision_equals_sklearn_with_ties():
    metrics = require("sklearn.metrics")
    for y, s in _random_cases():
        assert average_precision_from_arrays(y, s) == pytest.approx(
            metrics.average_precision_score(y, s), abs=1e-12
        )


def test_hand_computed_values_with_a_tie():
    # members a (0.9), c (0.5); non-members b (0.5), d (0.1)
    scores = {"a": 0.9, "b": 0.5, "c": 0.5, "d": 0.1}
    ref = {"a", "c"}
    # pairs (member, non-member): a>b, a>d, c=b (1/2), c>d -> 3.5 / 4
    assert roc_auc(scores, ref) == 0.875
    # thresholds 0.9: P=1, R=1/2; 0.5: P=2/3, R=1 -> 1/2*1 + 1/2*2/3
    assert pr_auc(scores, ref) == pytest.approx(0.5 + 1 / 3, abs=1e-15)


def test_all_tied_scores_are_chance():
    y = np.array([True, False, False, True, False])
    s = np.zeros(5)
    assert roc_auc_from_arrays(y, s) == 0.5
    assert average_precision_from_arrays(y, s) == pytest.approx(2 / 5)
