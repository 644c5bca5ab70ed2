"""Data x latent (2-D) parallelism on four CPU processes (gloo): 2 latent groups of 2 ranks.

Each latent group reads its own half of every global batch (data rank ``d`` of 2) and splits
the latents between its two ranks; gradients are averaged over the ranks holding the same slice.
The claim: the result equals one process holding every latent and stepping on the whole global
batch (TopK without AuxK: AuxK's normaliser is each data rank's own, docs/distributed.md). Tolerance as in tests/test_distributed.py: the reconstruction is a sum of two partial
decodes and the gradient a mean of two half-batch means (float32 sums in another order, relative
~1e-7 per step); Adam keeps the weights within ``lr * steps`` times that, far below ``ATOL``.
Sizes are tiny (d=8, 16 latents, 6 steps): the four processes' start-up is most of the cost.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sparsecodes.activations.source import TensorSource
from sparsecodes.sparse_coder import SparseCoder
from sparsecodes.training.trainer import TrainConfig, Trainer

WORLD, LATENT_RANKS = 4, 2
ATOL = 1e-5
D, N_LAT = 8, 16


def data(rows: int = 512) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randn(rows, D, generator=g) @ torch.randn(D, D, generator=g) + 0.5


def make_coder() -> SparseCoder:
    return SparseCoder(D, N_LAT, "topk", seed=3, k=2)


def config() -> TrainConfig:
    return TrainConfig(steps=6, lr=3e-3, batch_size=32, log_every=2)


class Stopped(Exception):
    pass


def stopping(base: type, stop_at: int | None) -> type:
    """``base`` (an activation source class) whose ``batches`` raises :class:`Stopped` (an
    interrupt) when asked for batch ``stop_at``."""

    class Stopping(base):
        def batches(self, batch_size: int):
            for i, item in enumerate(super().batches(batch_size)):
                if i == stop_at:
                    raise Stopped
                yield item

    return Stopping


def store_source(store: str, grid, stop_at: int | None = None):
    """Data rank ``d``'s shards of ``store``, interrupted at batch ``stop_at`` on every rank."""
    from sparsecodes.activations.reader import StoreSource

    return stopping(StoreSource, stop_at)(
        store, seed=2, rank=grid.data_rank, world_size=grid.data_size, group=grid.data_group
    )


def stopping_slice(grid, stop_at: int):
    """Data rank ``d``'s part of every global batch of ``data()``, interrupted at batch
    ``stop_at`` on every rank."""
    from sparsecodes.distributed import RankSlice

    source = TensorSource(data(), seed=1)
    return stopping(RankSlice, stop_at)(source, grid.data_rank, grid.data_size)


def grid_worker(rank: int, init_file: str, out: str, store: str) -> None:
    from sparsecodes.distributed import RankSlice, make_grid
    from sparsecodes.training.run import train_run

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        grid = make_grid(LATENT_RANKS)
        assert (grid.data_rank, grid.latent_rank) == divmod(rank, LATENT_RANKS)
        assert (grid.data_size, grid.latent_size) == (WORLD // LATENT_RANKS, LATENT_RANKS)
        # a resumable run directory: checkpoints gather the slices, rank 0 writes final/
        whole = train_run(
            make_coder(),
            RankSlice(TensorSource(data(), seed=1), grid.data_rank, grid.data_size),
            config(),
            Path(out).parent / "run",
            checkpoint_every=3,
            latent_group=grid.latent_group,
            data_group=grid.data_group,
        )  # the whole coder, on every rank
        # a store read by the two data ranks: interrupted after the step-3 checkpoint on every
        # rank, then resumed (each data rank continues its shards where it stopped), against the
        # uninterrupted run
        runs = Path(out).parent
        kw = {"latent_group": grid.latent_group, "data_group": grid.data_group}
        plain = train_run(
            make_coder(), store_source(store, grid), config(), runs / "s", checkpoint_every=3, **kw
        )
        with contextlib.suppress(Stopped):
            train_run(
                make_coder(),
                store_source(store, grid, 4),
                config(),
                runs / "r",
                checkpoint_every=3,
                **kw,
            )
        assert not (runs / "r" / "final").exists()
        resumed = train_run(
            make_coder(), store_source(store, grid), config(), runs / "r", checkpoint_every=3, **kw
        )
        assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in plain.state_dict().items())
        # interrupted after the step-3 checkpoint here; the test resumes it on another grid
        with contextlib.suppress(Stopped):
            train_run(
                make_coder(),
                stopping_slice(grid, 4),
                config(),
                runs / "x",
                checkpoint_every=3,
                **kw,
            )
        every = [None] * WORLD if rank == 0 else None
        dist.gather_object((whole.state_dict(), whole.history), every, dst=0)
        if rank == 0:
            torch.save(every, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # four processes: 100-650 s on the shared 2-core machine (load 15-18)
def test_data_x_latent_training_equals_one_process_with_the_global_batch(tmp_path):
    """... and a run interrupted on every rank resumes to the uninterrupted run's weights."""
    from conftest import fake_store

    store = fake_store(tmp_path / "store", rows=4096, d=D)  # 4 shards: 2 per data rank
    mp.spawn(
        grid_worker,
        args=(str(tmp_path / "rendezvous"), str(tmp_path / "results.pt"), str(store)),
        nprocs=WORLD,
        join=True,
    )
    from sparsecodes.training.run import train_run

    every = torch.load(tmp_path / "results.pt", weights_only=False)
    ref = Trainer(make_coder(), config())
    ref.fit(TensorSource(data(), seed=1))
    want = ref.coder.state_dict()
    start = make_coder().state_dict()["dictionary.W_dec"]
    assert (want["dictionary.W_dec"] - start).abs().max() > 100 * ATOL  # training moved them
    final = SparseCoder.load(tmp_path / "run" / "final").state_dict()
    for got in [final, *(state for state, _ in every)]:  # final/, and every rank's coder
        assert got.keys() == want.keys()
        for name, value in want.items():
            torch.testing.assert_close(got[name], value, atol=ATOL, rtol=0, msg=name)
    for _, history in every:  # L0 summed over the slices, loss averaged over the data groups
        assert [r["step"] for r in history] == [2.0, 4.0, 6.0]
        for a, b in zip(history, ref.state.history, strict=True):
            assert a["l0"] == b["l0"] == 2.0
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    # the full dead counters in the checkpoint: the global batch's tokens, firing OR-reduced
    blob = torch.load(tmp_path / "run" / "checkpoint" / "trainer.pt", weights_only=False)
    assert blob["state"]["tokens"] == 6 * 32
    assert torch.equal(blob["tokens_since_fired"], ref.tokens_since_fired)
    # another grid: one process resumes the 2 x 2 run interrupted after its step-3 checkpoint
    stopped = torch.load(tmp_path / "x" / "checkpoint" / "trainer.pt", weights_only=False)
    assert stopped["state"]["step"] == 3 and not (tmp_path / "x" / "final").exists()
    one = train_run(make_coder(), TensorSource(data(), seed=1), config(), tmp_path / "x")
    assert one.history[-1]["step"] == 6.0
    for name, value in want.items():
        torch.testing.assert_close(one.state_dict()[name], value, atol=ATOL, rtol=0, msg=name)


def _torchrun(n: int, args: list[str]) -> None:
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    r = subprocess.run(
        [*cmd, str(n), "-m", "sparsecodes", *args], env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.slow  # six processes under torchrun: ~11 min on the shared machine under load
def test_torchrun_train_data_latent_equals_data_parallel_over_the_same_data_ranks(tmp_path):
    """``train --parallel data,latent --latent-ranks 2`` on 4 ranks reads the store as 2
    data-parallel ranks do (latent group d reads data rank d's shards), so its coder equals the
    2-rank data-parallel one; run.json records the grid."""
    import json

    import sparsecodes
    from conftest import fake_store

    store = fake_store(tmp_path / "store", rows=4096, d=8)  # 4 shards: 2 per data rank
    args = ["train", "--store", str(store), "--encoder", "topk", "--param", "k=2"]
    args += ["--n-latents", "16", "--steps", "6", "--batch-size", "64", "--checkpoint-every", "3"]
    args += ["--device", "cpu", "--no-saelens", "--seed", "5"]
    _torchrun(
        4,
        [
            *args,
            "--parallel",
            "data,latent",
            "--latent-ranks",
            "2",
            "--out",
            str(tmp_path / "grid"),
        ],
    )
    _torchrun(2, [*args, "--parallel", "data", "--out", str(tmp_path / "data")])
    got = sparsecodes.load(tmp_path / "grid" / "final").state_dict()
    want = sparsecodes.load(tmp_path / "data" / "final").state_dict()
    start = SparseCoder(8, 16, "topk", seed=5, k=2).state_dict()["dictionary.W_dec"]
    assert (want["dictionary.W_dec"] - start).abs().max() > 100 * ATOL  # training moved them
    assert got.keys() == want.keys()
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, atol=ATOL, rtol=0, msg=name)
    run = json.loads((tmp_path / "grid" / "run.json").read_text())
    assert run["parallel"] == {"mode": "data,latent", "world_size": 4, "latent_ranks": 2}


def test_latent_ranks_goes_with_data_latent_only(tmp_path):
    from click.testing import CliRunner

    from conftest import fake_store
    from sparsecodes.cli import main

    store = str(fake_store(tmp_path / "store", rows=256, d=8))
    r = CliRunner().invoke(main, ["train", "--store", store, "--latent-ranks", "2"])
    assert r.exit_code == 2 and "--latent-ranks is for --parallel data,latent" in r.output
    r = CliRunner().invoke(main, ["train", "--store", store, "--parallel", "data,latent"])
    assert r.exit_code == 2 and "--latent-ranks" in r.output and "needs" in r.output
