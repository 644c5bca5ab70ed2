"""Synthetic sparse data with known ground truth: the model of the compute-optimal inference paper.

Codes ``s`` in R^N have exactly ``k`` active latents per sample; active values are ``|N(0, 1)|``
(or signed ``N(0, 1)``); the dictionary has ``N`` Gaussian atoms in R^M scaled to unit norm, and
``x = s @ D`` (plus optional isotropic Gaussian noise). Paper defaults: ``N=16, M=8, k=3``,
1024 train / 1024 test samples, no noise.

Options:

- ``zipf_exponent=a``: latent ``i`` is drawn with weight ``(i + 1) ** -a`` (the support is a
  weighted draw without replacement, by the Gumbel-top-k trick); ``None`` = uniform.
- ``signed=True``: active values are ``N(0, 1)`` instead of ``|N(0, 1)|``.
- ``correlation=rho`` in ``[0, 1)``: latents co-activate. The support's Gumbel noise comes from a
  Gaussian copula with covariance ``(1 - rho) I + rho F F^T`` (``F`` a random ``[N, r]`` factor with
  unit-norm rows, ``r = max(1, N // 8)``), so latents loading on the same factor tend to fire
  together. ``rho = 0`` gives the independent draw. The copula changes only *which* latents are
  active, never how many (always exactly ``k``).
- ``dictionary=D``: reuse given atoms ``[N, M]`` (normalised to unit rows), e.g. to draw a test set
  that shares the training dictionary; :func:`make_train_test` does this for you.

Everything is drawn from one ``torch.Generator`` seeded with ``seed``: same seed, same tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SyntheticData", "make_sparse_data", "make_train_test", "split"]


@dataclass
class SyntheticData:
    """A synthetic data set with its ground truth.

    Attributes:
        x: ``[n_samples, n_dims]`` float32 observations ``codes @ dictionary (+ noise)``.
        codes: ``[n_samples, n_latents]`` float32 true codes, exactly ``k`` nonzeros per row.
        dictionary: ``[n_latents, n_dims]`` float32 true atoms, unit L2 norm rows.
        config: the arguments that produced it (JSON-serialisable).
    """

    x: Tensor
    codes: Tensor
    dictionary: Tensor
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return self.x.shape[0]

    @property
    def n_latents(self) -> int:
        return self.codes.shape[1]

    @property
    def n_dims(self) -> int:
        return self.x.shape[1]

    def __getitem__(self, idx: slice | Tensor) -> SyntheticData:
        """Rows ``idx`` of ``x`` and ``codes``; the dictionary is shared."""
        return SyntheticData(self.x[idx], self.codes[idx], self.dictionary, dict(self.config))


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _validate(
    n_latents: int,
    n_dims: int,
    k: int,
    n_samples: int,
    noise: float,
    zipf_exponent: float | None,
    correlation: float,
) -> None:
    _check_int("n_latents", n_latents, 1)
    _check_int("n_dims", n_dims, 1)
    _check_int("k", k, 1)
    _check_int("n_samples", n_samples, 1)
    if k > n_latents:
        raise ValueError(
            f"k={k} active latents per sample is more than n_latents={n_latents}; "
            "choose k <= n_latents"
        )
    if not (noise >= 0 and noise == noise and noise != float("inf")):
        raise ValueError(f"noise must be a finite standard deviation >= 0, got {noise!r}")
    if zipf_exponent is not None and not (zipf_exponent >= 0 and zipf_exponent < float("inf")):
        raise ValueError(
            f"zipf_exponent must be a finite number >= 0 (or None for uniform), got "
            f"{zipf_exponent!r}"
        )
    if not (0.0 <= correlation < 1.0):
        raise ValueError(f"correlation must be in [0, 1), got {correlation!r}")


def _gumbel_from_uniform(u: Tensor) -> Tensor:
    eps = torch.finfo(u.dtype).eps
    return -torch.log(-torch.log(u.clamp(eps, 1 - eps)))


def _support_scores(
    n_samples: int,
    n_latents: int,
    zipf_exponent: float | None,
    correlation: float,
    g: torch.Generator,
) -> Tensor:
    """``[n_samples, n_latents]`` scores whose per-row top-k is the active set."""
    if correlation > 0:
        r = max(1, n_latents // 8)
        factor = F.normalize(torch.randn(n_latents, r, generator=g, dtype=torch.float64), dim=1)
        z = torch.randn(n_samples, n_latents, generator=g, dtype=torch.float64)
        common = torch.randn(n_samples, r, generator=g, dtype=torch.float64) @ factor.T
        # covariance (1 - rho) I + rho F F^T with unit diagonal, so z stays marginally N(0, 1)
        z = (1 - correlation) ** 0.5 * z + correlation**0.5 * common
        u = 0.5 * (1 + torch.erf(z / 2**0.5))
    else:
        u = torch.rand(n_samples, n_latents, generator=g, dtype=torch.float64)
    scores = _gumbel_from_uniform(u)
    if zipf_exponent is not None and zipf_exponent > 0:
        ranks = torch.arange(1, n_latents + 1, dtype=torch.float64)
        scores = scores - zipf_exponent * torch.log(ranks)
    return scores


def make_sparse_data(
    n_latents: int = 16,
    n_dims: int = 8,
    k: int = 3,
    n_samples: int = 2048,
    seed: int = 0,
    noise: float = 0.0,
    zipf_exponent: float | None = None,
    signed: bool = False,
    correlation: float = 0.0,
    dictionary: Tensor | None = None,
) -> SyntheticData:
    """Draw ``n_samples`` rows of the sparse linear model (see the module docstring).

    Args:
        n_latents: N, number of true latents (atoms).
        n_dims: M, observation dimension.
        k: K, active latents per sample (exactly).
        n_samples: S, rows to draw.
        seed: seeds every random draw.
        noise: standard deviation of isotropic Gaussian noise added to ``x``.
        zipf_exponent: ``None`` for uniform supports, else latent ``i`` has weight ``(i+1)^-a``.
        signed: active values ``N(0,1)`` rather than ``|N(0,1)|``.
        correlation: co-activation strength in ``[0, 1)``.
        dictionary: atoms ``[n_latents, n_dims]`` to use instead of drawing new ones.

    Returns:
        :class:`SyntheticData` with ``x`` ``[S, M]``, ``codes`` ``[S, N]``, ``dictionary`` ``[N, M]``.
    """
    _validate(n_latents, n_dims, k, n_samples, noise, zipf_exponent, correlation)
    g = torch.Generator().manual_seed(int(seed))
    if dictionary is None:
        atoms = F.normalize(torch.randn(n_latents, n_dims, generator=g), dim=1)
    else:
        atoms = torch.as_tensor(dictionary).detach().float().cpu()
        if tuple(atoms.shape) != (n_latents, n_dims):
            raise ValueError(
                f"dictionary must have shape [n_latents, n_dims] = [{n_latents}, {n_dims}], "
                f"got {tuple(atoms.shape)}"
            )
        if not torch.isfinite(atoms).all() or (atoms.norm(dim=1) == 0).any():
            raise ValueError("dictionary contains NaN/inf or an all-zero atom")
        atoms = F.normalize(atoms, dim=1)
    scores = _support_scores(n_samples, n_latents, zipf_exponent, correlation, g)
    idx = scores.topk(k, dim=1).indices
    vals = torch.randn(n_samples, k, generator=g)
    if not signed:
        vals = vals.abs()
    codes = torch.zeros(n_samples, n_latents).scatter_(1, idx, vals)
    x = codes @ atoms
    if noise > 0:
        x = x + noise * torch.randn(x.shape, generator=g)
    config = {
        "n_latents": n_latents,
        "n_dims": n_dims,
        "k": k,
        "n_samples": n_samples,
        "seed": int(seed),
        "noise": float(noise),
        "zipf_exponent": zipf_exponent,
        "signed": bool(signed),
        "correlation": float(correlation),
        "dictionary_given": dictionary is not None,
    }
    return SyntheticData(x, codes, atoms, config)


def split(data: SyntheticData, n_train: int) -> tuple[SyntheticData, SyntheticData]:
    """First ``n_train`` rows and the rest; both share ``data.dictionary``."""
    _check_int("n_train", n_train, 1)
    if n_train >= data.n_samples:
        raise ValueError(
            f"n_train={n_train} leaves no test rows out of {data.n_samples}; "
            "choose n_train < n_samples"
        )
    return data[:n_train], data[n_train:]


def make_train_test(
    n_train: int = 1024, n_test: int = 1024, **kwargs: Any
) -> tuple[SyntheticData, SyntheticData]:
    """Train and test sets from one draw (the paper's 1024/1024 split by default).

    ``kwargs`` are :func:`make_sparse_data`'s other arguments (not ``n_samples``). The two sets
    are disjoint rows of the same draw and share the dictionary.
    """
    if "n_samples" in kwargs:
        raise ValueError("make_train_test takes n_train and n_test, not n_samples")
    _check_int("n_train", n_train, 1)
    _check_int("n_test", n_test, 1)
    data = make_sparse_data(n_samples=n_train + n_test, **kwargs)
    return split(data, n_train)
