"""MLP encoder: a deeper amortised map with an L1 penalty (the "MLP encoder" baseline).

``h_0 = x - b_dec``; ``h_l = relu(h_{l-1} @ W_l + b_l)`` for ``depth`` hidden layers of width
``hidden`` (default ``4 * d_in``); codes ``z = relu(h_depth @ W_out + b_out)`` ``[batch, n_latents]``.
Penalty, as for ``relu``: ``l1 * mean_tokens(sum_i z_i * ||W_dec[i]||)``.

Parameters (``encoder.`` prefix in a SparseCoder's state dict): ``layers.{l}.weight``
``[out, in]`` and ``layers.{l}.bias`` for ``l = 0..depth``; the last is the output layer.
"""

from __future__ import annotations

import itertools
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


def _check_int(name: str, value: object, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}; {hint}")


@dataclass
class MLPConfig(EncoderConfig):
    """``hidden``: hidden width (None -> ``4 * d_in``); ``depth``: number of hidden layers;
    ``l1``: weight of the L1 penalty on the codes."""

    hidden: int | None = None
    depth: int = 1
    l1: float = 1e-3

    def validate(self, d_in: int, n_latents: int) -> None:
        if self.hidden is not None:
            _check_int("hidden", self.hidden, "or None for 4 * d_in")
        _check_int("depth", self.depth, "use depth=1 for one hidden layer (use 'relu' for none)")
        check_positive("l1", self.l1, allow_zero=True)


@register
class MLPEncoder(AmortisedEncoder):
    name: ClassVar[str] = "mlp"
    config_cls = MLPConfig
    config: MLPConfig

    def __init__(self, config: MLPConfig, d_in: int, n_latents: int, *, generator=None):
        super().__init__(config, d_in, n_latents, generator=generator)
        self.hidden = config.hidden if config.hidden is not None else 4 * d_in
        widths = [d_in] + [self.hidden] * config.depth + [n_latents]
        self.layers = nn.ModuleList()
        for fan_in, fan_out in itertools.pairwise(widths):
            layer = nn.utils.skip_init(nn.Linear, fan_in, fan_out)  # no global-RNG draw
            with torch.no_grad():
                # He initialisation for ReLU layers, drawn from the seeded generator.
                w = torch.randn(fan_out, fan_in, generator=generator) * (2.0 / fan_in) ** 0.5
                layer.weight.copy_(w)
                layer.bias.zero_()
            self.layers.append(layer)

    def encode(self, x: Tensor, dictionary: Dictionary, *, init: Codes | None = None) -> Codes:
        h = x - dictionary.input_bias
        for layer in self.layers:
            h = torch.relu(layer(h))
        return h

    def penalties(self, inp: TrainStepInput, codes: Codes, x_hat: Tensor) -> dict[str, Tensor]:
        assert isinstance(codes, Tensor)
        norms = inp.dictionary.W_dec.norm(dim=1)
        return {"l1": self.config.l1 * (codes * norms).sum(dim=-1).mean()}

    def _n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def inference_flops(self, batch: int = 1) -> int:
        """With ``H = hidden``, ``L = depth``: centre ``B d``; first layer ``2 B d H + 2 B H``;
        each further hidden layer ``2 B H H + 2 B H``; output ``2 B H N + 2 B N``
        (matmul, bias, ReLU)."""
        b, d, n, h, depth = batch, self.d_in, self.n_latents, self.hidden, self.config.depth
        total = b * d + flops.matmul(b, d, h) + 2 * b * h
        total += (depth - 1) * (flops.matmul(b, h, h) + 2 * b * h)
        total += flops.matmul(b, h, n) + 2 * b * n
        return total

    def train_step_flops(self, batch: int = 1) -> int:
        """Encode + dense decode + L1 (``2 B N``), their backward (2x), Adam over the MLP's
        ``d H + (L-1) H^2 + H N + L H + N`` parameters and the dictionary's ``N d + d``."""
        b, d, n = batch, self.d_in, self.n_latents
        fwd = self.inference_flops(b) + flops.dense_decode(b, n, d) + 2 * b * n
        return fwd + flops.backward_of(fwd) + flops.adam(self._n_params() + n * d + d)
