"""Steering and ablation through a coder's latents (uses/steering.py), the steer command and the
serve endpoint, on the tiny random llama."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import torch
from click.testing import CliRunner

from sparsecodes.models import load_model
from sparsecodes.sparse_coder import SparseCoder
from sparsecodes.uses.steering import LatentEdit, compare, generate, next_token_logits, steering

HOOK = "blocks.1.resid_post"
N_LAT = 40
SCALE = 2.5  # a normaliser scale != 1, so forgetting to undo it changes every value
PROMPTS = ["def f(x): return x * 2 + alpha", "class Model: value = token"]


@pytest.fixture(scope="module")
def lm():
    return load_model("tiny-llama", device="cpu")


@pytest.fixture(scope="module")
def coder(lm):
    c = SparseCoder(lm.d_model, N_LAT, "relu", normalize="expected_norm", seed=1).eval()
    with torch.no_grad():
        c.normaliser.scale.fill_(SCALE)
        c.encoder.b_enc.fill_(-0.2)
    c.train_config = {"source": {"model_name": "tiny-llama", "hook_name": HOOK}}
    return c


@pytest.fixture(scope="module")
def batch(lm):
    return lm.encode(PROMPTS)


def _acts(lm, batch, edit=None):
    ids, mask = batch
    return lm.run(ids, mask, [HOOK], edits={HOOK: edit} if edit else None)[HOOK]


def _atom(coder, i):
    return coder.W_dec.detach()[i] / SCALE


def _fires(coder, x):
    """Codes [B, T, L] of clean activations x [B, T, d]."""
    return coder.encode(x.reshape(-1, coder.d_in)).reshape(*x.shape[:2], -1)


def _tol(x):
    # x + d - x differs from d by at most one rounding of |x + d| (float32 ulp), per element
    return 2 * torch.finfo(torch.float32).eps * (x.abs().max() + 1)


def test_ablating_no_latent_is_bitwise_identity_on_logits(lm, coder, batch):
    ids, mask = batch
    clean = lm.logits(ids, mask)
    x = _acts(lm, batch)
    silent = int((_fires(coder, x) > 0).sum((0, 1)).argmin())
    assert (_fires(coder, x)[..., silent] == 0).all()  # a latent that never fires here
    with steering(lm, coder, HOOK, ablate=[]):
        none = lm.logits(ids, mask)
    with steering(lm, coder, HOOK, ablate=[silent]):  # encode, zero, decode, add error back
        zeroed = lm.logits(ids, mask)
    assert torch.equal(none, clean) and torch.equal(zeroed, clean)


def test_steering_with_alpha_zero_is_bitwise_identity(lm, coder, batch):
    ids, mask = batch
    clean = lm.logits(ids, mask)
    with steering(lm, coder, HOOK, add={3: 0.0, 17: 0.0}):
        same = lm.logits(ids, mask)
    with steering(lm, coder, HOOK, add={3: 1.0}):
        moved = lm.logits(ids, mask)
    assert torch.equal(same, clean)
    assert not torch.equal(moved, clean)  # the hook is really on


def test_steering_adds_alpha_times_raw_atom_at_the_hook(lm, coder, batch):
    x = _acts(lm, batch)
    got = _acts(lm, batch, LatentEdit(coder, add={3: 4.0, 17: -1.5})) - x
    want = (4.0 * _atom(coder, 3) + -1.5 * _atom(coder, 17)).expand_as(x)
    torch.testing.assert_close(got, want, atol=_tol(x), rtol=0)


def test_ablating_latents_subtracts_their_codes_times_atoms(lm, coder, batch):
    x = _acts(lm, batch)
    codes = _fires(coder, x)
    a, b = codes.sum((0, 1)).topk(2).indices.tolist()  # the two latents firing most
    assert (codes[..., a] > 0).any() and (codes[..., a] == 0).any()  # varies over positions
    got = _acts(lm, batch, LatentEdit(coder, ablate=[a, b])) - x
    want = -(codes[..., a, None] * _atom(coder, a) + codes[..., b, None] * _atom(coder, b))
    torch.testing.assert_close(got, want, atol=_tol(x), rtol=0)
    assert want.abs().max() > 100 * _tol(x)  # the ablation moved something


def test_clamp_sets_the_code_and_keeps_the_error(lm, coder, batch):
    x = _acts(lm, batch)
    codes = _fires(coder, x)
    a = int(codes.sum((0, 1)).argmax())
    got = _acts(lm, batch, LatentEdit(coder, clamp={a: 3.0})) - x
    # D(c') + (x - D(c)) - x = (3 - c_a) d_a at every position
    want = (3.0 - codes[..., a, None]) * _atom(coder, a)
    torch.testing.assert_close(got, want, atol=_tol(x), rtol=0)
    # the decoded part of the edited activation carries code 3 for latent a
    flat = x.reshape(-1, coder.d_in)
    c = coder.encode(flat)
    c2 = c.clone()
    c2[:, a] = 3.0
    rebuilt = coder.decode(c2) + (flat - coder.decode(c))
    torch.testing.assert_close((x + got).reshape(-1, coder.d_in), rebuilt, atol=1e-5, rtol=1e-5)


def test_positions_mask_edits_only_those_positions(lm, coder, batch):
    x = _acts(lm, batch)
    mask = torch.zeros(x.shape[:2], dtype=torch.bool)
    mask[0, 2] = mask[1, 5] = True
    got = _acts(lm, batch, LatentEdit(coder, add={3: 2.0}, positions=mask)) - x
    assert torch.equal(got[~mask], torch.zeros_like(got[~mask]))
    torch.testing.assert_close(
        got[mask], (2.0 * _atom(coder, 3)).expand(2, -1), atol=_tol(x), rtol=0
    )


def _hook_count(lm):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules())


def test_context_manager_removes_hooks_even_on_exception(lm, coder, batch):
    ids, mask = batch
    clean = lm.logits(ids, mask)
    before = _hook_count(lm)
    with pytest.raises(RuntimeError, match="boom"), steering(lm, coder, HOOK, add={3: 50.0}):
        assert _hook_count(lm) == before + 1
        raise RuntimeError("boom")
    assert _hook_count(lm) == before
    assert torch.equal(lm.logits(ids, mask), clean)


def test_steering_acts_during_generate(lm, coder):
    prompt = PROMPTS[0]
    plain = generate(lm, prompt, max_new_tokens=12)
    with steering(lm, coder, HOOK, add={3: 0.0}):
        zero = generate(lm, prompt, max_new_tokens=12)
    with steering(lm, coder, HOOK, add={3: 40.0}):
        steered = generate(lm, prompt, max_new_tokens=12)
    assert zero == plain and steered != plain
    assert generate(lm, prompt, max_new_tokens=12) == plain  # and nothing left behind


def test_compare_reports_the_logit_change_of_the_atom(lm, coder):
    res = compare(lm, coder, PROMPTS[1], HOOK, add={3: 6.0}, max_new_tokens=4, top_n=3)
    ids, mask = lm.encode(PROMPTS[1])
    base = lm.logits(ids, mask)[0, -1]
    with steering(lm, coder, HOOK, add={3: 6.0}):
        new = lm.logits(ids, mask)[0, -1]
    change = new - base
    assert [r[1] for r in res.top_up] == pytest.approx(change.topk(3).values.tolist(), abs=1e-5)
    assert res.top_down[0][1] == pytest.approx(float(change.min()), abs=1e-5)
    assert res.edit == "add 6*#3" and res.hook == HOOK


def test_bad_input_gives_clear_errors(lm, coder):
    with pytest.raises(ValueError, match=r"latent 40 does not exist; this coder has 40 latents"):
        LatentEdit(coder, add={N_LAT: 1.0})
    with pytest.raises(ValueError, match="both clamped and ablated"):
        LatentEdit(coder, clamp={2: 1.0}, ablate=[2])
    with pytest.raises(ValueError, match="must be finite"):
        LatentEdit(coder, add={2: float("nan")})
    lacks = r"'blocks\.9\.resid_post' does not exist in tiny-llama"
    with pytest.raises(ValueError, match=lacks), steering(lm, coder, "blocks.9.resid_post"):
        pass
    narrow = SparseCoder(32, 8, "relu")
    with (
        pytest.raises(
            ValueError, match=r"d_in=32 but tiny-llama's blocks\.1\.resid_post has width"
        ),
        steering(lm, narrow, HOOK, add={2: 1.0}),
    ):
        pass
    with pytest.raises(ValueError, match="width 64 per position but the coder has d_in=32"):
        LatentEdit(narrow, add={2: 1.0})(torch.zeros(1, 3, 64))
    with pytest.raises(ValueError, match="positions mask has shape"):
        LatentEdit(coder, add={2: 1.0}, positions=torch.ones(5, dtype=torch.bool))(
            torch.zeros(1, 3, 64)
        )


def test_steer_cli_prints_both_generations(lm, coder, tmp_path):
    from sparsecodes.cli import main

    coder.save(tmp_path / "sae")
    args = ["steer", "--sae", str(tmp_path / "sae"), "--prompt", PROMPTS[0], "--latent", "3"]
    args += ["--alpha", "40", "--max-new-tokens", "6", "--device", "cpu"]
    res = CliRunner().invoke(main, [*args, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["unsteered"] == generate(lm, PROMPTS[0], max_new_tokens=6)
    with steering(lm, coder, HOOK, add={3: 40.0}):
        assert out["steered"] == generate(lm, PROMPTS[0], max_new_tokens=6)
    text = CliRunner().invoke(main, args)
    assert text.exit_code == 0, text.output
    assert "unsteered: " in text.output and "add 40*#3" in text.output
    bad = CliRunner().invoke(main, [*args[:5], "--latent", "99", "--device", "cpu"])
    assert bad.exit_code != 0 and "latent 99 does not exist" in bad.output
    none = CliRunner().invoke(main, args[:5])
    assert none.exit_code == 2 and "give --latent" in none.output


def test_serve_steer_endpoint(lm, coder, tmp_path):
    from sparsecodes.interp.serve import AnnotateServer, start_in_thread
    from sparsecodes.interp.site import write_shell

    write_shell(tmp_path, "t", HOOK)
    server = AnnotateServer(tmp_path, coder, lm, HOOK, port=0)
    thread = start_in_thread(server)

    def post(obj):
        req = urllib.request.Request(
            server.url + "api/steer",
            data=json.dumps(obj).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    try:
        status, got = post({"prompt": PROMPTS[0], "latent": 3, "alpha": 40, "max_new_tokens": 5})
        assert status == 200
        want = compare(lm, coder, PROMPTS[0], HOOK, add={3: 40.0}, max_new_tokens=5)
        assert (got["unsteered"], got["steered"]) == (want.unsteered, want.steered)
        assert got["unsteered"] != got["steered"]
        status, clamped = post({"prompt": PROMPTS[0], "latent": 3, "clamp": 5, "max_new_tokens": 2})
        assert status == 200 and clamped["edit"] == "clamp #3=5"
        status, err = post({"prompt": PROMPTS[0], "latent": N_LAT})
        assert status == 400 and "40 latents" in err["error"]
        status, err = post({"prompt": "", "latent": 1})
        assert status == 400 and "prompt" in err["error"]
        with urllib.request.urlopen(server.url + "assets/steer.js", timeout=10) as r:
            assert b"api/steer" in r.read()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.slow
@pytest.mark.requires_model("smollm2-135m")
def test_steering_a_digit_latent_raises_digit_logits_on_smollm2():
    """A briefly trained SAE on SmolLM2's blocks.12.resid_post; the latent whose firing best
    matches "this token is a digit" (chosen from activations) is added at 4x its largest
    activation: the next-token probability mass of the digits rises on held-out prompts."""
    from sparsecodes.data import load_texts

    smol = load_model("smollm2-135m", device="cpu")
    hook = "blocks.12.resid_post"
    docs = list(load_texts(None))
    train, held = docs[1::4][:80], docs[::20][:40]
    digit_ids = [i for i in range(smol.vocab_size) if smol.tokenizer.decode([i]).isdigit()]
    is_digit = torch.zeros(smol.vocab_size, dtype=torch.bool)
    is_digit[digit_ids] = True
    acts, digit = [], []
    for t in train:
        ids = smol.encode(t)[0][:, :96]
        acts.append(smol.run(ids, None, [hook])[hook][0, 1:])
        digit.append(is_digit[ids[0, 1:]])
    x, digit = torch.cat(acts), torch.cat(digit)
    assert digit.sum() >= 40  # enough digits to choose from
    sae = SparseCoder(smol.d_model, 512, "topk", k=16, normalize="expected_norm", seed=0)
    sae.fit(x, steps=300, batch_size=256)
    fire = sae.encode(x) > 0
    tp = (fire & digit[:, None]).sum(0).float()
    best = int((2 * tp / (fire.sum(0) + digit.sum()).clamp(min=1)).argmax())
    alpha = 4 * float(sae.encode(x)[:, best].max())
    prompts = [smol.tokenizer.decode(smol.encode(t)[0][0, 1:20]) for t in held]

    def digit_mass() -> torch.Tensor:
        out = []
        for p in prompts:
            out.append(next_token_logits(smol, p).softmax(-1)[digit_ids].sum())
        return torch.stack(out)

    base = digit_mass()
    with steering(smol, sae, hook, add={best: alpha}):
        steered = digit_mass()
    assert steered.mean() > 2 * base.mean()
    assert (steered > base).float().mean() > 0.75
