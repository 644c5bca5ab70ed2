"""``ActivationSource``: anything that yields ``[batch, d_in]`` activation batches.

The Trainer only needs :meth:`ActivationSource.batches`; a source that can also report and
restore its position (``state_dict``/``load_state_dict``) makes training exactly resumable.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class ActivationSource(Protocol):
    """Yields ``(x, extra)`` pairs: ``x`` ``[batch, d_in]`` and an optional aligned tensor."""

    d_in: int

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor | None]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TensorSource:
    """Endless shuffled batches from an in-memory tensor ``x`` ``[n, d_in]``.

    Each epoch is a fresh permutation drawn from a generator seeded with ``seed``; a trailing
    partial batch is carried into the next epoch so every batch has exactly ``batch_size`` rows.
    ``extra`` (e.g. true codes ``[n, n_latents]``) is batched alongside ``x``.
    """

    def __init__(self, x: Tensor, extra: Tensor | None = None, *, seed: int = 0) -> None:
        if extra is not None and extra.shape[0] != x.shape[0]:
            raise ValueError(
                f"codes has {extra.shape[0]} rows but x has {x.shape[0]}; they must align row by row"
            )
        self.x = x
        self.extra = extra
        self.d_in = x.shape[1]
        self.seed = seed
        self._epoch = 0
        self._pos = 0

    def _perm(self, epoch: int) -> Tensor:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
        return torch.randperm(self.x.shape[0], generator=g)

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor | None]]:
        n = self.x.shape[0]
        perm = self._perm(self._epoch)
        while True:
            idx_parts = []
            need = batch_size
            while need > 0:
                take = min(need, n - self._pos)
                idx_parts.append(perm[self._pos : self._pos + take])
                self._pos += take
                need -= take
                if self._pos >= n:
                    self._epoch += 1
                    self._pos = 0
                    perm = self._perm(self._epoch)
            idx = torch.cat(idx_parts)
            yield self.x[idx], (self.extra[idx] if self.extra is not None else None)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "pos": self._pos, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._epoch, self._pos, self.seed = state["epoch"], state["pos"], state["seed"]
