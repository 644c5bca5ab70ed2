"""The encoder interface: typed training-step inputs/outputs and the two encoder kinds.

An encoder turns activations ``x`` ``[batch, d_in]`` into codes ``[batch, n_latents]`` (dense, or
:class:`~sparsecodes.codes.SparseCodes`) *given a dictionary*. It never owns the dictionary, so any
encoder can be paired with any :class:`~sparsecodes.dictionary.Dictionary`.

- :class:`AmortisedEncoder` has its own parameters (an SAE encoder, an MLP, LISTA, ...).
- :class:`IterativeEncoder` has hyperparameters only and solves for the codes on the dictionary
  (ISTA/FISTA, matching pursuit, OMP); it may warm-start from any codes passed as ``init``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from sparsecodes.codes import Codes, to_dense
from sparsecodes.dictionary import Dictionary


@dataclass
class EncoderConfig:
    """Base of every encoder's hyperparameters. Subclasses add fields with defaults."""

    def validate(self, d_in: int, n_latents: int) -> None:
        """Raise ``ValueError`` naming the bad field; subclasses extend this."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainStepInput:
    """What one training step gives the encoder.

    Attributes:
        x: ``[batch, d_in]`` activations (already normalised).
        dictionary: the dictionary being learned or held fixed.
        step: index of this step, from 0.
        dead_mask: ``[n_latents]`` bool, latents that have not fired for the dead window, or None.
        target_codes: ``[batch, n_latents]`` true codes in the supervised (known-codes) setting.
        y: ``[batch, d_out]`` what the decoder must reconstruct when it differs from ``x`` (a
            transcoder's output activations); None: ``x`` itself. Encoders encode ``x`` and
            reconstruct :attr:`target_out`.
    """

    x: Tensor
    dictionary: Dictionary
    step: int = 0
    dead_mask: Tensor | None = None
    target_codes: Tensor | None = None
    y: Tensor | None = None

    @property
    def target_out(self) -> Tensor:
        """``[batch, d_out]`` the reconstruction target: ``y``, or ``x`` when ``y`` is None."""
        return self.x if self.y is None else self.y


@dataclass
class TrainStepOutput:
    """What one training step returns.

    Attributes:
        loss: scalar to minimise.
        x_hat: ``[batch, d_in]`` reconstruction.
        codes: the codes used for ``x_hat``.
        losses: named scalar parts of ``loss`` for logging (``mse``, ``l1``, ``auxk``, ...).
    """

    loss: Tensor
    x_hat: Tensor
    codes: Codes
    losses: dict[str, Tensor] = field(default_factory=dict)


def mse_per_token(x: Tensor, x_hat: Tensor) -> Tensor:
    """Squared error summed over dimensions, averaged over tokens (the MSE of docs/metrics.md)."""
    return (x - x_hat).pow(2).sum(dim=-1).mean()


class Encoder(nn.Module):
    """Base class. Subclasses set ``name``, ``kind``, ``config_cls`` and implement ``encode``."""

    name: ClassVar[str]
    kind: ClassVar[Literal["amortised", "iterative"]]
    config_cls: ClassVar[type[EncoderConfig]] = EncoderConfig
    #: encoders whose codes are sparse by construction at a fixed k (topk-style)
    fixed_k: ClassVar[bool] = False

    def __init__(
        self,
        config: EncoderConfig,
        d_in: int,
        n_latents: int,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        config.validate(d_in, n_latents)
        self.config = config
        self.d_in = d_in
        self.n_latents = n_latents
        self._init_state()

    def _init_state(self) -> None:
        """Set up state derived from ``config``, ``d_in`` and ``n_latents`` alone (resolved
        settings, buffers) without overriding ``__init__``. Optional; overrides call ``super()``.

        Runs at the end of ``Encoder.__init__``, so before any subclass ``__init__`` body: it must
        not use parameters those create, nor the generator (it draws no random numbers).
        """

    def encode(self, x: Tensor, dictionary: Dictionary, *, init: Codes | None = None) -> Codes:
        """Codes for ``x`` ``[batch, d_in]`` on ``dictionary``; ``init`` warm-starts iterative ones."""
        raise NotImplementedError

    def forward(self, x: Tensor, dictionary: Dictionary) -> Codes:
        return self.encode(x, dictionary)

    def train_step(self, inp: TrainStepInput) -> TrainStepOutput:
        """Loss for one batch: reconstruction MSE plus :meth:`penalties` (supervised if asked)."""
        if inp.target_codes is not None:
            return self.supervised_step(inp)
        codes = self.encode(inp.x, inp.dictionary)
        x_hat = inp.dictionary.decode(codes)
        mse = mse_per_token(inp.target_out, x_hat)
        losses = {"mse": mse, **self.penalties(inp, codes, x_hat)}
        return TrainStepOutput(sum(losses.values()), x_hat, codes, losses)  # type: ignore[arg-type]

    def supervised_step(self, inp: TrainStepInput) -> TrainStepOutput:
        """Known-codes setting: fit the encoder to the true codes and the dictionary to the data.

        ``loss = ||encode(x) - s||^2 + ||x - s D||^2`` (per-token sums, token means); the two terms
        touch disjoint parameters, so each part learns from its own supervision.
        """
        assert inp.target_codes is not None
        codes = self.encode(inp.x, inp.dictionary)
        code_loss = (to_dense(codes) - inp.target_codes).pow(2).sum(dim=-1).mean()
        x_hat = inp.dictionary.decode(inp.target_codes)
        mse = mse_per_token(inp.x, x_hat)
        losses = {"code_mse": code_loss, "mse": mse}
        return TrainStepOutput(code_loss + mse, x_hat, codes, losses)

    def penalties(self, inp: TrainStepInput, codes: Codes, x_hat: Tensor) -> dict[str, Tensor]:
        """Named extra loss terms (sparsity, auxiliary). None by default."""
        return {}

    def init_from_dictionary(self, dictionary: Dictionary) -> None:
        """Initialise own parameters from the dictionary (e.g. ``W_enc = W_dec.T``). Optional."""

    def after_step(self) -> None:
        """Called after each optimiser step (e.g. to clamp thresholds). Optional."""

    def resample_latents(
        self, idx: Tensor, directions: Tensor, scale: float
    ) -> list[tuple[nn.Parameter, int]]:
        """Re-initialise the encoder side of latents ``idx`` ``[r]`` toward ``directions``
        ``[r, d_in]`` (unit rows) for dead-latent resampling (docs/training.md); ``scale`` is the
        new encoder weights' norm relative to the other latents'. Returns ``(parameter, dim)``
        pairs, ``dim`` the latent axis of that parameter, whose optimiser state the Trainer
        resets at ``idx``. Iterative encoders have nothing to reset; amortised encoders that do
        not override this cannot be resampled."""
        if self.kind == "iterative":
            return []
        raise NotImplementedError(f"encoder {self.name!r} does not support dead-latent resampling")

    def inference_flops(self, batch: int = 1) -> int:
        """Analytical FLOPs (multiply-add = 2) to encode ``batch`` rows; see ``docs/flops.md``."""
        raise NotImplementedError(f"{type(self).__name__} does not state its inference FLOPs")

    def train_step_flops(self, batch: int = 1) -> int:
        """Analytical FLOPs of one training step on ``batch`` rows (forward, backward, decode)."""
        raise NotImplementedError(f"{type(self).__name__} does not state its training FLOPs")

    def flops(self, batch: int = 1) -> dict[str, int]:
        """``{"inference": ..., "train_step": ...}`` for ``batch`` rows."""
        return {
            "inference": self.inference_flops(batch),
            "train_step": self.train_step_flops(batch),
        }


class AmortisedEncoder(Encoder):
    """An encoder with its own learned parameters; ``init`` is ignored (it is one pass)."""

    kind: ClassVar[Literal["amortised", "iterative"]] = "amortised"


class IterativeEncoder(Encoder):
    """Inference by optimisation on a fixed dictionary; no learned parameters.

    Training with an iterative encoder is classic sparse coding (alternating minimisation): the
    codes are inferred without gradient, then the dictionary takes a gradient step on the
    reconstruction error.
    """

    kind: ClassVar[Literal["amortised", "iterative"]] = "iterative"

    def _dense_init(self, init: Codes, r: Tensor, *, nonneg: bool) -> Tensor:
        """A warm start as dense codes ``[batch, n_latents]`` on the device and dtype of ``r``.

        ``r`` ``[batch, d_in]`` is the (centred) input the codes are inferred for; ``init``
        (dense or :class:`~sparsecodes.codes.SparseCodes`) must have ``batch`` rows and
        ``n_latents`` columns, else ``ValueError``. With ``nonneg`` the codes are projected onto
        ``z >= 0``. The result may share memory with ``init``: clone before writing into it.
        """
        z = to_dense(init).detach().to(device=r.device, dtype=r.dtype)
        if z.shape != (r.shape[0], self.n_latents):
            raise ValueError(
                f"init must have shape [batch, n_latents] = {(r.shape[0], self.n_latents)}, "
                f"got {tuple(z.shape)}"
            )
        if nonneg:
            z = z.clamp_min(0.0)
        return z

    def train_step(self, inp: TrainStepInput) -> TrainStepOutput:
        if inp.target_codes is not None:
            x_hat = inp.dictionary.decode(inp.target_codes)
            mse = mse_per_token(inp.x, x_hat)
            return TrainStepOutput(mse, x_hat, inp.target_codes, {"mse": mse})
        with torch.no_grad():
            codes = self.encode(inp.x, inp.dictionary)
        x_hat = inp.dictionary.decode(codes)
        mse = mse_per_token(inp.x, x_hat)
        return TrainStepOutput(mse, x_hat, codes, {"mse": mse})
