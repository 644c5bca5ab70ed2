"""The "atoms" paper (arXiv 2509.20784): AIP, coherence, the threshold encoder and check_atoms.

Planted atoms: 128 atoms in 64 dimensions, the identity and a (sign-flipped) Hadamard basis, mixed
by a random invertible map, so their Euclidean coherence is large (~0.5) but under the AIP
(whitened by the data's inverse covariance) it is ~0.19 < 1/(2K-1) = 1/3 for K = 2 codes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import sparsecodes
from sparsecodes import SparseCoder
from sparsecodes.activations import StoreWriter
from sparsecodes.cli import main
from sparsecodes.encoders import available_encoders
from sparsecodes.evaluation.atoms import check_atoms
from sparsecodes.metrics import (
    aip,
    aip_coherence,
    aip_gram,
    support_metrics,
    threshold_recovery_condition,
    uniqueness_bound,
    whitening_matrix,
)

D, K = 64, 2


def planted(n: int = 20_000, seed: int = 1):
    """``(x [n, 64] float64, codes [n, 128], atoms [128, 64] unit rows, A [64, 64])``: exactly K
    nonzero codes per sample with magnitudes in [0.8, 1]."""
    g = torch.Generator().manual_seed(seed)
    h = torch.tensor(scipy.linalg.hadamard(D), dtype=torch.float64) / D**0.5
    base = torch.cat([torch.eye(D, dtype=torch.float64), h.T])
    n_atoms = base.shape[0]
    base = base * (torch.randint(0, 2, (n_atoms, 1), generator=g) * 2 - 1)
    a = torch.randn(D, D, generator=g, dtype=torch.float64)
    atoms = F.normalize(base @ a.T, dim=1)
    idx = torch.stack([torch.randperm(n_atoms, generator=g)[:K] for _ in range(n)])
    mag = 0.8 + 0.2 * torch.rand(n, K, generator=g, dtype=torch.float64)
    codes = torch.zeros(n, n_atoms, dtype=torch.float64).scatter_(1, idx, mag)
    return codes @ atoms, codes, atoms, a


def random_invertible(d: int, seed: int, cond: float = 30.0) -> torch.Tensor:
    """A random ``[d, d]`` map with singular values spread over ``[1, cond]``."""
    g = torch.Generator().manual_seed(seed)
    q1, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q1 @ torch.diag(torch.logspace(0, np.log10(cond), d, dtype=torch.float64)) @ q2


def threshold_coder(x, atoms) -> SparseCoder:
    coder = SparseCoder(D, atoms.shape[0], "threshold", learn_threshold=False)
    coder.set_dictionary(atoms.float())
    coder.encoder.fit_whitening(x.float())
    return coder


# ---------------------------------------------------------------------------- AIP


def test_aip_is_unchanged_by_a_random_invertible_map():
    """AIP (plain and normalised), Gram and coherence agree to 1e-5 relative after x -> A x,
    atoms -> A d (float64; S re-estimated from the mapped data), while the Euclidean cosines do
    not (so the check has teeth)."""
    x, _, atoms, _ = planted(n=5000)
    a = random_invertible(D, seed=7)
    x2, atoms2 = x @ a.T, atoms @ a.T
    s, s2 = whitening_matrix(x), whitening_matrix(x2)
    g, g2 = aip_gram(atoms, s), aip_gram(atoms2, s2)
    assert torch.allclose(g2, g, rtol=1e-5, atol=1e-5 * float(g.abs().max()))
    raw, raw2 = aip(atoms, atoms, s, normalize=False), aip(atoms2, atoms2, s2, normalize=False)
    assert torch.allclose(raw2, raw, rtol=1e-5, atol=1e-5 * float(raw.abs().max()))
    mu, mu2 = aip_coherence(atoms, s), aip_coherence(atoms2, s2)
    assert abs(mu2 - mu) <= 1e-5 * mu
    # the same holds for the inverse raw second moment (the paper's (E[k k^T])^-1)
    r, r2 = whitening_matrix(x, center=False), whitening_matrix(x2, center=False)
    assert abs(aip_coherence(atoms2, r2) - aip_coherence(atoms, r)) <= 1e-5
    cos, cos2 = aip_gram(atoms, torch.eye(D)), aip_gram(atoms2, torch.eye(D))
    assert float((cos2 - cos).abs().max()) > 0.1


def test_aip_definitions_by_hand():
    """``<u, v>_S = u^T S v`` and its normalisation on a 2-d example; coherence of an orthonormal
    pair under the identity is 0; the bound is 1/(2K-1)."""
    s = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    u, v = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert float(aip(u, v, s, normalize=False)) == pytest.approx(0.5)
    assert float(aip(u, v, s)) == pytest.approx(0.5 / (2**0.5 * 1.0))
    assert aip_coherence(torch.eye(2), torch.eye(2)) == 0.0
    assert aip_coherence(torch.cat([u, v]), s) == pytest.approx(0.5 / 2**0.5)
    assert uniqueness_bound(1) == 1.0 and uniqueness_bound(3) == pytest.approx(0.2)
    # whitening the data makes its covariance the identity: S = Cov^-1
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=g, dtype=torch.float64) @ torch.randn(
        3, 3, generator=g, dtype=torch.float64
    )
    cov = torch.cov(x.T, correction=0)
    assert torch.allclose(whitening_matrix(x) @ cov, torch.eye(3, dtype=torch.float64), atol=1e-9)


def test_recovery_condition_interval():
    c = threshold_recovery_condition(0.1, 3, 0.8, 1.0)
    assert (c.tau_low, c.tau_high) == pytest.approx((0.3, 0.6)) and c.feasible
    assert c.admits(0.45) and not c.admits(0.25) and not c.admits([0.45, 0.7])
    # delta_min > mu (2K - 1) delta_max fails exactly at equality
    assert not threshold_recovery_condition(0.16, 3, 0.8, 1.0).feasible


# ---------------------------------------------------------------------------- threshold SAE


def test_threshold_sae_recovers_planted_support_exactly():
    """Under the uniqueness and recovery conditions, every sample's support is recovered (support
    F1 = 1 on all samples); after a random invertible map of the data (atoms mapped too) the
    same whitened threshold still recovers every support; a threshold outside the paper's
    interval does not."""
    x, codes, atoms, _ = planted()
    coder = threshold_coder(x, atoms)
    report = check_atoms(coder, x, codes=codes)
    assert report.k == K and report.coherence < 1 / 3 and report.uniqueness_holds
    assert report.recovery_feasible
    tau = 0.5 * (report.tau_low + report.tau_high)
    with torch.no_grad():
        coder.encoder.threshold.fill_(tau)
    z = coder.encode(x.float())
    truth = codes != 0
    assert torch.equal(z != 0, truth)  # per-sample F1 = 1.0 for every sample
    ident = (np.arange(codes.shape[1]), np.arange(codes.shape[1]))
    assert support_metrics(codes, z, ident)["f1"] == 1.0
    assert check_atoms(coder, x, codes=codes).recovery_holds
    # codes on the support are the coefficients up to the AIP crosstalk mu (K-1) delta_max
    err = (z.double() - codes)[truth].abs().max()
    assert float(err) < 0.35

    a = random_invertible(D, seed=3)
    x2, atoms2 = x @ a.T, atoms @ a.T
    coder2 = threshold_coder(x2, F.normalize(atoms2, dim=1))
    with torch.no_grad():
        coder2.encoder.threshold.fill_(tau)
    assert torch.equal(coder2.encode(x2.float()) != 0, truth)

    with torch.no_grad():
        coder.encoder.threshold.fill_(report.tau_low * 0.3)  # below the interval
    loose = coder.encode(x.float())
    assert support_metrics(codes, loose, ident)["f1"] < 0.9


def test_check_atoms_reports_a_dictionary_above_the_bound():
    """A near-duplicate atom pushes the AIP coherence above 1/(2K-1): both conditions fail, and
    the text says so."""
    x, codes, atoms, _ = planted(n=4000)
    bad = atoms.clone()
    bad[1] = F.normalize(atoms[0] + 0.2 * atoms[5], dim=0)
    coder = threshold_coder(x, bad)
    r = check_atoms(coder, x, codes=codes)
    assert r.coherence > 0.9 > r.uniqueness_bound == pytest.approx(1 / 3)
    assert set(r.coherent_pair) == {0, 1}
    assert not r.uniqueness_holds and not r.recovery_feasible and not r.recovery_holds
    assert r.samples_unique_fraction == 0.0
    assert "uniqueness mu < 1/(2K-1) FAILS" in r.text()
    good = check_atoms(threshold_coder(x, atoms), x, codes=codes)
    assert good.uniqueness_holds and "uniqueness mu < 1/(2K-1) holds" in good.text()


def test_check_atoms_on_a_loaded_topk_coder(tmp_path):
    """Any coder loaded with sparsecodes.load: S from the data, K = its k, coherence equal to the
    AIP coherence of its W_dec computed independently."""
    x = planted(n=3000)[0]
    coder = SparseCoder(D, 128, "topk", k=K, seed=0)
    coder.fit(x.float(), steps=5, batch_size=256)
    coder.save(tmp_path / "sae")
    loaded = sparsecodes.load(tmp_path / "sae")
    r = check_atoms(loaded, x.float())
    assert r.k == K and r.k_config == K and r.whitening.startswith("the data")
    want = aip_coherence(loaded.W_dec.detach().double(), whitening_matrix(x.float().double()))
    assert r.coherence == pytest.approx(want, rel=1e-4)
    assert r.uniqueness_holds == (r.coherence < 1 / 3)


def test_threshold_encoder_save_load_round_trip(tmp_path):
    x, _, atoms, _ = planted(n=3000)
    coder = threshold_coder(x, atoms)
    with torch.no_grad():
        coder.encoder.threshold.copy_(torch.linspace(2.0, 3.0, 128))
    coder.mark_fitted()
    coder.save(tmp_path / "thr")
    back = sparsecodes.load(tmp_path / "thr")
    assert back.encoder.name == "threshold"
    assert torch.equal(back.encoder.S, coder.encoder.S)
    assert torch.equal(back.encoder.threshold, coder.encoder.threshold)
    assert bool(back.encoder.whitening_frozen)
    assert torch.equal(back.encode(x.float()), coder.encode(x.float()))


def test_threshold_training_estimates_S_from_the_stream_then_freezes():
    """fit() accumulates the covariance from the first ``whiten_tokens`` rows, then stops; S is
    then the inverse covariance of exactly those rows; training a perturbed dictionary through
    the tied encoder lowers the loss."""
    x, _, atoms, _ = planted(n=6000)
    g = torch.Generator().manual_seed(5)
    noisy = F.normalize(
        atoms + 0.15 * torch.randn(atoms.shape, generator=g, dtype=atoms.dtype), dim=1
    )
    coder = SparseCoder(D, 128, "threshold", threshold=2.0, whiten_tokens=2000, seed=0)
    coder.set_dictionary(noisy.float())
    coder.fit(x.float(), steps=60, batch_size=256, lr=3e-4, log_every=6)
    enc = coder.encoder
    assert float(enc.moment_n) == 8 * 256  # 8 batches reach 2000 rows; then frozen
    assert bool(enc.whitening_frozen)
    n, mean = float(enc.moment_n), enc.moment_sum / float(enc.moment_n)
    cov = enc.moment_outer / n - torch.outer(mean, mean)
    ridge = 1e-6 * torch.trace(cov) / D * torch.eye(D, dtype=torch.float64)
    want = torch.linalg.inv(cov + ridge)
    # S is stored in float32: equal to the float64 inverse up to float32 rounding
    assert float((enc.S.double() - want).norm() / want.norm()) < 1e-6
    losses = [h["loss"] for h in coder.history]
    assert np.isfinite(losses).all() and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.02


def test_threshold_is_registered_listed_and_counts_flops():
    assert "threshold" in available_encoders("amortised")
    out = CliRunner().invoke(main, ["encoders"])
    assert out.exit_code == 0 and "threshold" in out.output
    enc = SparseCoder(4, 8, "threshold").encoder
    # 2 N d^2 + 2 N d + N + B d + 2 B d N + 4 B N at B=3, d=4, N=8
    assert enc.inference_flops(3) == 2 * 8 * 16 + 2 * 8 * 4 + 8 + 12 + 2 * 3 * 4 * 8 + 4 * 3 * 8


def test_atoms_cli_writes_the_report(tmp_path):
    x, codes, atoms, _ = planted(n=4000)
    coder = threshold_coder(x, atoms)
    tau = 0.5 * sum((lambda r: (r.tau_low, r.tau_high))(check_atoms(coder, x, codes=codes)))
    with torch.no_grad():
        coder.encoder.threshold.fill_(tau)
    coder.mark_fitted()
    coder.save(tmp_path / "sae")
    w = StoreWriter(
        tmp_path / "store",
        model="planted",
        hook="h",
        shape=(D,),
        dtype="float32",
        corpus_fingerprint="planted",
        context_size=1,
        shard_rows=1000,
    )
    w.append(x.float().numpy())
    w.close()
    res = CliRunner().invoke(
        main,
        [
            "atoms",
            str(tmp_path / "sae"),
            "--store",
            str(tmp_path / "store"),
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "rep"),
        ],
    )
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "rep" / "atoms.json").read_text())
    direct = check_atoms(coder, x.float())
    assert rep["n_samples"] == 4000 and rep["k"] == K
    assert rep["coherence"] == pytest.approx(direct.coherence, rel=1e-6)
    assert rep["uniqueness_holds"] is True
    assert rep["delta_min"] == pytest.approx(direct.delta_min, rel=1e-5)
    assert "AIP coherence mu" in res.output
