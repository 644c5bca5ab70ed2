"""GPU paths checked on CPU: sync-free training steps, bf16 autocast with fp32 master weights,
the Triton sparse decoder (through Triton's CPU interpreter)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sparsecodes import SparseCoder
from sparsecodes.activations import TensorSource
from sparsecodes.kernels import resolve_matmul_dtype
from sparsecodes.training import TrainConfig, Trainer

SYNCS = ("item", "tolist", "nonzero", "__float__", "__int__", "__bool__", "__index__")


@pytest.fixture
def count_syncs(monkeypatch):
    """Counts the tensor -> host conversions (each one a device sync on CUDA)."""
    calls: list[str] = []
    for name in SYNCS:
        orig = getattr(torch.Tensor, name)

        def wrapped(self, *a, _orig=orig, _name=name, **kw):
            calls.append(_name)
            return _orig(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return calls


@pytest.mark.parametrize("encoder,kw", [("topk", {"k": 4}), ("relu", {"l1": 1e-3})])
def test_steps_without_host_scalars_make_no_host_conversions(count_syncs, encoder, kw):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g)
    coder = SparseCoder(16, 64, encoder, seed=0, **kw)
    t = Trainer(coder, TrainConfig(steps=10, batch_size=16, dead_after_tokens=10**6))
    t.step(x[:16])  # first step: fits the normaliser, sets b_dec, bounds the dead check
    count_syncs.clear()
    for i in range(1, 4):
        row = t.step(x[16 * i : 16 * (i + 1)], host_scalars=False)
    assert count_syncs == []
    assert row == {"step": 4.0, "tokens": 64.0}
    full = t.step(x[:16])  # a logged step does convert (so the counter does see conversions)
    assert count_syncs and full["step"] == 5.0 and "loss" in full


def test_train_loop_converts_scalars_only_on_log_steps(count_syncs):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=g)
    coder = SparseCoder(16, 64, "topk", k=4, seed=0)
    t = Trainer(coder, TrainConfig(steps=20, batch_size=16, log_every=10, dead_after_tokens=10**6))
    seen = []
    orig = Trainer.step

    def spy(self, *a, **kw):
        before = len(count_syncs)
        out = orig(self, *a, **kw)
        seen.append((kw["host_scalars"], len(count_syncs) - before))
        return out

    Trainer.step = spy  # type: ignore[method-assign]
    try:
        t.fit(TensorSource(x, seed=0))
    finally:
        Trainer.step = orig  # type: ignore[method-assign]
    assert [h for h, _ in seen] == [n % 10 == 0 for n in range(1, 21)]
    # step 1 bounds the dead check once; every other unlogged step converts nothing
    assert [c for h, c in seen[1:] if not h] == [0] * 17
    assert [r["step"] for r in t.state.history] == [10.0, 20.0]


def test_dead_latents_reach_auxk_on_the_step_they_die():
    # latents 40.. can never fire (huge negative bias); with dead_after_tokens = 3 batches they
    # are dead from the 4th step on, and AuxK (the only loss part that sees them) starts there
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 16, generator=g)
    coder = SparseCoder(16, 64, "topk", k=4, seed=0)
    with torch.no_grad():
        coder.encoder.b_enc[40:] = -1e4
    t = Trainer(coder, TrainConfig(steps=8, batch_size=32, dead_after_tokens=96, lr=1e-4))
    dead_before, auxk = [], []
    for i in range(8):
        dead_before.append(bool(t.dead_mask().any()))
        row = t.step(x[32 * i : 32 * (i + 1)], host_scalars=(i % 3 == 2))
        if i % 3 == 2:
            auxk.append((i, row["auxk"]))
    assert dead_before == [False, False, False, True, True, True, True, True]
    assert [(i, a > 0) for i, a in auxk] == [(2, False), (5, True)]
    assert int(t.dead_mask().sum()) == 24


def test_non_finite_loss_on_an_unlogged_step_is_raised_at_the_next_log_step():
    x = torch.randn(160, 8, generator=torch.Generator().manual_seed(0))
    x[40:48] = float("nan")  # the 3rd batch of 16 (step index 2, unlogged)
    coder = SparseCoder(8, 16, "topk", k=2, seed=0, normalize="none")
    t = Trainer(coder, TrainConfig(steps=10, batch_size=16, log_every=5))
    src = TensorSource(x, seed=0)
    src.batches = lambda b: iter([(x[i : i + b], None) for i in range(0, 160, b)])  # in order
    with pytest.raises(FloatingPointError, match="non-finite at step 2"):
        t.fit(src)
    assert t.state.step == 4  # raised inside the 5th step (logged), before it counted


def test_bf16_autocast_keeps_fp32_master_weights_and_changes_only_rounding():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 32, generator=g)

    def run(mode):
        coder = SparseCoder(32, 128, "topk", k=8, seed=0)
        t = Trainer(coder, TrainConfig(steps=4, batch_size=64, autocast=mode, lr=1e-3))
        rows = [t.step(x[64 * i : 64 * (i + 1)]) for i in range(4)]
        return coder, t, rows

    _, t_off, rows_off = run("off")
    _, _, rows_auto = run("auto")  # on CPU, "auto" is off
    bf, t_bf, rows_bf = run("bf16")
    assert t_bf.autocast_dtype == torch.bfloat16 and t_off.autocast_dtype is None
    assert [r["loss"] for r in rows_auto] == [r["loss"] for r in rows_off]
    for p in list(bf.parameters()) + [
        s for st in t_bf.optimizer.state.values() for s in st.values() if s.dim()
    ]:
        assert p.dtype == torch.float32
    # the encoder matmul ran in bf16 (8 mantissa bits): losses differ from fp32, by ~2^-8 relative
    diffs = [abs(a["loss"] - b["loss"]) / b["loss"] for a, b in zip(rows_bf, rows_off, strict=True)]
    assert max(diffs) > 0 and max(diffs) < 0.05
    with pytest.raises(ValueError, match="autocast must be one of"):
        TrainConfig(autocast="fp16").validate()


def test_auto_matmul_dtype_follows_autocast_but_explicit_float32_does_not():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert resolve_matmul_dtype("auto", "cpu", work=1) == torch.bfloat16
        assert resolve_matmul_dtype("float32", "cpu") == torch.float32
    assert resolve_matmul_dtype("auto", "cpu", work=1) == torch.float32


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("triton") is None,
    reason="triton is deliberately not in the test install (on a CPU-only machine it breaks "
    "`import sparsify`, a peer the tests compare with); run with pip install 'sparsecodes[gpu]' "
    "in a separate environment or on a GPU machine",
)
def test_triton_sparse_decode_matches_the_cpu_kernel_in_triton_interpreter():
    script = textwrap.dedent(
        """
        import torch
        from sparsecodes.kernels.sparse_decode import SparseDecode, decode_backend
        from sparsecodes.kernels.triton_decode import TritonSparseDecode
        g = torch.Generator().manual_seed(0)
        B, k, N, d = 5, 3, 20, 150  # d > BLOCK_D: two column blocks, the second masked
        idx = torch.randint(0, N, (B, k), generator=g)
        idx[0, 1] = idx[0, 0]  # one latent twice in a row: the atomic adds must both land
        v = torch.randn(B, k, generator=g).requires_grad_()
        W = torch.randn(N, d, generator=g).requires_grad_()
        b = torch.randn(d, generator=g).requires_grad_()
        gy = torch.randn(B, d, generator=g)
        out = TritonSparseDecode.apply(idx, v, W, b)
        ref = SparseDecode.apply(idx, v, W, b)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        for a, r in zip(torch.autograd.grad(out, (v, W, b), gy),
                        torch.autograd.grad(ref, (v, W, b), gy)):
            torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)
        assert decode_backend("cpu") == "cpu_sparse"
        print("OK")
        """
    )
    src = Path(__file__).resolve().parents[1] / "src"
    path = os.pathsep.join([str(src), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    res = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0 and res.stdout.strip().endswith("OK"), res.stderr[-2000:]


def test_triton_module_imports_without_triton_and_its_use_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # as on a CPU install without the extra
    monkeypatch.setitem(sys.modules, "triton.language", None)
    monkeypatch.delitem(sys.modules, "sparsecodes.kernels.triton_decode", raising=False)
    td = importlib.import_module("sparsecodes.kernels.triton_decode")  # no ImportError
    assert td.triton is None and td.tl is None  # nothing imported or built at import
    idx = torch.zeros(2, 1, dtype=torch.long)
    v, W, b = torch.ones(2, 1), torch.ones(3, 4), torch.zeros(4)
    with pytest.raises(ImportError, match=re.escape("pip install 'sparsecodes[gpu]'")):
        td.TritonSparseDecode.apply(idx, v, W, b)
