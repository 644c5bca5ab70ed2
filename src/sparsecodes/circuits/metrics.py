"""Comparing head scores with a reference circuit: ROC AUC, PR AUC, precision / recall / true F1.

Scores are ``{key: float}`` (a key is a head ``(layer, head)`` or an edge); a reference is a set of
keys. Every key of the scores is a candidate; keys of the reference that are not scored are an
error (the universe must be the same).

The operating point for precision/recall/F1 is chosen **without the reference**
(:func:`select_circuit`): ``rule="zscore"`` keeps keys whose score exceeds
``mean + z * std`` of that method's own scores (``z=1`` by default); ``rule="top_fraction"`` keeps
the top ``fraction`` of keys. F1 is the true F1, ``2 * P * R / (P + R)``, computed from counts.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Set
from typing import Any

import numpy as np

from sparsecodes.metrics.ranking import average_precision_from_arrays, roc_auc_from_arrays


def _arrays(scores: Mapping[Any, float], reference: Set[Any]) -> tuple[np.ndarray, np.ndarray]:
    if not scores:
        raise ValueError("scores is empty")
    missing = set(reference) - set(scores)
    if missing:
        raise ValueError(f"reference has keys that are not scored: {sorted(missing)[:5]} ...")
    keys = list(scores)
    y = np.array([k in reference for k in keys], dtype=bool)
    if y.all() or not y.any():
        raise ValueError(
            f"the reference holds {int(y.sum())} of {len(y)} keys; ROC/PR AUC need both "
            "members and non-members (loosen or tighten the reference rule)"
        )
    s = np.array([float(scores[k]) for k in keys], dtype=np.float64)
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y, s


def roc_auc(scores: Mapping[Any, float], reference: Set[Any]) -> float:
    """Area under the ROC curve of ``scores`` for membership in ``reference`` (ties count 1/2)."""
    y, s = _arrays(scores, reference)
    return roc_auc_from_arrays(y, s)


def pr_auc(scores: Mapping[Any, float], reference: Set[Any]) -> float:
    """Average precision of ``scores`` for membership in ``reference`` (PR AUC, step-wise)."""
    y, s = _arrays(scores, reference)
    return average_precision_from_arrays(y, s)


def select_circuit(
    scores: Mapping[Hashable, float],
    *,
    rule: str = "zscore",
    z: float = 1.0,
    fraction: float = 0.1,
) -> set[Hashable]:
    """The predicted circuit, chosen from the scores alone (never from a reference).

    ``rule="zscore"``: keys with ``score > mean + z * std`` (population std); if every score is
    equal, nothing is selected. ``rule="top_fraction"``: the ``ceil(fraction * n)`` highest keys
    (ties broken by key order).
    """
    if not scores:
        return set()
    keys = list(scores)
    s = np.array([float(scores[k]) for k in keys])
    if rule == "zscore":
        cut = s.mean() + z * s.std()
        return {k for k, v in zip(keys, s, strict=True) if v > cut}
    if rule == "top_fraction":
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        n = int(np.ceil(fraction * len(keys)))
        order = np.argsort(-s, kind="stable")[:n]
        return {keys[i] for i in order}
    raise ValueError(f"rule must be 'zscore' or 'top_fraction', got {rule!r}")


def precision_recall_f1(predicted: Set[Any], reference: Set[Any]) -> dict[str, float]:
    """Precision, recall and the true F1 (harmonic mean of P and R) of a predicted set.

    Empty predictions have precision 0 (and F1 0) by convention; returns the counts too.
    """
    tp = len(set(predicted) & set(reference))
    fp = len(set(predicted)) - tp
    fn = len(set(reference)) - tp
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def evaluate(
    scores: Mapping[Any, float], reference: Set[Any], *, rule: str = "zscore", **rule_kw: Any
) -> dict[str, Any]:
    """ROC AUC, PR AUC and P/R/F1 at :func:`select_circuit`'s operating point, in one dict."""
    pred = select_circuit(scores, rule=rule, **rule_kw)
    return {
        "roc_auc": roc_auc(scores, reference),
        "pr_auc": pr_auc(scores, reference),
        "n_predicted": len(pred),
        "threshold_rule": {"rule": rule, **rule_kw},
        **precision_recall_f1(pred, reference),
    }
