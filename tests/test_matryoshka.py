"""Matryoshka BatchTopK: nested-prefix losses, BatchTopK selection and threshold, files."""

from __future__ import annotations

import pytest
import torch

import sparsecodes
from sparsecodes.codes import to_dense
from sparsecodes.encoders import available_encoders, make_encoder
from sparsecodes.encoders.base import TrainStepInput
from sparsecodes.formats import load_saelens, save_saelens
from sparsecodes.sparse_coder import SparseCoder

D, N, K = 12, 32, 3


def _x(n: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g) + 0.3


def _coder(encoder: str = "matryoshka_batchtopk", **kw) -> SparseCoder:
    kw.setdefault("k", K)
    kw.setdefault("matmul_dtype", "float32")
    return SparseCoder(D, N, encoder, seed=3, **kw)


def test_registered_and_default_prefixes():
    assert "matryoshka_batchtopk" in available_encoders("amortised")
    enc = make_encoder("matryoshka_batchtopk", D, 64)
    assert enc.prefix_widths == [4, 8, 16, 32, 64]
    enc = make_encoder("matryoshka_batchtopk", D, 64, widths=[10, 30])
    assert enc.prefix_widths == [10, 30, 64]  # n_latents appended, as SAELens does
    enc = make_encoder("matryoshka_batchtopk", D, 64, group_fractions=[0.25, 0.75])
    assert enc.prefix_widths == [16, 64]


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"widths": [8, 8, 64]}, "strictly increasing"),
        ({"widths": [8, 100]}, "exceed n_latents"),
        ({"group_fractions": [0.5, 0.4]}, "sum to 1"),
        ({"widths": [8], "group_fractions": [1.0]}, "not both"),
    ],
)
def test_bad_groups_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        make_encoder("matryoshka_batchtopk", D, 64, **kw)


def test_each_prefix_loss_equals_its_own_reconstruction():
    """Codes are BatchTopK over all latents; each prefix's term is its own reconstruction MSE."""
    m = _coder(widths=[4, 12])
    m.train()
    with torch.no_grad():  # a nonzero decoder bias, so each prefix must carry it
        m.dictionary.b_dec.normal_(generator=torch.Generator().manual_seed(1))
    x = _x()
    out = m.encoder.train_step(TrainStepInput(x=x, dictionary=m.dictionary))
    enc, W, b = m.encoder, m.dictionary.W_dec.detach(), m.dictionary.b_dec.detach()
    pre = (x - b) @ enc.W_enc.detach() + enc.b_enc.detach()
    flat = pre.flatten()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.topk(x.shape[0] * K).indices] = True
    z = torch.where(keep.view_as(pre) & (pre > 0), pre, 0.0)  # BatchTopK by hand
    torch.testing.assert_close(to_dense(out.codes).detach(), z)
    terms = {}
    for w in (4, 12, N):
        x_hat = z[:, :w] @ W[:w] + b
        terms[w] = ((x - x_hat) ** 2).sum(1).mean()
    assert set(out.losses) == {"mse", "mse_prefix_4", "mse_prefix_12", "auxk"}
    torch.testing.assert_close(out.losses["mse"], terms[N])
    torch.testing.assert_close(out.losses["mse_prefix_4"], terms[4])
    torch.testing.assert_close(out.losses["mse_prefix_12"], terms[12])
    assert float(terms[4]) > float(terms[12]) > float(terms[N])  # the prefixes differ
    # the mean over the 3 prefixes (Bussmann et al.'s loss; no AuxK here: nothing is dead)
    torch.testing.assert_close(out.loss, (terms[4] + terms[12] + terms[N]) / 3)
    m.encoder.config.prefix_reduction = "sum"  # SAELens's reduction
    out_sum = m.encoder.train_step(TrainStepInput(x=x, dictionary=m.dictionary))
    torch.testing.assert_close(out_sum.loss, terms[4] + terms[12] + terms[N])


def test_inner_prefix_loss_does_not_reach_later_atoms():
    m = _coder(widths=[4, 12])
    m.train()
    out = m.encoder.train_step(TrainStepInput(x=_x(), dictionary=m.dictionary))
    (g,) = torch.autograd.grad(out.losses["mse_prefix_4"], m.dictionary.W_dec)
    g = g.to_dense() if g.is_sparse else g
    assert g[4:].abs().max() == 0
    assert g[:4].abs().max() > 0


def test_one_group_is_batchtopk_exactly():
    x = _x(512, seed=5)
    a = _coder("batchtopk").fit(x, steps=30, batch_size=64)
    b = _coder(widths=[N]).fit(x, steps=30, batch_size=64)
    assert b.encoder.prefix_widths == [N]
    assert torch.equal(a.dictionary.W_dec, b.dictionary.W_dec)
    assert torch.equal(a.encoder.W_enc, b.encoder.W_enc)
    assert torch.equal(a.encoder.threshold, b.encoder.threshold)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]


def _trained(**kw) -> SparseCoder:
    return _coder(widths=[4, 12], **kw).fit(_x(512, seed=2), steps=40, batch_size=64)


def test_inference_uses_the_learned_threshold():
    m = _trained()
    thr = float(m.encoder.threshold)
    assert int(m.encoder.threshold_updates) == 40 and thr > 0
    x = _x(50, seed=9)
    enc, W_enc = m.encoder, m.encoder.W_enc.detach()
    pre = (x - m.dictionary.b_dec.detach()) @ W_enc + enc.b_enc.detach()
    expected = torch.where(pre > thr, pre, 0.0)
    z = to_dense(m.encode(x))
    torch.testing.assert_close(z, expected)
    # row-independent: encoding one row alone gives the same codes
    torch.testing.assert_close(to_dense(m.encode(x[:1])), expected[:1])


def test_save_load_round_trip(tmp_path):
    m = _trained()
    m.save(tmp_path / "m")
    back = sparsecodes.load(tmp_path / "m")
    assert back.encoder.name == "matryoshka_batchtopk"
    assert back.encoder.prefix_widths == [4, 12, N]
    assert torch.equal(back.encoder.threshold, m.encoder.threshold)
    x = _x(40, seed=11)
    assert torch.equal(to_dense(back.encode(x)), to_dense(m.encode(x)))


def test_saelens_layout_is_jumprelu_with_the_threshold(tmp_path):
    sae_lens = pytest.importorskip("sae_lens", reason="sae-lens is not installed (test extra)")
    m = _trained(normalize="expected_norm")
    save_saelens(m, tmp_path / "s")
    sae = sae_lens.SAE.load_from_disk(tmp_path / "s")
    assert sae.cfg.architecture() == "jumprelu"
    x = _x(80, seed=4) * 3
    with torch.no_grad():
        z = sae.encode(x)
    ours = to_dense(m.encode(x))
    assert (ours > 0).sum(1).float().mean() > 1
    assert torch.equal(z > 0, ours > 0)
    torch.testing.assert_close(z, ours, rtol=1e-5, atol=1e-5)
    back = load_saelens(tmp_path / "s")
    assert back.encoder.name == "matryoshka_batchtopk"
    assert back.encoder.prefix_widths == [4, 12, N]
    torch.testing.assert_close(to_dense(back.encode(x)), ours, rtol=1e-5, atol=1e-5)
