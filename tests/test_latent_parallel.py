"""Latent parallelism and coders spread over ranks, on two processes (all slow: each test starts
its own processes; the fast latent-parallel equality tests share tests/test_distributed.py's
pair): kill-and-resume from full-coder checkpoints, ``train --parallel latent|modules`` under
torchrun.

The claims are that the result equals one process holding every latent (or every coder). Tolerance: the two processes compute the same float32 numbers
except the reconstruction, a sum of two partial decodes instead of one sum over the k latents
(another order of float32 additions, relative error ~1e-7 per step), and the gradient of the
shared input, likewise a sum of two partial sums; Adam's normalised updates keep the weights
within ``lr * steps`` times that error, far below ``ATOL`` (as in tests/test_distributed.py).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sparsecodes.activations.source import TensorSource
from sparsecodes.sparse_coder import SparseCoder
from sparsecodes.training.trainer import TrainConfig

WORLD = 2
ATOL = 1e-5
D, N_LAT = 16, 64


def data(rows: int = 1024) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randn(rows, D, generator=g) @ torch.randn(D, D, generator=g) + 0.5


def make_coder(encoder: str) -> SparseCoder:
    return SparseCoder(D, N_LAT, encoder, seed=3, k=4, aux_k=8)


def config(steps: int = 12) -> TrainConfig:
    # latents silent for two steps count as dead, so AuxK runs from the third step on
    return TrainConfig(steps=steps, lr=3e-3, batch_size=64, log_every=4, dead_after_tokens=128)


def run_workers(fn, tmp_path: Path, *args) -> None:
    """Run ``fn(rank, init_file, *args)`` in two processes; raises if any fails."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    mp.spawn(fn, args=(str(tmp_path / "rendezvous"), *args), nprocs=WORLD, join=True)


def init(rank: int, init_file: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)


def assert_same_state(got: dict, want: dict, encoder: str | None) -> None:
    if encoder is not None:
        start = make_coder(encoder).state_dict()["dictionary.W_dec"]
        assert (want["dictionary.W_dec"] - start).abs().max() > 100 * ATOL  # training moved them
    assert got.keys() == want.keys()
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, atol=ATOL, rtol=0, msg=name)


class DyingSource(TensorSource):
    """Rank 1 dies (``os._exit``, as a kill would) when asked for batch ``die_at``."""

    def __init__(self, x, rank: int, die_at: int | None) -> None:
        super().__init__(x, seed=1)
        self.rank, self.die_at = rank, die_at

    def batches(self, batch_size: int):
        for i, item in enumerate(super().batches(batch_size)):
            if self.rank == 1 and i == self.die_at:
                os._exit(1)
            yield item


def train_worker(rank: int, init_file: str, run_dir: str, die_at: int | None) -> None:
    from sparsecodes.training.run import train_run

    init(rank, init_file)
    try:
        source = DyingSource(data(), rank, die_at)
        train_run(
            make_coder("batchtopk"),
            source,
            config(),
            run_dir,
            checkpoint_every=4,
            latent_group=dist.group.WORLD,
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_killed_latent_rank_then_resume_ends_with_the_uninterrupted_weights(tmp_path):
    from sparsecodes.training.run import train_run

    run = tmp_path / "run"
    with pytest.raises(mp.ProcessExitedException):
        run_workers(train_worker, tmp_path / "a", str(run), 7)  # dies in step 8; checkpoint: 4
    blob = torch.load(run / "checkpoint" / "trainer.pt", weights_only=False)
    assert blob["state"]["step"] == 4 and not (run / "final").exists()
    # the checkpoint holds the full coder: every latent's weights and Adam moments
    ckpt = SparseCoder.load(run / "checkpoint" / "model")
    assert ckpt.n_latents == N_LAT and blob["tokens_since_fired"].shape == (N_LAT,)
    assert blob["optimizer"]["state"][0]["exp_avg"].shape[0] == N_LAT  # W_dec's moments
    shutil.copytree(run, tmp_path / "run-one")
    run_workers(train_worker, tmp_path / "b", str(run), None)  # the same two ranks resume

    cfg = config()
    ref = train_run(make_coder("batchtopk"), TensorSource(data(), seed=1), cfg, tmp_path / "ref")
    # another latent world size: one process resumes the two-rank checkpoint
    one = train_run(
        make_coder("batchtopk"), TensorSource(data(), seed=1), cfg, tmp_path / "run-one"
    )
    want = ref.state_dict()
    for got in (SparseCoder.load(run / "final"), one):
        assert got.n_latents == N_LAT
        assert_same_state(got.state_dict(), want, "batchtopk")
    with open(run / "metrics.csv") as f:  # rank 0's log: steps 4 (first run), 8, 12 (resumed)
        assert [float(r["step"]) for r in csv.DictReader(f)] == [4.0, 8.0, 12.0]


def train_args(store: Path, out: Path) -> list[str]:
    return [
        "train",
        "--store",
        str(store),
        "--encoder",
        "batchtopk",
        "--param",
        "k=4",
        "--n-latents",
        "32",
        "--steps",
        "6",
        "--batch-size",
        "64",
        "--checkpoint-every",
        "3",
        "--device",
        "cpu",
        "--no-saelens",
        "--seed",
        "5",
        "--out",
        str(out),
    ]


@pytest.mark.slow
def test_torchrun_train_parallel_latent_writes_the_one_process_coder(tmp_path):
    import subprocess
    import sys

    from click.testing import CliRunner

    import sparsecodes
    from conftest import fake_store
    from sparsecodes.cli import main

    store = fake_store(tmp_path / "store", rows=2048, d=8)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    cmd += [str(WORLD), "-m", "sparsecodes", *train_args(store, tmp_path / "two")]
    r = subprocess.run([*cmd, "--parallel", "latent"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    one = CliRunner().invoke(main, train_args(store, tmp_path / "one"), catch_exceptions=False)
    assert one.exit_code == 0, one.output
    got, want = (
        sparsecodes.load(tmp_path / "two" / "final"),
        sparsecodes.load(tmp_path / "one" / "final"),
    )
    assert got.n_latents == 32 and got.encoder.name == "batchtopk"  # the full coder
    start = SparseCoder(8, 32, "batchtopk", seed=5, k=4).state_dict()["dictionary.W_dec"]
    assert (want.state_dict()["dictionary.W_dec"] - start).abs().max() > 100 * ATOL
    assert_same_state(got.state_dict(), want.state_dict(), None)


@pytest.mark.slow
def test_torchrun_train_parallel_modules_equals_one_process_training_every_coder(tmp_path):
    """Two hooks dealt to two ranks (each runs every forward pass, keeps its hook): each rank's
    coder equals the one-process coder of that hook."""
    import subprocess
    import sys

    from click.testing import CliRunner

    import sparsecodes
    from sparsecodes.cli import main

    hooks = ("blocks.0.resid_post", "blocks.1.mlp_out")
    args = ["train", "--model", "tiny-llama", "--hook", hooks[0], "--hook", hooks[1]]
    args += ["--encoder", "topk", "--param", "k=4", "--n-latents", "64", "--steps", "4"]
    args += ["--batch-size", "64", "--context-size", "16", "--device", "cpu", "--no-saelens"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    cmd += [str(WORLD), "-m", "sparsecodes", *args, "--parallel", "modules"]
    r = subprocess.run(
        [*cmd, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-3000:]
    one = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "one")], catch_exceptions=False)
    assert one.exit_code == 0, one.output
    for rank, hook in enumerate(hooks):
        info = json.loads((tmp_path / "two" / hook / "topk" / "run.json").read_text())
        assert info["parallel"] == {"mode": "modules", "world_size": WORLD, "rank": rank}
        got = sparsecodes.load(tmp_path / "two" / hook / "topk" / "final")
        want = sparsecodes.load(tmp_path / "one" / hook / "topk" / "final")
        start = SparseCoder(got.d_in, 64, "topk", seed=0, k=4).state_dict()["dictionary.W_dec"]
        assert (want.state_dict()["dictionary.W_dec"] - start).abs().max() > 100 * ATOL
        assert_same_state(got.state_dict(), want.state_dict(), None)
