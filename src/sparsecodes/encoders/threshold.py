"""Threshold SAE of the "atoms" paper (Hu et al., arXiv 2509.20784): ``W_enc = D^T S``.

The encoder has no weight matrix of its own: its weights derive from the dictionary and a
whitening matrix ``S`` ``[d_in, d_in]`` (the atomic inner product's kernel, see
:mod:`sparsecodes.metrics.atoms` and ``docs/atoms.md``). With atom ``d_j`` (row ``j`` of
``W_dec``) and ``n_j = ||d_j||_S = sqrt(d_j^T S d_j)``:

- ``p_j = d_j^T S (x - b_dec) / n_j``: the projection on the atom normalised to unit AIP norm
  (the paper's ``W_enc = D^T S`` with AIP-normalised atoms), ``p`` ``[batch, n_latents]``;
- ``codes_j = (p_j / n_j) * 1[p_j > tau_j]``: the threshold activation, rescaled so that
  ``codes @ W_dec + b_dec`` reconstructs ``x`` with the stored (unit-L2) atoms.

``tau`` ``[n_latents]`` is in AIP-normalised coefficient units, which are whitened, so a threshold
means the same at any input scale and under any invertible linear map of the activations. The
paper's exact-recovery condition (``mu K delta_max < tau < delta_min - mu (K - 1) delta_max``) is
checked by :func:`sparsecodes.evaluation.atoms.check_atoms`.

``S`` is estimated from data, as the paper does in practice: the inverse covariance
(``center=True``) or inverse raw second moment (``center=False``, the paper's
``(E[k k^T])^{-1}``) of the training inputs, accumulated in float64 from the first
``whiten_tokens`` training rows and then frozen, or set at once by
:meth:`ThresholdEncoder.fit_whitening`. It is stored as buffers, so ``save``/``load`` keep it.

Training: the dictionary learns through both the decoder and the tied encoder; the thresholds
learn (``learn_threshold``) by the JumpReLU straight-through estimators, with an optional L0
penalty ``l0_coef``. The paper itself trains a JumpReLU SAE (free ``W_enc``) and proves
identifiability for this tied construction; this encoder is the construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

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
from sparsecodes.encoders.jumprelu import heaviside_step, jumprelu
from sparsecodes.encoders.registry import register
from sparsecodes.metrics.atoms import whitening_from_moments
from sparsecodes.validation import check_positive


@dataclass
class ThresholdConfig(EncoderConfig):
    """``threshold``: initial ``tau`` of every latent (AIP-normalised units, >= 0);
    ``learn_threshold``: train ``tau`` (straight-through, as JumpReLU); ``bandwidth``: the
    estimators' kernel width; ``l0_coef``: L0 penalty weight; ``center``: inverse covariance (True) or inverse raw second moment (False);
    ``whiten_tokens``: training rows that estimate ``S`` before it is frozen; ``ridge``: relative
    diagonal load of the moment matrix before inversion."""

    threshold: float = 0.5
    learn_threshold: bool = True
    bandwidth: float = 1e-2
    l0_coef: float = 0.0
    center: bool = True
    whiten_tokens: int = 100_000
    ridge: float = 1e-6

    def validate(self, d_in: int, n_latents: int) -> None:
        check_positive("threshold", self.threshold, allow_zero=True)
        check_positive("bandwidth", self.bandwidth)
        check_positive("l0_coef", self.l0_coef, allow_zero=True)
        check_positive("ridge", self.ridge, allow_zero=True)
        if not isinstance(self.whiten_tokens, int) or self.whiten_tokens < 2:
            raise ValueError(f"whiten_tokens must be an integer >= 2, got {self.whiten_tokens!r}")


@register
class ThresholdEncoder(AmortisedEncoder):
    """Parameter ``threshold`` ``[n_latents]``; buffers ``S`` ``[d_in, d_in]`` and the float64
    moment sums (``moment_n``, ``moment_sum`` ``[d_in]``, ``moment_outer`` ``[d_in, d_in]``)."""

    name: ClassVar[str] = "threshold"
    config_cls = ThresholdConfig
    config: ThresholdConfig

    def __init__(self, config: ThresholdConfig, d_in: int, n_latents: int, *, generator=None):
        super().__init__(config, d_in, n_latents, generator=generator)
        self.threshold = nn.Parameter(
            torch.full((n_latents,), float(config.threshold)),
            requires_grad=config.learn_threshold,
        )
        self.register_buffer("S", torch.eye(d_in))
        self.register_buffer("moment_n", torch.zeros((), dtype=torch.float64))
        self.register_buffer("moment_sum", torch.zeros(d_in, dtype=torch.float64))
        self.register_buffer("moment_outer", torch.zeros(d_in, d_in, dtype=torch.float64))
        self.register_buffer("whitening_frozen", torch.zeros((), dtype=torch.bool))

    # ------------------------------------------------------------------ whitening
    @torch.no_grad()
    def fit_whitening(self, x: Any) -> Tensor:
        """Estimate ``S`` from (normalised) activations ``x`` ``[n, d_in]`` or an iterable of such
        chunks, and freeze it (training will not update it). Returns ``S``."""
        chunks = [x] if hasattr(x, "shape") else x
        self.moment_n.zero_()
        self.moment_sum.zero_()
        self.moment_outer.zero_()
        for chunk in chunks:
            self._accumulate(torch.as_tensor(chunk))
        self._refresh_S()
        self.whitening_frozen.fill_(True)
        return self.S

    @torch.no_grad()
    def _accumulate(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"x must be [n, {self.d_in}], got {tuple(x.shape)}")
        t = x.detach().to(device=self.moment_sum.device, dtype=torch.float64)
        self.moment_n += t.shape[0]
        self.moment_sum += t.sum(dim=0)
        self.moment_outer += t.T @ t

    @torch.no_grad()
    def _refresh_S(self) -> None:
        s = whitening_from_moments(
            float(self.moment_n),
            self.moment_sum,
            self.moment_outer,
            center=self.config.center,
            ridge=self.config.ridge,
        )
        self.S.copy_(s.to(self.S.dtype))

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        """Add a training batch ``x`` ``[batch, d_in]`` to ``S``'s estimate, until
        ``whiten_tokens`` rows have been seen; ``S`` is refreshed once at least ``d_in + 1`` rows
        are in (before that it stays the identity)."""
        if bool(self.whitening_frozen):
            return
        self._accumulate(x)
        n = float(self.moment_n)
        if n > self.d_in:
            self._refresh_S()
        if n >= self.config.whiten_tokens:
            self.whitening_frozen.fill_(True)

    # ------------------------------------------------------------------ encoding
    def projections(self, x: Tensor, dictionary: Dictionary) -> tuple[Tensor, Tensor]:
        """``(p, n)``: AIP-normalised projections ``p`` ``[batch, n_latents]`` of ``x - b_dec`` and
        the atoms' AIP norms ``n`` ``[n_latents]``."""
        w = dictionary.W_dec @ self.S.to(dictionary.W_dec.dtype)  # [N, d]: rows S d_j (S symmetric)
        norms = (w * dictionary.W_dec).sum(dim=1).clamp_min(1e-30).sqrt()
        p = ((x.to(w.dtype) - dictionary.b_dec) @ w.T) / norms
        return p, norms

    def encode(self, x: Tensor, dictionary: Dictionary, *, init: Codes | None = None) -> Codes:
        p, norms = self.projections(x, dictionary)
        tau = self.threshold.to(p.dtype)
        return jumprelu(p, tau, self.config.bandwidth) / norms

    def train_step(self, inp: TrainStepInput) -> TrainStepOutput:
        """Reconstruction MSE (+ ``l0_coef`` x L0); the batch first updates ``S``'s estimate."""
        self.observe(inp.x)
        if inp.target_codes is not None:
            return self.supervised_step(inp)
        p, norms = self.projections(inp.x, inp.dictionary)
        tau = self.threshold.to(p.dtype)
        codes = jumprelu(p, tau, self.config.bandwidth) / norms
        x_hat = inp.dictionary.decode(codes)
        losses = {"mse": mse_per_token(inp.x, x_hat)}
        if self.config.l0_coef > 0:
            step = heaviside_step(p, tau, self.config.bandwidth)
            losses["l0"] = self.config.l0_coef * step.sum(dim=-1).mean()
        return TrainStepOutput(sum(losses.values()), x_hat, codes, losses)  # type: ignore[arg-type]

    @torch.no_grad()
    def after_step(self) -> None:
        """Keep the thresholds non-negative."""
        self.threshold.clamp_(min=0.0)

    # ------------------------------------------------------------------ FLOPs
    def inference_flops(self, batch: int = 1) -> int:
        """``W = W_dec S`` (``2 N d^2``), AIP norms (``2 N d + N``), centre (``B d``), projection
        (``2 B d N``), divide by the norms, compare, mask, rescale (``4 B N``)."""
        b, d, n = batch, self.d_in, self.n_latents
        return flops.matmul(n, d, d) + 2 * n * d + n + b * d + flops.matmul(b, d, n) + 4 * b * n

    def train_step_flops(self, batch: int = 1) -> int:
        """Encode + dense decode (+ ``2 B N`` for the L0 step), backward (2x), Adam over
        ``W_dec, b_dec, threshold`` (``d N + d + N``), and, while ``S`` is being estimated, the
        moment update (``2 B d^2``) and its inverse (``~d^3``)."""
        b, d, n = batch, self.d_in, self.n_latents
        fwd = self.inference_flops(b) + flops.dense_decode(b, n, d)
        if self.config.l0_coef > 0:
            fwd += 2 * b * n
        moments = flops.matmul(d, b, d) + d**3
        return fwd + flops.backward_of(fwd) + flops.adam(d * n + d + n) + moments
