"""LISTA: learned, unrolled non-negative ISTA (Gregor & LeCun 2010), untied across steps.

Non-negative ISTA for ``min_z 0.5 ||x - b_dec - z D||^2 + l1 ||z||_1, z >= 0`` (``D = W_dec``
``[n_latents, d_in]``, step ``1/L`` with ``L = ||D||_2^2`` the Lipschitz constant) from ``z_0 = 0``
is ``z_{t+1} = relu(z_t (I - D D^T / L) + (x - b_dec) D^T / L - l1 / L)``. LISTA unrolls
``iters`` such steps and learns every step's matrices and thresholds:

``z_1 = relu(xc @ W_e[0] - theta[0])``,
``z_{t+1} = relu(z_t @ S[t-1] + xc @ W_e[t] - theta[t])`` for ``t = 1..iters-1``, ``xc = x - b_dec``.

Parameters: ``W_e`` ``[iters, d_in, n_latents]``, ``S`` ``[iters-1, n_latents, n_latents]``,
``theta`` ``[iters, n_latents]``. :meth:`LISTAEncoder.init_from_dictionary` sets
``W_e[t] = D^T / L``, ``S[t] = I - D D^T / L``, ``theta[t] = l1 / L``, so before training the
encoder is exactly ``iters`` steps of non-negative ISTA on that dictionary. ``S`` holds
``(iters - 1) * n_latents^2`` numbers: LISTA suits small and medium dictionaries.

Training loss, as for ``relu``: ``||x - x_hat||^2 + l1 * mean_tokens(sum_i z_i ||W_dec[i]||)``.
Compute grows linearly with ``iters`` (see :meth:`LISTAEncoder.inference_flops`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsecodes import flops
from sparsecodes.codes import Codes
from sparsecodes.dictionary import Dictionary
from sparsecodes.encoders.base import AmortisedEncoder, EncoderConfig, TrainStepInput
from sparsecodes.encoders.registry import register
from sparsecodes.validation import check_positive


@dataclass
class LISTAConfig(EncoderConfig):
    """``iters``: unrolled steps (>= 1); ``l1``: sparsity weight (sets the initial thresholds
    ``l1 / L`` and weights the L1 penalty in the training loss)."""

    iters: int = 3
    l1: float = 1e-3

    def validate(self, d_in: int, n_latents: int) -> None:
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 1:
            raise ValueError(
                f"iters must be a positive integer (number of unrolled steps), got {self.iters!r}"
            )
        check_positive("l1", self.l1, allow_zero=True)


def ista_weights(atoms: Tensor, l1: float) -> tuple[Tensor, Tensor, Tensor]:
    """One non-negative ISTA step as LISTA weights for dictionary ``atoms`` ``[n, d]``.

    Returns ``(W_e [d, n], S [n, n], theta [n])`` with ``L = ||atoms||_2^2``:
    ``W_e = atoms^T / L``, ``S = I - atoms atoms^T / L``, ``theta = l1 / L``.
    """
    atoms = atoms.detach().float()
    lip = torch.linalg.matrix_norm(atoms, ord=2).pow(2).clamp_min(1e-12)
    n = atoms.shape[0]
    w_e = atoms.T / lip
    s = torch.eye(n, dtype=atoms.dtype, device=atoms.device) - atoms @ atoms.T / lip
    theta = torch.full((n,), l1, dtype=atoms.dtype, device=atoms.device) / lip
    return w_e, s, theta


@register
class LISTAEncoder(AmortisedEncoder):
    name: ClassVar[str] = "lista"
    config_cls = LISTAConfig
    config: LISTAConfig

    def __init__(self, config: LISTAConfig, d_in: int, n_latents: int, *, generator=None):
        super().__init__(config, d_in, n_latents, generator=generator)
        t = config.iters
        self.W_e = nn.Parameter(torch.empty(t, d_in, n_latents))
        self.S = nn.Parameter(torch.empty(t - 1, n_latents, n_latents))
        self.theta = nn.Parameter(torch.empty(t, n_latents))
        # Standalone default: ISTA on a random unit-norm dictionary (SparseCoder re-initialises
        # from its own dictionary).
        atoms = F.normalize(torch.randn(n_latents, d_in, generator=generator), dim=1)
        self._set_from_atoms(atoms)

    @torch.no_grad()
    def _set_from_atoms(self, atoms: Tensor) -> None:
        w_e, s, theta = ista_weights(atoms, self.config.l1)
        self.W_e.copy_(w_e.expand_as(self.W_e))
        self.S.copy_(s.expand_as(self.S))
        self.theta.copy_(theta.expand_as(self.theta))

    def init_from_dictionary(self, dictionary: Dictionary) -> None:
        """Make the encoder equal ``iters`` steps of non-negative ISTA on ``dictionary``."""
        self._set_from_atoms(dictionary.W_dec)

    def encode(self, x: Tensor, dictionary: Dictionary, *, init: Codes | None = None) -> Codes:
        xc = x - dictionary.b_dec
        z = torch.relu(xc @ self.W_e[0] - self.theta[0])
        for t in range(1, self.config.iters):
            z = torch.relu(z @ self.S[t - 1] + xc @ self.W_e[t] - self.theta[t])
        return z

    def penalties(self, inp: TrainStepInput, codes: Codes, x_hat: Tensor) -> dict[str, Tensor]:
        assert isinstance(codes, Tensor)
        norms = inp.dictionary.W_dec.norm(dim=1)
        return {"l1": self.config.l1 * (codes * norms).sum(dim=-1).mean()}

    def inference_flops(self, batch: int = 1) -> int:
        """Grows linearly with ``T = iters``: centre ``B d``; every step ``2 B d N`` (input
        projection) + ``2 B N`` (threshold, ReLU); steps after the first also ``2 B N^2 + B N``
        (``z @ S`` and the add). Total ``B d + T (2 B d N + 2 B N) + (T - 1)(2 B N^2 + B N)``."""
        b, d, n, t = batch, self.d_in, self.n_latents, self.config.iters
        return (
            b * d
            + t * (flops.matmul(b, d, n) + 2 * b * n)
            + (t - 1) * (flops.matmul(b, n, n) + b * n)
        )

    def train_step_flops(self, batch: int = 1) -> int:
        """Encode + dense decode + L1 (``2 B N``), their backward (2x), Adam over
        ``T d N + (T-1) N^2 + T N`` encoder and ``N d + d`` dictionary parameters; grows with T."""
        b, d, n, t = batch, self.d_in, self.n_latents, self.config.iters
        fwd = self.inference_flops(b) + flops.dense_decode(b, n, d) + 2 * b * n
        n_params = t * d * n + (t - 1) * n * n + t * n + n * d + d
        return fwd + flops.backward_of(fwd) + flops.adam(n_params)
