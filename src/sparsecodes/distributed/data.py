"""Splitting one global batch stream between data-parallel ranks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor


class RankSlice:
    """Rank ``rank``'s rows of every global batch of ``source`` (any ActivationSource).

    ``batches(b)`` draws global batches of ``b * world_size`` rows from ``source`` and yields rows
    ``[rank * b, (rank + 1) * b)`` of each, so the ranks together see exactly the batches one
    process with the global batch would see, and :meth:`state_dict` is the global position:
    a checkpoint resumes with any number of ranks. Every rank reads (or computes) the whole
    stream, so use it where rows are cheap (in-memory tensors, tests); stores and live models
    split their work themselves (``StoreSource(rank=, world_size=)``,
    ``LiveModelSource(rank=, world_size=)``).
    """

    def __init__(self, source: Any, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.source = source
        self.rank = rank
        self.world_size = world_size
        self.d_in = source.d_in

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor | None]]:
        lo, hi = self.rank * batch_size, (self.rank + 1) * batch_size
        for x, extra in self.source.batches(batch_size * self.world_size):
            yield x[lo:hi], (extra[lo:hi] if extra is not None else None)

    def state_dict(self) -> dict[str, Any]:
        return self.source.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)
