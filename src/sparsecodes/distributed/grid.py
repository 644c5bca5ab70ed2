"""Data x latent parallelism (2-D): the world's ranks as a grid of process groups.

``D * R`` ranks form ``D`` latent groups of ``R`` consecutive ranks (rank ``d R + l`` is slice
``l`` of the latents in latent group ``d``) and ``R`` data groups (``l, l + R, l + 2R, ...``:
the ranks holding the same slice, one per latent group). Each latent group reads its own rows
(data rank ``d`` of ``D``) and shares them among its ``R`` ranks; gradients are then averaged
over each data group. ``torchrun`` numbers the ranks of one node consecutively, so with ``R`` at
most the processes per node a latent group (the traffic of every step) stays inside a node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from sparsecodes.distributed.context import active


@dataclass(frozen=True)
class Grid:
    """This rank's place in the grid: its two groups and its rank in each (None, 0 of 1: no
    process group)."""

    latent_group: Any = None
    data_group: Any = None
    latent_rank: int = 0
    latent_size: int = 1
    data_rank: int = 0
    data_size: int = 1


def make_grid(latent_ranks: int) -> Grid:
    """Split the default process group into ``world_size / latent_ranks`` latent groups of
    ``latent_ranks`` consecutive ranks and the matching data groups (module docstring).

    A collective: every rank calls it, with the same ``latent_ranks``. Without a process group
    it returns the one-process :class:`Grid`. Raises ValueError when ``latent_ranks`` does not
    divide the world size.
    """
    if latent_ranks < 1:
        raise ValueError(f"latent_ranks={latent_ranks} must be >= 1")
    if not active():
        if latent_ranks != 1:
            raise ValueError(
                f"latent_ranks={latent_ranks} needs that many processes (start with torchrun)"
            )
        return Grid()
    size, rank = dist.get_world_size(), dist.get_rank()
    if size % latent_ranks:
        raise ValueError(
            f"{size} processes cannot form latent groups of {latent_ranks}: the number of "
            "processes must be a multiple of the latent ranks"
        )
    n_data = size // latent_ranks
    latent_group = data_group = None
    for d in range(n_data):  # every rank creates every group, in the same order
        g = dist.new_group(list(range(d * latent_ranks, (d + 1) * latent_ranks)))
        if rank // latent_ranks == d:
            latent_group = g
    for lr in range(latent_ranks):
        g = dist.new_group(list(range(lr, size, latent_ranks)))
        if rank % latent_ranks == lr:
            data_group = g
    return Grid(
        latent_group,
        data_group,
        latent_rank=rank % latent_ranks,
        latent_size=latent_ranks,
        data_rank=rank // latent_ranks,
        data_size=n_data,
    )
