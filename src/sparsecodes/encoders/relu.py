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


@torch.no_grad()
def resample_linear(
    W_enc: Tensor, b_enc: Tensor, idx: Tensor, directions: Tensor, scale: float
) -> None:
    """Resampling of a linear encoder (``W_enc`` ``[d_in, N]``, ``b_enc`` ``[N]``) in place:
    ``W_enc[:, idx] = directions.T * s``, ``s`` = ``scale`` times the mean column norm of the
    latents not in ``idx`` (of all, if every latent is in ``idx``), and ``b_enc[idx] = 0``."""
    keep = torch.ones(W_enc.shape[1], dtype=torch.bool, device=W_enc.device)
    keep[idx.to(W_enc.device)] = False
    cols = W_enc[:, keep] if bool(keep.any()) else W_enc
    s = scale * float(cols.norm(dim=0).mean())
    W_enc[:, idx] = directions.T.to(W_enc.dtype) * s
    b_enc[idx] = 0.0


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
        return (x - dictionary.input_bias) @ self.W_enc + self.b_enc

    def resample_latents(
        self, idx: Tensor, directions: Tensor, scale: float
    ) -> list[tuple[nn.Parameter, int]]:
        """``W_enc[:, idx] = directions.T * s`` (``s`` = ``scale`` times the mean norm of the other
        columns), ``b_enc[idx] = 0``; see :meth:`Encoder.resample_latents`."""
        resample_linear(self.W_enc, self.b_enc, idx, directions, scale)
        return [(self.W_enc, 1), (self.b_enc, 0)]


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
