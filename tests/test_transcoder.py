"""Transcoders, skip transcoders and crosscoders: the map they compute, training on the tiny llama's
MLPs, persistence (ours and SAELens's layout, with a real sae-lens round trip)."""

from __future__ import annotations

import pytest
import torch

from sparsecodes.metrics import fvu
from sparsecodes.models import load_model
from sparsecodes.transcoder import AFFINE_ENCODERS, Transcoder


@pytest.fixture(scope="module")
def lm():
    return load_model("tiny-llama", device="cpu")


@pytest.fixture(scope="module")
def mlp_acts(lm):
    """``{hook: [5120, 64]}`` for mlp_in/mlp_out of layers 0-1 over seeded random tokens (from a
    16-token vocabulary, so that 4096 training rows cover the inputs well)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 16, (160, 32), generator=g)
    hooks = [f"blocks.{i}.{k}" for i in (0, 1) for k in ("mlp_in", "mlp_out")]
    acts = lm.run(ids, hooks=hooks)
    return {h: a.reshape(-1, a.shape[-1]) for h, a in acts.items()}


def _split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[:4096], x[4096:]


def _train(x, y, encoder="relu", steps=300, **kw):
    tc = Transcoder(x.shape[1], 256, encoder, d_out=y.shape[1], normalize="expected_norm", **kw)
    return tc.fit(x, y, steps=steps, lr=3e-3, batch_size=256, log_every=100)


# ----------------------------------------------------------------- the map
@pytest.mark.parametrize("encoder", AFFINE_ENCODERS)
def test_forward_out_equals_activate_encode_pre_decoded(encoder):
    torch.manual_seed(0)
    kw = {"k": 4} if "topk" in encoder else {}
    if encoder == "matryoshka_batchtopk":
        kw["widths"] = [8, 32]
    tc = Transcoder(12, 32, encoder, d_out=20, skip=True, normalize="expected_norm", **kw)
    x, y = torch.randn(300, 12) * 4, torch.randn(300, 20) * 2
    tc.fit(x, y, steps=20, batch_size=64)
    with torch.no_grad():
        tc.skip.add_(torch.randn_like(tc.skip) * 0.1)  # a non-zero skip path
    xt = x[:50]
    pre = tc.encode_pre(xt)
    assert tc.W_dec_out.shape == (32, 20) and tc.b_dec_out.shape == (20,)
    assert tc.W_skip.shape == (12, 20)
    manual = tc.activate(pre) @ tc.W_dec_out + tc.b_dec_out + xt @ tc.W_skip
    torch.testing.assert_close(tc.forward_out(xt), manual, atol=1e-5, rtol=1e-5)
    # and the same codes / outputs as the batched inference path
    torch.testing.assert_close(tc.activate(pre), tc.encode(xt), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tc.reconstruct(xt), manual, atol=1e-4, rtol=1e-5)
    assert (tc.activate(pre) != 0).any()


def test_encoder_does_not_subtract_output_bias():
    tc = Transcoder(6, 16, "relu", d_out=6)
    with torch.no_grad():
        tc.dictionary.b_dec.fill_(100.0)  # would swamp the pre-activations if subtracted
    x = torch.randn(5, 6)
    enc = tc.encoder
    torch.testing.assert_close(tc.encode(x), torch.relu(x @ enc.W_enc + enc.b_enc))


def test_unsupported_encoder_is_refused():
    with pytest.raises(ValueError, match="cannot be a transcoder's encoder"):
        Transcoder(8, 16, "fista")


# ----------------------------------------------------------------- training on the tiny llama
@pytest.mark.slow
def test_transcoder_learns_the_mlp_and_a_misaligned_pair_does_not(mlp_acts):
    x, y = mlp_acts["blocks.1.mlp_in"], mlp_acts["blocks.1.mlp_out"]
    (xtr, xte), (ytr, yte) = _split(x), _split(y)
    good = _train(xtr, ytr, l1=1e-3)
    fvu_good = fvu(yte, good.reconstruct(xte))  # held-out rows
    # the same rows with (input, output) paired wrongly: nothing to learn, FVU >= 1 held out
    perm = torch.randperm(ytr.shape[0], generator=torch.Generator().manual_seed(1))
    bad = _train(xtr, ytr[perm], l1=1e-3)
    fvu_bad = fvu(yte, bad.reconstruct(xte))
    # measured: 0.33 and 1.05; the best linear map of mlp_in gets 0.50 on all rows
    assert fvu_good < 0.45, fvu_good
    assert fvu_bad > 0.95, fvu_bad


def test_skip_path_gets_gradient_and_learns_a_linear_map():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(10, 14, generator=g) / 10**0.5
    x = torch.randn(2000, 10, generator=g)
    y = x @ A  # purely linear: the skip path alone can fit it
    tc = Transcoder(10, 32, "topk", d_out=14, skip=True, k=2)
    assert torch.equal(tc.skip, torch.zeros(10, 14))
    tc.fit(x, y, steps=400, lr=1e-2, batch_size=200)
    assert tc.skip.abs().max() > 0.1  # gradient reached it
    no_skip = Transcoder(10, 32, "topk", d_out=14, k=2).fit(
        x, y, steps=400, lr=1e-2, batch_size=200
    )
    assert fvu(y, tc.reconstruct(x)) < 0.02 < fvu(y, no_skip.reconstruct(x))


def test_iterative_inference_on_the_decoder_needs_y_and_beats_zero(mlp_acts):
    x, y = mlp_acts["blocks.0.mlp_in"][:1024], mlp_acts["blocks.0.mlp_out"][:1024]
    tc = _train(x, y, "topk", k=8, steps=100)
    with pytest.raises(ValueError, match="pass y="):
        tc.encode(x, inference="omp")
    codes = tc.encode(x, inference="omp", y=y, k=8)
    assert int((codes != 0).sum(1).max()) <= 8
    # OMP sees the target: at the same L0 it reconstructs y at least as well as the encoder
    assert fvu(y, tc.decode(codes)) <= fvu(y, tc.reconstruct(x)) + 1e-3


# ----------------------------------------------------------------- persistence
def test_save_load_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    tc = Transcoder(
        8,
        24,
        "jumprelu",
        d_out=6,
        skip=True,
        in_hooks="blocks.2.mlp_in",
        out_hooks="blocks.2.mlp_out",
        normalize="expected_norm",
    )
    tc.fit(torch.randn(200, 8), torch.randn(200, 6) * 3, steps=10, batch_size=50)
    tc.save(tmp_path / "tc")
    back = Transcoder.load(tmp_path / "tc")
    x = torch.randn(30, 8)
    assert torch.equal(back.forward_out(x), tc.forward_out(x))
    assert (back.in_hook, back.out_hook, back.fitted) == (
        "blocks.2.mlp_in",
        "blocks.2.mlp_out",
        True,
    )
    from sparsecodes import load

    opened = load(tmp_path / "tc")
    assert isinstance(opened, Transcoder) and torch.equal(opened.forward_out(x), tc.forward_out(x))
    assert opened.source.hook_name == "blocks.2.mlp_in"


def test_crosscoder_shapes_and_round_trip(tmp_path):
    hooks_in = [f"blocks.{i}.resid_post" for i in range(3)]
    hooks_out = [f"blocks.{i}.mlp_out" for i in range(2)]
    cc = Transcoder(3 * 8, 40, "topk", d_out=2 * 8, in_hooks=hooks_in, out_hooks=hooks_out, k=4)
    assert cc.is_crosscoder and cc.in_widths == (8, 8, 8) and cc.out_widths == (8, 8)
    xs = [torch.randn(64, 8) for _ in range(3)]
    # the encoder sums per-layer encoders: pre = sum_l x_l @ W_enc[l] + b_enc
    blocks = cc.encoder.W_enc.split(8, dim=0)
    pre = sum(x @ w for x, w in zip(xs, blocks, strict=True)) + cc.encoder.b_enc
    torch.testing.assert_close(cc.encode_pre(torch.cat(xs, dim=1)), pre, atol=1e-5, rtol=1e-5)
    out = cc.split_out(cc.forward_out(torch.cat(xs, dim=1)))
    assert list(out) == hooks_out and all(v.shape == (64, 8) for v in out.values())
    # per-layer decoder blocks: layer 1's output is codes @ W_dec[:, 8:16] + b_dec[8:16]
    codes = cc.activate(pre)
    torch.testing.assert_close(
        out[hooks_out[1]], codes @ cc.W_dec_out[:, 8:] + cc.b_dec_out[8:], atol=1e-5, rtol=1e-5
    )
    cc.save(tmp_path / "cc")
    back = Transcoder.load(tmp_path / "cc")
    assert back.out_hooks == tuple(hooks_out) and back.in_widths == (8, 8, 8)
    x = torch.cat(xs, dim=1)
    assert torch.equal(back.forward_out(x), cc.forward_out(x))


def _trained(encoder: str, skip: bool, **kw) -> Transcoder:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(600, 12, generator=g) * 3, torch.randn(600, 9, generator=g) + 1
    tc = Transcoder(
        12,
        40,
        encoder,
        d_out=9,
        skip=skip,
        in_hooks="blocks.1.mlp_in",
        out_hooks="blocks.1.mlp_out",
        normalize="expected_norm",
        **kw,
    )
    tc.fit(x, y, steps=30, batch_size=100)
    if skip:
        with torch.no_grad():
            tc.skip.add_(torch.randn(tc.skip.shape, generator=g) * 0.1)
    return tc


SAELENS_CASES = [("relu", False, {}), ("relu", True, {}), ("jumprelu", True, {})]
SAELENS_CASES += [("batchtopk", False, {"k": 5})]


@pytest.mark.parametrize(("encoder", "skip", "kw"), SAELENS_CASES)
def test_saelens_layout_round_trip(tmp_path, encoder, skip, kw):
    from sparsecodes import load

    tc = _trained(encoder, skip, **kw)
    tc.save(tmp_path / "sl", format="saelens", model_name="tiny-llama")
    back = load(tmp_path / "sl")
    assert isinstance(back, Transcoder) and back.source.format == "saelens"
    assert (back.in_hook, back.out_hook) == ("blocks.1.mlp_in", "blocks.1.mlp_out")
    assert back.source.model_name == "tiny-llama"
    x = torch.randn(50, 12) * 3
    torch.testing.assert_close(back.forward_out(x), tc.forward_out(x), atol=1e-5, rtol=1e-5)
    assert torch.equal(back.encode(x) != 0, tc.encode(x) != 0)


@pytest.mark.requires("sae_lens")
@pytest.mark.parametrize(("encoder", "skip", "kw"), SAELENS_CASES)
def test_sae_lens_loads_our_transcoder_and_agrees(tmp_path, encoder, skip, kw):
    from sae_lens import SAE

    tc = _trained(encoder, skip, **kw)
    tc.save(tmp_path / "sl", format="saelens")
    sae = SAE.load_from_disk(str(tmp_path / "sl"), device="cpu")
    expected = {False: "Transcoder", True: "SkipTranscoder"}[skip]
    if encoder != "relu":
        expected = "JumpReLU" + expected
    assert type(sae).__name__ == expected
    x = torch.randn(50, 12) * 3
    with torch.no_grad():
        torch.testing.assert_close(sae(x), tc.forward_out(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae.encode(x), tc.encode(x), atol=1e-5, rtol=1e-5)


def test_topk_and_crosscoders_have_no_saelens_layout(tmp_path):
    with pytest.raises(ValueError, match="no SAELens layout"):
        Transcoder(8, 16, "topk", k=2).save(tmp_path / "a", format="saelens")
    cc = Transcoder(8, 16, "relu", in_hooks=["blocks.0.mlp_in", "blocks.1.mlp_in"])
    with pytest.raises(ValueError, match="crosscoder has no SAELens layout"):
        cc.save(tmp_path / "b", format="saelens")


def test_transcoder_splice_with_the_mlp_itself_reproduces_clean_ce(lm):
    import copy
    from types import SimpleNamespace

    from sparsecodes.data import load_texts, token_windows
    from sparsecodes.evaluation.splice import (
        Variant,
        downstream_scores,
        transcoder_variant,
        zero_ablation,
    )

    windows = list(token_windows(list(load_texts(None))[:60], lm.tokenizer, 32))[:8]
    # a stand-in "transcoder" that is the MLP exactly (a copy: the model's own MLP is hooked)
    exact = [
        SimpleNamespace(
            in_hook=f"blocks.{i}.mlp_in",
            out_hook=f"blocks.{i}.mlp_out",
            forward_out=copy.deepcopy(lm.blocks[i].mlp),
        )
        for i in (0, 2)
    ]
    variants = {
        "exact": transcoder_variant(exact),
        "zero": transcoder_variant(exact, zero=True),
        "zero0": transcoder_variant(exact[:1], zero=True),
        "zero_hook0": Variant(zero_ablation),  # the one-hook path at blocks.0.mlp_out
    }
    res = downstream_scores(lm, "blocks.0.mlp_out", windows, variants)
    assert abs(res.ce["exact"] - res.ce_clean) < 1e-5 and res.kl["exact"] < 1e-8
    assert res.ce["zero0"] == res.ce["zero_hook0"]  # the same edit through both paths
    assert abs(res.ce["zero"] - res.ce["zero0"]) > 1e-3  # layer 2 is zeroed too
    assert res.ce_loss_score("exact") == pytest.approx(1.0, abs=1e-4)
