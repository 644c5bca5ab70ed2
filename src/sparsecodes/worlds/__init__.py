"""Synthetic worlds with known features: Zipfian firing, hierarchies, correlation, magnitudes.

``World(world_config("hierarchy", seed=0))`` builds a world; ``world.batches(4096)`` streams
``[batch, n_dims]`` samples with their sparse true codes in bounded memory, and
``WorldSource(world)`` feeds the Trainer. The paper's i.i.d. model with its exact numbers stays in
:mod:`sparsecodes.synthetic` (``make_sparse_data``).
"""

from sparsecodes.worlds.config import (
    CorrelationSpec,
    FiringSpec,
    HierarchySpec,
    MagnitudeSpec,
    WorldConfig,
)
from sparsecodes.worlds.presets import PRESETS, available_worlds, world_config
from sparsecodes.worlds.source import WorldSource
from sparsecodes.worlds.world import World, WorldBatch, firing_probabilities

__all__ = [
    "PRESETS",
    "CorrelationSpec",
    "FiringSpec",
    "HierarchySpec",
    "MagnitudeSpec",
    "World",
    "WorldBatch",
    "WorldConfig",
    "WorldSource",
    "available_worlds",
    "firing_probabilities",
    "world_config",
]
