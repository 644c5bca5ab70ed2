"""Training and caching over two CPU processes (gloo), against one process doing the same work.

Each test spawns two processes with ``torch.multiprocessing`` and a file rendezvous, so it runs
in CI without ``torchrun``. Tolerances: the data-parallel gradient is the mean of two half-batch
means instead of one full-batch mean, so the float32 sums are taken in another order (relative
error ~ 1e-7 per step); Adam divides each update by the gradient's running RMS, so a weight can
differ by at most ``lr * steps`` times that error, far below ``ATOL``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sparsecodes.activations.source import TensorSource
from sparsecodes.distributed import RankSlice
from sparsecodes.sparse_coder import SparseCoder
from sparsecodes.training.trainer import TrainConfig, Trainer

WORLD = 2
ATOL = 1e-5
D, N_LAT = 16, 64


def data(rows: int = 1024) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randn(rows, D, generator=g) @ torch.randn(D, D, generator=g) + 0.5


def make_coder(encoder: str, aux: float | None = None) -> SparseCoder:
    params: dict = {"k": 4} if encoder == "topk" else {}
    if aux is not None:
        params["aux_coef"] = aux
    return SparseCoder(D, N_LAT, encoder, seed=3, **params)


def config(steps: int = 12) -> TrainConfig:
    return TrainConfig(steps=steps, lr=3e-3, batch_size=64, log_every=4)


def run_workers(fn, tmp_path: Path, *args) -> None:
    """Run ``fn(rank, init_file, *args)`` in two processes; raises if any fails."""
    init = tmp_path / "rendezvous"
    mp.spawn(fn, args=(str(init), *args), nprocs=WORLD, join=True)


def init(rank: int, init_file: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)


def scenarios_worker(rank: int, init_file: str, out: str) -> None:
    """Every two-rank scenario in one pair of processes (process start-up dominates the cost)."""
    from sparsecodes.distributed.latent import gather_coder, shard_coder

    init(rank, init_file)
    try:
        results = {}
        for encoder in ("topk", "relu"):  # data parallel: half of each global batch per rank
            coder = make_coder(encoder)
            trainer = Trainer(coder, config())
            assert trainer.data_ranks == WORLD and trainer.local_batch_size == 32
            trainer.fit(RankSlice(TensorSource(data(), seed=1), rank, WORLD))
            results[f"dp-{encoder}"] = {
                "state": coder.state_dict(),
                "fired": trainer.tokens_since_fired,
                "tokens": trainer.state.tokens,
                "history": trainer.state.history,
            }
        # latent parallel: every rank sees the whole batch and holds half of the latents
        part = shard_coder(make_coder("topk", aux=0.0), dist.group.WORLD)
        trainer = Trainer(part, config(), latent_group=dist.group.WORLD)
        assert trainer.data_ranks == 1 and part.n_latents == N_LAT // WORLD
        trainer.fit(TensorSource(data(), seed=1))
        whole = gather_coder(part, dist.group.WORLD)
        results["lp-topk"] = {"state": whole.state_dict(), "history": trainer.state.history}
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("two_ranks")
    run_workers(scenarios_worker, tmp, str(tmp / "results.pt"))
    return torch.load(tmp / "results.pt", weights_only=False)


def single_process(encoder: str, **kw) -> Trainer:
    trainer = Trainer(make_coder(encoder, **kw), config())
    assert trainer.data_ranks == 1
    trainer.fit(TensorSource(data(), seed=1))
    return trainer


def assert_same_weights(got: dict, trainer: Trainer, encoder: str) -> None:
    ref = trainer.coder.state_dict()
    start = make_coder(encoder).state_dict()["dictionary.W_dec"]
    assert (ref["dictionary.W_dec"] - start).abs().max() > 100 * ATOL  # training moved them
    for name, value in ref.items():
        torch.testing.assert_close(got[name], value, atol=ATOL, rtol=0, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["topk", "relu"])
def test_data_parallel_training_equals_one_process_with_the_global_batch(two_ranks, encoder):
    got = two_ranks[f"dp-{encoder}"]
    trainer = single_process(encoder)
    assert_same_weights(got["state"], trainer, encoder)
    assert got["tokens"] == trainer.state.tokens == 12 * 64  # the global batch's tokens
    assert torch.equal(got["fired"], trainer.tokens_since_fired)  # firing OR-reduced
    # the logged loss is the mean of the two half-batch losses = the global batch's loss
    for a, b in zip(got["history"], trainer.state.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


@pytest.mark.slow
def test_latent_parallel_topk_equals_one_process_holding_every_latent(two_ranks):
    got = two_ranks["lp-topk"]
    trainer = single_process("topk", aux=0.0)
    assert_same_weights(got["state"], trainer, "topk")
    for a, b in zip(got["history"], trainer.state.history, strict=True):
        assert a["l0"] == b["l0"] == 4.0  # k latents per row in total, summed over the slices
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
