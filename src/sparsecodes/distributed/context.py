"""Process groups under ``torchrun``: who am I, how many are we, and the one way to start.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR``/``MASTER_PORT`` in
every process it starts. :func:`init_from_env` turns those into a default process group (``gloo``
on the CPU, ``nccl`` on CUDA); without them it does nothing and every helper here answers as a
single process would (rank 0 of 1), so library code calls them unconditionally.

Every collective in sparsecodes is called by every rank of its group in the same order; work that
only rank 0 does (writing a checkpoint or a log row) sits between collectives and is followed by a
:func:`barrier`, never inside one. That ordering is what keeps a run from hanging.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

#: how long a collective may wait for the slowest rank before the run fails (instead of hanging)
DEFAULT_TIMEOUT_S = 1800


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and final models."""
        return self.rank == 0


def launched() -> bool:
    """True when ``torchrun`` (or an equivalent launcher) set ``WORLD_SIZE`` > 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """True when a default process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> World:
    """This process's :class:`World` (rank 0 of 1 without a process group)."""
    if not active():
        return World()
    return World(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    )


def backend_for(device: str | torch.device) -> str:
    """``nccl`` for CUDA devices, ``gloo`` for everything else."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_from_env(device: str = "cpu", *, timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """Initialise the default process group from ``torchrun``'s environment, if it set one.

    ``device``: the training device (``"cuda"`` picks ``nccl`` and this rank's GPU
    ``cuda:LOCAL_RANK``; anything else ``gloo``). Without ``torchrun``'s variables this is a
    no-op returning rank 0 of 1. Calling it again returns the existing world.
    """
    if not launched() or active():
        return world()
    if not dist.is_available():
        raise RuntimeError(
            "WORLD_SIZE > 1 but this torch build has no torch.distributed; install a torch with "
            "distributed support or run a single process"
        )
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    w = world()
    log.info("process group: rank %d of %d (%s)", w.rank, w.size, backend)
    return w


def local_device(device: str) -> str:
    """This rank's device: ``cuda`` becomes ``cuda:LOCAL_RANK`` under ``torchrun``."""
    if torch.device(device).type == "cuda" and torch.device(device).index is None and active():
        return f"cuda:{world().local_rank}"
    return device


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if active():
        dist.barrier()


def shutdown() -> None:
    """Destroy the default process group if this process made one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
