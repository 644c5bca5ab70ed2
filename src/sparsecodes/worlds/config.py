"""World configuration: what a synthetic world with known features is made of.

A world has ``n_features`` ground-truth features (unit-norm atoms in ``R^n_dims``). Each sample
fires a sparse set of them, with a magnitude each, and observes ``x = sum_j a_j d_j (+ bias)
(+ noise)``. The parts:

- :class:`FiringSpec`: how often each feature fires. ``"bernoulli"`` fires feature ``j``
  independently with probability ``p_j``; the ``p_j`` follow a Zipf law ``p_j ∝ (j+1)^-a``
  (``a = zipf_exponent``; 0 is uniform), scaled so that ``sum_j p_j = l0`` with every
  ``p_j <= max_prob``. ``"exact_k"`` fires exactly ``k = l0`` features per sample (a weighted
  draw without replacement with weights ``(j+1)^-a``), the compute-optimal-inference paper's model.
- :class:`CorrelationSpec`: low-rank correlation of firing. Firing comes from a Gaussian copula
  ``z = F eps + sqrt(1 - |F_j|^2) eta`` with ``F`` ``[n_features, rank]`` Gaussian scaled by
  ``scale`` (rows shrunk to ``|F_j|^2 <= 0.99``); feature ``j`` fires when ``z_j`` exceeds
  its ``1 - p_j`` quantile, so marginal rates are unchanged.
- :class:`MagnitudeSpec`: per-feature mean ``mu_j = |mean + mean_spread g|`` and std
  ``sigma_j = |std + std_spread g'|`` (``g, g'`` standard normal per feature: folded normals
  across features); a firing feature's magnitude is ``|mu_j + sigma_j eps|`` (folded normal per
  sample, never 0). ``mean=0, std=1`` gives the paper's ``|N(0, 1)|``.
- :class:`HierarchySpec`: a forest of ``n_roots`` trees, each node with ``branching`` children,
  ``depth`` levels below the root. After the firing draw, children of one parent are mutually
  exclusive (if ``mutually_exclusive``: of the children that fired, one chosen uniformly at random
  stays) and a parent fires whenever one of its children does (resolved bottom-up, so an active
  leaf switches on its whole ancestor chain; a node that loses a mutual exclusion takes its
  subtree with it). Tree nodes are distinct random features.
- ``n_dims`` or ``features_per_dim`` (the ratio of features to dimensions), ``noise`` (std of
  isotropic Gaussian noise on ``x``), ``bias_norm`` (norm of a random constant offset).

``seed`` fixes everything: the dictionary, the probabilities, the trees, and every sample stream.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

__all__ = ["CorrelationSpec", "FiringSpec", "HierarchySpec", "MagnitudeSpec", "WorldConfig"]

FiringMode = Literal["bernoulli", "exact_k"]


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _finite_nonneg(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0 <= value < math.inf):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class FiringSpec:
    """Firing frequencies: ``l0`` expected (``"bernoulli"``) or exact (``"exact_k"``) actives."""

    l0: float = 3.0
    mode: FiringMode = "bernoulli"
    zipf_exponent: float = 0.0
    max_prob: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in ("bernoulli", "exact_k"):
            raise ValueError(f"firing mode must be 'bernoulli' or 'exact_k', got {self.mode!r}")
        _finite_nonneg("zipf_exponent", self.zipf_exponent)
        if not (isinstance(self.l0, int | float) and self.l0 > 0):
            raise ValueError(f"l0 must be > 0, got {self.l0!r}")
        if self.mode == "exact_k" and (float(self.l0) != int(self.l0)):
            raise ValueError(f"exact_k firing needs an integer l0 (k), got {self.l0!r}")
        if not (0 < self.max_prob <= 1):
            raise ValueError(f"max_prob must be in (0, 1], got {self.max_prob!r}")


@dataclass(frozen=True)
class CorrelationSpec:
    """Low-rank Gaussian-copula correlation of firing (``rank`` factors of size ``scale``)."""

    rank: int = 16
    scale: float = 0.1

    def __post_init__(self) -> None:
        _positive_int("correlation rank", self.rank)
        _finite_nonneg("correlation scale", self.scale)


@dataclass(frozen=True)
class MagnitudeSpec:
    """Per-feature folded-normal magnitudes (see the module docstring)."""

    mean: float = 1.0
    std: float = 0.0
    mean_spread: float = 0.0
    std_spread: float = 0.0

    def __post_init__(self) -> None:
        for name in ("mean", "std", "mean_spread", "std_spread"):
            _finite_nonneg(f"magnitude {name}", getattr(self, name))
        if self.mean == 0 and self.std == 0 and self.mean_spread == 0 and self.std_spread == 0:
            raise ValueError("magnitudes are all zero; give a mean or std > 0")


@dataclass(frozen=True)
class HierarchySpec:
    """``n_roots`` trees of ``branching`` children per node, ``depth`` levels below each root."""

    n_roots: int = 8
    branching: int = 4
    depth: int = 1
    mutually_exclusive: bool = True

    def __post_init__(self) -> None:
        _positive_int("hierarchy n_roots", self.n_roots)
        _positive_int("hierarchy branching", self.branching, 2)
        _positive_int("hierarchy depth", self.depth)

    @property
    def n_nodes(self) -> int:
        """Features used by the forest: ``n_roots * (1 + b + ... + b^depth)``."""
        return self.n_roots * sum(self.branching**i for i in range(self.depth + 1))


@dataclass(frozen=True)
class WorldConfig:
    """A synthetic world (see the module docstring). Give ``n_dims`` or ``features_per_dim``."""

    n_features: int
    n_dims: int | None = None
    features_per_dim: float | None = None
    firing: FiringSpec = field(default_factory=FiringSpec)
    magnitude: MagnitudeSpec = field(default_factory=MagnitudeSpec)
    correlation: CorrelationSpec | None = None
    hierarchy: HierarchySpec | None = None
    noise: float = 0.0
    bias_norm: float = 0.0
    seed: int = 0
    block_rows: int = 4096

    def __post_init__(self) -> None:
        _positive_int("n_features", self.n_features)
        if self.n_dims is None:
            if self.features_per_dim is None or not self.features_per_dim > 0:
                raise ValueError("give n_dims, or features_per_dim > 0 (n_features / n_dims)")
            object.__setattr__(
                self, "n_dims", max(1, round(self.n_features / self.features_per_dim))
            )
        _positive_int("n_dims", self.n_dims)
        object.__setattr__(self, "features_per_dim", self.n_features / self.n_dims)
        _positive_int("block_rows", self.block_rows)
        _finite_nonneg("noise", self.noise)
        _finite_nonneg("bias_norm", self.bias_norm)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if self.firing.l0 > self.n_features * self.firing.max_prob:
            raise ValueError(
                f"l0={self.firing.l0} is more than n_features * max_prob = "
                f"{self.n_features * self.firing.max_prob}; lower l0 or raise max_prob"
            )
        if self.hierarchy is not None and self.hierarchy.n_nodes > self.n_features:
            raise ValueError(
                f"the hierarchy needs {self.hierarchy.n_nodes} features but the world has "
                f"{self.n_features}; use fewer roots, a smaller branching or depth"
            )

    def replace(self, **changes: Any) -> WorldConfig:
        """A copy with ``changes`` (e.g. ``seed=1``)."""
        if "n_dims" in changes and "features_per_dim" not in changes:
            changes["features_per_dim"] = None
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form; :meth:`from_dict` inverts it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorldConfig:
        d = dict(d)
        d["firing"] = FiringSpec(**d.get("firing", {}))
        d["magnitude"] = MagnitudeSpec(**d.get("magnitude", {}))
        if d.get("correlation") is not None:
            d["correlation"] = CorrelationSpec(**d["correlation"])
        if d.get("hierarchy") is not None:
            d["hierarchy"] = HierarchySpec(**d["hierarchy"])
        return cls(**d)
