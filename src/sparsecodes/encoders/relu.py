"""ReLU SAE encoder with an L1 penalty weighted by decoder norms.

``z = relu((x - b_dec) @ W_enc + b_enc)``, ``W_enc`` ``[d_in, n_latents]``, ``b_enc`` ``[n_latents]``.
Penalty: ``l1 * mean_tokens(sum_i z_i * ||W_dec[i]||)``; with unit-norm atoms this is plain L1,
and it stays right if a user turns the projection off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from sparsecodes import flops
from sparsecodes.codes import Codes
from sparsecodes.dictionary import Dictionary
from sparsecodes.encoders.base import AmortisedEncoder, EncoderConfig, TrainStepInput
from sparsecodes.encoders.registry import register
from sparsecodes.validation import check_positive


@dataclass
class ReLUConfig(EncoderConfig):
    l1: float = 1e-3

    def validate(self, d_in: int, n_latents: int) -> None:
        check_positive("l1", self.l1, allow_zero=True)


class LinearEncoderParams(AmortisedEncoder):
    """Shared parameters of one-layer SAE encoders: ``W_enc`` ``[d_in, n_latents]``, ``b_enc``."""

    def __init__(self, config: EncoderConfig, d_in: int, n_latents: int, *, generator=None):
        super().__init__(config, d_in, n_latents, generator=generator)
        w = torch.randn(d_in, n_latents, generator=generator) / d_in**0.5
        self.W_enc = nn.Parameter(w)
        self.b_enc = nn.Parameter(torch.zeros(n_latents))

    def init_from_dictionary(self, dictionary: Dictionary) -> None:
        with torch.no_grad():
            self.W_enc.copy_(dictionary.W_dec.detach().T)

    def pre_acts(self, x: Tensor, dictionary: Dictionary) -> Tensor:
        """``[batch, n_latents]`` pre-activations ``(x - b_dec) @ W_enc + b_enc``."""
        return (x - dictionary.b_dec) @ self.W_enc + self.b_enc


@register
class ReLUEncoder(LinearEncoderParams):
    name: ClassVar[str] = "relu"
    config_cls = ReLUConfig

    def encode(self, x: Tensor, dictionary: Dictionary, *, init: Codes | None = None) -> Codes:
        return torch.relu(self.pre_acts(x, dictionary))

    def inference_flops(self, batch: int = 1) -> int:
        """Centre, matmul, bias, ReLU: ``2 B d N + B d + 2 B N``."""
        b, d, n = batch, self.d_in, self.n_latents
        return flops.matmul(b, d, n) + b * d + 2 * b * n

    def train_step_flops(self, batch: int = 1) -> int:
        """Encode + dense decode, their backward (2x), the L1 term, Adam over all parameters."""
        b, d, n = batch, self.d_in, self.n_latents
        fwd = self.inference_flops(b) + flops.dense_decode(b, n, d) + 2 * b * n
        return fwd + flops.backward_of(fwd) + flops.adam(2 * d * n + n + d)

    def penalties(self, inp: TrainStepInput, codes: Codes, x_hat: Tensor) -> dict[str, Tensor]:
        assert isinstance(codes, Tensor)
        norms = inp.dictionary.W_dec.norm(dim=1)
        return {"l1": self.config.l1 * (codes * norms).sum(dim=-1).mean()}  # type: ignore[attr-defined]
