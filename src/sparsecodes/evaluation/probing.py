"""Sparse probing (SAEBench's ``sparse_probing``): how well ``k`` latents alone predict a label.

For every class ``c`` of a labelled dataset, a one-vs-rest task: the rows of ``c`` against an
equal number of rows drawn (seeded) from the other classes, evenly. On the training split the
``k`` latents with the largest ``|mean(pos) - mean(neg)|`` of the mean-pooled codes are chosen
(:func:`~sparsecodes.evaluation.probes.top_k_mean_diff`); a logistic probe reads those ``k``
columns and its accuracy on the held-out split is ``sae_top_{k}_test_accuracy``. The same with
all latents is ``sae_test_accuracy``, with the model's activations ``llm_test_accuracy`` (all
dimensions) and ``llm_top_{k}_test_accuracy`` (the ``k`` best dimensions). Each value is the
mean over the dataset's classes; ``eval_result_metrics`` holds the mean over datasets.

:func:`sparse_probing_scores` works on given activations and codes (synthetic checks);
:func:`sparse_probing` reads them from a model for a list of
:class:`~sparsecodes.evaluation.datasets.LabelledSet`.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sparsecodes.evaluation.probes import (
    accuracy,
    fit_logistic,
    pooled,
    pooled_codes,
    split_indices,
    text_activations,
    top_k_mean_diff,
)
from sparsecodes.seeding import derive_seed

__all__ = [
    "EVAL_TYPE_SPARSE_PROBING",
    "one_vs_rest_rows",
    "sparse_probing",
    "sparse_probing_scores",
]

EVAL_TYPE_SPARSE_PROBING = "sparse_probing"
DEFAULT_KS = (1, 2, 5, 10)


def one_vs_rest_rows(
    labels: Sequence[str], cls: str, *, seed: int, purpose: str
) -> tuple[list[int], Tensor]:
    """Rows of class ``cls`` and as many rows of the other classes (drawn evenly per class,
    seeded): ``(row indices, [n] bool labels)``."""
    pos = [i for i, lab in enumerate(labels) if lab == cls]
    others = sorted({lab for lab in labels if lab != cls})
    rng = np.random.default_rng(derive_seed(seed, f"{purpose}:{cls}"))
    per = -(-len(pos) // max(1, len(others)))
    neg: list[int] = []
    for o in others:
        rows = [i for i, lab in enumerate(labels) if lab == o]
        neg += [rows[j] for j in rng.permutation(len(rows))[:per]]
    neg = neg[: len(pos)] if len(neg) > len(pos) else neg
    idx = pos + neg
    return idx, torch.tensor([True] * len(pos) + [False] * len(neg))


def _probe_accuracy(x_tr: Tensor, y_tr: Tensor, x_te: Tensor, y_te: Tensor, k: int | None) -> float:
    cols = top_k_mean_diff(x_tr, y_tr, k) if k is not None else torch.arange(x_tr.shape[1])
    probe = fit_logistic(x_tr[:, cols], y_tr)
    return accuracy(probe.predict(x_te[:, cols]), y_te)


def sparse_probing_scores(
    acts: Tensor,
    codes: Tensor,
    labels: Sequence[str],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    test_fraction: float = 0.2,
    seed: int = 0,
    llm: bool = True,
) -> dict[str, float]:
    """SAEBench's per-dataset sparse-probing figures for one labelled dataset.

    Args:
        acts: ``[n, d_model]`` (mean-pooled) model activations, one row per example.
        codes: ``[n, n_latents]`` (mean-pooled) codes of the same examples.
        labels: ``n`` class names (two or more classes).
        ks: numbers of latents for the top-k probes.
        llm: also fit the probes on ``acts`` (the baselines).

    Returns ``{"llm_test_accuracy", "llm_top_{k}_test_accuracy", "sae_test_accuracy",
    "sae_top_{k}_test_accuracy"}``, each the mean over classes of held-out accuracy.
    """
    labels = [str(v) for v in labels]
    if len(set(labels)) < 2:
        raise ValueError(f"sparse probing needs two or more classes, got {sorted(set(labels))}")
    if acts.shape[0] != len(labels) or codes.shape[0] != len(labels):
        raise ValueError(
            f"acts {tuple(acts.shape)}, codes {tuple(codes.shape)} and {len(labels)} labels "
            "must have one row per example"
        )
    train, test = split_indices(labels, test_fraction, seed=seed, purpose="sparse-probing")
    lab_tr = [labels[i] for i in train]
    lab_te = [labels[i] for i in test]
    sources = {"sae": codes.float().cpu()}
    if llm:
        sources["llm"] = acts.float().cpu()
    sums: dict[str, list[float]] = {}
    for cls in sorted(set(labels)):
        r_tr, y_tr = one_vs_rest_rows(lab_tr, cls, seed=seed, purpose="train")
        r_te, y_te = one_vs_rest_rows(lab_te, cls, seed=seed, purpose="test")
        tr = [train[i] for i in r_tr]
        te = [test[i] for i in r_te]
        for name, x in sources.items():
            for k in (None, *ks):
                key = f"{name}_test_accuracy" if k is None else f"{name}_top_{k}_test_accuracy"
                sums.setdefault(key, []).append(_probe_accuracy(x[tr], y_tr, x[te], y_te, k))
    return {key: float(np.mean(v)) for key, v in sums.items()}


def sparse_probing(
    coder: Any,
    adapter: Any,
    hook: str,
    datasets: Sequence[Any],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    test_fraction: float = 0.2,
    seed: int = 0,
    label: str | None = None,
    batch_size: int = 16,
    cache: MutableMapping[Any, Any] | None = None,
) -> dict[str, Any]:
    """Sparse probing of ``coder`` at ``hook`` of ``adapter`` on each labelled dataset.

    ``datasets``: :class:`~sparsecodes.evaluation.datasets.LabelledSet` s; ``label`` names the
    attribute to predict (default: each set's first). Returns a JSON-able dict with SAEBench's
    keys: ``eval_type_id``, ``eval_result_metrics`` (``llm``, ``sae``: means over datasets) and
    ``eval_result_details`` (one entry per dataset, with ``dataset_name``). ``cache``: see
    :func:`~sparsecodes.evaluation.probes.text_activations` (the model's activations, shared by
    SAEs).
    """
    details = []
    for ds in datasets:
        attr = label or next(iter(ds.labels))
        token_acts = text_activations(adapter, hook, ds.texts, batch_size=batch_size, cache=cache)
        scores = sparse_probing_scores(
            pooled(token_acts),
            pooled_codes(coder, token_acts),
            ds.labels[attr],
            ks=ks,
            test_fraction=test_fraction,
            seed=seed,
        )
        details.append({"dataset_name": ds.name, **scores})
    keys = [k for k in details[0] if k != "dataset_name"] if details else []
    means = {k: float(np.mean([d[k] for d in details])) for k in keys}
    return {
        "eval_type_id": EVAL_TYPE_SPARSE_PROBING,
        "eval_config": {"k_values": list(ks), "test_fraction": test_fraction, "random_seed": seed},
        "eval_result_metrics": {
            "llm": {k: v for k, v in means.items() if k.startswith("llm_")},
            "sae": {k: v for k, v in means.items() if k.startswith("sae_")},
        },
        "eval_result_details": details,
    }
