"""MP-SAE: matching pursuit trained end to end; same pursuit as ``mp``, gradients through it."""

from __future__ import annotations

import pytest
import torch

import sparsecodes
from sparsecodes.codes import to_dense
from sparsecodes.dictionary import Dictionary
from sparsecodes.encoders import available_encoders, make_encoder
from sparsecodes.encoders.base import TrainStepInput
from sparsecodes.formats import load_saelens, save_saelens
from sparsecodes.sparse_coder import SparseCoder

D, N = 10, 24


def _x(n: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g)


def _dictionary(seed: int = 0, d: int = D, n: int = N, **kw) -> Dictionary:
    g = torch.Generator().manual_seed(seed)
    dic = Dictionary(d, n, generator=g, **kw)
    with torch.no_grad():
        dic.b_dec.normal_(generator=g).mul_(0.1)
    return dic


def test_registered_as_a_pursuit():
    assert "mp_sae" in available_encoders()
    enc = make_encoder("mp_sae", D, N)
    assert enc.config.nonneg is True and enc.config.k == 16  # SAELens's defaults: ReLU'd MP


@pytest.mark.parametrize(
    "kw",
    [
        {"k": 5},
        {"k": 8, "residual_threshold": 0.9},
        {"k": 6, "nonneg": False, "tol": 0.05},
        {"k": 8, "stop_on_repeat": True},
    ],
)
def test_encode_equals_the_mp_encoder(kw):
    dic = _dictionary()
    x = _x() * 1.5
    ours = make_encoder("mp_sae", D, N, **kw)
    mp = make_encoder("mp", D, N, **{"nonneg": True, **kw})
    za, zb = to_dense(ours.encode(x, dic)), to_dense(mp.encode(x, dic))
    assert torch.equal(za, zb)
    assert (za != 0).sum(1).float().mean() > 1
    # the training forward (with gradient) gives those same codes
    out = ours.train_step(TrainStepInput(x=x, dictionary=dic))
    assert torch.equal(to_dense(out.codes).detach(), za)
    assert out.codes.values.requires_grad


def test_residual_threshold_stops_a_row():
    dic = Dictionary.from_atoms(torch.eye(4))  # orthonormal atoms
    x = torch.tensor([[2.0, 0.3, 0.0, 0.0], [2.0, 0.6, 0.0, 0.0]])
    enc = make_encoder("mp_sae", 4, 4, k=3, residual_threshold=0.5)
    z = to_dense(enc.encode(x, dic))
    # row 0: after atom 0 the residual norm is 0.3 <= 0.5, stop; row 1: 0.6 > 0.5, take atom 1
    assert torch.equal(z, torch.tensor([[2.0, 0.0, 0.0, 0.0], [2.0, 0.6, 0.0, 0.0]]))
    z0 = to_dense(make_encoder("mp_sae", 4, 4, k=3).encode(x, dic))
    assert torch.equal(z0, torch.tensor([[2.0, 0.3, 0.0, 0.0], [2.0, 0.6, 0.0, 0.0]]))


def test_stop_on_repeat_stops_after_a_re_pick():
    # two atoms 60 degrees apart carry x; signed MP alternates a, b, a, b (atoms 2, 3 never
    # correlate)
    atoms = torch.tensor(
        [[1.0, 0.0, 0.0], [0.5, 3**0.5 / 2, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]
    )
    dic = Dictionary.from_atoms(atoms)
    x = torch.tensor([[1.0, 1.0, 0.0]])

    def run(k: int, **kw) -> torch.Tensor:
        return to_dense(make_encoder("mp_sae", 3, 4, k=k, nonneg=False, **kw).encode(x, dic))

    assert not torch.equal(run(3), run(4))  # a 4th step changes the codes ...
    # ... but the 3rd step re-picks an atom, so with stop_on_repeat the row stops after it
    assert torch.equal(run(4, stop_on_repeat=True), run(3))
    assert torch.equal(run(2, stop_on_repeat=True), run(2))  # no repeat within two steps


def test_gradient_flows_through_the_pursuit_and_matches_finite_differences():
    d, n = 4, 6
    g = torch.Generator().manual_seed(3)
    # non-unit atoms, so the coefficient <res, d_j> / ||d_j||^2 is differentiated in full
    W0 = torch.randn(n, d, generator=g, dtype=torch.float64) * 1.3
    b0 = 0.1 * torch.randn(d, generator=g, dtype=torch.float64)
    x = torch.randn(3, d, generator=g, dtype=torch.float64)
    enc = make_encoder("mp_sae", d, n, k=3, nonneg=False)
    enc = enc.double()

    def f(W: torch.Tensor, b: torch.Tensor, grad: bool = False):
        dic = Dictionary(d, n, dtype=torch.float64)
        dic.W_dec = torch.nn.Parameter(W.clone())
        dic.b_dec = torch.nn.Parameter(b.clone())
        out = enc.train_step(TrainStepInput(x=x, dictionary=dic))
        if grad:
            return torch.autograd.grad(out.loss, (dic.W_dec, dic.b_dec)), out.codes.indices
        return out.loss.detach(), out.codes.indices

    (gW, gb), idx0 = f(W0, b0, grad=True)
    gW = gW.to_dense() if gW.is_sparse else gW
    assert gW.abs().max() > 1e-3
    eps = 1e-6
    num = torch.zeros_like(W0)
    for i in range(n):
        for j in range(d):
            Wp, Wm = W0.clone(), W0.clone()
            Wp[i, j] += eps
            Wm[i, j] -= eps
            lp, ip = f(Wp, b0)
            lm, im = f(Wm, b0)
            assert torch.equal(ip, idx0) and torch.equal(im, idx0)  # selection unchanged
            num[i, j] = (lp - lm) / (2 * eps)
    torch.testing.assert_close(gW, num, rtol=1e-6, atol=1e-8)
    numb = torch.zeros_like(b0)
    for j in range(d):
        bp, bm = b0.clone(), b0.clone()
        bp[j] += eps
        bm[j] -= eps
        numb[j] = (f(W0, bp)[0] - f(W0, bm)[0]) / (2 * eps)
    torch.testing.assert_close(gb, numb, rtol=1e-6, atol=1e-8)
    # and it is not the classic (codes held fixed) gradient that the ``mp`` encoder trains with
    mp = make_encoder("mp", d, n, k=3).double()
    dic = Dictionary(d, n, dtype=torch.float64)
    dic.W_dec = torch.nn.Parameter(W0.clone())
    dic.b_dec = torch.nn.Parameter(b0.clone())
    (g_fixed,) = torch.autograd.grad(
        mp.train_step(TrainStepInput(x=x, dictionary=dic)).loss, dic.W_dec
    )
    g_fixed = g_fixed.to_dense() if g_fixed.is_sparse else g_fixed
    assert (g_fixed - gW).abs().max() > 1e-3


def test_training_lowers_the_reconstruction_error():
    x = _x(1024, seed=4)
    m = SparseCoder(D, N, "mp_sae", k=4, seed=1)
    before = float(((m.reconstruct(x) - x) ** 2).sum(1).mean())
    m.fit(x, steps=60, batch_size=128, lr=1e-2)
    after = float(((m.reconstruct(x) - x) ** 2).sum(1).mean())
    assert after < 0.8 * before


def test_save_load_round_trip(tmp_path):
    m = SparseCoder(D, N, "mp_sae", k=5, residual_threshold=0.2, stop_on_repeat=True, seed=2)
    m.fit(_x(256, seed=1), steps=5, batch_size=64)
    m.save(tmp_path / "m")
    back = sparsecodes.load(tmp_path / "m")
    assert back.encoder.name == "mp_sae"
    assert back.encoder.config == m.encoder.config
    x = _x(30, seed=8)
    assert torch.equal(to_dense(back.encode(x)), to_dense(m.encode(x)))


def test_saelens_matching_pursuit_round_trip(tmp_path):
    sae_lens = pytest.importorskip("sae_lens", reason="sae-lens is not installed (test extra)")
    m = SparseCoder(D, N, "mp_sae", k=6, residual_threshold=0.5, seed=2)
    m.fit(_x(256, seed=1), steps=10, batch_size=64)
    save_saelens(m, tmp_path / "s")
    sae = sae_lens.SAE.load_from_disk(tmp_path / "s")
    assert sae.cfg.architecture() == "matching_pursuit"
    assert sae.cfg.max_iterations == 6 and sae.cfg.residual_threshold == 0.5
    x = _x(100, seed=6) * 2  # every row's centred norm is above the threshold
    assert ((x - m.dictionary.b_dec.detach()).norm(dim=1) > 0.5).all()
    with torch.no_grad():
        z = sae.encode(x)
        r = sae.decode(z)
    ours = to_dense(m.encode(x))
    assert (ours > 0).sum(1).float().mean() > 2
    assert torch.equal(z > 0, ours > 0)
    torch.testing.assert_close(z, ours, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r, m.reconstruct(x), rtol=1e-5, atol=1e-5)
    back = load_saelens(tmp_path / "s")
    assert back.encoder.config == m.encoder.config
    assert torch.equal(to_dense(back.encode(x)), ours)


def test_saelens_own_matching_pursuit_sae_loads(tmp_path):
    sae_lens = pytest.importorskip("sae_lens", reason="sae-lens is not installed (test extra)")
    from sae_lens.saes.matching_pursuit_sae import MatchingPursuitSAE, MatchingPursuitSAEConfig

    cfg = MatchingPursuitSAEConfig(d_in=D, d_sae=N, residual_threshold=0.3, max_iterations=7)
    sae = MatchingPursuitSAE(cfg)  # stop_on_duplicate_support=True, SAELens's default
    with torch.no_grad():
        sae.W_dec.copy_(_dictionary(seed=5).W_dec)
        sae.b_dec.copy_(0.1 * torch.ones(D))
    sae.save_model(tmp_path / "theirs")
    m = load_saelens(tmp_path / "theirs")
    assert m.encoder.name == "mp_sae" and m.encoder.config.stop_on_repeat is True
    x = _x(100, seed=2) * 2
    with torch.no_grad():
        z = sae.encode(x)
    torch.testing.assert_close(to_dense(m.encode(x)), z, rtol=1e-5, atol=1e-5)
    assert sae_lens is not None


def test_saelens_export_refuses_what_it_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="nonneg=False"):
        save_saelens(SparseCoder(D, N, "mp_sae", nonneg=False), tmp_path / "a")
    m = SparseCoder(D, N, "mp_sae", normalize="expected_norm")
    m.normaliser.fit(_x(64) * 3)
    with pytest.raises(ValueError, match="normalize='none'"):
        save_saelens(m, tmp_path / "b")
