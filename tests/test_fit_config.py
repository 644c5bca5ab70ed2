"""SparseCoder.fit and Transcoder.fit build their TrainConfig with one function (fit_config)."""

from __future__ import annotations

import inspect

import torch

from sparsecodes import SparseCoder
from sparsecodes.training.trainer import fit_config
from sparsecodes.transcoder import Transcoder

NOT_TRAIN_OPTIONS = {"self", "x", "y", "dictionary", "codes", "callback", "callback_every"}


def test_both_fits_take_exactly_the_options_fit_config_builds_from():
    built = set(inspect.signature(fit_config).parameters) - {"seed", "b_dec_init"}
    for cls in (SparseCoder, Transcoder):
        params = inspect.signature(cls.fit).parameters
        assert set(params) - NOT_TRAIN_OPTIONS == built, cls.__name__
        for name in built:  # and with the same defaults
            assert (
                params[name].default == inspect.signature(SparseCoder.fit).parameters[name].default
            )


def test_both_fits_record_the_config_fit_config_builds():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, generator=g), torch.randn(64, 5, generator=g)
    opts = dict(steps=3, lr=2e-3, batch_size=16, warmup_steps=1, decay_fraction=0.5)
    opts |= dict(dead_after_tokens=32, log_every=1, progress=False)
    sae = SparseCoder(6, 12, "topk", k=2, seed=4).fit(x, **opts)
    tc = Transcoder(6, 12, "topk", d_out=5, k=2, seed=9).fit(x, y, **opts)
    for coder, b_dec_init in ((sae, "zeros"), (tc, "mean")):
        want = vars(fit_config(coder.seed, b_dec_init=b_dec_init, **opts))
        got = {k: coder.train_config[k] for k in want}
        got["betas"] = tuple(got["betas"])
        assert got == want
        assert got["seed"] == coder.seed and got["steps"] == 3 and got["lr"] == 2e-3
