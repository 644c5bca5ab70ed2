"""MP-SAE: matching pursuit as the encoder of a sparse autoencoder, trained end to end.

The encoder is :class:`~sparsecodes.encoders.pursuit.MatchingPursuitEncoder`'s pursuit (same
selection loop, same stopping rules) on the dictionary being learned; it has no parameters of its
own (the encoder is tied to the decoder). Training runs the pursuit *with* gradient: the argmax
selection is not differentiated, but every step's coefficient ``<res, d_j> / ||d_j||^2`` and
residual update ``res - c d_j`` are (:func:`~sparsecodes.encoders.pursuit.mp_step`), so the
reconstruction loss ``||x - (z W_dec + b_dec)||^2`` reaches ``W_dec`` and ``b_dec`` through the
codes as well as through the decoder. (Classic sparse coding with the ``mp`` encoder detaches the
codes instead.)

Stopping (per row): after ``k`` steps, once ``||res|| <= residual_threshold`` (absolute norm in
normalised input units; 0 = off), once ``||res||^2 <= tol ||x - b_dec||^2``, with
``stop_on_repeat`` after a step that re-picks an atom already in the support, or when no atom
correlates (positively, with ``nonneg``). Defaults follow SAELens's ``matching_pursuit`` SAE:
non-negative codes (``nonneg=True``).

Reference: Costa et al. 2025, "From Flat to Hierarchical: Extracting Sparse Representations with
Matching Pursuit" (MP-SAE); SAELens's ``MatchingPursuitTrainingSAE``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sparsecodes import flops
from sparsecodes.encoders.base import TrainStepInput, TrainStepOutput, mse_per_token
from sparsecodes.encoders.pursuit import MatchingPursuitEncoder, MPConfig
from sparsecodes.encoders.registry import register


@dataclass
class MPSAEConfig(MPConfig):
    """:class:`~sparsecodes.encoders.pursuit.MPConfig` with non-negative codes by default."""

    k: int = 16
    nonneg: bool = True


@register
class MPSAEEncoder(MatchingPursuitEncoder):
    """Matching pursuit trained end to end (see the module docstring).

    ``encode`` is exactly the ``mp`` encoder's (no gradient); ``train_step`` runs the same pursuit
    with gradient through the atoms and ``b_dec``.
    """

    name: ClassVar[str] = "mp_sae"
    config_cls = MPSAEConfig

    def train_step(self, inp: TrainStepInput) -> TrainStepOutput:
        """``losses``: ``mse`` of ``x`` against the decode of the differentiable pursuit codes."""
        if inp.target_codes is not None:
            return super().train_step(inp)
        p = self._prepare(inp.x, inp.dictionary, differentiable=True)
        codes = self._pursue(p, None)
        x_hat = inp.dictionary.decode(codes)
        mse = mse_per_token(inp.x, x_hat)
        return TrainStepOutput(mse, x_hat, codes, {"mse": mse})

    def train_step_flops(self, batch: int = 1) -> int:
        """``inference + S + 2 S + 2 P + adam(N d + d)``: the pursuit (``inference``), the sparse
        decode ``S = 2 B k d + B d`` and its backward, and the backward of the ``k``
        differentiable steps, ``P = k * 4 B d`` (coefficient and residual update) at ~2x."""
        b, d, n, k = batch, self.d_in, self.n_latents, self.config.k  # type: ignore[attr-defined]
        dec = flops.sparse_decode(b, k, d)
        steps = k * 4 * b * d
        return (
            self.inference_flops(b)
            + dec
            + flops.backward_of(dec)
            + flops.backward_of(steps)
            + flops.adam(n * d + d)
        )
