"""Group Bias Adaptation (GBA): an SAE whose sparsity comes from bias control, not a penalty.

From "Taming Polysemanticity in LLMs: Provable Feature Recovery via Sparse Autoencoders" (Chen,
Sheen, Xiong, Wang, Yang; arXiv 2506.14002). The paper's network has tied weights, one unit-norm
vector ``w_m`` per latent serving as detector and atom, and an output scale ``a_m``:
``f(x) = sum_m a_m w_m phi(w_m . (x - b_pre) + b_m) + b_pre``. Here ``w_m`` is the atom
``W_dec[m]`` (kept at unit norm by the Trainer, so training is the paper's spherical gradient
step), ``b_pre`` is ``b_dec``, ``a_m`` is the parameter ``scale``, and

- ``pre = (x - b_dec) @ W_dec.T + b_enc`` ``[batch, N]``;
- ``z = scale * (pre - b_enc) * [pre > 0]`` (JumpReLU, the paper's activation: the bias decides
  *whether* a latent fires, not how much) or ``z = scale * relu(pre)`` (``activation="relu"``).

The loss is the reconstruction MSE alone (no L1, no top-k). The atoms and ``scale`` learn by
gradient; ``b_enc`` is *not* trained by gradient (it is a buffer) but set by bias adaptation:

- The ``N`` latents are split into ``K = n_groups`` contiguous groups; group ``k`` has the target
  activation frequency (TAF) ``p_k``, geometrically spaced from ``htf`` (group 0, the highest
  target frequency) to ``ltf`` (group ``K-1``, the lowest).
- Over each window of ``update_every`` training steps the encoder counts, per latent ``m``, the
  tokens where ``pre_m > 0`` and the peak pre-activation ``r_m = max(0, max pre_m)``; its
  firing rate is ``p_hat_m = fires_m / tokens``.
- At the end of the window, for latent ``m`` in group ``k``:
  ``p_hat_m > p_k``: ``b_m <- max(b_m - gamma_minus * r_m, -bias_range)`` (fires too often);
  ``p_hat_m < dead_eps``: ``b_m <- min(b_m + gamma_plus * rbar_k, 0)``, ``rbar_k`` the mean of
  ``r_m'`` over the group's latents with ``r_m' > 0`` (0 if none) (silent: wake it up);
  otherwise ``b_m`` stays. Then the counters restart.

The bias range ``[-bias_range, 0]`` is in input units: the paper's ``[-1, 0]`` assumes inputs of
norm about 1. ``scale_init`` matters: the paper's recovery theorem is for a small output scale,
where each latent learns from the inputs it fires on (a power step on them) instead of competing
to reconstruct; on the sparse half of the paper's synthetic world ``scale_init = 1`` recovered no
feature and 0.01 recovered 97% at cosine 0.8 (docs/training.md). ``tied=False`` replaces the atoms
in the encoder by a free ``W_enc`` ``[d_in, N]`` (a ReLU SAE with GBA biases, no output scale).

The counters (``fires``, ``peak``, ``tokens``, ``steps``) are buffers, so they are saved with the
model and a resumed run adapts exactly as an uninterrupted one. They update only in
:meth:`train_step` (never in ``encode``), and the adaptation runs in :meth:`after_step`, which the
Trainer calls after each optimiser step.

Gaps against the paper (its full text was not available offline; the rule above follows the
descriptions of its Algorithm 1 in public summaries): groups are contiguous index blocks (the
latents are exchangeable at initialisation, so this equals a random partition in law); the window
is counted in steps, not buffered tokens; the paper's ``scale`` initialisation is not stated
(``scale_init`` default 0.01 is ours, from its theory's small-scale regime).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from sparsecodes import flops
from sparsecodes.codes import Codes
from sparsecodes.dictionary import Dictionary
from sparsecodes.encoders.base import (
    AmortisedEncoder,
    EncoderConfig,
    TrainStepInput,
    TrainStepOutput,
    mse_per_token,
)
from sparsecodes.encoders.registry import register
from sparsecodes.encoders.relu import resample_linear
from sparsecodes.validation import check_positive


@dataclass
class GBAConfig(EncoderConfig):
    """``n_groups`` groups with TAFs geometric from ``htf`` down to ``ltf``; biases adapt every
    ``update_every`` steps with steps ``gamma_minus`` / ``gamma_plus`` (fractions of the peak
    pre-activation), within ``[-bias_range, 0]``; a latent is silent below ``dead_eps``.
    ``tied`` (the paper's architecture): the encoder reads the unit-norm atoms ``W_dec`` and
    each latent has a trained output scale; ``False``: a free ``W_enc`` as in a ReLU SAE."""

    n_groups: int = 10
    htf: float = 0.1
    ltf: float = 1e-3
    update_every: int = 50
    gamma_minus: float = 0.01
    gamma_plus: float = 0.01
    bias_range: float = 1.0
    dead_eps: float = 1e-6
    tied: bool = True
    activation: str = "jumprelu"
    scale_init: float = 0.01

    def validate(self, d_in: int, n_latents: int) -> None:
        for name in ("n_groups", "update_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.n_groups > n_latents:
            raise ValueError(
                f"n_groups={self.n_groups} is more than n_latents={n_latents}; use fewer groups"
            )
        if not 0.0 < self.ltf <= self.htf < 1.0:
            raise ValueError(
                f"need 0 < ltf <= htf < 1 (target firing rates), got ltf={self.ltf!r}, "
                f"htf={self.htf!r}"
            )
        for name in ("gamma_minus", "gamma_plus", "bias_range"):
            check_positive(name, getattr(self, name))
        check_positive("dead_eps", self.dead_eps, allow_zero=True)
        if self.activation not in ("jumprelu", "relu"):
            raise ValueError(f"activation must be 'jumprelu' or 'relu', got {self.activation!r}")
        check_positive("scale_init", self.scale_init)
        if not isinstance(self.tied, bool):
            raise ValueError(f"tied must be True or False, got {self.tied!r}")


@register
class GBAEncoder(AmortisedEncoder):
    """Dense codes ``[batch, n_latents]`` (module docstring); ``b_enc`` set by group bias
    adaptation, the rest trained on the reconstruction MSE.

    Parameters: ``scale`` ``[N]`` (tied) or ``W_enc`` ``[d_in, N]`` (untied). Buffers: ``b_enc`` ``[N]``; counters ``fires`` ``[N]`` (long), ``peak`` ``[N]``, ``tokens``
    and ``steps`` (scalars, long). Derived (not saved): ``group`` ``[N]`` and ``targets`` ``[K]``.
    """

    name: ClassVar[str] = "gba"
    config_cls = GBAConfig
    config: GBAConfig

    def __init__(self, config: GBAConfig, d_in: int, n_latents: int, *, generator=None):
        super().__init__(config, d_in, n_latents, generator=generator)
        if config.tied:
            self.scale = nn.Parameter(torch.full((n_latents,), float(config.scale_init)))
        else:
            w = torch.randn(d_in, n_latents, generator=generator) / d_in**0.5
            self.W_enc = nn.Parameter(w)

    def _init_state(self) -> None:
        super()._init_state()
        n, k = self.n_latents, self.config.n_groups
        self.register_buffer("b_enc", torch.zeros(n))
        self.register_buffer("fires", torch.zeros(n, dtype=torch.long))
        self.register_buffer("peak", torch.zeros(n))
        self.register_buffer("tokens", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        group = torch.div(torch.arange(n) * k, n, rounding_mode="floor")
        self.register_buffer("group", group, persistent=False)
        targets = torch.logspace(
            math.log10(self.config.htf), math.log10(self.config.ltf), k, dtype=torch.float64
        ).float()
        self.register_buffer("targets", targets, persistent=False)

    def init_from_dictionary(self, dictionary: Dictionary) -> None:
        if not self.config.tied:
            with torch.no_grad():
                self.W_enc.copy_(dictionary.W_dec.detach().T)

    def pre_acts(self, x: Tensor, dictionary: Dictionary) -> Tensor:
        """``[batch, n_latents]`` pre-activations ``(x - b_dec) @ W + b_enc``, ``W`` the atoms
        ``W_dec.T`` (tied) or ``W_enc``."""
        w = dictionary.W_dec.T if self.config.tied else self.W_enc
        return (x - dictionary.b_dec) @ w + self.b_enc

    def activate(self, pre: Tensor) -> Tensor:
        """Codes ``[batch, n_latents]`` from pre-activations ``[batch, n_latents]``: JumpReLU
        ``(pre - b_enc) * [pre > 0]`` (the bias gates but does not shrink) or ReLU
        ``relu(pre)``, times the output scale when tied."""
        if self.config.activation == "jumprelu":
            z = (pre - self.b_enc) * (pre > 0)
        else:
            z = torch.relu(pre)
        return z * self.scale if self.config.tied else z

    def encode(self, x: Tensor, dictionary: Dictionary, *, init: Codes | None = None) -> Codes:
        """Dense codes ``[batch, n_latents]``."""
        return self.activate(self.pre_acts(x, dictionary))

    def train_step(self, inp: TrainStepInput) -> TrainStepOutput:
        """Reconstruction MSE only (``losses``: ``mse``); counts firing and peaks for adaptation."""
        if inp.target_codes is not None:
            return self.supervised_step(inp)
        pre = self.pre_acts(inp.x, inp.dictionary)
        self.observe(pre.detach())
        codes = self.activate(pre)
        x_hat = inp.dictionary.decode(codes)
        mse = mse_per_token(inp.x, x_hat)
        return TrainStepOutput(mse, x_hat, codes, {"mse": mse})

    @torch.no_grad()
    def observe(self, pre: Tensor) -> None:
        """Add a batch of pre-activations ``[batch, n_latents]`` to the window's counters."""
        self.fires.add_((pre > 0).sum(dim=0))
        torch.maximum(self.peak, pre.max(dim=0).values.clamp_min(0), out=self.peak)
        self.tokens.add_(pre.shape[0])

    def firing_rates(self) -> Tensor:
        """``[N]`` firing rate of each latent over the current window (0 before any token)."""
        return self.fires.double().div(max(int(self.tokens), 1)).float()

    def after_step(self) -> None:
        """Count the step; at the end of each window of ``update_every`` steps, adapt the biases."""
        self.steps.add_(1)
        if int(self.steps) % self.config.update_every == 0 and int(self.tokens) > 0:
            self.adapt_biases()

    @torch.no_grad()
    def adapt_biases(self) -> None:
        """The bias update of the module docstring from the window's counters, which it resets."""
        cfg = self.config
        p_hat = self.firing_rates()
        target = self.targets[self.group]
        r = self.peak
        k = cfg.n_groups
        alive = (r > 0).float()
        sums = torch.zeros(k, device=r.device).index_add_(0, self.group, r * alive)
        counts = torch.zeros(k, device=r.device).index_add_(0, self.group, alive)
        rbar = (sums / counts.clamp_min(1))[self.group]
        down = (self.b_enc - cfg.gamma_minus * r).clamp_min(-cfg.bias_range)
        up = (self.b_enc + cfg.gamma_plus * rbar).clamp_max(0.0)
        b = torch.where(p_hat > target, down, torch.where(p_hat < cfg.dead_eps, up, self.b_enc))
        self.b_enc.copy_(b)
        self.fires.zero_()
        self.peak.zero_()
        self.tokens.zero_()

    def resample_latents(
        self, idx: Tensor, directions: Tensor, scale: float
    ) -> list[tuple[nn.Parameter, int]]:
        """Dead-latent resampling. Tied: the atom is the encoder (the Trainer resets it), so
        ``b_enc[idx] = 0`` and the output scale restarts at 1. Untied: ``W_enc[:, idx] =
        directions.T * s`` with ``s`` = ``scale`` times the mean norm of the other columns,
        ``b_enc[idx] = 0``. Returns the parameters touched and their latent dimension."""
        if self.config.tied:
            with torch.no_grad():
                self.b_enc[idx] = 0.0
                self.scale[idx] = float(self.config.scale_init)
            return [(self.scale, 0)]
        resample_linear(self.W_enc, self.b_enc, idx, directions, scale)
        return [(self.W_enc, 1)]

    # ------------------------------------------------------------------ FLOPs
    def inference_flops(self, batch: int = 1) -> int:
        """Centre, matmul, bias, activation: ``B d + 2 B d N + 2 B N``, plus ``2 B N`` for
        JumpReLU's bias removal and gate and ``B N`` for the tied output scale."""
        b, d, n = batch, self.d_in, self.n_latents
        extra = (2 * b * n if self.config.activation == "jumprelu" else 0) + (
            b * n if self.config.tied else 0
        )
        return b * d + flops.matmul(b, d, n) + 2 * b * n + extra

    def train_step_flops(self, batch: int = 1) -> int:
        """Encode + dense decode + MSE ``(3 B d)``, their backward (2x), the counters (``2 B N``:
        a compare and a max per entry), Adam over the parameters: ``d N + N + d`` tied (atoms,
        scale, ``b_dec``), ``2 d N + d`` untied (``b_enc`` is not trained by gradient). The bias
        update, ``~10 N`` once per window, is left out."""
        b, d, n = batch, self.d_in, self.n_latents
        fwd = self.inference_flops(b) + flops.dense_decode(b, n, d) + 3 * b * d
        n_params = d * n + n + d if self.config.tied else 2 * d * n + d
        return fwd + flops.backward_of(fwd) + 2 * b * n + flops.adam(n_params)
