"""Gated SAE encoder (Rajamanoharan et al. 2024a, "Improving dictionary learning with gated SAEs").

Which latents fire and how strongly are decided by two paths that share ``W_enc``:

- gate: ``pi_gate = (x - b_dec) @ W_enc + b_gate``;
- magnitude: ``pi_mag = (x - b_dec) @ (W_enc * exp(r_mag)) + b_mag``;
- code: ``z = 1[pi_gate > 0] * relu(pi_mag)`` (non-negative, exactly zero where the gate is closed).

Because ``(x W_enc) * exp(r_mag)`` equals ``x (W_enc * exp(r_mag))``, one matmul serves both paths.
The step ``1[pi_gate > 0]`` passes no gradient, so the gate learns from two extra terms:

``loss = ||x - x_hat||^2 + l1 * sum_i relu(pi_gate_i) * ||W_dec[i]||
         + ||x - (relu(pi_gate) @ sg(W_dec) + sg(b_dec))||^2``

where ``sg`` stops gradients (the auxiliary reconstruction trains only the gate path). Parameters:
``W_enc`` ``[d_in, n_latents]``, ``b_gate``, ``r_mag``, ``b_mag`` ``[n_latents]``.
"""

from __future__ import annotations

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
from sparsecodes.validation import check_positive


@dataclass
class GatedConfig(EncoderConfig):
    """``l1``: weight of the L1 penalty on the gate pre-activations ``relu(pi_gate)``."""

    l1: float = 1e-3

    def validate(self, d_in: int, n_latents: int) -> None:
        check_positive("l1", self.l1, allow_zero=True)


@register
class GatedEncoder(AmortisedEncoder):
    name: ClassVar[str] = "gated"
    config_cls = GatedConfig
    config: GatedConfig

    def __init__(self, config: GatedConfig, d_in: int, n_latents: int, *, generator=None):
        super().__init__(config, d_in, n_latents, generator=generator)
        w = torch.randn(d_in, n_latents, generator=generator) / d_in**0.5
        self.W_enc = nn.Parameter(w)
        self.b_gate = nn.Parameter(torch.zeros(n_latents))
        self.r_mag = nn.Parameter(torch.zeros(n_latents))
        self.b_mag = nn.Parameter(torch.zeros(n_latents))

    def init_from_dictionary(self, dictionary: Dictionary) -> None:
        """``W_enc = W_dec.T`` (both paths start as the transposed dictionary)."""
        with torch.no_grad():
            self.W_enc.copy_(dictionary.W_dec.detach().T)

    def pre_acts(self, x: Tensor, dictionary: Dictionary) -> tuple[Tensor, Tensor]:
        """``(pi_gate, pi_mag)``, each ``[batch, n_latents]``."""
        h = (x - dictionary.input_bias) @ self.W_enc
        pi_gate = h + self.b_gate
        pi_mag = h * self.r_mag.exp() + self.b_mag
        return pi_gate, pi_mag

    @staticmethod
    def _codes(pi_gate: Tensor, pi_mag: Tensor) -> Tensor:
        return (pi_gate > 0).to(pi_mag.dtype) * torch.relu(pi_mag)

    def encode(self, x: Tensor, dictionary: Dictionary, *, init: Codes | None = None) -> Codes:
        return self._codes(*self.pre_acts(x, dictionary))

    def _gate_losses(self, x: Tensor, dictionary: Dictionary, pi_gate: Tensor) -> dict[str, Tensor]:
        gate = torch.relu(pi_gate)
        norms = dictionary.W_dec.norm(dim=1)
        l1 = self.config.l1 * (gate * norms).sum(dim=-1).mean()
        x_aux = gate @ dictionary.W_dec.detach() + dictionary.b_dec.detach()
        return {"l1": l1, "aux": mse_per_token(x, x_aux)}

    def train_step(self, inp: TrainStepInput) -> TrainStepOutput:
        """Reconstruction + gate L1 + auxiliary gate reconstruction (one encoder matmul)."""
        if inp.target_codes is not None:
            return self.supervised_step(inp)
        pi_gate, pi_mag = self.pre_acts(inp.x, inp.dictionary)
        codes = self._codes(pi_gate, pi_mag)
        x_hat = inp.dictionary.decode(codes)
        losses = {
            "mse": mse_per_token(inp.target_out, x_hat),
            **self._gate_losses(inp.target_out, inp.dictionary, pi_gate),
        }
        return TrainStepOutput(sum(losses.values()), x_hat, codes, losses)  # type: ignore[arg-type]

    def penalties(self, inp: TrainStepInput, codes: Codes, x_hat: Tensor) -> dict[str, Tensor]:
        """Gate L1 and auxiliary terms (recomputes ``pi_gate``; ``train_step`` avoids that)."""
        pi_gate, _ = self.pre_acts(inp.x, inp.dictionary)
        return self._gate_losses(inp.target_out, inp.dictionary, pi_gate)

    def inference_flops(self, batch: int = 1) -> int:
        """Centre, one shared matmul, gate bias, magnitude scale+bias, relu, mask:
        ``2 B d N + B d + 5 B N + N`` (``N`` for ``exp(r_mag)``)."""
        b, d, n = batch, self.d_in, self.n_latents
        return flops.matmul(b, d, n) + b * d + 5 * b * n + n

    def train_step_flops(self, batch: int = 1) -> int:
        """Encode + dense decode + gate L1 (``3 B N``) + auxiliary dense decode and its error,
        their backward (2x), Adam over ``W_enc, b_gate, r_mag, b_mag, W_dec, b_dec``
        (``2 d N + 3 N + d`` parameters)."""
        b, d, n = batch, self.d_in, self.n_latents
        fwd = (
            self.inference_flops(b)
            + flops.dense_decode(b, n, d)
            + 3 * b * n
            + b * n
            + flops.dense_decode(b, n, d)
            + 3 * b * d
        )
        return fwd + flops.backward_of(fwd) + flops.adam(2 * d * n + 3 * n + d)
