"""Training and caching over several processes launched by ``torchrun`` (docs/distributed.md).

- :mod:`~sparsecodes.distributed.context`: the process group (``init_from_env``, ``world``).
- :mod:`~sparsecodes.distributed.reduce`: what data-parallel ranks reduce (gradients, firing).
- :mod:`~sparsecodes.distributed.data`: :class:`RankSlice`, one global batch split by rank.
- :mod:`~sparsecodes.distributed.latent`: latent parallelism (each rank holds a slice of the
  latents; global TopK from per-rank candidates; reconstruction = all-reduced partial decodes).
- :mod:`~sparsecodes.distributed.grid`: both at once, the ranks as a data x latent grid of
  process groups (:func:`make_grid`).

Nothing here starts processes: ``torchrun`` does, and every function is a no-op (rank 0 of 1)
without a process group, so single-process code paths are unchanged.
"""

from sparsecodes.distributed.context import (
    World,
    active,
    barrier,
    init_from_env,
    launched,
    local_device,
    shutdown,
    world,
)
from sparsecodes.distributed.data import RankSlice
from sparsecodes.distributed.grid import Grid, make_grid

__all__ = [
    "Grid",
    "RankSlice",
    "World",
    "active",
    "barrier",
    "init_from_env",
    "launched",
    "local_device",
    "make_grid",
    "shutdown",
    "world",
]
