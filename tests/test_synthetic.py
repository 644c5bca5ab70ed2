"""sparsecodes.synthetic: the sparse linear data model and its train/test split."""

from __future__ import annotations

import pytest
import torch

from sparsecodes.synthetic import make_sparse_data, make_train_test, split


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"n_latents": 40, "n_dims": 10, "k": 7, "n_samples": 300},
        {"zipf_exponent": 1.2},
        {"correlation": 0.7, "signed": True},
    ],
)
def test_exactly_k_unit_atoms_and_x_is_codes_times_dictionary(kwargs):
    d = make_sparse_data(seed=3, **kwargs)
    n, m = d.codes.shape[1], d.x.shape[1]
    k = kwargs.get("k", 3)
    assert d.x.shape == (kwargs.get("n_samples", 2048), m)
    assert d.dictionary.shape == (n, m)
    assert ((d.codes != 0).sum(dim=1) == k).all()
    torch.testing.assert_close(d.dictionary.norm(dim=1), torch.ones(n))
    torch.testing.assert_close(d.x, d.codes @ d.dictionary)
    assert d.x.dtype == d.codes.dtype == d.dictionary.dtype == torch.float32


def test_values_nonnegative_by_default_and_signed_option():
    assert (make_sparse_data(seed=0).codes >= 0).all()
    signed = make_sparse_data(seed=0, signed=True).codes
    assert (signed < 0).any() and (signed > 0).any()


def test_uniform_support_is_roughly_uniform_and_zipf_is_skewed():
    uni = (make_sparse_data(n_samples=8000, seed=1).codes != 0).float().mean(0)
    # each latent is active with probability k/N = 3/16; binomial sd ~ 0.0044
    assert (uni - 3 / 16).abs().max() < 0.03
    zipf = (make_sparse_data(n_samples=8000, seed=1, zipf_exponent=1.5).codes != 0).float().mean(0)
    assert zipf[0] > 2 * zipf[-1]
    assert zipf[:4].mean() > zipf[-4:].mean()


def test_correlation_makes_latents_coactivate():
    def mean_abs_offdiag_corr(rho):
        active = (make_sparse_data(n_samples=6000, seed=2, correlation=rho).codes != 0).float()
        c = torch.corrcoef(active.T)
        return (c - torch.diag(torch.diag(c))).abs().sum() / (c.numel() - c.shape[0])

    assert mean_abs_offdiag_corr(0.9) > 2 * mean_abs_offdiag_corr(0.0)


def test_noise_is_added():
    d = make_sparse_data(seed=0, noise=0.1)
    resid = d.x - d.codes @ d.dictionary
    assert 0.05 < resid.std() < 0.2


def test_deterministic_given_seed_and_differs_across_seeds():
    a, b, c = make_sparse_data(seed=5), make_sparse_data(seed=5), make_sparse_data(seed=6)
    assert torch.equal(a.x, b.x) and torch.equal(a.codes, b.codes)
    assert torch.equal(a.dictionary, b.dictionary)
    assert not torch.equal(a.dictionary, c.dictionary)


def test_given_dictionary_is_reused_and_normalised():
    atoms = torch.randn(16, 8) * 3
    d = make_sparse_data(dictionary=atoms, seed=0)
    torch.testing.assert_close(d.dictionary, atoms / atoms.norm(dim=1, keepdim=True))
    torch.testing.assert_close(d.x, d.codes @ d.dictionary)


def test_train_test_share_dictionary_and_are_disjoint_rows():
    train, test = make_train_test(1024, 1024, seed=0)
    assert train.x.shape == (1024, 8) and test.x.shape == (1024, 8)
    assert train.dictionary is test.dictionary
    full = make_sparse_data(n_samples=2048, seed=0)
    torch.testing.assert_close(torch.cat([train.x, test.x]), full.x)
    tr, te = split(full, 100)
    assert tr.n_samples == 100 and te.n_samples == 1948


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"k": 17}, "k=17"),
        ({"k": 0}, "k"),
        ({"n_latents": 0}, "n_latents"),
        ({"n_dims": -1}, "n_dims"),
        ({"n_samples": 0}, "n_samples"),
        ({"noise": -0.1}, "noise"),
        ({"zipf_exponent": -1.0}, "zipf_exponent"),
        ({"correlation": 1.0}, "correlation"),
        ({"dictionary": torch.randn(4, 8)}, "dictionary"),
        ({"k": 2.5}, "k"),
    ],
)
def test_argument_errors_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_sparse_data(**kwargs)


def test_split_errors():
    d = make_sparse_data(n_samples=10)
    with pytest.raises(ValueError, match="n_train"):
        split(d, 10)
    with pytest.raises(ValueError, match="n_samples"):
        make_train_test(10, 10, n_samples=5)
