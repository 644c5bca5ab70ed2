"""Core behaviour: dictionary constraint, SparseCoder API, validation, persistence, determinism."""

from __future__ import annotations

import json

import pytest
import torch

import sparsecodes as sc
from sparsecodes.codes import SparseCodes, to_sparse
from sparsecodes.dictionary import Dictionary
from sparsecodes.training.trainer import TrainConfig, lr_factor


def test_dictionary_atoms_unit_norm_after_training(small_problem):
    x, _, _ = small_problem
    m = sc.SparseCoder(8, 16, "relu", l1=0.01, seed=0).fit(x, steps=50, lr=1e-2, batch_size=64)
    norms = m.dictionary.W_dec.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_remove_parallel_grad_leaves_orthogonal_component():
    g = torch.Generator().manual_seed(1)
    d = Dictionary(5, 7, generator=g)
    with torch.no_grad():  # atoms of different norms: the projection divides by |w|^2
        d.W_dec.mul_(torch.linspace(0.5, 3.0, 7)[:, None])
    grad = torch.randn(7, 5, generator=g)
    d.W_dec.grad = grad.clone()
    d.remove_parallel_grad_()
    dots = (d.W_dec.grad * d.W_dec).sum(dim=1)
    assert dots.abs().max() < 1e-5
    w, g64 = d.W_dec.detach().double(), grad.double()
    expected = g64 - ((g64 * w).sum(1) / (w * w).sum(1))[:, None] * w  # the tangent part kept
    torch.testing.assert_close(d.W_dec.grad.double(), expected, rtol=1e-6, atol=1e-6)


def test_sparse_and_dense_decode_agree():
    d = Dictionary(6, 10, generator=torch.Generator().manual_seed(0))
    dense = torch.zeros(4, 10)
    dense[0, 3], dense[1, 7], dense[2, 0], dense[3, 9] = 1.0, 2.0, -0.5, 0.25
    sp = to_sparse(dense, k=2)
    assert isinstance(sp, SparseCodes)
    assert torch.allclose(d.decode(sp), d.decode(dense), atol=1e-6)
    assert torch.equal(sp.to_dense(), dense)


def test_known_dictionary_stays_fixed(small_problem):
    x, _, atoms = small_problem
    m = sc.SparseCoder(8, 16, "relu", l1=0.01, seed=0)
    m.fit(x, dictionary=atoms, steps=30, lr=1e-2, batch_size=64)
    assert torch.allclose(m.dictionary.W_dec, atoms, atol=1e-6)
    assert m.train_config["setting"] == "known_dictionary"


def test_fit_lowers_loss(small_problem):
    x, _, _ = small_problem
    m = sc.SparseCoder(8, 16, "relu", l1=1e-3, seed=0).fit(
        x, steps=300, lr=3e-3, batch_size=128, log_every=10
    )
    first, last = m.history[0]["mse"], m.history[-1]["mse"]
    assert last < 0.5 * first


def test_same_seed_same_numbers(small_problem):
    x, _, _ = small_problem
    a = sc.SparseCoder(8, 16, "relu", l1=0.01, seed=3).fit(x, steps=40, batch_size=32)
    b = sc.SparseCoder(8, 16, "relu", l1=0.01, seed=3).fit(x, steps=40, batch_size=32)
    c = sc.SparseCoder(8, 16, "relu", l1=0.01, seed=4).fit(x, steps=40, batch_size=32)
    assert torch.equal(a.dictionary.W_dec, b.dictionary.W_dec)
    assert torch.equal(a.encode(x), b.encode(x))
    assert not torch.equal(a.dictionary.W_dec, c.dictionary.W_dec)


def test_save_load_bit_exact(tmp_path, small_problem):
    x, _, _ = small_problem
    m = sc.SparseCoder(8, 16, "relu", l1=0.01, normalize="expected_norm", seed=0)
    m.fit(x * 7.0, steps=20, batch_size=32)
    m.save(tmp_path / "m")
    m2 = sc.SparseCoder.load(tmp_path / "m")
    for (k1, v1), (k2, v2) in zip(m.state_dict().items(), m2.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    assert torch.equal(m.encode(x), m2.encode(x))
    cfg = json.loads((tmp_path / "m" / "sparsecodes.json").read_text())
    assert cfg["encoder"] == "relu" and cfg["train_config"]["steps"] == 20
    assert not list((tmp_path / "m").glob("*.tmp"))


def test_load_corrupt_or_missing_files_named(tmp_path, small_problem):
    x, _, _ = small_problem
    m = sc.SparseCoder(8, 16, "relu").fit(x, steps=2, batch_size=8)
    path = m.save(tmp_path / "m")
    (path / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        sc.SparseCoder.load(path)
    (path / "sparsecodes.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"sparsecodes\.json"):
        sc.SparseCoder.load(path)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.randn(10), "shape"),
        (torch.randn(10, 5), "d_in=8"),
        (torch.zeros(0, 8), "empty"),
        (torch.tensor([[float("nan")] * 8]), "NaN"),
        (torch.tensor([[float("inf")] * 8]), "NaN or inf"),
    ],
)
def test_bad_inputs_named(bad, match):
    m = sc.SparseCoder(8, 16, "relu")
    with pytest.raises(ValueError, match=match):
        m.fit(bad, steps=1)
    with pytest.raises(ValueError, match=match):
        m.encode(bad)


def test_bad_construction_named():
    with pytest.raises(ValueError, match="unknown encoder 'nope'"):
        sc.SparseCoder(8, 16, "nope")
    with pytest.raises(ValueError, match="no parameter"):
        sc.SparseCoder(8, 16, "relu", kk=3)
    with pytest.raises(ValueError, match="l1"):
        sc.SparseCoder(8, 16, "relu", l1=-1.0)
    with pytest.raises(ValueError, match="n_latents"):
        sc.SparseCoder(8, 0, "relu")
    with pytest.raises(ValueError, match="dictionary must have shape"):
        sc.SparseCoder(8, 16, "relu").fit(torch.randn(4, 8), dictionary=torch.randn(3, 8))


def test_bad_training_config_named():
    m = sc.SparseCoder(8, 16, "relu")
    with pytest.raises(ValueError, match="lr"):
        m.fit(torch.randn(16, 8), steps=2, lr=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        m.fit(torch.randn(16, 8), steps=2, batch_size=0)


def test_divergence_raises_instead_of_nan_model(small_problem):
    x, _, _ = small_problem
    m = sc.SparseCoder(8, 16, "relu", l1=0.0, seed=0)
    with pytest.raises(FloatingPointError, match="lower lr"):
        m.fit(x * 1e19, steps=50, lr=1e6, batch_size=64)


def test_lr_schedule_warmup_and_decay():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, decay_fraction=0.2)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(50, cfg) == 1.0
    assert lr_factor(99, cfg) == pytest.approx(1 / 20)


def test_inference_swap_needs_iterative():
    m = sc.SparseCoder(8, 16, "relu")
    with pytest.raises(ValueError, match="warm_start"):
        m.encode(torch.randn(4, 8), warm_start=True)


def test_init_never_equals_data_drawn_with_same_seed():
    from conftest import sparse_problem

    _, _, atoms = sparse_problem(seed=0)
    m = sc.SparseCoder(8, 16, "relu", seed=0)
    cos = (m.dictionary.W_dec @ atoms.T).abs().max(dim=1).values
    assert cos.mean() < 0.99, "initial atoms coincide with data drawn from the same seed"


def test_any_63_bit_seed_trains(small_problem):
    # seeds from derive_seed are 63-bit; the data order must not overflow torch's generator
    x = small_problem[0][:64]
    coder = sc.SparseCoder(x.shape[1], 8, "topk", k=2, seed=2**62 + 5)
    coder.fit(x, steps=2, batch_size=32, log_every=2)
