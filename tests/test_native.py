"""The compiled CPU kernels (sparsecodes.kernels.native) against torch, and how they are built."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import torch

from sparsecodes.kernels import native
from sparsecodes.kernels.sparse_affine import group_by_col

pytestmark = pytest.mark.skipif(native.library() is None, reason="no C compiler here")


@pytest.fixture
def fresh_library(monkeypatch, tmp_path):
    """``native.library`` rebuilt from scratch under ``tmp_path`` (restored afterwards)."""
    monkeypatch.setenv("SPARSECODES_CACHE", str(tmp_path))
    native.library.cache_clear()
    yield tmp_path
    monkeypatch.undo()
    native.library.cache_clear()


def _earliest_topk(x: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the columns of the k largest values, the earlier column first among ties."""
    return x.sort(dim=1, descending=True, stable=True).indices[:, :k].sort(dim=1).values


# ------------------------------------------------------------------ top-k per row
@pytest.mark.parametrize("n", [1152, 100, 33])
@pytest.mark.parametrize("with_bias", [False, True])
def test_row_topk_gives_torch_topk_values_and_the_earliest_columns_among_ties(n, with_bias):
    g = torch.Generator().manual_seed(n)
    pre = torch.randn(240, n, generator=g)
    pre[:80] = (pre[:80] * 2).round()  # many ties at the k-th value
    pre[80:120, :12] += 10  # the top values crowded together
    pre[120:160] = 0.0  # every entry tied
    pre[160:170, 5] = float("inf")
    pre[170:180] = float("-inf")
    bias = torch.randn(n, generator=g).round() if with_bias else None
    full = pre + bias if with_bias else pre
    for k in sorted({1, 8, 32, n}):
        vals, cols = native.row_topk(pre, k, bias)
        ref = full.topk(k, dim=1).values
        assert torch.equal(vals.sort(dim=1, descending=True).values, ref)
        assert torch.equal(full.gather(1, cols), vals)  # each value sits at its column
        assert torch.equal(cols.sort(dim=1).values, _earliest_topk(full, k))


def test_row_topk_on_a_row_with_nan_still_gives_k_distinct_valid_columns():
    pre = torch.randn(4, 600)
    pre[0, 7] = float("nan")
    pre[1] = float("nan")
    vals, cols = native.row_topk(pre, 16)
    assert cols.min() >= 0 and cols.max() < 600
    assert all(len(set(row.tolist())) == 16 for row in cols)
    # a row with one NaN: NaN is never selected, the others are the top 16 of the rest
    assert not torch.isnan(vals[0]).any()
    assert torch.equal(
        vals[0].sort().values, pre[0].nan_to_num(-1e30).topk(16).values.sort().values
    )
    # rows without NaN are untouched by their neighbours
    assert torch.equal(
        vals[2:].sort(dim=1).values, pre[2:].topk(16, dim=1).values.sort(dim=1).values
    )


def test_row_topk_rejects_k_outside_the_row():
    with pytest.raises(ValueError, match="between 1 and the row length 10"):
        native.row_topk(torch.randn(3, 10), 11)


def test_kernels_give_the_same_bits_on_one_thread_and_on_two():
    g = torch.Generator().manual_seed(0)
    pre = torch.randn(512, 2304, generator=g)
    idx = torch.randint(0, 2304, (512, 16), generator=g)
    vals = torch.rand(512, 16, generator=g)
    grad = torch.randn(512, 64, generator=g)
    W = torch.randn(2304, 64, generator=g)
    order, offsets = group_by_col(idx.reshape(-1), 2304)
    outs = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(
                (
                    *native.row_topk(pre, 32),
                    *native.decode_backward(order, offsets, vals, grad, W),
                    native.sum_rows_by_col(order, offsets, vals.reshape(-1), grad, width=16),
                    native.sampled_dots(idx, grad, W),
                )
            )
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------------------------ grouping by column
def test_group_by_col_is_a_stable_counting_sort_and_rejects_out_of_range_columns():
    cols = torch.randint(0, 40, (999,), generator=torch.Generator().manual_seed(6))
    cols[cols == 7] = 8  # an empty column
    order, offsets = native.group_by_col(cols, 45)
    assert torch.equal(order, torch.sort(cols, stable=True).indices)
    assert torch.equal(offsets[1:] - offsets[:-1], torch.bincount(cols, minlength=45))
    assert offsets[0] == 0 and offsets[-1] == 999
    with pytest.raises(IndexError, match=r"outside \[0, 30\)"):
        native.group_by_col(cols, 30)


# ------------------------------------------------------------------ sums of weighted rows
def _sparse_problem(seed: int, batch=96, width=6, n_cols=50, d=70):
    g = torch.Generator().manual_seed(seed)
    cols = torch.randint(0, n_cols - 5, (batch, width), generator=g)  # the last 5 columns empty
    cols[0, 1] = cols[0, 0]  # a repeated position
    weights = torch.randn(batch, width, generator=g)
    src = torch.randn(batch, d, generator=g)
    return cols, weights, src, n_cols


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("with_shift", [False, True])
@pytest.mark.parametrize("implied_rows", [False, True])
def test_sum_rows_by_col_equals_a_dense_product(transpose, with_shift, implied_rows):
    cols, weights, src, n_cols = _sparse_problem(1)
    batch, width = cols.shape
    shift = torch.randn(src.shape[1]) if with_shift else None
    rows = torch.arange(batch).repeat_interleave(width)
    dense = torch.zeros(batch, n_cols).index_put_(
        (rows, cols.reshape(-1)), weights.reshape(-1), accumulate=True
    )
    ref = dense.t() @ (src - shift if with_shift else src)  # [n_cols, d]
    order, offsets = group_by_col(cols.reshape(-1), n_cols)
    out = native.sum_rows_by_col(
        order,
        offsets,
        weights.reshape(-1),
        src,
        None if implied_rows else rows,
        width,
        shift=shift,
        transpose=transpose,
    )
    got = out.t() if transpose else out
    assert out.is_contiguous()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[-5:], torch.zeros(5, src.shape[1]))  # columns with no entry


def test_decode_backward_gives_autograd_gradients_of_the_decode():
    cols, values, _, n = _sparse_problem(2)
    W = torch.randn(n, 70, requires_grad=True)
    v = values.clone().requires_grad_(True)
    g = torch.randn(cols.shape[0], 70)
    x_hat = (v[..., None] * W[cols]).sum(dim=1)  # plain autograd reference
    x_hat.backward(g)
    order, offsets = group_by_col(cols.reshape(-1), n)
    dv, dW = native.decode_backward(order, offsets, values, g, W.detach())
    torch.testing.assert_close(dv, v.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dW, W.grad, rtol=1e-5, atol=1e-5)
    dv_none, dW_only = native.decode_backward(
        order, offsets, values, g, W.detach(), need_values=False
    )
    assert dv_none is None and torch.equal(dW_only, dW)


def test_sampled_dots_are_the_dot_products_at_the_codes():
    cols, _, src, n = _sparse_problem(3)
    W = torch.randn(n, src.shape[1])
    ref = torch.einsum("bd,bkd->bk", src, W[cols])
    torch.testing.assert_close(native.sampled_dots(cols, src, W), ref, rtol=1e-5, atol=1e-5)


def test_remove_parallel_and_unit_rows_match_their_formulas():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(40, 70, generator=g) * 3
    w[5] = 0.0  # a zero atom: nothing to remove, and it stays zero
    grad = torch.randn(40, 70, generator=g)
    coef = (grad * w).sum(1) / (w * w).sum(1).clamp_min(1e-12)
    ref = grad - coef[:, None] * w
    got = grad.clone()
    native.remove_parallel_(got, w)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[5], grad[5])
    unit = w.clone()
    native.unit_rows_(unit)
    torch.testing.assert_close(unit, w / w.norm(dim=1, keepdim=True).clamp_min(1e-12))
    assert torch.equal(unit[5], torch.zeros(70))


def test_topk_training_step_with_the_kernels_gives_the_torch_paths_gradients(monkeypatch):
    """With the kernels and with :func:`native.set_native` turned off (the torch path)."""
    from sparsecodes import SparseCoder
    from sparsecodes.encoders.base import TrainStepInput

    x = torch.randn(512, 48, generator=torch.Generator().manual_seed(5))
    grads, losses, indices = [], [], []
    monkeypatch.setattr(native, "_enabled", True)  # restored after the test, whatever happens
    calls = []
    real = native.row_topk
    monkeypatch.setattr(native, "row_topk", lambda *a: calls.append(1) or real(*a))
    for use in (True, False):
        native.set_native(use)
        coder = SparseCoder(48, 384, "topk", seed=0, k=12, fast=True, matmul_dtype="float32")
        dead = torch.zeros(384, dtype=torch.bool)
        dead[::5] = True  # AuxK too
        out = coder.encoder.train_step(TrainStepInput(x, coder.dictionary, dead_mask=dead))
        out.loss.backward()
        coder.dictionary.remove_parallel_grad_()
        grads.append({n: p.grad.clone() for n, p in coder.named_parameters()})
        losses.append(float(out.loss.detach()))
        indices.append(out.codes.indices.sort(dim=1).values)
    native.set_native(True)
    assert len(calls) == 1  # the kernels ran in the first step only
    assert torch.equal(indices[0], indices[1])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for name in grads[1]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)


# ------------------------------------------------------------------ building
def test_kernels_compile_once_and_later_processes_load_the_cached_library(
    fresh_library, monkeypatch
):
    compiled = []
    real = native._compile
    monkeypatch.setattr(native, "_compile", lambda *a: compiled.append(a[-1]) or real(*a))
    assert native.library() is not None
    assert len(compiled) == 1 and compiled[0].parent == fresh_library / "native"
    native.library.cache_clear()  # as a new process would
    assert native.library() is not None
    assert len(compiled) == 1
    assert [p.name for p in (fresh_library / "native").iterdir()] == [compiled[0].name]


def test_a_damaged_cached_library_is_rebuilt_by_the_next_process(fresh_library):
    assert native.library() is not None
    (so,) = (fresh_library / "native").iterdir()
    damaged = so.with_suffix(".tmp")
    damaged.write_bytes(b"not a shared library")
    os.replace(damaged, so)  # a new file: the copy this process has loaded stays intact
    code = "from sparsecodes.kernels import native; print(native.library() is not None)"
    env = {**os.environ, "SPARSECODES_CACHE": str(fresh_library)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.stdout.strip() == "True", done.stderr
    assert so.read_bytes()[:4] == b"\x7fELF"


def _fake_compiler(tmp_path) -> str:
    cc = tmp_path / "fakecc"
    cc.write_text(
        '#!/bin/sh\nif [ "$1" = --version ]; then echo fakecc 1.0; exit 0; fi\n'
        'echo "fakecc: error: no code today" >&2\nexit 1\n'
    )
    cc.chmod(cc.stat().st_mode | stat.S_IEXEC)
    return str(cc)


def test_a_failing_compiler_means_the_torch_path_and_leaves_no_file(fresh_library, monkeypatch):
    monkeypatch.setenv("CC", _fake_compiler(fresh_library))
    assert native.library() is None  # auto: fall back
    assert not native.usable(torch.zeros(2))
    assert not any((fresh_library / "native").iterdir())  # no partial library left behind
    native.library.cache_clear()
    monkeypatch.setenv("SPARSECODES_NATIVE", "on")
    with pytest.raises(native.NativeBuildError, match="no code today"):
        native.library()


def test_a_missing_compiler_is_named_with_the_fix(fresh_library, monkeypatch):
    monkeypatch.setenv("CC", os.fspath(fresh_library / "no-such-cc"))
    monkeypatch.setenv("SPARSECODES_NATIVE", "1")
    with pytest.raises(native.NativeBuildError, match="does not run"):
        native.library()
    native.library.cache_clear()
    monkeypatch.setenv("SPARSECODES_NATIVE", "0")
    assert native.library() is None


def test_native_mode_names_the_variable_on_a_bad_value(monkeypatch):
    monkeypatch.setenv("SPARSECODES_NATIVE", "maybe")
    with pytest.raises(ValueError, match="SPARSECODES_NATIVE must be auto, on"):
        native.native_mode()
