"""Metrics on known features: firing precision/recall/F1, uniqueness, shrinkage, recovery, absorption.

Inputs: true codes ``[S, N]`` and true atoms ``[N, M]`` of a synthetic world, a model's codes
``[S, L]`` and atoms ``[L, M]`` (dense tensors/arrays or ``SparseCodes``; atoms may be a
``Dictionary`` or ``SparseCoder``). A feature or latent *fires* in a sample when its code is
nonzero.

Matching latents to features (``rule``):

- ``"hungarian"`` (default): the dictionary MCC's optimal one-to-one matching on decoder
  ``|cosine|`` (:func:`~sparsecodes.metrics.dictionary_mcc`); ``min(N, L)`` pairs.
- ``"best"``: SAELens's rule (``sae_lens.synthetic.evals``): *every* latent is paired with its
  best ``|cosine|`` feature, so one feature may have several latents; ``L`` pairs.

Definitions:

- :func:`firing_scores`: per pair ``(feature f, latent l)``, over samples: ``TP`` = both fire,
  ``FP`` = ``l`` fires and ``f`` does not, ``FN`` = ``f`` fires and ``l`` does not; precision
  ``TP/(TP+FP)``, recall ``TP/(TP+FN)``, F1, accuracy, each 0 where undefined; means over pairs.
  With ``rule="best"`` the means equal SAELens's ``classification`` metrics.
- :func:`uniqueness`: SAELens's ``uniqueness`` = distinct best-match features / ``L``; plus
  ``latents_per_feature`` ``[N]`` (latents whose best feature is ``f``) and
  ``features_per_latent`` ``[L]`` (features whose best latent is ``l``).
- :func:`norm_shrinkage`: SAELens's ``shrinkage``, mean over samples of ``|x_hat| / |x|``
  (samples with ``|x| <= 1e-6`` skipped). :func:`code_shrinkage`: per matched pair, on samples
  where both fire, ``sum(|code_l| |d_l|) / sum(|true_f|)`` (coded magnitude along the atom over
  true magnitude; 1 = no shrinkage).
- :func:`recovery_rate`: fraction of features whose best ``|cosine|`` with any atom is ``> 0.9``.
- :func:`absorption`: per parent feature ``p`` with latent ``l_p``: among samples where some child
  of ``p`` fires, the fraction where ``l_p`` is silent. SAELens has no such metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from sparsecodes.metrics._inputs import as_codes, dense_to_csr
from sparsecodes.metrics.mcc import atoms_of, dictionary_mcc
from sparsecodes.metrics.similarity import abs_cosine

__all__ = [
    "Absorption",
    "AbsorptionCounter",
    "FiringCounter",
    "FiringScores",
    "Uniqueness",
    "absorption",
    "code_shrinkage",
    "firing_scores",
    "match_latents",
    "norm_shrinkage",
    "recovery_rate",
    "uniqueness",
]

MatchRule = Literal["hungarian", "best"]


def _csr(codes: Any, name: str) -> sp.csr_matrix:
    c = as_codes(codes, name)
    return c if sp.issparse(c) else dense_to_csr(c)


def match_latents(
    true_atoms: Any, atoms: Any, rule: MatchRule = "hungarian"
) -> tuple[np.ndarray, np.ndarray]:
    """``(features, latents)``, two aligned int64 arrays of matched pairs (see module docstring).

    Args:
        true_atoms: ``[N, M]`` true atoms.
        atoms: ``[L, M]`` learned atoms, a ``Dictionary`` or a ``SparseCoder``.
        rule: ``"hungarian"`` (``min(N, L)`` one-to-one pairs) or ``"best"`` (``L`` pairs).
    """
    if rule == "hungarian":
        m = dictionary_mcc(true_atoms, atoms, return_matching=True)
        return m.true_indices.astype(np.int64), m.inferred_indices.astype(np.int64)
    if rule == "best":
        sim = abs_cosine(atoms_of(atoms, "atoms"), atoms_of(true_atoms, "true_atoms"))
        return sim.argmax(axis=1).astype(np.int64), np.arange(sim.shape[0], dtype=np.int64)
    raise ValueError(f"rule must be 'hungarian' or 'best', got {rule!r}")


@dataclass(frozen=True)
class FiringScores:
    """Per-pair firing classification; arrays are ``[n_pairs]``, aligned with ``features``."""

    features: np.ndarray
    latents: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray

    @staticmethod
    def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)

    @property
    def precision(self) -> np.ndarray:
        return self._ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> np.ndarray:
        return self._ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> np.ndarray:
        p, r = self.precision, self.recall
        return self._ratio(2 * p * r, p + r)

    @property
    def accuracy(self) -> np.ndarray:
        return self._ratio(self.tp + self.tn, self.tp + self.fp + self.fn + self.tn)

    def means(self) -> dict[str, float]:
        """``{"precision", "recall", "f1", "accuracy"}`` averaged over pairs."""
        if self.features.size == 0:
            return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.0}
        return {
            k: float(getattr(self, k).mean()) for k in ("precision", "recall", "f1", "accuracy")
        }


class FiringCounter:
    """Accumulates :class:`FiringScores` counts over batches (for streamed worlds).

    Args:
        features, latents: ``[n_pairs]`` matched pairs (from :func:`match_latents`).
    """

    def __init__(self, features: np.ndarray, latents: np.ndarray) -> None:
        self.features = np.asarray(features, dtype=np.int64)
        self.latents = np.asarray(latents, dtype=np.int64)
        if self.features.shape != self.latents.shape:
            raise ValueError("features and latents must be aligned [n_pairs] arrays")
        z = np.zeros(self.features.shape, dtype=np.float64)
        self.tp, self.n_true, self.n_pred, self.n = z.copy(), z.copy(), z.copy(), 0

    def add_batch(self, true_codes: Any, codes: Any) -> None:
        """Count one batch: ``true_codes`` ``[B, N]``, ``codes`` ``[B, L]``."""
        t = (_csr(true_codes, "true_codes")[:, self.features] != 0).astype(np.float64)
        p = (_csr(codes, "codes")[:, self.latents] != 0).astype(np.float64)
        if t.shape[0] != p.shape[0]:
            raise ValueError(
                f"true_codes has {t.shape[0]} samples but codes has {p.shape[0]}; they must match"
            )
        self.tp += np.asarray(t.multiply(p).sum(axis=0)).ravel()
        self.n_true += np.asarray(t.sum(axis=0)).ravel()
        self.n_pred += np.asarray(p.sum(axis=0)).ravel()
        self.n += t.shape[0]

    def result(self) -> FiringScores:
        fp, fn = self.n_pred - self.tp, self.n_true - self.tp
        tn = self.n - self.tp - fp - fn
        return FiringScores(self.features, self.latents, self.tp.copy(), fp, fn, tn)


def firing_scores(
    true_codes: Any, codes: Any, true_atoms: Any, atoms: Any, *, rule: MatchRule = "hungarian"
) -> FiringScores:
    """Firing precision/recall/F1/accuracy of matched pairs (see the module docstring).

    Args:
        true_codes: ``[S, N]``; codes: ``[S, L]``; true_atoms: ``[N, M]``; atoms: ``[L, M]``.
        rule: latent-to-feature matching, ``"hungarian"`` or ``"best"`` (SAELens's).
    """
    counter = FiringCounter(*match_latents(true_atoms, atoms, rule))
    counter.add_batch(true_codes, codes)
    return counter.result()


@dataclass(frozen=True)
class Uniqueness:
    """How features and latents cover each other (best-``|cosine|`` matches).

    Attributes:
        uniqueness: distinct best-match features / number of latents (SAELens's ``uniqueness``).
        latents_per_feature: ``[N]`` latents whose best feature is each feature.
        features_per_latent: ``[L]`` features whose best latent is each latent.
    """

    uniqueness: float
    latents_per_feature: np.ndarray
    features_per_latent: np.ndarray


def uniqueness(true_atoms: Any, atoms: Any) -> Uniqueness:
    """Uniqueness of ``atoms`` ``[L, M]`` against ``true_atoms`` ``[N, M]``."""
    sim = abs_cosine(atoms_of(atoms, "atoms"), atoms_of(true_atoms, "true_atoms"))  # [L, N]
    n_lat, n_feat = sim.shape
    best_feature = sim.argmax(axis=1)
    best_latent = sim.argmax(axis=0)
    return Uniqueness(
        uniqueness=len(np.unique(best_feature)) / n_lat if n_lat else 0.0,
        latents_per_feature=np.bincount(best_feature, minlength=n_feat),
        features_per_latent=np.bincount(best_latent, minlength=n_lat),
    )


def norm_shrinkage(x: Any, x_hat: Any, *, min_norm: float = 1e-6) -> float:
    """SAELens's shrinkage: mean of ``|x_hat_s| / |x_s|`` over samples ``[S, M]``."""
    xs = np.asarray(as_codes(x, "x"), dtype=np.float64)
    xh = np.asarray(as_codes(x_hat, "x_hat"), dtype=np.float64)
    if xs.shape != xh.shape:
        raise ValueError(f"x {xs.shape} and x_hat {xh.shape} must have the same shape")
    nx = np.linalg.norm(xs, axis=1)
    ok = nx > min_norm
    return float((np.linalg.norm(xh[ok], axis=1) / nx[ok]).mean()) if ok.any() else 0.0


def code_shrinkage(
    true_codes: Any,
    codes: Any,
    true_atoms: Any,
    atoms: Any,
    *,
    rule: MatchRule = "hungarian",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per matched pair ``(features, latents, ratio)``: coded over true magnitude on co-firings.

    ``ratio[k] = sum_s |codes[s, l]| * |d_l| / sum_s |true_codes[s, f]|`` over samples where both
    fire; NaN for pairs that never co-fire. Shapes: three ``[n_pairs]`` arrays.
    """
    f, lat = match_latents(true_atoms, atoms, rule)
    t = _csr(true_codes, "true_codes")[:, f]
    p = _csr(codes, "codes")[:, lat]
    both = (t != 0).multiply(p != 0).astype(np.float64)
    true_mag = np.asarray(abs(t).multiply(both).sum(axis=0)).ravel()
    norms = np.linalg.norm(np.asarray(atoms_of(atoms, "atoms"), dtype=np.float64), axis=1)[lat]
    coded = np.asarray(abs(p).multiply(both).sum(axis=0)).ravel() * norms
    ratio = np.divide(coded, true_mag, out=np.full_like(coded, np.nan), where=true_mag > 0)
    return f, lat, ratio


def recovery_rate(true_atoms: Any, atoms: Any, *, threshold: float = 0.9) -> float:
    """Fraction of true features whose best ``|cosine|`` with an atom exceeds ``threshold``."""
    sim = abs_cosine(atoms_of(true_atoms, "true_atoms"), atoms_of(atoms, "atoms"))
    return float((sim.max(axis=1) > threshold).mean())


@dataclass(frozen=True)
class Absorption:
    """Absorption per parent feature.

    Attributes:
        parents: ``[P]`` parent features; parent_latents: ``[P]`` the latent judged for each.
        rate: ``[P]`` fraction of child-firing samples where that latent is silent (NaN: no
            child fired).
        n_child_firing: ``[P]`` samples where some child of the parent fired.
    """

    parents: np.ndarray
    parent_latents: np.ndarray
    rate: np.ndarray
    n_child_firing: np.ndarray

    @property
    def mean(self) -> float:
        """Mean rate over parents whose children fired (NaN if none did)."""
        ok = self.n_child_firing > 0
        return float(self.rate[ok].mean()) if ok.any() else float("nan")


class AbsorptionCounter:
    """Accumulates :class:`Absorption` over batches (for streamed worlds).

    Args:
        parent_children: ``{parent feature: [child features]}``.
        parent_latents: ``{parent feature: latent}``; parents without one are left out.
    """

    def __init__(
        self, parent_children: dict[int, list[int]], parent_latents: dict[int, int]
    ) -> None:
        self.parents = np.array([p for p in parent_children if p in parent_latents], dtype=np.int64)
        self.latents = np.array([parent_latents[int(p)] for p in self.parents], dtype=np.int64)
        self.children = [np.asarray(parent_children[int(p)], dtype=np.int64) for p in self.parents]
        self.silent = np.zeros(self.parents.shape, dtype=np.int64)
        self.count = np.zeros(self.parents.shape, dtype=np.int64)

    def add_batch(self, true_codes: Any, codes: Any) -> None:
        """Count one batch: ``true_codes`` ``[B, N]``, ``codes`` ``[B, L]``."""
        t = _csr(true_codes, "true_codes").tocsc()
        lat_fire = (_csr(codes, "codes")[:, self.latents] != 0).toarray()  # [B, P]
        if t.shape[0] != lat_fire.shape[0]:
            raise ValueError("true_codes and codes must hold the same samples")
        for k, ch in enumerate(self.children):
            child_fire = np.asarray((t[:, ch] != 0).sum(axis=1)).ravel() > 0
            self.count[k] += int(child_fire.sum())
            self.silent[k] += int((child_fire & ~lat_fire[:, k]).sum())

    def result(self) -> Absorption:
        rate = np.divide(
            self.silent,
            self.count,
            out=np.full(self.parents.shape, np.nan),
            where=self.count > 0,
        )
        return Absorption(self.parents, self.latents, rate, self.count.copy())


def absorption(
    true_codes: Any,
    codes: Any,
    parent_children: dict[int, list[int]],
    parent_latents: dict[int, int] | None = None,
    *,
    true_atoms: Any = None,
    atoms: Any = None,
) -> Absorption:
    """Absorption on a hierarchical world (see the module docstring).

    Args:
        true_codes: ``[S, N]``; codes: ``[S, L]``.
        parent_children: ``{parent feature: [child features]}`` (``World.parent_children()``).
        parent_latents: ``{parent feature: latent}``; by default the Hungarian match on
            ``true_atoms`` ``[N, M]`` and ``atoms`` ``[L, M]`` (then both are required).
    """
    if parent_latents is None:
        if true_atoms is None or atoms is None:
            raise ValueError("give parent_latents, or true_atoms and atoms to match them")
        f, lat = match_latents(true_atoms, atoms, "hungarian")
        parent_latents = dict(zip(f.tolist(), lat.tolist(), strict=True))
    counter = AbsorptionCounter(parent_children, parent_latents)
    counter.add_batch(true_codes, codes)
    return counter.result()
