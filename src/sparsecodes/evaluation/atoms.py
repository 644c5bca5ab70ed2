"""``check_atoms``: the "atoms" paper's conditions (arXiv 2509.20784) on any trained dictionary.

For a coder and activations ``x`` it reports, under the atomic inner product (AIP) of
:mod:`sparsecodes.metrics.atoms`:

- the coherence ``mu`` of the atoms (and the Euclidean coherence beside it);
- ``K``: the largest number of nonzero codes in one sample of ``x`` (the coder's ``k`` is shown
  too when it has one), the bound ``1 / (2K - 1)`` and whether ``mu`` is below it (uniqueness);
- the threshold SAE's exact-recovery condition ``delta_min > mu (2K - 1) delta_max``, with
  ``delta`` the nonzero codes in AIP-normalised units (``|code_j| * ||d_j||_S``) that the coder
  itself gives on ``x`` (the true coefficients are unknown on real data), the interval of
  thresholds ``(mu K delta_max, delta_min - mu (K - 1) delta_max)`` it allows and, for the
  ``threshold`` encoder, whether its own thresholds lie inside.

``S``: the ``threshold`` encoder's own whitening matrix; for any other encoder the inverse
covariance of the (normalised) ``x`` (:func:`~sparsecodes.metrics.atoms.whitening_matrix`).
See ``docs/atoms.md``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sparsecodes.codes import to_dense
from sparsecodes.metrics.atoms import (
    aip_norms,
    coherence_pair,
    threshold_recovery_condition,
    uniqueness_bound,
    whitening_matrix,
)
from sparsecodes.validation import as_activations

if TYPE_CHECKING:
    from sparsecodes.sparse_coder import SparseCoder

__all__ = ["AtomsReport", "check_atoms", "check_atoms_on_store"]


@dataclass
class AtomsReport:
    """What :func:`check_atoms` found; ``to_dict()`` is its JSON, ``text()`` its summary."""

    encoder: str
    d_in: int
    n_latents: int
    n_samples: int
    codes: str
    whitening: str
    coherence: float
    coherent_pair: tuple[int, int]
    coherence_euclidean: float
    k: int
    k_config: int | None
    l0_mean: float
    uniqueness_bound: float
    uniqueness_holds: bool
    samples_unique_fraction: float
    delta_min: float
    delta_max: float
    tau_low: float
    tau_high: float
    recovery_feasible: bool
    thresholds_admitted: bool | None
    recovery_holds: bool

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["coherent_pair"] = list(self.coherent_pair)
        return d

    def text(self) -> str:
        """A few lines for a terminal."""
        yes = {True: "holds", False: "FAILS"}
        lines = [
            f"atoms check ({self.encoder}, {self.n_latents} atoms in {self.d_in} dims, "
            f"{self.n_samples} samples, S from {self.whitening}, {self.codes} codes)",
            f"  AIP coherence mu        {self.coherence:.4f}  (pair {self.coherent_pair[0]}, "
            f"{self.coherent_pair[1]}; Euclidean {self.coherence_euclidean:.4f})",
            f"  K (max L0)              {self.k}"
            + (f"  (coder k = {self.k_config})" if self.k_config is not None else "")
            + f"  mean L0 {self.l0_mean:.2f}",
            f"  bound 1/(2K-1)          {self.uniqueness_bound:.4f}",
            f"  uniqueness mu < 1/(2K-1) {yes[self.uniqueness_holds]}"
            f"  ({100 * self.samples_unique_fraction:.1f}% of samples meet it at their own L0)",
            f"  delta min / max         {self.delta_min:.4g} / {self.delta_max:.4g}",
            f"  exact recovery          {yes[self.recovery_holds]}"
            f"  (delta_min > mu(2K-1) delta_max: {self.recovery_feasible}; "
            f"tau in ({self.tau_low:.4g}, {self.tau_high:.4g})"
            + (
                f"; encoder thresholds inside: {self.thresholds_admitted})"
                if self.thresholds_admitted is not None
                else ")"
            ),
        ]
        return "\n".join(lines)


@torch.no_grad()
def check_atoms(
    coder: SparseCoder,
    x: Any,
    *,
    codes: Any = None,
    center: bool = True,
    ridge: float = 1e-6,
    batch_size: int = 8192,
) -> AtomsReport:
    """Check the atoms paper's uniqueness and exact-recovery conditions on ``coder``'s dictionary.

    Args:
        coder: any trained :class:`~sparsecodes.sparse_coder.SparseCoder` (e.g. from
            :func:`sparsecodes.load`).
        x: ``[n, d_in]`` activations in the coder's input scale (it normalises them itself).
        codes: ``[n, n_latents]`` known coefficients of ``x`` on the coder's atoms (planted data),
            in the coder's normalised scale; ``K`` and ``delta`` then come from them instead of
            from the coder's own codes.
        center, ridge: how ``S`` is estimated from ``x`` when the encoder has none of its own
            (see :func:`~sparsecodes.metrics.atoms.whitening_matrix`).
        batch_size: rows encoded at a time.

    Returns:
        :class:`AtomsReport`.
    """
    x = as_activations(x, "x", coder.d_in).float()
    if x.shape[0] < 2:
        raise ValueError(f"x needs at least 2 rows to check the atoms, got {x.shape[0]}")
    atoms = coder.dictionary.W_dec.detach().double().cpu()
    encoder = coder.encoder
    own_s = getattr(encoder, "S", None)
    if encoder.name == "threshold" and own_s is not None:
        s = own_s.detach().double().cpu()
        source = "the threshold encoder"
    else:
        xn = coder.normaliser(x.to(coder.device)).double().cpu()
        s = whitening_matrix(xn, center=center, ridge=ridge)
        source = "the data (inverse covariance)" if center else "the data (inverse 2nd moment)"
    mu, i, j = coherence_pair(atoms, s)
    mu_euclid = coherence_pair(atoms)[0]
    norms = aip_norms(atoms, s)

    if codes is None:
        codes = to_dense(coder.encode(x, batch_size=batch_size))
        origin = "coder"
    else:
        codes = as_activations(codes, "codes", coder.n_latents)
        if codes.shape[0] != x.shape[0]:
            raise ValueError(f"codes has {codes.shape[0]} rows but x has {x.shape[0]}")
        origin = "given"
    codes = codes.double().cpu()
    nz = codes != 0
    l0 = nz.sum(dim=1)
    k = max(int(l0.max()), 1)
    mags = (codes.abs() * norms)[nz]
    delta_min = float(mags.min()) if mags.numel() else 0.0
    delta_max = float(mags.max()) if mags.numel() else 0.0
    bound = uniqueness_bound(k)
    per_sample_bound = 1.0 / (2.0 * l0.clamp_min(1).double() - 1.0)
    cond = threshold_recovery_condition(mu, k, delta_min, delta_max)
    admitted: bool | None = None
    if encoder.name == "threshold":
        admitted = cond.admits(encoder.threshold.detach().double().cpu())
    k_cfg = getattr(encoder.config, "k", None)
    return AtomsReport(
        encoder=encoder.name,
        d_in=coder.d_in,
        n_latents=coder.n_latents,
        n_samples=int(x.shape[0]),
        codes=origin,
        whitening=source,
        coherence=mu,
        coherent_pair=(i, j),
        coherence_euclidean=mu_euclid,
        k=k,
        k_config=int(k_cfg) if isinstance(k_cfg, int | float) else None,
        l0_mean=float(l0.double().mean()),
        uniqueness_bound=bound,
        uniqueness_holds=mu < bound,
        samples_unique_fraction=float((mu < per_sample_bound).double().mean()),
        delta_min=delta_min,
        delta_max=delta_max,
        tau_low=cond.tau_low,
        tau_high=cond.tau_high,
        recovery_feasible=cond.feasible,
        thresholds_admitted=admitted,
        recovery_holds=cond.feasible and admitted is not False,
    )


def check_atoms_on_store(
    sae_dir: str | Path,
    stores: str | Path | list[str | Path],
    *,
    max_tokens: int = 20_000,
    seed: int = 0,
    device: str | None = None,
    center: bool = True,
    ridge: float = 1e-6,
) -> AtomsReport:
    """:func:`check_atoms` on the coder in ``sae_dir`` (any layout :func:`sparsecodes.load`
    reads) with the first ``max_tokens`` rows (at most the stores' rows) (in the reader's shuffled order) of activation
    stores written by ``sparsecodes cache``."""
    from sparsecodes.activations.reader import StoreSource
    from sparsecodes.loading import load

    if max_tokens < 2:
        raise ValueError(f"max_tokens must be >= 2, got {max_tokens}")
    coder = load(sae_dir, device=device)
    source = StoreSource(stores, seed=seed)
    if source.d_in != coder.d_in:
        raise ValueError(
            f"the store rows have width {source.d_in} but the coder in {sae_dir} reads "
            f"d_in={coder.d_in}; give a store cached at the coder's hook"
        )
    max_tokens = min(max_tokens, len(source))  # the reader cycles: never count a row twice
    rows: list[Tensor] = []
    n = 0
    for xb, _ in source.batches(min(max_tokens, 8192)):
        rows.append(xb[: max_tokens - n])
        n += rows[-1].shape[0]
        if n >= max_tokens:
            break
    return check_atoms(coder, torch.cat(rows), center=center, ridge=ridge)
