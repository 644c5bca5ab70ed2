"""``StoreSource``: endless, shuffled, resumable batches from one or more on-disk stores.

Shuffling in bounded memory: each epoch visits the shards of all stores in a fresh random order
and takes them ``shuffle_buffer_shards`` at a time (a *group*). A group's rows are read from the
shard files straight into one buffer (the first read of a shard in a process also checks its
sha256, hashing the bytes as they arrive) and served in a random permutation. So at most
``shuffle_buffer_shards * shard_rows`` rows (plus one batch) are held in memory, whatever the
size of the store, and a batch mixes rows from that many random places in the corpus.

Every row is served exactly once per epoch. Batches always have exactly ``batch_size`` rows:
when an epoch's rows do not divide evenly, the last batch of the epoch is completed with the
first rows of the next epoch (the remainder is carried over, never dropped or repeated).
Everything is a function of ``(seed, epoch, group)``, so the same seed gives the same batches
and :meth:`StoreSource.state_dict` (epoch, group, position) resumes them exactly.

Data-parallel ranks (``rank``, ``world_size``): each epoch's shard order is drawn as above and
rank ``r`` takes every ``world_size``-th shard of it from position ``r``, so the ranks read
disjoint shards (each row once per epoch over all ranks) and each shuffles its own. Under a
process group ``state_dict`` gathers every rank's position (call it on all ranks); a checkpoint
loaded with the same number of ranks resumes each exactly, with another number every rank
starts the earliest saved epoch afresh (logged).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sparsecodes.activations.store import (
    STORE_DTYPES,
    Manifest,
    StoreError,
    read_manifest,
    read_shard,
    to_float32,
    verify_shard,
)
from sparsecodes.distributed.reduce import gather_objects

log = logging.getLogger(__name__)


class StoreSource:
    """Batches ``(x [batch, d_in] float32, None)`` from stores written by ``sparsecodes cache``.

    Args:
        paths: one store directory or a list of them (same row shape; rows of all stores form
            one pool). A row of trailing shape ``[n_heads, d_head]`` is flattened, so
            ``d_in = prod(shape)``.
        seed: seeds the shard order and the within-buffer permutations.
        shuffle_buffer_shards: shards per shuffle buffer (memory: this many shards of rows).
        verify: check each shard's sha256 the first time this process reads it, hashing the
            bytes as they are read (no second pass over the file). A corrupt shard raises
            :class:`~sparsecodes.activations.store.CorruptShardError` naming the file and the
            command that repairs the store, before any of its rows is served. Every reader in
            sparsecodes verifies; ``False`` exists only to measure the checksum's cost.
        device: where the batches are put (default CPU).
        rank, world_size: read only this data-parallel rank's shards (module docstring).
        group: the process group of those ``world_size`` ranks, in rank order, over which
            :meth:`state_dict` gathers the positions (None: the default group; a data group of
            :func:`sparsecodes.distributed.make_grid` under data x latent parallelism).
    """

    def __init__(
        self,
        paths: str | Path | Sequence[str | Path],
        *,
        seed: int = 0,
        shuffle_buffer_shards: int = 4,
        verify: bool = True,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
        group: Any = None,
    ) -> None:
        if isinstance(paths, str | Path):
            paths = [paths]
        if not paths:
            raise ValueError("paths is empty; give at least one store directory")
        if shuffle_buffer_shards < 1:
            raise ValueError(f"shuffle_buffer_shards={shuffle_buffer_shards} must be >= 1")
        self.paths = [Path(p) for p in paths]
        self.manifests: list[Manifest] = [read_manifest(p) for p in self.paths]
        shapes = {tuple(m.shape) for m in self.manifests}
        if len(shapes) > 1:
            listing = ", ".join(
                f"{p}: {m.shape}" for p, m in zip(self.paths, self.manifests, strict=True)
            )
            raise StoreError(f"stores have different row shapes ({listing}); read them separately")
        self.shape = tuple(self.manifests[0].shape)
        self.d_in = int(np.prod(self.shape))
        dtypes = {m.dtype for m in self.manifests}
        # keep the buffer in the stored dtype when all stores agree (half the memory of fp32)
        self._buf_dtype = dtypes.pop() if len(dtypes) == 1 else "float32"
        # units: (store index, shard index, rows)
        self._units = [
            (si, j, s.rows)
            for si, m in enumerate(self.manifests)
            for j, s in enumerate(m.shards)
            if s.rows > 0
        ]
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        if world_size > len(self._units):
            raise StoreError(
                f"{len(self._units)} shards cannot be split between {world_size} ranks; cache "
                "with a smaller --shard-rows or train with fewer processes"
            )
        self.rank, self.world_size, self.group = rank, world_size, group
        self.n_rows = sum(u[2] for u in self._units)
        self.seed = int(seed)
        self.shuffle_buffer_shards = int(shuffle_buffer_shards)
        self.verify_on_read = verify
        self.device = torch.device(device)
        self._epoch = 0
        self._group = 0
        self._pos = 0
        self._loaded: tuple[int, int] | None = None
        self._buf: np.ndarray | None = None
        self._perm: np.ndarray | None = None
        #: largest number of rows ever held in the shuffle buffer (for memory checks)
        self.max_buffer_rows = 0

    def __len__(self) -> int:
        """Rows in one epoch."""
        return self.n_rows

    @property
    def n_groups(self) -> int:
        mine = len(range(self.rank, len(self._units), self.world_size))
        return -(-mine // self.shuffle_buffer_shards)

    # -- the plan -------------------------------------------------------------------------

    def _shard_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, 0])
        return rng.permutation(len(self._units))

    def _group_units(self, epoch: int, group: int) -> list[tuple[int, int, int]]:
        order = self._shard_order(epoch)[self.rank :: self.world_size]
        s = self.shuffle_buffer_shards
        return [self._units[i] for i in order[group * s : (group + 1) * s]]

    def _load_group(self, epoch: int, group: int) -> None:
        if self._loaded == (epoch, group):
            return
        self._buf = self._perm = None  # free the previous buffer before allocating the next
        units = self._group_units(epoch, group)
        rows = sum(u[2] for u in units)
        buf_np_dtype = np.uint16 if self._buf_dtype == "bfloat16" else np.dtype(self._buf_dtype)
        buf = np.empty((rows, self.d_in), dtype=buf_np_dtype)
        same, mixed, off = [], [], 0
        for si, j, n in units:
            m = self.manifests[si]
            (same if m.dtype == self._buf_dtype else mixed).append((si, j, buf[off : off + n]))
            off += n

        def read_into(unit: tuple[int, int, np.ndarray]) -> None:
            si, j, dst = unit
            m = self.manifests[si]
            read_shard(self.paths[si], m.shards[j], m, dst, verify=self.verify_on_read)

        # straight from the files into the buffer, several shards at once (reading and hashing
        # release the GIL, so a group's checksums take about one shard's time with spare cores)
        workers = min(len(same), os.cpu_count() or 1)
        if workers > 1:
            with ThreadPoolExecutor(workers, thread_name_prefix="store-read") as pool:
                list(pool.map(read_into, same))
        else:
            for unit in same:
                read_into(unit)
        for si, j, dst in mixed:  # mixed dtypes: one shard at a time in its dtype, converted
            m = self.manifests[si]
            raw = np.empty(dst.shape, dtype=STORE_DTYPES[m.dtype])
            read_into((si, j, raw))
            dst[:] = to_float32(raw, m.dtype)
            del raw
        key = [self.seed, epoch, group + 1] + ([self.rank] if self.world_size > 1 else [])
        rng = np.random.default_rng(key)
        self._perm = rng.permutation(rows)
        self._buf = buf
        self._loaded = (epoch, group)
        self.max_buffer_rows = max(self.max_buffer_rows, rows)

    def _to_tensor(self, rows: np.ndarray) -> Tensor:
        if self._buf_dtype == "bfloat16":
            t = torch.from_numpy(rows.view(np.int16)).view(torch.bfloat16).float()
        else:
            t = torch.from_numpy(rows).float()
        return t.to(self.device) if self.device.type != "cpu" else t

    # -- ActivationSource -----------------------------------------------------------------

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor | None]]:
        """Endless batches ``(x [batch_size, d_in] float32, None)``; see the module docstring."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if self.n_rows == 0:
            raise StoreError(f"the stores {[str(p) for p in self.paths]} hold no rows")
        while True:
            pieces = []
            need = batch_size
            while need > 0:
                self._load_group(self._epoch, self._group)
                assert self._perm is not None and self._buf is not None
                take = min(need, len(self._perm) - self._pos)
                pieces.append(self._buf[self._perm[self._pos : self._pos + take]])
                self._pos += take
                need -= take
                if self._pos >= len(self._perm):
                    self._pos = 0
                    self._group += 1
                    if self._group >= self.n_groups:
                        self._group = 0
                        self._epoch += 1
            rows = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
            yield self._to_tensor(rows), None

    def state_dict(self) -> dict[str, Any]:
        state = {
            "epoch": self._epoch,
            "group": self._group,
            "pos": self._pos,
            "seed": self.seed,
            "n_rows": self.n_rows,
            "shuffle_buffer_shards": self.shuffle_buffer_shards,
        }
        if self.world_size > 1:  # a collective: every rank saves every rank's position
            pos = {k: state[k] for k in ("epoch", "group", "pos")}
            state["ranks"] = gather_objects(pos, self.group)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("n_rows", "shuffle_buffer_shards"):
            if name in state and state[name] != getattr(self, name):
                raise ValueError(
                    f"state was saved with {name}={state[name]} but this source has "
                    f"{name}={getattr(self, name)}; the batches could not be resumed exactly"
                )
        ranks = state.get("ranks")
        if self.world_size == 1 and ranks is None:
            self._epoch, self._group, self._pos = state["epoch"], state["group"], state["pos"]
        elif ranks is not None and len(ranks) == self.world_size:
            mine = ranks[self.rank]
            self._epoch, self._group, self._pos = mine["epoch"], mine["group"], mine["pos"]
        else:
            epoch = min(r["epoch"] for r in ranks) if ranks else state["epoch"]
            saved = len(ranks) if ranks else 1
            log.warning(
                "state saved by %d rank(s) loaded by %d: rank %d restarts epoch %d",
                saved,
                self.world_size,
                self.rank,
                epoch,
            )
            self._epoch, self._group, self._pos = epoch, 0, 0
        self.seed = state["seed"]
        self._loaded = None

    def verify(self) -> None:
        """Checksum every shard of every store (raises ``CorruptShardError`` naming the file)."""
        for path, m in zip(self.paths, self.manifests, strict=True):
            for shard in m.shards:
                verify_shard(path, shard, m)
