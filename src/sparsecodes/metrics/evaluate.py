"""One call that scores a :class:`~sparsecodes.SparseCoder` on a set of activations."""

from __future__ import annotations

from typing import Any

from sparsecodes.metrics._inputs import as_dense_2d
from sparsecodes.metrics.mcc import code_mcc, dictionary_mcc
from sparsecodes.metrics.reconstruction import cosine_similarity, fvu, mse
from sparsecodes.metrics.sparsity import dead_latents, dense_latents, l0, support_metrics


def evaluate(
    model: Any,
    x: Any,
    *,
    true_codes: Any = None,
    true_dictionary: Any = None,
    dense_threshold: float = 0.1,
    **encode_kwargs: Any,
) -> dict[str, float]:
    """Reconstruction, sparsity and (given the truth) recovery metrics of ``model`` on ``x``.

    Args:
        model: a ``SparseCoder`` (uses ``model.encode`` / ``model.decode``).
        x: ``[n, d_in]`` activations.
        true_codes: ``[n, N_true]`` true codes of ``x`` (synthetic data): adds ``code_mcc`` and
            support ``precision`` / ``recall`` / ``f1``.
        true_dictionary: ``[N_true, d_in]`` true atoms or a ``Dictionary``: adds ``dict_mcc``.
        dense_threshold: firing fraction above which a latent counts as dense.
        **encode_kwargs: passed to ``model.encode`` (e.g. ``inference="fista"``, ``iters=100``).

    Returns:
        ``{"fvu", "explained_variance", "mse", "cosine", "l0", "dead_fraction",
        "dense_fraction"[, "code_mcc", "support_precision", "support_recall", "support_f1"]
        [, "dict_mcc"]}``.
    """
    xd = as_dense_2d(x, "x")
    codes = model.encode(xd, **encode_kwargs)
    x_hat = model.decode(codes)
    f = fvu(xd, x_hat)
    out: dict[str, float] = {
        "fvu": f,
        "explained_variance": 1.0 - f,
        "mse": mse(xd, x_hat),
        "cosine": cosine_similarity(xd, x_hat),
        "l0": l0(codes),
        "dead_fraction": float(dead_latents(codes).double().mean()),
        "dense_fraction": float(dense_latents(codes, dense_threshold).double().mean()),
    }
    if true_codes is not None:
        res = code_mcc(true_codes, codes, return_matching=True)
        sup = support_metrics(true_codes, codes, res)
        out["code_mcc"] = res.mcc
        out["support_precision"] = sup["precision"]
        out["support_recall"] = sup["recall"]
        out["support_f1"] = sup["f1"]
    if true_dictionary is not None:
        out["dict_mcc"] = dictionary_mcc(true_dictionary, model)
    return out
