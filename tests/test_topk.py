"""TopK / BatchTopK encoders, AuxK, and the sparse-backward fast path (kernels/)."""

from __future__ import annotations

import pytest
import torch

from conftest import sparse_problem
from sparsecodes import SparseCoder
from sparsecodes.codes import SparseCodes
from sparsecodes.dictionary import Dictionary
from sparsecodes.encoders import TrainStepInput, make_encoder
from sparsecodes.kernels import SparseDecode, batch_topk_flat, pad_rows
from sparsecodes.kernels.sparse_affine import preacts

D_IN, N_LAT, K = 24, 96, 6


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny problems: one thread avoids OpenMP barrier waits on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _setup(name="topk", seed=0, fast=True, bias=True, **params):
    g = torch.Generator().manual_seed(seed)
    dic = Dictionary(D_IN, N_LAT, generator=g)
    enc = make_encoder(
        name, D_IN, N_LAT, generator=g, k=K, fast=fast, matmul_dtype="float32", **params
    )
    if bias:
        with torch.no_grad():
            dic.b_dec.copy_(0.1 * torch.randn(D_IN, generator=g))
            enc.b_enc.copy_(0.1 * torch.randn(N_LAT, generator=g))
    x = torch.randn(64, D_IN, generator=g)
    return enc, dic, x


def _dense_pre(enc, dic, x):
    return (x - dic.b_dec) @ enc.W_enc + enc.b_enc


def test_topk_exactly_k_per_row_and_the_largest():
    enc, dic, x = _setup()
    codes = enc.encode(x, dic)
    assert isinstance(codes, SparseCodes) and codes.indices.shape == (64, K)
    dense = codes.to_dense()
    assert ((dense != 0).sum(dim=1) == K).all()
    pre = _dense_pre(enc, dic, x).detach()
    ref_vals = pre.topk(K, dim=1).values
    got_vals = codes.values.detach().sort(dim=1, descending=True).values
    torch.testing.assert_close(got_vals, torch.relu(ref_vals))
    torch.testing.assert_close(
        dense.detach(), torch.zeros_like(pre).scatter(1, pre.topk(K).indices, ref_vals)
    )


@pytest.mark.parametrize("name", ["topk", "batchtopk"])
def test_k_larger_than_n_latents_is_refused(name):
    with pytest.raises(ValueError, match=r"k=200"):
        make_encoder(name, D_IN, N_LAT, k=200)
    with pytest.raises(ValueError, match=r"aux_k=500"):
        make_encoder(name, D_IN, N_LAT, k=4, aux_k=500)
    with pytest.raises(ValueError, match="matmul_dtype"):
        make_encoder(name, D_IN, N_LAT, k=4, matmul_dtype="fp8")
    with pytest.raises(ValueError, match=r"k=200"):
        SparseCoder(D_IN, N_LAT, encoder=name, k=200)


def _grads(name, fast, dead_mask, x_grad=False):
    enc, dic, x = _setup(name, fast=fast)
    x = x.clone().requires_grad_(x_grad)
    out = enc.train_step(TrainStepInput(x, dic, 0, dead_mask))
    out.loss.backward()
    grads = {
        "W_enc": enc.W_enc.grad,
        "b_enc": enc.b_enc.grad,
        "b_dec": dic.b_dec.grad,
        "W_dec": dic.W_dec.grad,
    }
    if x_grad:
        grads["x"] = x.grad
    return out, grads


@pytest.mark.parametrize("name", ["topk", "batchtopk"])
@pytest.mark.parametrize("with_dead", [False, True])
def test_fast_path_gradients_equal_eager(name, with_dead):
    dead = None
    if with_dead:
        dead = torch.zeros(N_LAT, dtype=torch.bool)
        dead[::3] = True
    out_f, g_f = _grads(name, True, dead, x_grad=True)
    out_e, g_e = _grads(name, False, dead, x_grad=True)
    torch.testing.assert_close(out_f.loss, out_e.loss)
    if with_dead:
        assert float(out_f.losses["auxk"].detach()) > 0
    for key in g_e:
        assert g_e[key] is not None and g_f[key] is not None, key
        assert g_e[key].abs().sum() > 0, key
        torch.testing.assert_close(g_f[key], g_e[key], rtol=1e-4, atol=1e-5, msg=key)


def test_auxk_gives_dead_latents_a_gradient_and_is_zero_without_dead():
    enc, dic, x = _setup()
    live = enc.encode(x, dic)
    fired = torch.zeros(N_LAT, dtype=torch.bool)
    fired[live.indices.reshape(-1)] = True
    dead = ~fired  # latents absent from every row's top-k on this batch
    assert dead.sum() > 0
    out = enc.train_step(TrainStepInput(x, dic, 0, dead))
    assert float(out.losses["auxk"].detach()) > 0
    out.loss.backward()
    dead_cols = enc.W_enc.grad[:, dead].abs().sum(dim=0)
    assert (dead_cols > 0).any()
    # without AuxK the same dead latents get no encoder gradient at all
    enc.zero_grad()
    out0 = enc.train_step(TrainStepInput(x, dic, 0, torch.zeros(N_LAT, dtype=torch.bool)))
    assert float(out0.losses["auxk"]) == 0.0
    out0.loss.backward()
    assert enc.W_enc.grad[:, dead].abs().sum() == 0
    out_none = enc.train_step(TrainStepInput(x, dic, 0, None))
    torch.testing.assert_close(out0.loss, out_none.loss)


def test_batchtopk_keeps_batch_times_k_in_training_and_threshold_in_eval():
    enc, dic, x = _setup("batchtopk", bias=False)
    enc.train()
    codes = enc.encode(x, dic)
    dense = codes.to_dense().detach()
    pre = _dense_pre(enc, dic, x).detach()
    assert int((dense != 0).sum()) == 64 * K  # enough positive pre-activations here
    counts = (dense != 0).sum(dim=1)
    assert counts.max() > counts.min()  # rows differ: it is batch-wide, not per row
    kth = pre.reshape(-1).topk(64 * K).values.min()
    torch.testing.assert_close(dense, torch.where(pre >= kth, pre, 0.0))
    assert int(enc.threshold_updates) == 1
    torch.testing.assert_close(enc.threshold, dense[dense > 0].min())
    # eval: the threshold, row by row
    enc.eval()
    thr = float(enc.threshold)
    ev = enc.encode(x, dic).to_dense().detach()
    torch.testing.assert_close(ev, torch.where(pre > thr, pre, 0.0))
    one = enc.encode(x[5:6], dic).to_dense().detach()
    torch.testing.assert_close(one, ev[5:6])
    # EMA moves towards a new batch's smallest kept activation
    enc.train()
    enc.encode(2 * x, dic)
    assert int(enc.threshold_updates) == 2 and float(enc.threshold) > thr


def test_batch_topk_flat_exact_with_skewed_rows():
    g = torch.Generator().manual_seed(1)
    pre = torch.randn(32, 200, generator=g)
    pre[3] += 10.0  # one row holds most of the global top-m: forces widening
    m = 32 * 4
    rows, cols = batch_topk_flat(pre, m, start_factor=1)
    got = torch.zeros_like(pre, dtype=torch.bool)
    got[rows, cols] = True
    ref = torch.zeros(pre.numel(), dtype=torch.bool)
    ref[pre.reshape(-1).topk(m).indices] = True
    assert torch.equal(got.reshape(-1), ref)
    idx, vals = pad_rows(rows, cols, pre[rows, cols], 32)
    torch.testing.assert_close(SparseCodes(idx, vals, 200).to_dense(), torch.where(got, pre, 0.0))


def test_bf16_matmul_close_to_fp32():
    enc, dic, x = _setup()
    pre32 = preacts(x, enc.W_enc, enc.b_enc, dic.b_dec, torch.float32)
    pre16 = preacts(x, enc.W_enc, enc.b_enc, dic.b_dec, torch.bfloat16)
    assert pre16.dtype == torch.bfloat16
    torch.testing.assert_close(pre16.float(), pre32, rtol=0.02, atol=0.02)


def _fit(encoder="topk", seed=0, steps=120):
    x, _codes, _atoms = sparse_problem(n=32, m=16, k=3, s=1024, seed=3)
    model = SparseCoder(16, 32, encoder=encoder, seed=seed, k=3)
    model.fit(x, steps=steps, lr=1e-2, batch_size=128, log_every=10, dead_after_tokens=2000)
    return model, x


@pytest.mark.parametrize("encoder", ["topk", "batchtopk"])
def test_fit_lowers_loss_and_is_reproducible(encoder):
    model, x = _fit(encoder)
    first, last = model.history[0]["mse"], model.history[-1]["mse"]
    assert last < 0.6 * first

    def fvu(m):
        return float((x - m.reconstruct(x)).pow(2).sum() / (x - x.mean(0)).pow(2).sum())

    untrained = SparseCoder(16, 32, encoder=encoder, seed=0, k=3)
    assert fvu(model) < 0.5 * fvu(untrained)
    again, _ = _fit(encoder)
    for (k1, v1), (k2, v2) in zip(
        model.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert k1 == k2 and torch.equal(v1, v2), k1
    timing = {"tokens_per_s", "elapsed_s", "time_s"}
    strip = [{k: v for k, v in row.items() if k not in timing} for row in model.history]
    assert strip == [{k: v for k, v in row.items() if k not in timing} for row in again.history]


@pytest.mark.parametrize("encoder", ["topk", "batchtopk"])
def test_save_load_round_trip_exact(encoder, tmp_path):
    model, x = _fit(encoder, steps=30)
    model.save(tmp_path / "m")
    loaded = SparseCoder.load(tmp_path / "m")
    for (k1, v1), (k2, v2) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k1 == k2 and torch.equal(v1, v2), k1
    if encoder == "batchtopk":
        assert int(loaded.encoder.threshold_updates) == 30
        assert float(loaded.encoder.threshold) == float(model.encoder.threshold) > 0
    assert torch.equal(model.encode(x), loaded.encode(x))
    assert torch.equal(model.reconstruct(x), loaded.reconstruct(x))


def test_flops_are_stated():
    enc, _dic, _x = _setup()
    f = enc.flops(4096)
    assert f["train_step"] > f["inference"] > 2 * 4096 * D_IN * N_LAT


@pytest.mark.parametrize("threads,batch", [(1, 64), (2, 600), (3, 900)])
def test_sparse_decode_matches_embedding_bag(threads, batch):
    """On one and on several torch threads (the sampled products split their rows)."""
    torch.set_num_threads(threads)  # the autouse fixture restores it
    g = torch.Generator().manual_seed(2)
    idx = torch.rand(batch, N_LAT, generator=g).topk(K).indices
    out_grad = torch.randn(batch, D_IN, generator=g)
    base = (torch.rand(batch, K, generator=g), torch.randn(N_LAT, D_IN, generator=g))
    b = torch.randn(D_IN, generator=g)
    results = []
    for fast in (True, False):
        v, w, bb = (t.clone().requires_grad_() for t in (*base, b))
        if fast:
            y = SparseDecode.apply(idx, v, w, bb)
        else:
            y = torch.nn.functional.embedding_bag(idx, w, per_sample_weights=v, mode="sum") + bb
        y.backward(out_grad)
        results.append((y, v.grad, w.grad, bb.grad))
    for a, c in zip(*results, strict=True):
        torch.testing.assert_close(a, c)


def test_sum_rows_by_col_equals_dense_transpose_product_with_repeats_and_empty_cols():
    from sparsecodes.kernels.sparse_affine import sum_rows_by_col

    g = torch.Generator().manual_seed(5)
    src = torch.randn(10, 7, generator=g)
    rows = torch.tensor([0, 3, 3, 9, 2, 0, 5])
    cols = torch.tensor([4, 1, 1, 0, 4, 2, 1])  # (3, 1) twice; columns 3, 5, 6 empty
    w = torch.randn(7, generator=g)
    dense = torch.zeros(10, 7).index_put_((rows, cols), w, accumulate=True)  # G [10, 7]
    got = sum_rows_by_col(rows, cols, w, src, 7)
    torch.testing.assert_close(got, dense.t() @ src)
    assert got[[3, 5, 6]].abs().sum() == 0


@pytest.mark.parametrize("with_dead", [False, True])
def test_encode_row_topk_fast_selects_exact_fp32_topk_and_aux(with_dead):
    from sparsecodes.kernels.sparse_affine import encode_row_topk

    enc, dic, x = _setup()
    pre = _dense_pre(enc, dic, x).detach()
    dead = torch.arange(0, N_LAT, 5) if with_dead else None
    vals, cols, k_aux = encode_row_topk(
        x, enc.W_enc, enc.b_enc, dic.b_dec, K, dead_idx=dead, aux_k=4, fast=True
    )
    assert k_aux == (4 if with_dead else 0) and cols.shape == (64, K + k_aux)
    ref = pre.topk(K, dim=1)
    assert torch.equal(cols[:, :K].sort(dim=1).values, ref.indices.sort(dim=1).values)
    torch.testing.assert_close(vals, pre.gather(1, cols))  # the selected pre-activations
    if with_dead:
        ref_aux = dead[pre[:, dead].topk(4, dim=1).indices]
        assert torch.equal(cols[:, K:].sort(dim=1).values, ref_aux.sort(dim=1).values)
    vals_e, cols_e, _ = encode_row_topk(
        x, enc.W_enc, enc.b_enc, dic.b_dec, K, dead_idx=dead, aux_k=4, fast=False
    )
    assert torch.equal(cols.sort(dim=1).values, cols_e.sort(dim=1).values)
    torch.testing.assert_close(vals.sort(dim=1).values, vals_e.sort(dim=1).values)


def test_workspace_reuses_buffer_per_name_and_shape_and_caps_size(monkeypatch):
    from sparsecodes.kernels import sparse_affine

    sparse_affine.release_workspace()
    a = sparse_affine.workspace("t", (4, 5), torch.float32, torch.device("cpu"))
    assert sparse_affine.workspace("t", (4, 5), torch.float32, torch.device("cpu")) is a
    b = sparse_affine.workspace("t", (4, 6), torch.float32, torch.device("cpu"))
    assert b is not a and b.shape == (4, 6)
    monkeypatch.setattr(sparse_affine, "WORKSPACE_MAX_BYTES", 16)
    big = sparse_affine.workspace("u", (4, 5), torch.float32, torch.device("cpu"))
    assert sparse_affine.workspace("u", (4, 5), torch.float32, torch.device("cpu")) is not big
    sparse_affine.release_workspace()
    assert sparse_affine.workspace("t", (4, 6), torch.float32, torch.device("cpu")) is not b


def test_squared_error_per_token_equals_mse_and_its_gradients():
    from sparsecodes.encoders.base import mse_per_token
    from sparsecodes.kernels.losses import squared_error_per_token

    g = torch.Generator().manual_seed(3)
    x = torch.randn(50, 7, 33, generator=g).requires_grad_(True)  # tokens = 350
    x_hat = (x.detach() + 0.1 * torch.randn(50, 7, 33, generator=g)).requires_grad_(True)
    loss = squared_error_per_token(x, x_hat)
    ref = mse_per_token(x.detach().double(), x_hat.detach().double())
    assert abs(float(loss.detach()) - float(ref)) <= 1e-6 * float(ref)  # float32 sum, 11550 terms
    (loss * 3).backward()
    r = (x_hat - x).detach().double()
    torch.testing.assert_close(x_hat.grad.double(), 3 * 2 * r / 350, rtol=1e-6, atol=0)
    torch.testing.assert_close(x.grad.double(), -3 * 2 * r / 350, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="must match"):
        squared_error_per_token(x, x_hat[:, :3])


def test_fast_path_through_openblas_gemm_equals_eager():
    """At a size whose encoder matmul goes to OpenBLAS (>= gemm.MIN_MACS), the fast step's
    loss and gradients equal plain autograd's up to float32 rounding."""
    from sparsecodes.kernels import gemm

    if gemm._numpy_openblas() is None:
        pytest.skip("numpy is not built with OpenBLAS here")
    before = gemm.gemm_backend()
    gemm.set_gemm_backend("openblas")
    try:
        d, n, batch = 64, 512, 256
        assert batch * (d + 1) * n >= gemm.MIN_MACS
        outs = {}
        for fast in (True, False):
            g = torch.Generator().manual_seed(0)
            dic = Dictionary(d, n, generator=g)
            enc = make_encoder("topk", d, n, generator=g, k=8, fast=fast, matmul_dtype="float32")
            with torch.no_grad():
                dic.b_dec.copy_(0.1 * torch.randn(d, generator=g))
                enc.b_enc.copy_(0.1 * torch.randn(n, generator=g))
            x = torch.randn(batch, d, generator=g)
            out = enc.train_step(TrainStepInput(x, dic, 0, None))
            out.loss.backward()
            outs[fast] = (out, enc.W_enc.grad, enc.b_enc.grad, dic.b_dec.grad, dic.W_dec.grad)
        (of, *gf), (oe, *ge) = outs[True], outs[False]
        assert torch.equal(of.codes.to_dense() != 0, oe.codes.to_dense() != 0)  # same selection
        torch.testing.assert_close(of.loss, oe.loss, rtol=1e-5, atol=0)
        for a, b in zip(gf, ge, strict=True):
            assert b.abs().sum() > 0
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    finally:
        gemm.set_gemm_backend(before)


def test_row_topk_blocks_give_the_topk_values_including_ties():
    from sparsecodes.kernels.selection import row_topk, topk_blocks

    g = torch.Generator().manual_seed(1)
    assert topk_blocks(4608, 32) == 512 and topk_blocks(997, 8) == 0  # prime: plain topk
    pre = torch.randn(300, 1152, generator=g)
    pre[:100] = pre[:100].round()  # many ties at the k-th value
    pre[100:150, :40] += 10  # the top k crowded into a few strided blocks
    pre[150:200] = 0.0  # all tied
    for k in (1, 8, 32):
        assert topk_blocks(1152, k) > 0
        vals, cols = row_topk(pre, k)
        ref = pre.topk(k, dim=1).values
        assert torch.equal(vals.sort(dim=1, descending=True).values, ref)
        assert torch.equal(pre.gather(1, cols), vals)  # positions hold those values
        assert (cols.sort(dim=1).values.diff(dim=1) > 0).all()  # k distinct columns per row


@pytest.mark.parametrize("with_dead", [False, True])
def test_topk_step_sorts_its_indices_by_latent_once_for_both_weight_gradients(
    monkeypatch, with_dead
):
    import sparsecodes.kernels.sparse_affine as sa

    calls = []
    real = sa.group_by_col
    monkeypatch.setattr(sa, "group_by_col", lambda *a: calls.append(1) or real(*a))
    dead = None
    if with_dead:  # patterns [k + k_aux] (encoder), [k] (decoder), [k_aux] (AuxK decoder)
        dead = torch.zeros(N_LAT, dtype=torch.bool)
        dead[::3] = True
    _, g_f = _grads("topk", True, dead)
    assert len(calls) == (3 if with_dead else 1)
    _, g_e = _grads("topk", False, dead)
    for key in ("W_enc", "W_dec"):
        torch.testing.assert_close(g_f[key], g_e[key], rtol=1e-4, atol=1e-5, msg=key)
