"""Spatial autocorrelation of features: Moran's I and local Moran's I (LISA) of every latent.

Given ``n`` documents with coordinates (latitude/longitude, or points of any metric space) and a
value per document for each of ``L`` latents (the document's mean activation, ``Y [n, L]``):

- **weights**: :func:`knn_weights` links each document to its ``k`` nearest others (haversine
  great-circle distance for ``metric="haversine"`` on ``[lat, lon]`` degrees, Euclidean for
  ``metric="euclidean"``; ties go to the lower index), row-standardised: ``w_ij = 1/k``.
- **global Moran's I** (:func:`morans_i`), per latent, with ``z = y - mean(y)``::

      I = (n / S0) * (z' W z) / (z' z),   S0 = sum_ij w_ij = n  (row-standardised)

  and a permutation p-value: the values are permuted over the documents ``permutations`` times
  (one seeded permutation shared by all latents per draw, so every latent's null is exact),
  ``p = (1 + #{I_perm >= I}) / (1 + permutations)`` for ``alternative="greater"`` (positive
  autocorrelation) or esda's folded version for ``"two-sided"``.
- **local Moran's I** (:func:`local_morans_i`): ``I_i = (n - 1) z_i (W z)_i / (z' z)`` (esda's
  ``Moran_Local``), pseudo p-values by conditional permutation (``z_i`` held fixed, its ``k``
  neighbours drawn at random without replacement from the other ``n - 1`` documents; esda's
  folded count) and the quadrant of each document: 1 HH (``z_i > 0``, lag > 0), 2 LH, 3 LL, 4 HL.

Everything is vectorised over latents and over batches of permutations (torch, float64).
:func:`latent_autocorrelation` runs the whole thing from a coder, a model and texts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sparsecodes.seeding import generator

logger = logging.getLogger(__name__)

__all__ = [
    "QUADRANTS",
    "KNNWeights",
    "LocalMoranResult",
    "MoranResult",
    "SpatialTable",
    "knn_weights",
    "latent_autocorrelation",
    "local_morans_i",
    "morans_i",
]

EARTH_RADIUS_KM = 6371.0088
QUADRANTS = {1: "HH", 2: "LH", 3: "LL", 4: "HL"}
_CHUNK_ELEMENTS = 1 << 24  # float64 elements per permutation chunk (128 MiB)


@dataclass(frozen=True)
class KNNWeights:
    """Row-standardised k-nearest-neighbour weights: ``w_ij = 1/k`` for ``j`` in
    ``neighbours[i]``.

    Attributes:
        neighbours: ``[n, k]`` int64 indices of each point's neighbours (nearest first).
        distances: ``[n, k]`` float64 distances to them (km for haversine).
    """

    neighbours: Tensor
    distances: Tensor

    @property
    def n(self) -> int:
        return int(self.neighbours.shape[0])

    @property
    def k(self) -> int:
        return int(self.neighbours.shape[1])

    def sparse(self, device: torch.device | str = "cpu") -> Tensor:
        """``[n, n]`` sparse COO float64 weight matrix."""
        n, k = self.n, self.k
        rows = torch.arange(n).repeat_interleave(k)
        return torch.sparse_coo_tensor(
            torch.stack([rows, self.neighbours.reshape(-1)]),
            torch.full((n * k,), 1.0 / k, dtype=torch.float64),
            size=(n, n),
            is_coalesced=True,
            check_invariants=False,
        ).to(device)

    def dense(self) -> Tensor:
        """``[n, n]`` dense float64 weight matrix (small ``n`` only)."""
        return self.sparse().to_dense()

    def lag(self, z: Tensor) -> Tensor:
        """Spatial lag ``W z``: ``[n, L]`` -> ``[n, L]`` (mean over each point's neighbours).

        ``k`` row gathers, faster on CPU than a sparse matmul.
        """
        nb = self.neighbours.to(z.device)
        out = z.index_select(0, nb[:, 0])
        for m in range(1, self.k):
            out += z.index_select(0, nb[:, m])
        return out / self.k


def _pairwise(a: Tensor, b: Tensor, metric: str) -> Tensor:
    if metric == "euclidean":
        return torch.cdist(a, b)
    lat1, lon1 = torch.deg2rad(a[:, :1]), torch.deg2rad(a[:, 1:2])
    lat2, lon2 = torch.deg2rad(b[:, 0])[None], torch.deg2rad(b[:, 1])[None]
    h = (
        torch.sin((lat2 - lat1) / 2) ** 2
        + torch.cos(lat1) * torch.cos(lat2) * torch.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * torch.asin(torch.sqrt(h.clamp(0, 1)))


def knn_weights(coords: Any, k: int = 8, metric: str = "haversine") -> KNNWeights:
    """k-nearest-neighbour weights over ``coords`` ``[n, d]`` (``[n, 2]`` lat, lon in degrees
    for ``metric="haversine"``); a point is never its own neighbour. Memory ``O(n)`` per row
    chunk."""
    x = torch.as_tensor(coords, dtype=torch.float64)
    if x.dim() != 2 or x.shape[0] < 3:
        raise ValueError(f"coords must be [n, d] with n >= 3 points, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("coords contain NaN or infinite values; drop those documents")
    if metric not in ("haversine", "euclidean"):
        raise ValueError(f"metric must be 'haversine' or 'euclidean', got {metric!r}")
    if metric == "haversine":
        if x.shape[1] != 2:
            raise ValueError(f"haversine needs [n, 2] (lat, lon) coords, got {tuple(x.shape)}")
        if (x[:, 0].abs() > 90).any() or (x[:, 1].abs() > 360).any():
            raise ValueError("haversine coords must be (latitude, longitude) in degrees")
    n = x.shape[0]
    if not isinstance(k, int) or not 1 <= k < n:
        raise ValueError(f"k must be an integer in [1, n-1] = [1, {n - 1}], got {k!r}")
    nbrs, dists = [], []
    rows = max(1, (1 << 22) // n)
    for s in range(0, n, rows):
        d = _pairwise(x[s : s + rows], x, metric)
        d[torch.arange(d.shape[0]), torch.arange(s, s + d.shape[0])] = math.inf
        order = torch.argsort(d, dim=1, stable=True)[:, :k]  # stable: ties to the lower index
        nbrs.append(order)
        dists.append(d.gather(1, order))
    return KNNWeights(torch.cat(nbrs), torch.cat(dists))


def _as_values(y: Any, n: int) -> Tensor:
    t = torch.as_tensor(y, dtype=torch.float64)
    if t.dim() == 1:
        t = t[:, None]
    if t.dim() != 2 or t.shape[0] != n:
        raise ValueError(f"values must be [n_docs={n}, n_latents], got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError("values contain NaN or infinite entries")
    return t


def _fold(larger: Tensor, permutations: int) -> Tensor:
    low = (permutations - larger) < larger
    return torch.where(low, permutations - larger, larger)


@dataclass(frozen=True)
class MoranResult:
    """Global Moran's I per latent (all ``[L]`` float64; NaN for a constant latent).

    Attributes:
        I: Moran's I. expected: its expectation under no autocorrelation, ``-1/(n-1)``.
        p_sim: permutation p-value. z_sim: ``(I - mean(I_perm)) / std(I_perm)``.
        permutations, alternative: how ``p_sim`` was computed.
    """

    I: Tensor
    p_sim: Tensor
    z_sim: Tensor
    expected: float
    permutations: int
    alternative: str


def morans_i(
    y: Any,
    w: KNNWeights,
    *,
    permutations: int = 999,
    seed: int = 0,
    alternative: str = "greater",
    device: str | torch.device = "cpu",
) -> MoranResult:
    """Global Moran's I of each column of ``y`` ``[n, L]`` (or ``[n]``) under weights ``w``."""
    if alternative not in ("greater", "two-sided"):
        raise ValueError(f"alternative must be 'greater' or 'two-sided', got {alternative!r}")
    if not isinstance(permutations, int) or permutations < 0:
        raise ValueError(f"permutations must be a non-negative integer, got {permutations!r}")
    n = w.n
    z = _as_values(y, n).to(device)
    z = z - z.mean(0)
    den = (z * z).sum(0)
    with torch.no_grad():
        obs = (z * w.lag(z)).sum(0) / den
        n_l = z.shape[1]
        larger = torch.zeros(n_l, dtype=torch.long, device=device)
        s1 = torch.zeros(n_l, dtype=torch.float64, device=device)
        s2 = torch.zeros(n_l, dtype=torch.float64, device=device)
        gen = generator(seed, "moran-global")
        for _ in range(permutations):
            perm = torch.randperm(n, generator=gen).to(device)
            zp = z.index_select(0, perm)
            sim = (zp * w.lag(zp)).sum(0) / den
            larger += sim >= obs
            s1 += sim
            s2 += sim * sim
    if permutations:
        if alternative == "two-sided":
            larger = _fold(larger, permutations)
        p = (larger.double() + 1) / (permutations + 1)
        mean = s1 / permutations
        std = (s2 / permutations - mean**2).clamp(min=0).sqrt()
        zs = (obs - mean) / std
    else:
        p = zs = torch.full_like(obs, math.nan)
    const = den <= 0
    obs, p, zs = (t.masked_fill(const, math.nan).cpu() for t in (obs, p, zs))
    return MoranResult(obs, p, zs, -1.0 / (n - 1), permutations, alternative)


@dataclass(frozen=True)
class LocalMoranResult:
    """Local Moran's I of ``L`` latents at ``n`` points (all ``[n, L]``).

    Attributes:
        Is: local I. p_sim: pseudo p-values (conditional permutation, folded as in esda).
        quadrant: int8 1 HH, 2 LH, 3 LL, 4 HL (:data:`QUADRANTS`).
    """

    Is: Tensor
    p_sim: Tensor
    quadrant: Tensor
    permutations: int

    def clusters(self, alpha: float = 0.05) -> list[list[str]]:
        """Per point and latent: ``"HH"``/``"LH"``/``"LL"``/``"HL"`` where ``p_sim < alpha``,
        else ``"ns"``; ``[n][L]`` nested lists."""
        sig = self.p_sim < alpha
        return [
            [QUADRANTS[int(q)] if s else "ns" for q, s in zip(qr, sr, strict=True)]
            for qr, sr in zip(self.quadrant.tolist(), sig.tolist(), strict=True)
        ]


def local_morans_i(
    y: Any,
    w: KNNWeights,
    *,
    permutations: int = 999,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> LocalMoranResult:
    """Local Moran's I (LISA) of each column of ``y`` ``[n, L]`` with pseudo p-values.

    For each permutation one uniformly random ``k``-subset of ``{0..n-2}`` is drawn and mapped,
    for each point ``i``, onto the other points (``j -> j + (j >= i)``), so every point's
    simulated neighbours are a uniform random ``k``-subset of the others. Memory per chunk of
    permutations is bounded (``~128 MiB``).
    """
    if not isinstance(permutations, int) or permutations < 0:
        raise ValueError(f"permutations must be a non-negative integer, got {permutations!r}")
    n, k = w.n, w.k
    z = _as_values(y, n).to(device)
    z = z - z.mean(0)
    den = (z * z).sum(0)
    with torch.no_grad():
        lag = w.lag(z)
        Is = (n - 1) * z * lag / den
        quad = torch.where(z > 0, torch.where(lag > 0, 1, 4), torch.where(lag > 0, 2, 3)).to(
            torch.int8
        )
        n_l = z.shape[1]
        larger = torch.zeros(n, n_l, dtype=torch.long, device=device)
        gen = generator(seed, "moran-local")
        chunk = max(1, _CHUNK_ELEMENTS // max(1, n * k * n_l))
        i_idx = torch.arange(n, device=device)[None, :, None]
        done = 0
        while done < permutations:
            c = min(chunk, permutations - done)
            r = torch.rand(c, n - 1, generator=gen).argsort(1)[:, :k].to(device)  # [c, k]
            nb = r[:, None, :] + (r[:, None, :] >= i_idx).long()  # [c, n, k], never i
            sim_lag = z[nb].mean(2)  # [c, n, L]
            sim = (n - 1) * z[None] * sim_lag / den
            larger += (sim >= Is[None]).sum(0)
            done += c
    if permutations:
        p = (_fold(larger, permutations).double() + 1) / (permutations + 1)
    else:
        p = torch.full_like(Is, math.nan)
    const = (den <= 0)[None].expand_as(Is)
    return LocalMoranResult(
        Is.masked_fill(const, math.nan).cpu(),
        p.masked_fill(const, math.nan).cpu(),
        quad.cpu(),
        permutations,
    )


@dataclass
class SpatialTable:
    """Per-latent spatial autocorrelation of document codes.

    Attributes:
        latents: ``[L']`` int64 latents tested (those active on at least ``min_docs`` documents).
        moran: :class:`MoranResult` over them.
        values: ``[n_docs, L']`` float32 mean activations tested.
        n_docs, k, metric: the setting.
        meta: anything else worth recording (model, hook, ...).
    """

    latents: Tensor
    moran: MoranResult
    values: Tensor
    n_docs: int
    k: int
    metric: str
    meta: dict[str, Any] = field(default_factory=dict)

    def rows(self, labels: Sequence[str] | None = None, top_docs: int = 5) -> list[dict[str, Any]]:
        """One dict per latent, most autocorrelated (highest I) first: ``latent``, ``I``,
        ``p_sim``, ``z_sim``, ``active_docs``, ``mean_activation`` and, with ``labels`` (one per
        document), the ``top_documents`` where the latent is highest."""
        order = torch.argsort(torch.nan_to_num(self.moran.I, nan=-math.inf), descending=True)
        out = []
        for j in order.tolist():
            col = self.values[:, j]
            row: dict[str, Any] = {
                "latent": int(self.latents[j]),
                "I": float(self.moran.I[j]),
                "p_sim": float(self.moran.p_sim[j]),
                "z_sim": float(self.moran.z_sim[j]),
                "active_docs": int((col > 0).sum()),
                "mean_activation": float(col.mean()),
            }
            if labels is not None:
                best = torch.argsort(col, descending=True)[:top_docs].tolist()
                row["top_documents"] = [labels[i] for i in best if col[i] > 0]
            out.append(row)
        return out


def latent_autocorrelation(
    coder: Any,
    adapter: Any,
    hook: str,
    texts: Sequence[str],
    coords: Any,
    *,
    k: int = 8,
    metric: str = "haversine",
    permutations: int = 999,
    min_docs: int = 5,
    seed: int = 0,
    batch_size: int = 16,
    max_tokens: int = 128,
    device: str | torch.device = "cpu",
) -> SpatialTable:
    """Moran's I of every latent's per-document mean activation over ``texts`` at ``coords``.

    ``texts`` ``[n_docs]`` are encoded (:func:`~sparsecodes.uses.documents.document_codes`);
    latents active on fewer than ``min_docs`` documents are skipped; ``coords`` ``[n_docs, 2]``
    (lat, lon) for haversine or ``[n_docs, d]`` for euclidean.
    """
    from sparsecodes.uses.documents import document_codes

    if len(texts) != len(coords):
        raise ValueError(f"{len(texts)} texts but {len(coords)} coordinates; give one per text")
    w = knn_weights(coords, k=k, metric=metric)
    y = document_codes(
        coder, adapter, hook, texts, batch_size=batch_size, max_tokens=max_tokens
    ).float()
    active = (y > 0).sum(0)
    latents = (active >= min_docs).nonzero(as_tuple=True)[0]
    if latents.numel() == 0:
        raise ValueError(
            f"no latent is active on {min_docs} or more of the {len(texts)} documents; "
            "lower min_docs or give more documents"
        )
    vals = y[:, latents]
    logger.info(
        "Moran's I of %d latents (of %d) over %d documents, %d permutations",
        latents.numel(),
        y.shape[1],
        len(texts),
        permutations,
    )
    res = morans_i(vals, w, permutations=permutations, seed=seed, device=device)
    return SpatialTable(
        latents=latents,
        moran=res,
        values=vals,
        n_docs=len(texts),
        k=k,
        metric=metric,
        meta={"model": getattr(adapter, "name", None), "hook": hook},
    )
