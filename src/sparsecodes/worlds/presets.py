"""Named worlds for ``sparsecodes synth --world NAME`` (:func:`world_config`).

=====================  ========  ======  =====  ===================================================
name                   features  dims    L0     structure
=====================  ========  ======  =====  ===================================================
``paper``              16        8       3      i.i.d. uniform support, exactly 3 active, ``|N(0,1)|``
``hierarchy``          512       128     ~8     32 parents x 4 mutually exclusive children, Zipf 0.5
``zipf-correlated``    1024      256     ~10    Zipf 1.0 firing, rank-16 correlation, varied magnitudes
``synthsaebench-16k``  16384     768     ~34    Zipf + hierarchy + rank-32 correlation + magnitudes
=====================  ========  ======  =====  ===================================================

L0 with a hierarchy is above the base ``l0`` (a child switches its parent on); the figures above
are measured means. ``synthsaebench-16k`` follows the SynthSAEBench world's published shape
(16,384 features in 768 dimensions, L0 about 34, Zipfian firing, hierarchy, low-rank correlation,
varied magnitudes); its remaining parameters are ours, so it is that kind of world, not a copy of
the released one.
"""

from __future__ import annotations

from typing import Any

from sparsecodes.worlds.config import (
    CorrelationSpec,
    FiringSpec,
    HierarchySpec,
    MagnitudeSpec,
    WorldConfig,
)

__all__ = ["PRESETS", "available_worlds", "world_config"]

PRESETS: dict[str, WorldConfig] = {
    "paper": WorldConfig(
        n_features=16,
        n_dims=8,
        firing=FiringSpec(l0=3, mode="exact_k"),
        magnitude=MagnitudeSpec(mean=0.0, std=1.0),
    ),
    "hierarchy": WorldConfig(
        n_features=512,
        n_dims=128,
        firing=FiringSpec(l0=6.0, zipf_exponent=0.5, max_prob=0.3),
        magnitude=MagnitudeSpec(mean=1.0, std=0.1),
        hierarchy=HierarchySpec(n_roots=32, branching=4, depth=1, mutually_exclusive=True),
    ),
    "zipf-correlated": WorldConfig(
        n_features=1024,
        n_dims=256,
        firing=FiringSpec(l0=10.0, zipf_exponent=1.0, max_prob=0.3),
        magnitude=MagnitudeSpec(mean=1.0, std=0.2, mean_spread=0.3),
        correlation=CorrelationSpec(rank=16, scale=0.15),
    ),
    "synthsaebench-16k": WorldConfig(
        n_features=16384,
        n_dims=768,
        firing=FiringSpec(l0=26.0, zipf_exponent=0.5, max_prob=0.4),
        magnitude=MagnitudeSpec(mean=1.0, std=0.15, mean_spread=0.25),
        correlation=CorrelationSpec(rank=32, scale=0.1),
        hierarchy=HierarchySpec(n_roots=128, branching=4, depth=2, mutually_exclusive=True),
    ),
}


def available_worlds() -> list[str]:
    """Preset names."""
    return sorted(PRESETS)


def world_config(name: str, **overrides: Any) -> WorldConfig:
    """The preset ``name``, with ``overrides`` (e.g. ``seed=3``, ``noise=0.05``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown world {name!r}; available: {', '.join(available_worlds())}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
