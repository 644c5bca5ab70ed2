"""Mean correlation coefficient (MCC): how well inferred latents / atoms recover the true ones.

- :func:`code_mcc`: ``|Pearson correlation|`` between every true latent (column of
  ``true_codes`` ``[S, N_true]``) and every inferred latent (column of ``codes`` ``[S, N_inf]``)
  across the ``S`` samples; zero-variance latents correlate 0. The optimal one-to-one matching
  (maximum total ``|corr|``, as ``scipy.optimize.linear_sum_assignment(maximize=True)``) pairs
  ``min(N_true, N_inf)`` latents; MCC is the mean ``|corr|`` over those pairs.
- :func:`dictionary_mcc`: the same matching on ``|cosine|`` between true atoms ``[N, M]`` and
  learned atoms ``[N', M]`` (rows).

Both scale to 16k x 16k (see :mod:`sparsecodes.metrics.matching`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np
from torch import Tensor

from sparsecodes.dictionary import Dictionary
from sparsecodes.metrics.matching import MatchMethod, max_weight_matching
from sparsecodes.metrics.similarity import Backend, abs_correlation, abs_cosine


@dataclass(frozen=True)
class MCCResult:
    """An MCC value with the matching behind it.

    Attributes:
        mcc: mean similarity over matched pairs.
        true_indices: ``[n_pairs]`` matched true latents (ascending).
        inferred_indices: ``[n_pairs]`` the inferred latent matched to each.
        scores: ``[n_pairs]`` similarity of each matched pair.
    """

    mcc: float
    true_indices: np.ndarray
    inferred_indices: np.ndarray
    scores: np.ndarray

    def __float__(self) -> float:
        return self.mcc


def _match(sim: np.ndarray, method: MatchMethod) -> MCCResult:
    rows, cols = max_weight_matching(sim, method=method)
    scores = sim[rows, cols].astype(np.float64)
    return MCCResult(float(scores.mean()), rows, cols, scores)


@overload
def code_mcc(
    true_codes: Any,
    codes: Any,
    *,
    return_matching: Literal[False] = ...,
    method: MatchMethod = ...,
    backend: Backend = ...,
) -> float: ...
@overload
def code_mcc(
    true_codes: Any,
    codes: Any,
    *,
    return_matching: Literal[True],
    method: MatchMethod = ...,
    backend: Backend = ...,
) -> MCCResult: ...
def code_mcc(
    true_codes: Any,
    codes: Any,
    *,
    return_matching: bool = False,
    method: MatchMethod = "auto",
    backend: Backend = "auto",
) -> float | MCCResult:
    """Code MCC between ``true_codes`` ``[S, N_true]`` and ``codes`` ``[S, N_inf]``.

    Args:
        true_codes, codes: torch tensors, numpy arrays or ``SparseCodes`` of the same ``S``
            samples (``S >= 2``); ``N_true`` and ``N_inf`` may differ.
        return_matching: return an :class:`MCCResult` (value, matched pairs, per-pair scores).
        method: matching solver (``"auto"``, ``"dense"``, ``"sparse"``); all give the optimum.
        backend: correlation route (``"auto"``, ``"dense"``, ``"sparse"``); all give the same values.

    Returns:
        MCC in ``[0, 1]`` (or an :class:`MCCResult`).
    """
    res = _match(abs_correlation(true_codes, codes, backend=backend), method)
    return res if return_matching else res.mcc


def atoms_of(x: Any, name: str) -> Tensor | np.ndarray:
    """``[n_atoms, d_in]`` atoms of a tensor/array, a ``Dictionary`` or a ``SparseCoder``."""
    if isinstance(x, Dictionary):
        return x.W_dec.detach()
    inner = getattr(x, "dictionary", None)  # a SparseCoder
    if isinstance(inner, Dictionary):
        return inner.W_dec.detach()
    if isinstance(x, Tensor | np.ndarray):
        return x
    raise TypeError(
        f"{name} must be a [n_atoms, d_in] tensor/array, a Dictionary or a SparseCoder, "
        f"got {type(x).__name__}"
    )


@overload
def dictionary_mcc(
    true_atoms: Any, atoms: Any, *, return_matching: Literal[False] = ..., method: MatchMethod = ...
) -> float: ...
@overload
def dictionary_mcc(
    true_atoms: Any, atoms: Any, *, return_matching: Literal[True], method: MatchMethod = ...
) -> MCCResult: ...
def dictionary_mcc(
    true_atoms: Any,
    atoms: Any,
    *,
    return_matching: bool = False,
    method: MatchMethod = "auto",
) -> float | MCCResult:
    """Dictionary MCC: optimal matching on ``|cosine|`` between atoms (rows).

    Args:
        true_atoms: ``[N, M]`` true atoms, or a ``Dictionary``.
        atoms: ``[N', M]`` learned atoms, a ``Dictionary`` or a ``SparseCoder``.
        return_matching: return an :class:`MCCResult`.
        method: matching solver, as in :func:`code_mcc`.
    """
    sim = abs_cosine(atoms_of(true_atoms, "true_atoms"), atoms_of(atoms, "atoms"))
    res = _match(sim, method)
    return res if return_matching else res.mcc
