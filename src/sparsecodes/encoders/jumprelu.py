"""JumpReLU SAE encoder with an L0 penalty (Rajamanoharan et al. 2024, "Jumping ahead").

``pre = (x - b_dec) @ W_enc + b_enc`` and ``z = pre * H(pre - theta)``, with a learned positive
threshold per latent ``theta = exp(log_threshold)`` ``[n_latents]`` and ``H`` the Heaviside step.
The loss adds ``l0_coef * mean_tokens(sum_i H(pre_i - theta_i))``.

``H`` has zero gradient almost everywhere, so both the jump in ``z`` and the L0 term pass gradients
to ``theta`` through straight-through estimators built on a rectangle kernel
``K(u) = 1[|u| < 1/2]`` of width ``bandwidth`` (eps):

- ``d z / d theta = -(theta / eps) * K((pre - theta) / eps)``, ``d z / d pre = H(pre - theta)``;
- ``d H / d theta = -(1 / eps) * K((pre - theta) / eps)``, ``d H / d pre = 0``.

Codes are non-negative since ``theta > 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from sparsecodes import flops
from sparsecodes.codes import Codes
from sparsecodes.dictionary import Dictionary
from sparsecodes.encoders.base import (
    EncoderConfig,
    TrainStepInput,
    TrainStepOutput,
    mse_per_token,
)
from sparsecodes.encoders.registry import register
from sparsecodes.encoders.relu import LinearEncoderParams
from sparsecodes.validation import check_positive


@dataclass
class JumpReLUConfig(EncoderConfig):
    """``l0_coef``: weight of the L0 penalty; ``bandwidth``: width eps of the rectangle kernel of
    the straight-through estimators; ``init_threshold``: starting ``theta`` of every latent."""

    l0_coef: float = 1e-3
    bandwidth: float = 1e-3
    init_threshold: float = 1e-3

    def validate(self, d_in: int, n_latents: int) -> None:
        check_positive("l0_coef", self.l0_coef, allow_zero=True)
        check_positive("bandwidth", self.bandwidth)
        check_positive("init_threshold", self.init_threshold)
        for name in ("l0_coef", "bandwidth", "init_threshold"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)!r}")


def _rectangle(u: Tensor) -> Tensor:
    """Rectangle kernel ``1[|u| < 1/2]`` as the dtype of ``u``."""
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLUFn(torch.autograd.Function):
    """``pre * H(pre - theta)`` with the pseudo-derivative ``-(theta/eps) K((pre-theta)/eps)``."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return torch.where(pre > theta, pre, pre.new_zeros(()))  # +0.0, never -0.0

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_pre = grad * (pre > theta).to(grad.dtype)
        k = _rectangle((pre - theta) / eps)
        grad_theta = (grad * k * (-theta / eps)).sum(dim=0)
        return grad_pre, grad_theta, None


class _StepFn(torch.autograd.Function):
    """``H(pre - theta)`` with the pseudo-derivative ``-(1/eps) K((pre-theta)/eps)`` to theta."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_theta = (grad * _rectangle((pre - theta) / eps) * (-1.0 / eps)).sum(dim=0)
        return torch.zeros_like(pre), grad_theta, None


def jumprelu(pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
    """``[batch, n]`` JumpReLU of ``pre`` at thresholds ``theta`` ``[n]`` (straight-through grads)."""
    return _JumpReLUFn.apply(pre, theta, bandwidth)


def heaviside_step(pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
    """``[batch, n]`` ``H(pre - theta)`` with straight-through gradients to ``theta`` only."""
    return _StepFn.apply(pre, theta, bandwidth)


@register
class JumpReLUEncoder(LinearEncoderParams):
    """Parameters ``W_enc`` ``[d_in, n_latents]``, ``b_enc`` and ``log_threshold`` ``[n_latents]``."""

    name: ClassVar[str] = "jumprelu"
    config_cls = JumpReLUConfig
    config: JumpReLUConfig

    def __init__(self, config: JumpReLUConfig, d_in: int, n_latents: int, *, generator=None):
        super().__init__(config, d_in, n_latents, generator=generator)
        self.log_threshold = nn.Parameter(torch.full((n_latents,), math.log(config.init_threshold)))

    @property
    def threshold(self) -> Tensor:
        """``[n_latents]`` thresholds ``theta = exp(log_threshold)`` (always > 0)."""
        return self.log_threshold.exp()

    def encode(self, x: Tensor, dictionary: Dictionary, *, init: Codes | None = None) -> Codes:
        pre = self.pre_acts(x, dictionary)
        return jumprelu(pre, self.threshold.to(pre.dtype), self.config.bandwidth)

    def train_step(self, inp: TrainStepInput) -> TrainStepOutput:
        """Reconstruction MSE + L0 penalty; pre-activations are computed once and shared."""
        if inp.target_codes is not None:
            return self.supervised_step(inp)
        pre = self.pre_acts(inp.x, inp.dictionary)
        theta = self.threshold.to(pre.dtype)
        codes = jumprelu(pre, theta, self.config.bandwidth)
        x_hat = inp.dictionary.decode(codes)
        mse = mse_per_token(inp.target_out, x_hat)
        losses = {"mse": mse, **self._l0_penalty(pre, theta)}
        return TrainStepOutput(sum(losses.values()), x_hat, codes, losses)  # type: ignore[arg-type]

    def _l0_penalty(self, pre: Tensor, theta: Tensor) -> dict[str, Tensor]:
        step = heaviside_step(pre, theta, self.config.bandwidth)
        return {"l0": self.config.l0_coef * step.sum(dim=-1).mean()}

    def penalties(self, inp: TrainStepInput, codes: Codes, x_hat: Tensor) -> dict[str, Tensor]:
        """The L0 term (recomputes the pre-activations; ``train_step`` avoids that)."""
        pre = self.pre_acts(inp.x, inp.dictionary)
        return self._l0_penalty(pre, self.threshold.to(pre.dtype))

    def inference_flops(self, batch: int = 1) -> int:
        """Centre, matmul, bias, compare and mask: ``2 B d N + B d + 3 B N`` (+ ``N`` for exp)."""
        b, d, n = batch, self.d_in, self.n_latents
        return flops.matmul(b, d, n) + b * d + 3 * b * n + n

    def train_step_flops(self, batch: int = 1) -> int:
        """Encode + dense decode + the L0 step (``2 B N``), their backward (2x), Adam over
        ``W_enc, b_enc, log_threshold, W_dec, b_dec`` (``2 d N + 2 N + d`` parameters)."""
        b, d, n = batch, self.d_in, self.n_latents
        fwd = self.inference_flops(b) + flops.dense_decode(b, n, d) + 2 * b * n
        return fwd + flops.backward_of(fwd) + flops.adam(2 * d * n + 2 * n + d)
