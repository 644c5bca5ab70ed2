"""Dead-latent resampling (``TrainConfig.resample_every``): dead latents are re-initialised toward
the highest-loss inputs, their Adam state is zeroed, draws follow the squared error, and a run
with resampling off is unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparsecodes import SparseCoder
from sparsecodes.activations.source import TensorSource
from sparsecodes.training.trainer import TrainConfig, Trainer


def _trainer(encoder: str = "relu", n: int = 8, d: int = 4, **cfg) -> Trainer:
    coder = SparseCoder(d, n, encoder, seed=0)
    base = dict(steps=10, lr=1e-2, batch_size=16, seed=0, b_dec_init="zeros")
    return Trainer(coder, TrainConfig(**{**base, **cfg}))


def test_dead_latents_become_the_highest_loss_input_direction_and_adam_rows_zero():
    t = _trainer(resample_every=5, resample_window=5)
    coder = t.coder
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    t.step(x)  # creates nonzero Adam moments everywhere
    with torch.no_grad():
        coder.dictionary.b_dec.copy_(torch.tensor([0.5, -0.25, 0.0, 1.0]))
    dead = torch.tensor([1, 4, 6])
    t.tokens_since_fired.zero_()
    t.tokens_since_fired[dead] = 5 * 16  # silent for the whole window
    alive = torch.tensor([0, 2, 3, 5, 7])
    w_dec_alive = coder.dictionary.W_dec[alive].detach().clone()
    w_enc_alive = coder.encoder.W_enc[:, alive].detach().clone()
    x_hat = x.clone()
    x_hat[9] = 0.0  # only row 9 has any error: every draw must pick it
    n = t.resample_dead(x, x_hat)

    assert n == 3
    want = F.normalize(x[9] - coder.dictionary.b_dec.detach(), dim=0)
    for i in dead.tolist():
        torch.testing.assert_close(coder.dictionary.W_dec[i].detach(), want)
        torch.testing.assert_close(F.normalize(coder.encoder.W_enc[:, i].detach(), dim=0), want)
        assert float(coder.encoder.b_enc.detach()[i]) == 0.0
    # encoder norm: resample_scale (0.2) times the mean norm of the alive columns
    s = 0.2 * float(w_enc_alive.norm(dim=0).mean())
    torch.testing.assert_close(coder.encoder.W_enc[:, dead].norm(dim=0), torch.full((3,), s))
    assert torch.equal(coder.dictionary.W_dec[alive], w_dec_alive)
    assert torch.equal(coder.encoder.W_enc[:, alive], w_enc_alive)
    st = t.optimizer.state
    for key in ("exp_avg", "exp_avg_sq"):
        assert float(st[coder.dictionary.W_dec][key][dead].abs().sum()) == 0.0
        assert float(st[coder.encoder.W_enc][key][:, dead].abs().sum()) == 0.0
        assert float(st[coder.encoder.b_enc][key][dead].abs().sum()) == 0.0
        assert float(st[coder.dictionary.W_dec][key][alive].abs().sum()) > 0.0
    assert t.tokens_since_fired[dead].tolist() == [0, 0, 0]


def test_draws_are_proportional_to_squared_error():
    # 2000 dead latents, two rows with residual norms 1 and sqrt(3): squared errors 1 : 3, so
    # 3/4 of the atoms go to the second row (norm-proportional would give 0.63, norm^4 0.9)
    t = _trainer(n=2000, d=4, resample_every=1)
    x = torch.zeros(2, 4)
    x[0, 0] = 1.0
    x[1, 1] = 3.0**0.5
    x_hat = torch.zeros(2, 4)
    t.tokens_since_fired.fill_(10**6)
    assert t.resample_dead(x, x_hat) == 2000
    share = float((t.coder.dictionary.W_dec[:, 1] > 0.99).float().mean())
    assert abs(share - 0.75) < 4 * (0.75 * 0.25 / 2000) ** 0.5, share


def test_resampling_runs_in_the_loop_and_revives_dead_latents():
    # all inputs on one side: latents whose encoder points away never fire (dead); every 10 steps
    # the dead are resampled toward inputs, after which (nearly) all fire
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 8, generator=g).abs() + 0.5
    kw = dict(steps=60, lr=1e-3, batch_size=64, seed=0, b_dec_init="zeros", log_every=10)
    off = SparseCoder(8, 32, "relu", l1=0.0, seed=0)
    with torch.no_grad():
        off.encoder.W_enc[:, :16] = -off.encoder.W_enc[:, :16].abs()  # half point away
    on = SparseCoder(8, 32, "relu", l1=0.0, seed=0)
    on.load_state_dict(off.state_dict())
    t_off = Trainer(off, TrainConfig(**kw))
    t_off.fit(TensorSource(x, seed=0))
    t_on = Trainer(on, TrainConfig(**kw, resample_every=10, resample_window=10))
    t_on.fit(TensorSource(x, seed=0))
    fired_off = (off.encode(x) > 0).any(dim=0)
    fired_on = (on.encode(x) > 0).any(dim=0)
    assert int((~fired_off).sum()) >= 12
    assert int((~fired_on).sum()) == 0
    rows = [r for r in t_on.state.history if "resampled" in r]
    assert rows and rows[0]["resampled"] >= 12


# pre-change reference: this run with the Trainer as it was before resampling existed
# (sums of |parameters| and the logged losses, to 1e-5; float32 rounding of 60 small steps)
REFERENCE = {
    "sums": {"W_dec": 38.767973, "b_dec": 0.499772, "W_enc": 29.778804, "b_enc": 1.647737},
    "losses": [4.659871, 4.487885, 3.005003, 3.409403, 4.652463, 3.597819],
}


def _fingerprint_run(**extra) -> tuple[SparseCoder, Trainer]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g, dtype=torch.float64).float()
    coder = SparseCoder(8, 16, "topk", k=2, seed=0)
    cfg = TrainConfig(
        steps=60, lr=3e-3, batch_size=32, seed=0, log_every=10, dead_after_tokens=64, **extra
    )
    t = Trainer(coder, cfg)
    t.fit(TensorSource(x, seed=0))
    return coder, t


def test_resampling_off_is_bit_identical_to_before():
    coder, t = _fingerprint_run()
    sd = coder.state_dict()
    for name, want in REFERENCE["sums"].items():
        key = f"{'dictionary' if name in ('W_dec', 'b_dec') else 'encoder'}.{name}"
        assert abs(float(sd[key].double().abs().sum()) - want) < 1e-5, name
    losses = [r["loss"] for r in t.state.history]
    assert losses == pytest.approx(REFERENCE["losses"], abs=1e-5)
    # configured but never due: the option itself changes nothing, bit for bit
    coder2, t2 = _fingerprint_run(resample_every=10**6, resample_window=3)
    for (k, a), (_, b) in zip(sd.items(), coder2.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    strip = [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in t.state.history]
    strip2 = [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in t2.state.history]
    assert strip == strip2


def test_resume_with_resampling_is_exact(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 8, generator=g).abs() + 0.5
    kw = dict(lr=1e-3, batch_size=64, seed=0, b_dec_init="zeros", log_every=10)
    kw |= dict(resample_every=10, resample_window=10)

    def fresh() -> SparseCoder:
        c = SparseCoder(8, 32, "relu", l1=0.0, seed=0)
        with torch.no_grad():
            c.encoder.W_enc[:, :16] = -c.encoder.W_enc[:, :16].abs()
        return c

    ref = fresh()
    Trainer(ref, TrainConfig(steps=45, **kw)).fit(TensorSource(x, seed=0))
    first = fresh()
    src = TensorSource(x, seed=0)
    t1 = Trainer(first, TrainConfig(steps=25, **kw))
    t1.fit(src)
    t1.save_checkpoint(tmp_path / "ck", src)
    second = fresh()
    src2 = TensorSource(x, seed=0)
    t2 = Trainer(second, TrainConfig(steps=45, **kw))
    t2.load_checkpoint(tmp_path / "ck", src2)
    t2.fit(src2)
    for (k, a), (_, b) in zip(ref.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_unsupported_encoder_is_refused_by_name():
    with pytest.raises(ValueError, match="'mlp' does not support dead-latent resampling"):
        _trainer("mlp", resample_every=5)


@pytest.mark.parametrize(
    ("field", "value"),
    [("resample_every", -1), ("resample_window", 0), ("resample_scale", 0.0)],
)
def test_invalid_resample_config_names_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value}).validate()
