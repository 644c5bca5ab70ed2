"""Group Bias Adaptation (``gba``): the bias rule, firing rates reaching their group targets with
the weights frozen, no sparsity penalty, exact resume, save/load, registry."""

from __future__ import annotations

import math

import pytest
import torch

from sparsecodes import SparseCoder, flops
from sparsecodes.activations.source import TensorSource
from sparsecodes.encoders import available_encoders, make_encoder
from sparsecodes.encoders.base import TrainStepInput
from sparsecodes.encoders.gba import GBAEncoder
from sparsecodes.training.trainer import TrainConfig, Trainer
from sparsecodes.worlds import FiringSpec, MagnitudeSpec, World, WorldConfig


def test_registered_and_amortised():
    assert "gba" in available_encoders("amortised")


def test_targets_are_geometric_from_htf_to_ltf_in_contiguous_groups():
    enc = make_encoder("gba", 8, 30, n_groups=3, htf=0.1, ltf=0.001)
    assert isinstance(enc, GBAEncoder)
    torch.testing.assert_close(enc.targets, torch.tensor([0.1, 0.01, 0.001]))
    assert enc.group.tolist() == [0] * 10 + [1] * 10 + [2] * 10


def test_bias_rule_exact_on_crafted_counters():
    # group 0 target 0.1, group 1 target 0.01; 100 tokens observed
    enc = make_encoder("gba", 4, 6, n_groups=2, htf=0.1, ltf=0.01, gamma_minus=0.5, gamma_plus=0.25)
    with torch.no_grad():
        enc.b_enc.copy_(torch.tensor([-0.2, -0.2, -0.95, -0.2, -0.1, -0.01]))
        enc.fires.copy_(torch.tensor([30, 5, 50, 0, 0, 0]))
        enc.peak.copy_(torch.tensor([0.4, 0.6, 0.8, 2.0, 0.0, 0.0]))
        enc.tokens.fill_(100)
    enc.adapt_biases()
    # latent 0: rate 0.3 > 0.1 -> -0.2 - 0.5 * 0.4; latent 1: rate 0.05 in [eps, 0.1] -> kept;
    # latent 2: rate 0.5 > 0.1 -> -0.95 - 0.4, clipped at -bias_range = -1;
    # latents 3-5 (group 1) never fired -> + gamma_plus * rbar, rbar = mean of the group's
    # positive peaks = 2.0, so + 0.5, capped at 0
    expected = torch.tensor([-0.4, -0.2, -1.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(enc.b_enc, expected)
    assert int(enc.tokens) == 0 and int(enc.fires.sum()) == 0 and float(enc.peak.sum()) == 0


def test_rbar_is_group_mean_of_positive_peaks():
    enc = make_encoder("gba", 4, 4, n_groups=1, htf=0.5, ltf=0.5, gamma_plus=0.1)
    with torch.no_grad():
        enc.b_enc.fill_(-3.0)
        enc.fires.copy_(torch.tensor([10, 10, 0, 0]))  # rates 0.5, 0.5 (= target): unchanged
        enc.peak.copy_(torch.tensor([1.0, 3.0, 0.0, 0.0]))
        enc.tokens.fill_(20)
    enc.adapt_biases()
    torch.testing.assert_close(enc.b_enc, torch.tensor([-3.0, -3.0, -2.8, -2.8]))


@pytest.mark.parametrize(("tied", "params"), [(True, {"scale"}), (False, {"W_enc"})])
def test_loss_is_the_plain_reconstruction_and_bias_gets_no_gradient(tied, params):
    coder = SparseCoder(8, 16, "gba", n_groups=2, tied=tied, activation="relu")
    x = torch.randn(32, 8)
    out = coder.encoder.train_step(TrainStepInput(x, coder.dictionary))
    w = coder.dictionary.W_dec.T if tied else coder.encoder.W_enc
    z = torch.relu(x @ w + coder.encoder.b_enc) * (0.01 if tied else 1.0)
    x_hat = coder.dictionary.decode(z)
    assert set(out.losses) == {"mse"}
    torch.testing.assert_close(out.loss, (x - x_hat).pow(2).sum(dim=1).mean())
    names = {n for n, _ in coder.encoder.named_parameters()}
    assert names == params  # b_enc is a buffer, moved only by bias adaptation


def test_tied_jumprelu_code_is_scaled_projection_gated_by_bias():
    """Tied + JumpReLU: a firing latent's code is ``scale * w_m . x`` (the bias gates, it does
    not shrink); a latent whose ``w_m . x + b_m <= 0`` is exactly 0."""
    coder = SparseCoder(4, 3, "gba", n_groups=1, htf=0.5, ltf=0.5, scale_init=2.0)
    with torch.no_grad():
        coder.dictionary.W_dec.copy_(torch.eye(4)[:3])
        coder.encoder.b_enc.copy_(torch.tensor([-0.5, -0.5, -0.5]))
    x = torch.tensor([[1.0, 0.4, -2.0, 7.0]])
    z = coder.encode(x)
    torch.testing.assert_close(z, torch.tensor([[2.0, 0.0, 0.0]]))


def _world(seed: int = 0) -> World:
    cfg = WorldConfig(
        n_features=256,
        n_dims=64,
        firing=FiringSpec(l0=6.0, zipf_exponent=0.5, max_prob=0.3),
        magnitude=MagnitudeSpec(mean=1.0, std=0.2),
        seed=seed,
    )
    return World(cfg)


def test_frozen_weights_group_rates_reach_targets_within_2x():
    """Only bias adaptation runs (no optimiser step): every group's mean firing rate on held-out
    rows ends within 2x of its target, from about 0.5 at the start."""
    torch.manual_seed(0)
    world = _world()
    coder = SparseCoder(
        64,
        200,
        "gba",
        n_groups=4,
        htf=0.2,
        ltf=0.005,
        update_every=25,
        gamma_minus=0.02,
        bias_range=10.0,
        seed=0,
    )
    enc = coder.encoder
    w0 = coder.dictionary.W_dec.detach().clone()
    test_x = world.sample(8192, stream="test").x

    def group_rates() -> torch.Tensor:
        with torch.no_grad():
            fired = (enc.pre_acts(test_x, coder.dictionary) > 0).float().mean(dim=0)
        return torch.zeros(4).index_add_(0, enc.group, fired) / 50

    before = group_rates()
    assert bool((before > 0.3).all()), before  # all start far above every target
    batches = world.batches(256)
    enc.train()
    for _ in range(2000):
        x = next(batches).x
        with torch.no_grad():
            enc.train_step(TrainStepInput(x, coder.dictionary))
        enc.after_step()
    assert torch.equal(coder.dictionary.W_dec, w0)
    rates = group_rates()
    ratio = rates / enc.targets
    assert bool(((ratio > 0.5) & (ratio < 2.0)).all()), (rates.tolist(), enc.targets.tolist())


def test_checkpoint_resume_is_exact_mid_window(tmp_path):
    x = torch.randn(1024, 8, generator=torch.Generator().manual_seed(1))
    kw = dict(n_groups=2, htf=0.3, ltf=0.05, update_every=7)
    cfg = TrainConfig(steps=40, lr=3e-3, batch_size=32, seed=0, log_every=5, b_dec_init="zeros")
    ref = SparseCoder(8, 16, "gba", seed=0, **kw)
    Trainer(ref, cfg).fit(TensorSource(x, seed=0))

    first = SparseCoder(8, 16, "gba", seed=0, **kw)
    src = TensorSource(x, seed=0)
    t1 = Trainer(first, TrainConfig(**{**cfg.__dict__, "steps": 17}))
    t1.fit(src)
    assert int(first.encoder.tokens) == 3 * 32  # 17 = 2 * 7 + 3: mid-window counters
    t1.save_checkpoint(tmp_path / "ck", src)

    resumed = SparseCoder(8, 16, "gba", seed=0, **kw)
    src2 = TensorSource(x, seed=0)
    t2 = Trainer(resumed, cfg)
    t2.load_checkpoint(tmp_path / "ck", src2)
    assert int(resumed.encoder.tokens) == 3 * 32 and int(resumed.encoder.steps) == 17
    t2.fit(src2)
    for (k, a), (_, b) in zip(ref.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert not torch.equal(ref.encoder.b_enc, torch.zeros(16))  # the biases did adapt


def test_save_load_round_trip_bit_exact(tmp_path):
    x = torch.randn(512, 8, generator=torch.Generator().manual_seed(2))
    coder = SparseCoder(8, 24, "gba", n_groups=3, update_every=4, seed=3)
    coder.fit(x, steps=30, batch_size=32, lr=3e-3)
    coder.save(tmp_path / "m")
    back = SparseCoder.load(tmp_path / "m")
    assert back.encoder.name == "gba" and back.encoder.config == coder.encoder.config
    for (k, a), (_, b) in zip(coder.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert torch.equal(back.encode(x), coder.encode(x))


@pytest.mark.parametrize(
    ("kw", "per_row", "n_params"),
    [
        ({}, 2 * 16 * 64 + 16 + 2 * 64 + 2 * 64 + 64, 16 * 64 + 64 + 16),
        ({"tied": False, "activation": "relu"}, 2 * 16 * 64 + 16 + 2 * 64, 2 * 16 * 64 + 16),
    ],
)
def test_flops_linear_in_batch_and_adam_without_bias(kw, per_row, n_params):
    enc = make_encoder("gba", 16, 64, **kw)
    f1, f2 = enc.flops(1), enc.flops(2)
    assert f1["inference"] == per_row
    assert f2["inference"] == 2 * f1["inference"]
    # the batch-independent part is Adam over the trained parameters (b_enc is not one)
    assert 2 * f1["train_step"] - f2["train_step"] == flops.adam(n_params)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"n_groups": 0}, "n_groups"),
        ({"n_groups": 100}, "n_groups"),
        ({"htf": 0.01, "ltf": 0.1}, "ltf"),
        ({"update_every": 0}, "update_every"),
        ({"gamma_minus": -1.0}, "gamma_minus"),
        ({"activation": "gelu"}, "activation"),
        ({"scale_init": 0.0}, "scale_init"),
    ],
)
def test_invalid_config_names_field(params, field):
    with pytest.raises(ValueError, match=field):
        make_encoder("gba", 8, 16, **params)


def test_targets_span_log_range():
    enc = make_encoder("gba", 8, 100, n_groups=10, htf=0.1, ltf=1e-3)
    logs = torch.log10(enc.targets.double())
    torch.testing.assert_close(logs.diff(), torch.full((9,), -2 / 9, dtype=torch.float64))
    assert math.isclose(float(enc.targets[0]), 0.1, rel_tol=1e-6)
