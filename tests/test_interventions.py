"""Interventions through transcoders (uses/steering.py with a coder that reads blocks.{i}.mlp_in
and writes blocks.{i}.mlp_out), the intervene command, on the tiny random llama."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from sparsecodes.graphs import ReplacementModel, fit_transcoder, save_transcoder
from sparsecodes.models import load_model
from sparsecodes.transcoder import Transcoder
from sparsecodes.uses.steering import LatentEdit, generate, intervening, steering

PROMPTS = [
    "When John and Mary went to the store, John gave a drink to",
    "def f(x): return x * 2 + alpha; the quick brown fox jumps over the lazy dog",
]
LAYER = 1


@pytest.fixture(scope="module")
def lm():
    return load_model("tiny-llama", device="cpu")


@pytest.fixture(scope="module")
def dense(lm):
    """Least-squares TopK transcoders of layers 0..3 (skip paths on even layers)."""
    rm = ReplacementModel(lm, [])
    runs = [rm.run(lm.encode(p)[0][0]) for p in PROMPTS]
    x = torch.cat([r.mlp_in for r in runs], 1)
    y = torch.cat([r.mlp_out for r in runs], 1)
    return [
        fit_transcoder(x[i], y[i], i, 32, k=4, skip=i % 2 == 0, seed=i) for i in range(lm.n_layers)
    ]


@pytest.fixture(scope="module")
def trained(lm):
    """A (randomly initialised) sparsecodes Transcoder with a normaliser scale != 1."""
    tc = Transcoder(
        lm.d_model,
        24,
        "relu",
        normalize="expected_norm",
        in_hooks=f"blocks.{LAYER}.mlp_in",
        out_hooks=f"blocks.{LAYER}.mlp_out",
        seed=3,
    ).eval()
    with torch.no_grad():
        tc.normaliser.scale.fill_(2.0)
        tc.normaliser_out.scale.fill_(0.5)
        tc.encoder.b_enc.fill_(0.05)
    return tc


def _mlp(lm, ids, layer=LAYER):
    out = lm.run(ids, hooks=[f"blocks.{layer}.mlp_in", f"blocks.{layer}.mlp_out"])
    return out[f"blocks.{layer}.mlp_in"][0], out[f"blocks.{layer}.mlp_out"][0]


def _codes(tc, x):
    return tc.activate(tc.encode_pre(x)).detach()


def _busiest(tc, x):
    """The latent active at the most positions of ``x`` ``[T, d]``, and its codes ``[T]``."""
    c = _codes(tc, x)
    i = int((c != 0).sum(0).argmax())
    assert (c[:, i] != 0).sum() >= 2
    return i, c[:, i]


@pytest.mark.parametrize("which", ["dense", "trained"])
def test_scale_one_and_no_edit_are_bitwise_identity(lm, dense, trained, which):
    tc = dense[LAYER] if which == "dense" else trained
    ids = lm.encode(PROMPTS[0])[0]
    ref = lm.logits(ids)
    i, _ = _busiest(tc, _mlp(lm, ids)[0])
    with steering(lm, tc, scale={i: 1.0}):
        same = lm.logits(ids)
    with steering(lm, tc):
        none = lm.logits(ids)
    with steering(lm, tc, scale={i: 1.5}):
        moved = lm.logits(ids)
    assert torch.equal(same, ref) and torch.equal(none, ref)
    assert (moved - ref).abs().max() > 1e-4


@pytest.mark.parametrize("which", ["dense", "trained"])
def test_zeroing_a_latent_changes_mlp_out_by_minus_its_activation_times_its_row(
    lm, dense, trained, which
):
    tc = dense[LAYER] if which == "dense" else trained
    ids = lm.encode(PROMPTS[0])[0]
    x_in, y = _mlp(lm, ids)
    i, a = _busiest(tc, x_in)
    with steering(lm, tc, ablate=[i]):
        x_in2, y2 = _mlp(lm, ids)
    assert torch.equal(x_in2, x_in)  # the input it reads is the model's own, unchanged
    expect = -a[:, None] * tc.W_dec_out.detach()[i]
    tol = 2 * torch.finfo(torch.float32).eps * (y.abs().max() + expect.abs().max() + 1)
    assert (y2 - y - expect).abs().max() <= tol
    assert expect.abs().max() > 100 * tol  # the change is far above rounding
    # scaling by 3 adds 2 * a_i * W_dec_out[i]
    with steering(lm, tc, scale={i: 3.0}):
        y3 = _mlp(lm, ids)[1]
    assert (y3 - y + 2 * expect).abs().max() <= 3 * tol


def test_positions_mask_limits_the_edit_and_edits_at_several_layers_add(lm, dense):
    ids = lm.encode(PROMPTS[1])[0]
    T = ids.shape[1]
    x_in, y = _mlp(lm, ids)
    i, a = _busiest(dense[LAYER], x_in)
    p = int((a != 0).nonzero()[-1])
    mask = torch.zeros(T, dtype=torch.bool)
    mask[p] = True
    with steering(lm, dense[LAYER], ablate=[i], positions=mask):
        y2 = _mlp(lm, ids)[1]
    changed = (y2 - y).abs().amax(-1) > 0
    assert changed.tolist() == mask.tolist()
    # two layers at once: layer 0's edit reaches layer 1's input, which layer 1's edit reads live
    j, _ = _busiest(dense[0], _mlp(lm, ids, 0)[0])
    e0, e1 = LatentEdit(dense[0], ablate=[j]), LatentEdit(dense[LAYER], ablate=[i])
    with intervening(lm, [e0, e1]):
        x_in3, y3 = _mlp(lm, ids)
        both = lm.logits(ids)
    assert (x_in3 - x_in).abs().max() > 1e-4  # layer 0's edit moved layer 1's input
    live = -_codes(dense[LAYER], x_in3)[:, i : i + 1] * dense[LAYER].W_dec_out[i]
    with steering(lm, dense[0], ablate=[j]):
        y_only0 = _mlp(lm, ids)[1]
    assert (y3 - y_only0 - live).abs().max() <= 1e-5 * (y.abs().max() + 1)
    with steering(lm, dense[0], ablate=[j]):
        only0 = lm.logits(ids)
    assert (both - only0).abs().max() > 1e-4


def test_intervention_acts_in_generate_as_in_a_full_forward_pass(lm, dense):
    tc = dense[LAYER]
    ids = lm.encode(PROMPTS[0])[0]
    i, _ = _busiest(tc, _mlp(lm, ids)[0])
    n = 8
    with steering(lm, tc, scale={i: -6.0}):
        text = generate(lm, PROMPTS[0], max_new_tokens=n)
        # greedy decoding by full forward passes (no KV cache) with the same edit attached
        cur = ids
        for _ in range(n):
            nxt = lm.logits(cur)[0, -1].argmax()
            cur = torch.cat([cur, nxt.view(1, 1)], 1)
    manual = lm.tokenizer.decode(cur[0, ids.shape[1] :].tolist(), skip_special_tokens=False)
    assert text == manual
    assert text != generate(lm, PROMPTS[0], max_new_tokens=n)


def test_transcoder_edits_give_clear_errors(lm, dense, trained):
    with pytest.raises(ValueError, match=r"attach edit\.hooks"):
        LatentEdit(dense[LAYER], ablate=[0])(torch.zeros(1, 3, lm.d_model))
    with (
        pytest.raises(ValueError, match="do not pass hook="),
        steering(lm, dense[LAYER], "blocks.1.mlp_out", ablate=[0]),
    ):
        pass
    with pytest.raises(ValueError, match="both ablated and scaled"):
        LatentEdit(trained, ablate=[1], scale={1: 2.0})
    with pytest.raises(ValueError, match="latent 32 does not exist; this coder has 32"):
        LatentEdit(dense[LAYER], scale={32: 0.0})
    wide = Transcoder(
        lm.d_model + 1,
        8,
        "relu",
        d_out=lm.d_model,
        in_hooks="blocks.0.mlp_in",
        out_hooks="blocks.0.mlp_out",
    )
    with pytest.raises(ValueError, match="width"), steering(lm, wide, ablate=[0]):
        pass


def test_intervene_cli_prints_target_before_after_and_generations(lm, dense, tmp_path):
    from sparsecodes.cli import main

    for tc in dense:
        save_transcoder(tc, tmp_path / f"l{tc.layer}", model="tiny-llama")
    ids = lm.encode(PROMPTS[0])[0]
    i, _ = _busiest(dense[LAYER], _mlp(lm, ids)[0])
    tok = lm.tokenizer
    t, c = (tok.decode(tok(s, add_special_tokens=False)["input_ids"][:1]) for s in ("M", "J"))
    args = ["intervene", "--transcoders", str(tmp_path), "--prompt", PROMPTS[0]]
    args += ["--scale", f"{LAYER}:{i}=-4", "--target", t, "--contrast", c]
    res = CliRunner().invoke(main, [*args, "--max-new-tokens", "4", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    tid, cid = (tok(s, add_special_tokens=False)["input_ids"][0] for s in (t, c))
    before = lm.logits(ids)[0, -1]
    with steering(lm, dense[LAYER], scale={i: -4.0}):
        after = lm.logits(ids)[0, -1]
    b, a = float(before[tid] - before[cid]), float(after[tid] - after[cid])
    assert f"before {b:+.4f}" in res.output and f"after {a:+.4f}" in res.output
    assert abs(a - b) > 1e-3
    assert "unedited:" in res.output and "edited:" in res.output
    bad = CliRunner().invoke(
        main,
        [
            "intervene",
            "--transcoders",
            str(tmp_path),
            "--prompt",
            "x",
            "--zero",
            "9:1",
            "--device",
            "cpu",
        ],
    )
    assert bad.exit_code != 0 and "no transcoder for layer 9" in bad.output
