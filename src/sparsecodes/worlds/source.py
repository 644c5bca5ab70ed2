"""``WorldSource``: a world's sample stream as an :class:`~sparsecodes.activations.ActivationSource`.

The Trainer pulls ``[batch, n_dims]`` batches from it; nothing of size ``[n_samples, n_features]``
ever exists. Its position (rows consumed) is its state, so training resumes exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor

from sparsecodes.worlds.world import World

__all__ = ["WorldSource"]


class WorldSource:
    """Endless batches of ``world``'s ``stream`` from row ``start``.

    Args:
        world: the :class:`World`.
        stream: which sample stream (``"train"``; evaluate on another, e.g. ``"test"``).
        with_codes: also yield the dense true codes ``[batch, n_features]`` (the known-codes
            setting); otherwise the second item is None.
        start: first row.
    """

    def __init__(
        self, world: World, *, stream: str = "train", with_codes: bool = False, start: int = 0
    ) -> None:
        self.world = world
        self.stream = stream
        self.with_codes = with_codes
        self.d_in = world.n_dims
        self._pos = int(start)

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor | None]]:
        for batch in self.world.batches(batch_size, start=self._pos, stream=self.stream):
            self._pos += batch_size
            yield batch.x, (batch.dense_codes() if self.with_codes else None)

    def state_dict(self) -> dict[str, Any]:
        return {"pos": self._pos, "stream": self.stream, "seed": self.world.config.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("seed", self.world.config.seed) != self.world.config.seed:
            raise ValueError(
                f"checkpoint was taken on the world with seed {state['seed']}, this source's "
                f"world has seed {self.world.config.seed}; resume with the same world"
            )
        self._pos, self.stream = int(state["pos"]), state.get("stream", self.stream)
