"""Identifiability probe: the held-out R^2 is exact on known maps, and sparse coding recovers
the latents from an identity "network" far better than from a random ReLU feature map."""

from __future__ import annotations

import pytest
import torch

from sparsecodes.experiments.identifiability import IdentifiabilityConfig, linear_r2, run_seed


def test_linear_r2_is_one_for_an_invertible_linear_map_and_near_zero_for_noise():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2000, 5, generator=g)
    a = torch.randn(5, 8, generator=g)
    codes = h @ a + 3.0  # an injective affine map of the latents
    assert linear_r2(codes[:1000], h[:1000], codes[1000:], h[1000:], 1e-9) > 1 - 1e-6
    noise = torch.randn(2000, 8, generator=g)  # independent of h
    r2 = linear_r2(noise[:1000], h[:1000], noise[1000:], h[1000:], 1e-9)
    assert -0.05 < r2 < 0.02


@pytest.mark.slow
def test_identity_network_recovers_latents_better_than_random_relu_map():
    cfg = IdentifiabilityConfig(
        n_features=16,
        n_dims=12,
        hidden=16,
        l0=2.0,
        coder_latents=32,
        coder_steps=300,
        n_train=2048,
        n_test=1024,
        networks=("identity", "random"),
        seeds=(0,),
    )
    res = run_seed(cfg, 0)
    ident, rand = res["identity"]["topk"], res["random"]["topk"]
    assert ident["mcc"] > 0.75, ident  # measured 0.84
    assert ident["mcc"] > rand["mcc"] + 0.2, (ident, rand)  # random map measured 0.48
    assert res["identity"]["omp"]["r2"] > 0.85  # measured 0.95
