"""Tests of sparsecodes.metrics against hand-computed values and reference implementations."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from sparsecodes import Dictionary, SparseCoder
from sparsecodes.codes import SparseCodes, to_sparse
from sparsecodes.evaluation.core import ReconstructionAccumulator
from sparsecodes.metrics import (
    abs_correlation,
    code_mcc,
    cosine_similarity,
    dead_latents,
    dense_latents,
    dictionary_mcc,
    evaluate,
    explained_variance,
    feature_density,
    fvu,
    fvu_from_sums,
    l0,
    max_weight_matching,
    mse,
    support_metrics,
)


def _ref_abs_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Loop-free numpy reference with zero-variance columns -> 0."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    na, nb = np.sqrt((a**2).sum(0)), np.sqrt((b**2).sum(0))
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.abs(a.T @ b) / np.outer(na, nb)
    c[na == 0] = 0
    c[:, nb == 0] = 0
    return c


# ------------------------------------------------------------------------------ reconstruction
def test_fvu_is_about_the_mean_not_zero():
    # Two tokens with a large common mean: x = [[10, 0], [12, 0]], x_hat = [[11, 0], [11, 0]].
    x = torch.tensor([[10.0, 0.0], [12.0, 0.0]])
    x_hat = torch.tensor([[11.0, 0.0], [11.0, 0.0]])
    # error: 1 + 1 = 2; variance about the mean (11, 0): 1 + 1 = 2 -> FVU 1 (nothing explained).
    assert fvu(x, x_hat) == pytest.approx(1.0)
    assert explained_variance(x, x_hat) == pytest.approx(0.0)
    # About zero it would be 2 / (100 + 144) -- the bug DESIGN.md warns about.
    assert fvu(x, x_hat) != pytest.approx(2 / 244)


def test_mse_sums_dims_and_averages_tokens():
    x = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    x_hat = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    # token 0: 0 + 4 + 9 = 13; token 1: 1 + 1 = 2; mean over 2 tokens = 7.5 (not / 6 entries)
    assert mse(x, x_hat) == pytest.approx(7.5)
    assert mse(x.numpy(), x_hat.numpy()) == pytest.approx(7.5)


def test_cosine_similarity_hand_case():
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    x_hat = torch.tensor([[2.0, 0.0], [1.0, -1.0], [1.0, 0.0]])
    # cosines: 1, 0, 0 (zero vector) -> mean 1/3
    assert cosine_similarity(x, x_hat) == pytest.approx(1 / 3)


def test_reconstruction_shape_error_names_x_hat():
    with pytest.raises(ValueError, match="x_hat"):
        fvu(torch.zeros(3, 2), torch.zeros(3, 3))


def test_fvu_at_zero_variance_is_zero_if_exact_else_inf_in_every_implementation():
    """Constant ``x`` (zero total variance): exact reconstruction -> 0.0, any error -> inf, and
    the streaming evaluation agrees. 3.14159 over 1000 rows is a case where the unshifted
    one-pass variance ``sum x^2 - (sum x)^2 / n`` leaves 7e-12 of rounding (a huge finite FVU)."""
    x = torch.full((1000, 4), 3.14159)
    off = x + 0.5
    assert fvu_from_sums(0.0, 0.0) == 0.0
    assert fvu_from_sums(2.0, 0.0) == math.inf
    assert fvu_from_sums(2.0, -1e-300) == math.inf  # rounding below zero counts as zero
    assert fvu_from_sums(2.0, 4.0) == 0.5
    assert fvu(x, x) == 0.0 and explained_variance(x, x) == 1.0
    assert fvu(x, off) == math.inf and explained_variance(x, off) == -math.inf
    for x_hat, want in ((x, 0.0), (off, math.inf)):
        acc = ReconstructionAccumulator(n_latents=2, d_in=4)
        for i in range(0, 1000, 300):  # several batches, as a streaming evaluation sees them
            acc.update(x[i : i + 300], x_hat[i : i + 300], torch.zeros(len(x[i : i + 300]), 2))
        assert acc.result()["fvu"] == want


def test_streaming_fvu_equals_fvu():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g) * 3 + 100  # a large mean: cancellation-prone
    x_hat = x + 0.1 * torch.randn(500, 6, generator=g)
    acc = ReconstructionAccumulator(n_latents=2, d_in=6)
    for i in range(0, 500, 128):
        acc.update(x[i : i + 128], x_hat[i : i + 128], torch.zeros(len(x[i : i + 128]), 2))
    # both float64 sums of the same float32 inputs: they agree to float64 rounding
    assert acc.result()["fvu"] == pytest.approx(fvu(x, x_hat), rel=1e-9)


def test_fvu_flattens_leading_dims():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, generator=g) + 4
    xh = x + 0.1 * torch.randn(2, 5, 3, generator=g)
    assert fvu(x, xh) == pytest.approx(fvu(x.reshape(10, 3), xh.reshape(10, 3)))


# ------------------------------------------------------------------------------ sparsity
def test_l0_density_dead_dense_hand_case():
    codes = torch.tensor([[0.0, 1.0, 0.0, 2.0], [0.0, 3.0, 0.0, 0.0], [0.0, 1.0, 0.5, 0.0]])
    assert l0(codes) == pytest.approx(5 / 3)  # counts 2, 1, 2
    assert feature_density(codes).tolist() == pytest.approx([0, 1, 1 / 3, 1 / 3])
    assert dead_latents(codes).tolist() == [True, False, False, False]
    assert dense_latents(codes, threshold=0.5).tolist() == [False, True, False, False]
    sparse = to_sparse(codes, k=2)
    assert l0(sparse) == pytest.approx(5 / 3)
    assert feature_density(sparse).tolist() == pytest.approx([0, 1, 1 / 3, 1 / 3])


def test_sparse_codes_with_explicit_zero_values_not_counted():
    sc = SparseCodes(torch.tensor([[0, 1], [2, 3]]), torch.tensor([[1.0, 0.0], [0.0, 0.0]]), 4)
    assert l0(sc) == pytest.approx(0.5)


def test_support_metrics_hand_case():
    true = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0], [3.0, 0.0, 0.0]])
    # inferred latent j corresponds to true latent (2 - j); column 3 is an extra latent
    inf = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    m = (np.array([0, 1, 2]), np.array([2, 1, 0]))
    s = support_metrics(true, inf, matching=m)
    # true active: (0,0) (0,2) (1,1) (2,0) = 4; predicted active: 4 (incl. unmatched col 3)
    # TP: (0,0)->inf(0,2)=1 yes; (0,2)->inf(0,0) yes; (1,1)->inf(1,1) yes; (2,0)->inf(2,2) no -> 3
    assert s["precision"] == pytest.approx(3 / 4)
    assert s["recall"] == pytest.approx(3 / 4)
    assert s["f1"] == pytest.approx(0.75)
    # F1 is the harmonic mean: make P != R by dropping the extra latent
    inf2 = inf.clone()
    inf2[0, 3] = 0
    s2 = support_metrics(true, inf2, matching=m)
    p, r = 1.0, 3 / 4
    assert s2["f1"] == pytest.approx(2 * p * r / (p + r))


# ------------------------------------------------------------------------------ correlation
def test_abs_correlation_matches_reference_all_backends():
    rng = np.random.default_rng(0)
    a = np.abs(rng.standard_normal((300, 20))) * (rng.random((300, 20)) < 0.2)
    b = rng.standard_normal((300, 12))
    b[:, 3] = 2.5  # constant column -> 0, no NaN
    a[:, 0] = 0.0  # never-active latent -> 0
    a[:, 1] = 50.0 + 1e-2 * rng.standard_normal(300)  # large offset: precision path
    ref = _ref_abs_corr(a, b)
    for backend in ("dense", "sparse"):
        c = abs_correlation(a, b, backend=backend)
        assert c.shape == (20, 12)
        assert np.isfinite(c).all()
        np.testing.assert_allclose(c, ref, atol=2e-6)
        np.testing.assert_allclose(abs_correlation(b, a, backend=backend), ref.T, atol=2e-6)
    c = abs_correlation(to_sparse(torch.tensor(a)), torch.tensor(b))
    np.testing.assert_allclose(c, ref, atol=2e-6)
    assert (c[0] == 0).all() and (c[:, 3] == 0).all()


def test_abs_correlation_sample_mismatch():
    with pytest.raises(ValueError, match="samples"):
        abs_correlation(np.zeros((5, 2)), np.zeros((6, 2)))


# ------------------------------------------------------------------------------ MCC
def _synthetic_codes(s: int, n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(s, n, generator=g).topk(k, dim=1).indices
    out = torch.zeros(s, n)
    out.scatter_(1, idx, torch.randn(s, k, generator=g).abs())
    return out


def test_mcc_permuted_rescaled_copy_is_one():
    s = _synthetic_codes(512, 32, 3, seed=1)
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(2))
    scale = torch.linspace(0.1, 10.0, 32)
    inferred = s[:, perm] * scale - 3.0  # permutation, positive and negative affine changes
    inferred[:, ::2] *= -1
    res = code_mcc(s, inferred, return_matching=True)
    assert res.mcc == pytest.approx(1.0, abs=1e-6)
    assert (perm[res.inferred_indices].numpy() == res.true_indices).all()
    assert code_mcc(s, to_sparse(s[:, perm])) == pytest.approx(1.0, abs=1e-6)


def test_mcc_of_independent_codes_is_low():
    a = _synthetic_codes(2048, 16, 3, seed=3)
    b = _synthetic_codes(2048, 16, 3, seed=4)
    # |corr| of independent latents ~ 1/sqrt(S) ~ 0.02; the best of 16 per row stays small
    assert code_mcc(a, b) < 0.1


def test_mcc_zero_variance_and_unequal_sizes():
    s = _synthetic_codes(256, 10, 3, seed=5)
    wide = torch.cat([s, torch.zeros(256, 5)], dim=1)  # 5 dead latents
    assert code_mcc(s, wide) == pytest.approx(1.0, abs=1e-6)
    # fewer inferred than true: 8 pairs, all perfect
    assert code_mcc(s, s[:, :8]) == pytest.approx(1.0, abs=1e-6)
    res = code_mcc(wide, s[:, :8], return_matching=True)
    assert len(res.scores) == 8 and np.isfinite(res.scores).all()
    # an all-dead inferred set: MCC 0, not NaN
    assert code_mcc(s, torch.zeros(256, 4)) == 0.0


def test_mcc_equals_bruteforce_lsa_and_mean_definition():
    a = _synthetic_codes(400, 9, 3, seed=6)
    b = a[:, torch.randperm(9)] + 0.5 * _synthetic_codes(400, 9, 4, seed=7)
    c = _ref_abs_corr(a.double().numpy(), b.double().numpy())
    r, col = linear_sum_assignment(c, maximize=True)
    assert code_mcc(a, b) == pytest.approx(c[r, col].mean(), abs=1e-6)


def test_dictionary_mcc():
    g = torch.Generator().manual_seed(0)
    true = torch.randn(12, 6, generator=g)
    learned = -3.0 * true[torch.randperm(12, generator=g)]
    assert dictionary_mcc(true, learned) == pytest.approx(1.0, abs=1e-6)
    assert dictionary_mcc(true, Dictionary.from_atoms(learned)) == pytest.approx(1.0, abs=1e-6)
    # hand case: atoms e1, e2 vs (e1 + e2)/sqrt2, e2 -> best matching 1/sqrt2 + 1 vs 0 + 1/sqrt2
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    l = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    assert dictionary_mcc(t, l) == pytest.approx((1 / 2**0.5 + 1) / 2)
    with pytest.raises(ValueError, match="dimension"):
        dictionary_mcc(t, torch.zeros(2, 3))


# ------------------------------------------------------------------------------ matching
@settings(max_examples=40, deadline=None)
@given(
    nr=st.integers(1, 60),
    nc=st.integers(1, 60),
    seed=st.integers(0, 2**31 - 1),
    kind=st.sampled_from(["uniform", "structured", "ties"]),
    k=st.integers(1, 4),
)
def test_sparse_matching_equals_dense_lsa(nr, nc, seed, kind, k):
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        w = rng.random((nr, nc))
    elif kind == "ties":
        w = rng.integers(0, 3, (nr, nc)).astype(np.float64) / 2
    else:
        w = 0.05 * np.abs(rng.standard_normal((nr, nc)))
        m = min(nr, nc)
        w[rng.permutation(nr)[:m], rng.permutation(nc)[:m]] += rng.random(m)
    w = w.astype(np.float32)
    r0, c0 = linear_sum_assignment(w.astype(np.float64), maximize=True)
    r1, c1 = max_weight_matching(w, method="sparse", k=k)
    assert len(r1) == min(nr, nc)
    assert len(set(r1.tolist())) == len(r1) and len(set(c1.tolist())) == len(c1)
    assert w[r1, c1].astype(np.float64).sum() == pytest.approx(
        w[r0, c0].astype(np.float64).sum(), abs=1e-6
    )


def test_sparse_matching_equals_dense_lsa_moderate_size(monkeypatch):
    import sparsecodes.metrics.matching as matching

    def no_fallback(w):
        raise AssertionError("the sparse solver fell back to dense LSA")

    # the certified sparse path itself must reach the optimum here (no dense fallback)
    monkeypatch.setattr(matching, "_dense", no_fallback)
    rng = np.random.default_rng(11)
    for shape in [(600, 600), (300, 700), (700, 250)]:
        w = (0.02 * np.abs(rng.standard_normal(shape))).astype(np.float32)
        m = min(shape)
        w[rng.permutation(shape[0])[:m], rng.permutation(shape[1])[:m]] += rng.random(m) * 0.5
        r0, c0 = linear_sum_assignment(w, maximize=True)
        r1, c1 = max_weight_matching(w, method="sparse")
        assert (np.diff(r1) > 0).all()
        assert len(set(c1.tolist())) == m
        assert w[r1, c1].astype(np.float64).sum() == pytest.approx(
            w[r0, c0].astype(np.float64).sum(), abs=1e-5
        )


# ------------------------------------------------------------------------------ evaluate
def test_evaluate_with_truth():
    g = torch.Generator().manual_seed(0)
    s = _synthetic_codes(256, 16, 3, seed=8)
    d = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1)
    x = s @ d
    model = SparseCoder(8, 16, "relu", seed=0)
    model.set_dictionary(d)
    out = evaluate(model, x, true_codes=s, true_dictionary=d)
    assert out["dict_mcc"] == pytest.approx(1.0, abs=1e-5)
    codes = model.encode(x)
    assert out["fvu"] == pytest.approx(fvu(x, model.decode(codes)))
    assert out["l0"] == pytest.approx(l0(codes))
    assert out["code_mcc"] == pytest.approx(code_mcc(s, codes))
    # latent i is true latent i (the true dictionary): F1 of the supports, entry by entry
    tp = float(((s != 0) & (codes != 0)).sum())
    f1 = 2 * tp / float((s != 0).sum() + (codes != 0).sum())
    assert 0.0 < f1 < 1.0  # the ReLU encoder's support is neither empty nor exact here
    assert out["support_f1"] == pytest.approx(f1, rel=1e-12)
    assert out["explained_variance"] == pytest.approx(1 - out["fvu"])


# ------------------------------------------------------------------------------ scale
@pytest.mark.slow
def test_mcc_16k_latents_finishes():
    """16384 x 16384 latents, 8192 samples, K = 32 sparse codes, partial recovery."""
    s, n, k = 8192, 16384, 32
    g = torch.Generator().manual_seed(0)
    idx = torch.rand(s, n, generator=g).topk(k, dim=1).indices
    val = torch.randn(s, k, generator=g).abs()
    perm = torch.randperm(n, generator=g)
    keep = (torch.rand(s, k, generator=g) > 0.2).float()
    idx2 = torch.cat([perm[idx], torch.randint(0, n, (s, 8), generator=g)], 1)
    val2 = torch.cat([val * keep, torch.rand(s, 8, generator=g)], 1)
    t0 = time.perf_counter()
    res = code_mcc(SparseCodes(idx, val, n), SparseCodes(idx2, val2, n), return_matching=True)
    elapsed = time.perf_counter() - t0
    print(f"16k code_mcc: {elapsed:.1f} s, mcc={res.mcc:.4f}")
    assert (perm.numpy()[res.true_indices] == res.inferred_indices).mean() > 0.99
    assert elapsed < 300
