"""Matryoshka BatchTopK SAE (Bussmann et al. 2025, "Learning Multi-Level Features with Matryoshka
Sparse Autoencoders"; SAELens's ``MatryoshkaBatchTopKTrainingSAE``).

The latents are split into nested prefixes ``0:w_1 ⊂ 0:w_2 ⊂ ... ⊂ 0:w_G = 0:n_latents``. Codes
are selected exactly as :class:`~sparsecodes.encoders.topk.BatchTopKEncoder` selects them (the
``batch * k`` largest positive pre-activations of the whole batch over *all* latents), and each
prefix must reconstruct the input on its own:

``loss = (1/G) sum_g MSE(x, z[:, :w_g] @ W_dec[:w_g] + b_dec) + AuxK``

(the **mean** over the ``G`` prefixes, each term the per-token squared error summed over dimensions
and averaged over tokens, as in Bussmann et al.'s reference code; ``prefix_reduction="sum"`` sums
them instead, as SAELens adds its inner levels onto the full one). Adam is blind to a constant
factor on the whole loss, so the two differ only in AuxK's weight against the reconstruction: with
the sum, AuxK weighs ``1/G`` as much as in BatchTopK and dead latents revive more slowly. On the
hierarchical benchmark world (``benchmarks/bench_hierarchy_absorption.py``, seed 0) the mean
trained to a lower training-set FVU than the sum (0.097 vs 0.106; 17 vs 20 latents never firing
on the test set). With one group (``widths=[N]``) either is the BatchTopK loss exactly. Early latents are pushed to carry the general (parent)
directions, because the small prefixes cannot rely on later latents, which curbs feature
absorption. AuxK uses the full reconstruction's residual (SAELens's default,
``use_matryoshka_aux_loss=False``).

Inference is BatchTopK's: ``pre > threshold`` with the learned threshold (EMA of the smallest
kept activation), saved as a buffer; SAELens saves its Matryoshka SAEs as ``jumprelu`` with that
threshold, and so do we.

Group sizes: ``widths`` (cumulative prefix widths, increasing, SAELens's ``matryoshka_widths``;
``n_latents`` is appended if missing) or ``group_fractions`` (each group's share of the latents,
summing to 1; widths are the rounded cumulative sums). Default: ``group_fractions`` =
``(1/16, 1/16, 1/8, 1/4, 1/2)``, i.e. prefixes of 1/16, 1/8, 1/4, 1/2 and all of the latents.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import ClassVar

from torch import Tensor

from sparsecodes import flops
from sparsecodes.codes import SparseCodes
from sparsecodes.encoders.base import TrainStepInput, TrainStepOutput, mse_per_token
from sparsecodes.encoders.registry import register
from sparsecodes.encoders.topk import BatchTopKConfig, BatchTopKEncoder

DEFAULT_GROUP_FRACTIONS = (1 / 16, 1 / 16, 1 / 8, 1 / 4, 1 / 2)


@dataclass
class MatryoshkaBatchTopKConfig(BatchTopKConfig):
    """BatchTopK's fields plus the nested groups: ``widths`` (cumulative prefix widths) or
    ``group_fractions`` (per-group shares summing to 1); give at most one. ``prefix_reduction``:
    ``"mean"`` (default, Bussmann et al.) or ``"sum"`` (SAELens) of the prefix losses."""

    widths: list[int] | None = None
    group_fractions: list[float] | None = None
    prefix_reduction: str = "mean"

    def prefix_widths(self, n_latents: int) -> list[int]:
        """The cumulative prefix widths, increasing, the last ``n_latents``."""
        if self.widths is not None:
            w = [int(v) for v in self.widths]
            if w and w[-1] != n_latents:
                w.append(n_latents)
            return w
        fr = DEFAULT_GROUP_FRACTIONS if self.group_fractions is None else self.group_fractions
        total, out = 0.0, []
        for f in fr:
            total += float(f)
            out.append(round(total * n_latents))
        out[-1] = n_latents
        return out

    def validate(self, d_in: int, n_latents: int) -> None:
        super().validate(d_in, n_latents)
        if self.prefix_reduction not in ("mean", "sum"):
            raise ValueError(
                f"prefix_reduction must be 'mean' or 'sum', got {self.prefix_reduction!r}"
            )
        if self.widths is not None and self.group_fractions is not None:
            raise ValueError("give widths or group_fractions, not both")
        if self.widths is not None:
            w = list(self.widths)
            if not w or any(isinstance(v, bool) or not isinstance(v, int) for v in w):
                raise ValueError(f"widths must be a non-empty list of integers, got {w!r}")
            if w[-1] > n_latents:
                raise ValueError(f"widths must not exceed n_latents={n_latents}, got {w!r}")
        if self.group_fractions is not None:
            fr = [float(f) for f in self.group_fractions]
            if not fr or any(not f > 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
                raise ValueError(
                    f"group_fractions must be positive and sum to 1, got {self.group_fractions!r}"
                )
        w = self.prefix_widths(n_latents)
        if w[0] < 1 or any(b <= a for a, b in pairwise(w)):
            raise ValueError(
                f"prefix widths must be strictly increasing and >= 1, got {w} (from widths="
                f"{self.widths!r}, group_fractions={self.group_fractions!r}); use fewer or "
                "larger groups"
            )


@register
class MatryoshkaBatchTopKEncoder(BatchTopKEncoder):
    """BatchTopK selection, nested-prefix reconstruction loss (see the module docstring)."""

    name: ClassVar[str] = "matryoshka_batchtopk"
    config_cls = MatryoshkaBatchTopKConfig
    config: MatryoshkaBatchTopKConfig

    def _init_state(self) -> None:
        super()._init_state()
        #: cumulative prefix widths, the last ``n_latents``
        self.prefix_widths: list[int] = self.config.prefix_widths(self.n_latents)

    @staticmethod
    def prefix_codes(codes: SparseCodes, width: int) -> SparseCodes:
        """``codes`` with every latent ``>= width`` zeroed (same indices, same shape)."""
        keep = codes.indices < width
        return SparseCodes(codes.indices, codes.values * keep, codes.n_latents)

    def train_step(self, inp: TrainStepInput) -> TrainStepOutput:
        """Mean (or sum) of the prefixes' MSEs plus AuxK. ``losses``: ``mse`` (the full width),
        ``mse_prefix_{w}`` for each smaller prefix ``w``, ``auxk``."""
        if inp.target_codes is not None:
            return self.supervised_step(inp)
        dead_idx = self._dead_idx(inp.dead_mask)
        n_dead = 0 if dead_idx is None else int(dead_idx.numel())
        codes, aux = self._train_codes(inp.x, inp.dictionary, dead_idx)
        x_hat = self._decode(codes, inp.dictionary)
        mse = mse_per_token(inp.target_out, x_hat)
        losses: dict[str, Tensor] = {"mse": mse}
        total = mse
        for w in self.prefix_widths[:-1]:
            x_w = self._decode(self.prefix_codes(codes, w), inp.dictionary)
            term = mse_per_token(inp.target_out, x_w)
            losses[f"mse_prefix_{w}"] = term
            total = total + term
        if self.config.prefix_reduction == "mean":
            total = total / len(self.prefix_widths)
        auxk = self.auxk_loss(inp.target_out, x_hat, aux, inp.dictionary, n_dead)
        losses["auxk"] = auxk
        return TrainStepOutput(total + auxk, x_hat, codes, losses)

    def train_step_flops(self, batch: int = 1) -> int:
        """BatchTopK's, plus for each of the ``G - 1`` inner prefixes a masked sparse decode and
        its MSE with their backward: ``(G - 1) (B k + 3 (2 B k d + B d) + 3 B d)``."""
        b, d, k = batch, self.d_in, self.config.k
        dec = flops.sparse_decode(b, k, d)
        per = b * k + dec + flops.backward_of(dec) + 3 * b * d
        return super().train_step_flops(b) + (len(self.prefix_widths) - 1) * per
