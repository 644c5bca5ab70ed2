"""Training and caching over two CPU processes (gloo), against one process doing the same work.

The two-rank scenarios run in one pair of processes spawned with ``torch.multiprocessing`` and a
file rendezvous (the ``two_ranks`` fixture: process start-up dominates the cost), so they run in
CI without ``torchrun``; the kill-and-resume test needs two more pairs and is marked slow
(latent-parallel resume and the torchrun commands: tests/test_latent_parallel.py, slow).
Tolerances: the data-parallel gradient is the mean of two half-batch means instead of one
full-batch mean, and the latent-parallel reconstruction a sum of two partial decodes, so the
float32 sums are taken in another order (relative error ~ 1e-7 per step); Adam divides each
update by the gradient's running RMS, so a weight can differ by at most ``lr * steps`` times
that error, far below ``ATOL``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sparsecodes.activations.cache import cache_activations
from sparsecodes.activations.source import TensorSource
from sparsecodes.distributed import RankSlice
from sparsecodes.sparse_coder import SparseCoder
from sparsecodes.training.trainer import TrainConfig, Trainer

WORLD = 2
HOOKS = ["blocks.0.resid_post", "blocks.1.mlp_out"]
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


def make_aux_coder(encoder: str) -> SparseCoder:
    return SparseCoder(D, N_LAT, encoder, seed=3, k=4, aux_k=8)


def aux_config() -> TrainConfig:
    # latents silent for two steps count as dead, so AuxK runs from the third step on
    return TrainConfig(steps=12, lr=3e-3, batch_size=64, log_every=4, dead_after_tokens=128)


def run_workers(fn, tmp_path: Path, *args) -> None:
    tmp_path.mkdir(parents=True, exist_ok=True)
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
        # latent parallel with AuxK (latents die after two steps), TopK and BatchTopK
        for encoder in ("topk", "batchtopk"):
            part = shard_coder(make_aux_coder(encoder), dist.group.WORLD)
            trainer = Trainer(part, aux_config(), latent_group=dist.group.WORLD)
            trainer.fit(TensorSource(data(), seed=1))
            whole = gather_coder(part, dist.group.WORLD)
            results[f"lp-aux-{encoder}"] = {
                "state": whole.state_dict(),
                "history": trainer.state.history,
            }
        # distributed caching: shards split between the ranks, one manifest at the end
        res = cache(Path(out).parent / "cache-two")
        results["cache"] = {"rows": res.rows, "new_rows": res.new_rows}
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def corpus() -> list[str]:
    from conftest import WORDS

    return [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(12 + i % 9)) for i in range(40)]


def cache(out: Path, **kw):
    """The same cache job everywhere: tiny llama, two hooks, 100-row shards, float32."""
    from sparsecodes.models import load_model

    torch.set_num_threads(1)  # the same float arithmetic in every process
    return cache_activations(
        load_model("tiny-llama"),
        corpus(),
        HOOKS,
        out,
        context_size=16,
        batch_size=4,
        dtype="float32",
        shard_rows=100,
        corpus_fingerprint="fp",
        progress=False,
        **kw,
    )


def store_files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (manifests without their ``created`` stamp) by relative path."""
    import json

    out = {}
    for f in sorted(root.rglob("*")):
        if f.is_file():
            data = f.read_bytes()
            if f.name == "manifest.json":
                m = json.loads(data)
                m.pop("created")
                data = json.dumps(m).encode()
            out[str(f.relative_to(root))] = data
    return out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("two_ranks")
    run_workers(scenarios_worker, tmp, str(tmp / "results.pt"))
    results = torch.load(tmp / "results.pt", weights_only=False)
    results["dir"] = tmp
    return results


def tmp_path_of(results: dict) -> Path:
    return results["dir"]


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


def test_latent_parallel_topk_equals_one_process_holding_every_latent(two_ranks):
    got = two_ranks["lp-topk"]
    trainer = single_process("topk", aux=0.0)
    assert_same_weights(got["state"], trainer, "topk")
    for a, b in zip(got["history"], trainer.state.history, strict=True):
        assert a["l0"] == b["l0"] == 4.0  # k latents per row in total, summed over the slices
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


@pytest.mark.parametrize("encoder", ["topk", "batchtopk"])
def test_latent_parallel_with_auxk_equals_one_process_holding_every_latent(two_ranks, encoder):
    """Global TopK / BatchTopK selection and AuxK over both ranks' dead latents."""
    got = two_ranks[f"lp-aux-{encoder}"]
    trainer = Trainer(make_aux_coder(encoder), aux_config())
    trainer.fit(TensorSource(data(), seed=1))
    want = trainer.coder.state_dict()
    start = make_aux_coder(encoder).state_dict()["dictionary.W_dec"]
    assert (want["dictionary.W_dec"] - start).abs().max() > 100 * ATOL  # training moved them
    assert got["state"].keys() == want.keys()
    for name, value in want.items():  # BatchTopK: its threshold buffers too
        torch.testing.assert_close(got["state"][name], value, atol=ATOL, rtol=0, msg=name)
    assert any(r["auxk"] > 0 for r in trainer.state.history)  # AuxK did run (latents died)
    for a, b in zip(got["history"], trainer.state.history, strict=True):
        for key in ("loss", "mse", "auxk", "l0", "dead_frac"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-7), key
    if encoder == "batchtopk":  # one threshold update per step, from the global batch
        assert int(got["state"]["encoder.threshold_updates"]) == 12


def test_distributed_cache_writes_the_store_one_process_writes(two_ranks, tmp_path):
    single = cache(tmp_path / "one", rank=0, world_size=1)
    two = tmp_path_of(two_ranks) / "cache-two"
    got, want = store_files(two), store_files(tmp_path / "one")
    shards = [k for k in want if k.endswith(".npy")]
    assert len(shards) >= 2 * 4  # several shards per hook, so both ranks wrote some
    assert got == want  # byte-identical shards, same manifest (but its creation stamp)
    assert two_ranks["cache"]["rows"] == single.rows
    # each rank computed about its half of the rows (plus the batches straddling shard edges)
    assert two_ranks["cache"]["new_rows"] < 0.75 * single.rows


def test_a_killed_cache_rank_resumes_its_own_shards_only(tmp_path, monkeypatch):
    """Ranks run one after the other in this process (no group: barriers are no-ops)."""
    import sparsecodes.activations.store as store_mod
    from sparsecodes.activations.store import read_manifest

    monkeypatch.setattr(store_mod, "DURABLE", False)
    whole = cache(tmp_path / "one", rank=0, world_size=1)
    out = tmp_path / "two"

    written = []
    real = store_mod.write_shard

    def dying(store, index, rows):
        if len(written) == 2 * len(HOOKS) + 1:  # killed between the hooks of its third shard
            raise KeyboardInterrupt
        written.append(index)
        return real(store, index, rows)

    import sparsecodes.activations.cache as cache_mod

    monkeypatch.setattr(cache_mod, "write_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        cache(out, rank=1, world_size=2)
    monkeypatch.setattr(cache_mod, "write_shard", real)
    assert written == [1, 1, 3, 3, 5]  # shard 5 of the first hook only
    assert not (out / "tiny-llama" / HOOKS[0] / "manifest.json").exists()
    again = cache(out, rank=1, world_size=2)  # the restarted rank 1
    n_shards = -(-whole.rows // 100)
    odd = [j for j in range(n_shards) if j % 2 == 1]
    assert again.new_rows == sum(min(100, whole.rows - 100 * j) for j in odd[2:])
    first = cache(out, rank=0, world_size=2)  # rank 0 last: it writes the manifests
    assert first.rows == whole.rows
    assert store_files(out) == store_files(tmp_path / "one")
    assert read_manifest(out / "tiny-llama" / HOOKS[0]).complete


class DyingSlice(RankSlice):
    """Rank 1 dies (``os._exit``, as a kill would) when asked for batch ``die_at``."""

    def __init__(self, source, rank: int, world_size: int, die_at: int | None) -> None:
        super().__init__(source, rank, world_size)
        self.die_at = die_at

    def batches(self, batch_size: int):
        for i, item in enumerate(super().batches(batch_size)):
            if self.rank == 1 and i == self.die_at:
                os._exit(1)
            yield item


def train_worker(rank: int, init_file: str, run_dir: str, die_at: int | None) -> None:
    from sparsecodes.training.run import train_run

    init(rank, init_file)
    try:
        source = DyingSlice(TensorSource(data(), seed=1), rank, WORLD, die_at)
        train_run(make_coder("topk"), source, config(), run_dir, checkpoint_every=4)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_killed_rank_then_resume_ends_with_the_uninterrupted_weights(tmp_path):
    import shutil

    from sparsecodes.sparse_coder import SparseCoder
    from sparsecodes.training.run import train_run

    run = tmp_path / "run"
    with pytest.raises(mp.ProcessExitedException):
        run_workers(train_worker, tmp_path / "a", str(run), 7)  # dies in step 8; checkpoint: 4
    blob = torch.load(run / "checkpoint" / "trainer.pt", weights_only=False)
    assert blob["state"]["step"] == 4 and not (run / "final").exists()
    shutil.copytree(run, tmp_path / "run-one")
    run_workers(train_worker, tmp_path / "b", str(run), None)  # the same two ranks resume

    ref = train_run(make_coder("topk"), TensorSource(data(), seed=1), config(), tmp_path / "ref")
    # the other world size: one process resumes the two-rank checkpoint
    one = train_run(
        make_coder("topk"), TensorSource(data(), seed=1), config(), tmp_path / "run-one"
    )
    want = ref.state_dict()
    for got in (SparseCoder.load(run / "final").state_dict(), one.state_dict()):
        for name, value in want.items():
            torch.testing.assert_close(got[name], value, atol=ATOL, rtol=0, msg=name)
    import csv

    with open(run / "metrics.csv") as f:  # rank 0's log: steps 4 (first run), 8, 12 (resumed)
        assert [float(r["step"]) for r in csv.DictReader(f)] == [4.0, 8.0, 12.0]


def test_store_ranks_read_disjoint_shards_that_cover_the_epoch(tmp_path):
    import numpy as np

    from conftest import fake_store
    from sparsecodes.activations.reader import StoreSource

    store = fake_store(tmp_path / "s", rows=5 * 1024, d=4)  # 5 shards of 1024 rows
    rows = {}
    for rank in range(WORLD):
        src = StoreSource(store, seed=3, shuffle_buffer_shards=1, rank=rank, world_size=WORLD)
        it, got = src.batches(256), []
        while src.state_dict()["epoch"] == 0:  # this rank's epoch
            got.append(next(it)[0].numpy())
        rows[rank] = np.concatenate(got)
    a, b = ({tuple(r) for r in rows[k]} for k in range(WORLD))
    assert len(a) + len(b) == 5 * 1024 and not a & b  # disjoint, every row once in the epoch
    assert {len(rows[0]), len(rows[1])} == {2 * 1024, 3 * 1024}  # whole shards per rank


def test_live_ranks_run_the_model_on_alternate_forward_passes():
    from sparsecodes.activations.live import LiveModelSource
    from sparsecodes.models import load_model

    lm = load_model("tiny-llama")
    kw = {"context_size": 16, "windows_per_pass": 2, "seed": 5}
    one = LiveModelSource(lm, corpus(), HOOKS[:1], **kw)
    ranks = [
        LiveModelSource(lm, corpus(), HOOKS[:1], rank=r, world_size=WORLD, **kw) for r in (0, 1)
    ]
    for i in range(2):  # pass i of rank r is pass 2 i + r of the one-process stream
        for r in (0, 1):
            torch.testing.assert_close(
                ranks[r].pass_rows(i)[HOOKS[0]],
                one.pass_rows(WORLD * i + r)[HOOKS[0]],
                rtol=0,
                atol=0,
            )
    assert not torch.equal(ranks[0].pass_rows(0)[HOOKS[0]][:4], ranks[1].pass_rows(0)[HOOKS[0]][:4])


def test_store_position_resumes_per_rank_and_restarts_the_epoch_for_another_world(tmp_path):
    from conftest import fake_store
    from sparsecodes.activations.reader import StoreSource

    store = fake_store(tmp_path / "s", rows=5 * 1024, d=4)
    srcs = [StoreSource(store, seed=3, rank=r, world_size=WORLD) for r in range(WORLD)]
    its = [s.batches(300) for s in srcs]
    for it in its:  # rank r moves to some position of epoch 0
        next(it)
    positions = [{k: s.state_dict()[k] for k in ("epoch", "group", "pos")} for s in srcs]
    saved = {**srcs[0].state_dict(), "ranks": positions}  # what the gathered checkpoint holds
    ahead = [next(it)[0] for it in its]
    for r in range(WORLD):  # same world: each rank continues exactly
        again = StoreSource(store, seed=3, rank=r, world_size=WORLD)
        again.load_state_dict(saved)
        assert torch.equal(next(again.batches(300))[0], ahead[r])
    # one process: the earliest saved epoch, from its start
    later = [{"epoch": 2, "group": 0, "pos": 5}, {"epoch": 1, "group": 1, "pos": 7}]
    one = StoreSource(store, seed=3)
    one.load_state_dict({**saved, "ranks": later})
    want = StoreSource(store, seed=3)
    want.load_state_dict({**want.state_dict(), "epoch": 1})
    epoch0 = next(StoreSource(store, seed=3).batches(300))[0]
    got = next(one.batches(300))[0]
    assert torch.equal(got, next(want.batches(300))[0]) and not torch.equal(got, epoch0)
