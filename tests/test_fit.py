"""Fitting with known codes, the input normaliser's scale, dead-latent tracking, and inference
on a trained dictionary (iterative encoders only)."""

from __future__ import annotations

import math

import pytest
import torch

from sparsecodes import SparseCoder
from sparsecodes.encoders import available_encoders
from sparsecodes.metrics import dictionary_mcc
from sparsecodes.normalise import Normaliser
from sparsecodes.synthetic import make_sparse_data
from sparsecodes.training.trainer import TrainConfig, Trainer


# ----------------------------------------------------------------------------- known codes
def test_fit_with_known_codes_recovers_the_dictionary_and_the_codes():
    # undercomplete (8 atoms in 16 dims) and noiseless: x = s D holds exactly, the ReLU encoder
    # can represent s = relu(pinv(D) x) exactly, so the only error left is the optimiser's
    data = make_sparse_data(n_latents=8, n_dims=16, k=3, n_samples=2048, seed=0)
    coder = SparseCoder(16, 8, "relu", seed=0)
    cos0 = (coder.W_dec.detach() * data.dictionary).sum(1)
    assert cos0.abs().max() < 0.9  # the initial atoms are far from the true ones
    coder.fit(data.x, codes=data.codes, steps=600, lr=1e-2, batch_size=256, decay_fraction=0.5)
    assert coder.train_config["setting"] == "known_codes"
    # the codes name the latents, so atom i must match true atom i (not just some permutation)
    cos = (coder.W_dec.detach() * data.dictionary).sum(1)
    assert float((1 - cos).max()) < 1e-4, cos
    assert float(dictionary_mcc(data.dictionary, coder)) > 1 - 1e-4
    z = coder.encode(data.x)
    assert float((z - data.codes).norm() / data.codes.norm()) < 1e-2


def test_fit_refuses_codes_of_the_wrong_shape():
    data = make_sparse_data(n_latents=8, n_dims=16, k=3, n_samples=256, seed=0)
    coder = SparseCoder(16, 8, "relu", seed=0)
    with pytest.raises(ValueError, match="codes"):
        coder.fit(data.x, codes=torch.cat([data.codes, data.codes[:, :1]], 1), steps=1)
    with pytest.raises(ValueError, match="codes has 255 rows but x has 256"):
        coder.fit(data.x, codes=data.codes[:-1], steps=1)
    assert not coder.fitted


# ----------------------------------------------------------------------------- normaliser
def _rows_with_norms(norms: list[float], d: int) -> torch.Tensor:
    """Rows ``[len(norms), d]`` in varied directions with exactly the given norms."""
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(len(norms), d, generator=g, dtype=torch.float64))
    return (x * torch.tensor(norms, dtype=torch.float64)[:, None]).float()


def test_expected_norm_scales_the_mean_norm_to_sqrt_d_in():
    x = _rows_with_norms([1.0, 2.0, 3.0, 6.0], 9)  # mean norm 3, sqrt(d_in) = 3 * 1
    n = Normaliser("expected_norm").fit(x * 4)  # mean norm 12 -> scale 3 / 12
    assert float(n.scale) == pytest.approx(0.25, rel=1e-6)
    y = n(x * 4)
    assert float(y.norm(dim=1).mean()) == pytest.approx(math.sqrt(9), rel=1e-6)
    torch.testing.assert_close(n.invert(y), x * 4, rtol=1e-6, atol=0)
    # "none" is the identity with scale 1
    plain = Normaliser("none").fit(x * 4)
    assert (
        float(plain.scale) == 1.0 and torch.equal(plain(x), x) and torch.equal(plain.invert(x), x)
    )
    with pytest.raises(ValueError, match="normalize must be"):
        Normaliser("layer_norm")  # type: ignore[arg-type]


def test_coder_decodes_in_the_input_scale_and_saves_the_scale(tmp_path):
    x = _rows_with_norms([10.0, 20.0, 30.0, 60.0] * 16, 16)  # mean norm 30 -> scale 4 / 30
    coder = SparseCoder(16, 32, "relu", normalize="expected_norm", seed=0)
    coder.fit(x, steps=2, batch_size=16)
    assert float(coder.normaliser.scale) == pytest.approx(4 / 30, rel=1e-6)
    # codes live in the normalised space; decode maps back to the input's scale
    z = coder.encode(x)
    in_normalised_space = coder.dictionary.decode(z)
    torch.testing.assert_close(coder.decode(z) * (4 / 30), in_normalised_space, rtol=1e-5, atol=0)
    # a fitted coder keeps its scale when trained further on other data
    coder.fit(x * 10, steps=1, batch_size=16)
    assert float(coder.normaliser.scale) == pytest.approx(4 / 30, rel=1e-6)
    coder.save(tmp_path / "c")
    loaded = SparseCoder.load(tmp_path / "c")
    assert loaded.normaliser.kind == "expected_norm"
    assert torch.equal(loaded.normaliser.scale, coder.normaliser.scale)
    torch.testing.assert_close(loaded.reconstruct(x), coder.reconstruct(x), rtol=0, atol=0)


# ----------------------------------------------------------------------------- dead latents
def test_dead_latents_are_exactly_those_silent_for_dead_after_tokens():
    n, d, batch = 8, 4, 100
    coder = SparseCoder(d, n, "relu", l1=0.0, seed=0)
    never = [0, 3, 5]
    with torch.no_grad():  # latents in `never` can never fire, every other latent always fires
        coder.encoder.b_enc.fill_(1e3)
        coder.encoder.b_enc[never] = -1e4
    cfg = TrainConfig(
        steps=10, lr=1e-6, batch_size=batch, dead_after_tokens=3 * batch, b_dec_init="zeros"
    )
    trainer = Trainer(coder, cfg)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):  # 200 silent tokens: not yet dead
        row = trainer.step(torch.randn(batch, d, generator=g))
        assert not trainer.dead_mask().any() and row["dead_frac"] == 0.0
    row = trainer.step(torch.randn(batch, d, generator=g))  # 300 silent tokens: dead
    assert trainer.dead_mask().nonzero().flatten().tolist() == never
    assert row["dead_frac"] == 3 / 8
    assert trainer.tokens_since_fired.tolist() == [300 if i in never else 0 for i in range(n)]
    with torch.no_grad():  # latent 3 starts firing: it is alive again at once
        coder.encoder.b_enc[3] = 1e3
    row = trainer.step(torch.randn(batch, d, generator=g))
    assert trainer.dead_mask().nonzero().flatten().tolist() == [0, 5]
    assert trainer.tokens_since_fired[[0, 3, 5]].tolist() == [400, 0, 400]
    assert row["dead_frac"] == 2 / 8


# ----------------------------------------------------------------------------- inference
def test_amortised_inference_on_a_trained_dictionary_is_refused_iterative_runs():
    data = make_sparse_data(n_latents=8, n_dims=16, k=3, n_samples=64, seed=1)
    coder = SparseCoder(16, 8, "topk", k=3, seed=0)
    coder.set_dictionary(data.dictionary)
    amortised = available_encoders("amortised")
    assert {"relu", "topk", "jumprelu", "gated", "batchtopk"} <= set(amortised)
    for name in amortised:
        if name == coder.encoder.name:
            continue  # its own encoder is the default inference, not a foreign one
        with pytest.raises(ValueError, match=f"inference='{name}' is an amortised encoder"):
            coder.encode(data.x, inference=name)
    # an iterative encoder runs on the dictionary: exact recovery of 3-sparse codes here
    z = coder.encode(data.x, inference="omp", k=3)
    torch.testing.assert_close(z, data.codes, rtol=1e-4, atol=1e-4)
