"""The caching forward's CPU speed paths: a batch split over threads (``run(workers=n)``), runs
from several threads at once, and ``nn.Linear`` through ``kernels.gemm`` (``gemm_linears``)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sparsecodes.activations.cache import (
    cache_activations,
    caching_forward,
    resolve_forward_workers,
)
from sparsecodes.activations.store import read_manifest
from sparsecodes.kernels import gemm
from sparsecodes.models import ModelAdapter, load_model
from sparsecodes.models.linear import gemm_linears

HOOKS = ["blocks.0.resid_post", "blocks.1.attn.heads", "blocks.1.mlp_out"]


@pytest.fixture(scope="module")
def lm() -> ModelAdapter:
    return load_model("tiny-llama", device="cpu")


@pytest.fixture(scope="module")
def batch(lm):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, lm.vocab_size, (5, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0  # one right-padded row
    return ids, mask


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    # float32 activations two blocks deep: a different summation order (another BLAS kernel or
    # batch size) moves each value by a few float32 ulps of the largest terms it sums (2^-24
    # relative, times sqrt(width) growth through 2 blocks): 1e-5 of the largest magnitude bounds it
    scale = float(b.abs().max())
    torch.testing.assert_close(a, b, atol=1e-5 * scale, rtol=0)


def test_split_run_equals_one_pass_and_uses_one_thread_per_slice(lm, batch):
    ids, mask = batch
    seen: list[tuple[int, int, int]] = []  # (thread, rows, torch threads) per embedding call

    def record(_m, args):
        seen.append((threading.get_ident(), args[0].shape[0], torch.get_num_threads()))

    one = lm.run(ids, mask, HOOKS)
    h = lm.model.get_input_embeddings().register_forward_pre_hook(record)
    torch.set_num_threads(2)
    try:
        split = lm.run(ids, mask, HOOKS, workers=2)
    finally:
        h.remove()
    assert sorted(rows for _, rows, _ in seen) == [2, 3]  # 5 rows as slices of 3 and 2
    # two threads, the caller's and one of the process's sleeping workers (kernels.gemm)
    assert len({t for t, _, _ in seen}) == 2
    assert [n for *_, n in seen] == [1, 1]  # each slice ran with one torch thread
    assert torch.get_num_threads() == 2  # the caller's setting is back
    for name in HOOKS:
        assert split[name].shape == one[name].shape
        _close(split[name], one[name])


def test_more_workers_than_rows_runs_one_slice_per_row(lm, batch):
    ids, mask = batch
    one = lm.run(ids[:2], mask[:2], HOOKS)
    split = lm.run(ids[:2], mask[:2], HOOKS, workers=8)
    for name in HOOKS:
        _close(split[name], one[name])


def test_runs_from_two_threads_at_once_each_get_their_own_activations(lm, batch):
    ids, mask = batch
    parts = [(ids[:2], mask[:2]), (ids[2:4], mask[2:4])]
    alone = [lm.run(i, m, HOOKS) for i, m in parts]
    both_inside = threading.Barrier(2, timeout=30)

    def wait_for_the_other(_m, _args):  # both forwards (and both runs' hooks) are live here
        both_inside.wait()

    got: dict[int, dict[str, torch.Tensor]] = {}

    def run(k: int) -> None:
        with torch.inference_mode():
            got[k] = lm.run(*parts[k], HOOKS)

    h = lm.blocks[0].register_forward_pre_hook(wait_for_the_other)
    try:
        threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        h.remove()
    for k in range(2):
        for name in HOOKS:  # another thread's capture hook would have written its own rows
            torch.testing.assert_close(got[k][name], alone[k][name], atol=0, rtol=0)


def test_a_half_registered_hook_seen_by_another_threads_forward_is_ignored(lm, batch):
    """torch inserts a pre-hook before flagging it ``with_kwargs`` (and removes it in the same two
    steps), so a forward on another thread in between calls it as ``hook(module, args)``. That
    call must neither fail nor touch the other thread's activations."""
    ids, mask = batch
    heads = lm.arch.heads_module(lm.blocks[1])  # blocks.1.attn.heads is read by a pre-hook
    alone = lm.run(ids[2:4], mask[2:4], HOOKS)
    caller = threading.get_ident()
    got: dict[str, dict[str, torch.Tensor]] = {}
    failed: list[BaseException] = []

    def other() -> None:
        try:
            got["other"] = lm.run(ids[2:4], mask[2:4], HOOKS)
        except BaseException as e:  # reported by the assertion below
            failed.append(e)

    def between_torchs_two_steps(_m, _args):  # the caller's run: its hooks are registered
        if threading.get_ident() != caller:
            return
        flags = heads._forward_pre_hooks_with_kwargs
        saved = dict(flags)
        flags.clear()
        try:
            t = threading.Thread(target=other)
            t.start()
            t.join()
        finally:
            flags.update(saved)

    h = lm.blocks[0].register_forward_pre_hook(between_torchs_two_steps)
    try:
        mine = lm.run(ids[:2], mask[:2], HOOKS)
    finally:
        h.remove()
    assert failed == []
    for name in HOOKS:
        torch.testing.assert_close(got["other"][name], alone[name], atol=0, rtol=0)
    for name in HOOKS:  # the caller's own hooks still captured its rows
        torch.testing.assert_close(
            mine[name], lm.run(ids[:2], mask[:2], HOOKS)[name], atol=0, rtol=0
        )


def test_workers_with_edits_or_grad_or_zero_is_refused(lm, batch):
    ids, mask = batch
    with pytest.raises(ValueError, match="workers=1 with edits"):
        lm.run(ids, mask, HOOKS, edits={HOOKS[0]: lambda a: a}, workers=2)
    with pytest.raises(ValueError, match="workers=1 with edits or grad"):
        lm.run(ids, mask, HOOKS, grad=True, workers=2)
    with pytest.raises(ValueError, match="workers=0 must be >= 1"):
        lm.run(ids, mask, HOOKS, workers=0)


def test_split_run_reports_bad_ids_once_in_the_caller(lm):
    with pytest.raises(ValueError, match=r"outside 0\.\."):
        lm.run(torch.full((4, 6), lm.vocab_size), hooks=HOOKS, workers=2)


# ------------------------------------------------------------------ Linear through kernels.gemm


def test_gemm_linears_match_torch_and_go_through_gemm(lm, batch, openblas_small, monkeypatch):
    ids, mask = batch
    ref = lm.run(ids, mask, HOOKS)
    calls = []
    real = gemm.matmul
    monkeypatch.setattr(gemm, "matmul", lambda a, b, **kw: calls.append(a.shape) or real(a, b))
    linears = [m for m in lm.model.modules() if type(m) is nn.Linear]
    with torch.inference_mode(), gemm_linears(lm.model) as n:
        got = lm.run(ids, mask, HOOKS)
    assert n == len(linears)
    # blocks 0 and 1 run (7 Linear each: q, k, v, o, gate, up, down), the unembedding does not
    assert len(calls) == 14 and all(rows == 5 * 24 for rows, _ in calls)
    assert all("forward" not in vars(m) for m in linears)  # the model's own forward is back
    for name in HOOKS:
        _close(got[name], ref[name])


def test_gemm_linears_is_plain_linear_with_the_torch_backend(lm, batch, monkeypatch):
    ids, mask = batch
    before = gemm.gemm_backend()
    gemm.set_gemm_backend("torch")
    try:
        ref = lm.run(ids, mask, HOOKS)
        with gemm_linears(lm.model):
            got = lm.run(ids, mask, HOOKS)
    finally:
        gemm.set_gemm_backend(before)
    for name in HOOKS:
        torch.testing.assert_close(got[name], ref[name], atol=0, rtol=0)


def test_gemm_linears_restores_forward_after_an_exception(lm):
    with pytest.raises(RuntimeError, match="boom"), gemm_linears(lm.model):
        raise RuntimeError("boom")
    assert all("forward" not in vars(m) for m in lm.model.modules())


# ------------------------------------------------------------------ the cache path


def test_forward_workers_default_to_cpu_threads_for_a_model_adapter(lm):
    torch.set_num_threads(2)
    assert resolve_forward_workers(lm) == 2
    assert resolve_forward_workers(lm, 3) == 3
    assert resolve_forward_workers(object()) == 1  # any other adapter: run() as before
    with pytest.raises(ValueError, match="forward_workers=0"):
        resolve_forward_workers(lm, 0)


def _store(root: Path, hook: str) -> np.ndarray:
    path = root / "tiny-llama" / hook
    assert read_manifest(path).complete
    return np.concatenate([np.load(f) for f in sorted(path.glob("shard-*.npy"))])


def test_cache_with_split_forward_writes_the_rows_of_one_pass(lm, tmp_path):
    texts = [f"text {i}: " + "the quick brown fox " * (1 + i % 5) for i in range(30)]
    workers: list[int] = []
    real = lm.run

    def run(*a, **kw):
        workers.append(kw.get("workers", 1))
        return real(*a, **kw)

    kw = dict(context_size=16, batch_size=4, max_tokens=300, dtype="float32", progress=False)
    lm.run = run  # instance attribute: records what cache_activations asks for
    try:
        cache_activations(lm, texts, HOOKS[:1], tmp_path / "one", forward_workers=1, **kw)
        assert set(workers) == {1}
        workers.clear()
        cache_activations(lm, texts, HOOKS[:1], tmp_path / "two", forward_workers=2, **kw)
        assert set(workers) == {2}
    finally:
        del lm.run
    one, two = _store(tmp_path / "one", HOOKS[0]), _store(tmp_path / "two", HOOKS[0])
    assert one.shape == two.shape == (300, lm.d_model)
    _close(torch.from_numpy(two), torch.from_numpy(one))


@pytest.mark.embedded
@pytest.mark.slow
@pytest.mark.requires_model("smollm2-135m")
def test_smollm2_layer12_split_and_gemm_forward_match_the_plain_forward():
    sm = load_model("smollm2-135m", device="cpu")
    ids, _ = sm.encode(["When Mary and John went to the store, John gave a drink to"] * 4)
    hook = "blocks.12.resid_post"
    with torch.inference_mode():
        ref = sm.run(ids, hooks=[hook])[hook]
        split = sm.run(ids, hooks=[hook], workers=2)[hook]
        with gemm_linears(sm.model):
            both = sm.run(ids, hooks=[hook], workers=2)[hook]
    # 13 blocks of width 576-1536 in float32: summation-order differences stay below 1e-5 of the
    # largest activation (measured: 0 for the split with MKL, 5e-7 through OpenBLAS)
    scale = float(ref.abs().max())
    torch.testing.assert_close(split, ref, atol=1e-5 * scale, rtol=0)
    torch.testing.assert_close(both, ref, atol=1e-5 * scale, rtol=0)


def test_live_source_splits_its_forward_and_gives_the_rows_of_one_pass(lm):
    from sparsecodes.activations.live import LiveModelSource

    texts = [f"text {i}: " + "the quick brown fox " * (1 + i % 5) for i in range(30)]
    kw = dict(context_size=16, windows_per_pass=4, seed=3)
    one = LiveModelSource(lm, texts, HOOKS[:1], forward_workers=1, **kw)
    two = LiveModelSource(lm, texts, HOOKS[:1], forward_workers=2, **kw)
    workers: list[int] = []
    real = lm.run
    lm.run = lambda *a, **k: workers.append(k.get("workers", 1)) or real(*a, **k)
    try:
        rows_one = [one.pass_rows(i)[HOOKS[0]] for i in range(3)]
        rows_two = [two.pass_rows(i)[HOOKS[0]] for i in range(3)]
    finally:
        del lm.run
    assert workers == [1, 1, 1, 2, 2, 2]
    for a, b in zip(rows_two, rows_one, strict=True):
        assert a.shape == b.shape and a.shape[0] > 0
        _close(a, b)


def test_caching_forward_uses_openblas_only_with_one_torch_thread_per_worker(
    lm, batch, openblas_small, monkeypatch
):
    ids, mask = batch
    calls = []
    real = gemm.matmul
    monkeypatch.setattr(gemm, "matmul", lambda a, b, **kw: calls.append(1) or real(a, b))
    torch.set_num_threads(2)
    ref = lm.run(ids, mask, HOOKS)
    with torch.inference_mode():
        # the model's own layers (the fused ones: tests/test_fused_forward.py)
        split = caching_forward(lm, 2, fused=False)(ids, mask, HOOKS)
        assert len(calls) == 2 * 14  # each slice: 2 blocks x 7 Linear (q k v o gate up down)
        calls.clear()
        caching_forward(lm, 1)(ids, mask, HOOKS)  # 2 torch threads in one pass: torch's
        assert calls == []
        gemm.set_gemm_backend("torch")
        caching_forward(lm, 2)(ids, mask, HOOKS)  # SPARSECODES_GEMM=torch: torch's
        assert calls == []
    for name in HOOKS:
        _close(split[name], ref[name])
