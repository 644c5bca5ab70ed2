"""TopK and BatchTopK SAE encoders, with the AuxK loss for dead latents.

``pre = (x - b_dec) @ W_enc + b_enc`` (``W_enc`` ``[d_in, n_latents]``, ``b_enc`` ``[n_latents]``).

- ``topk`` (Gao et al. 2024): keep the ``k`` largest entries of each row of ``pre``, then ReLU.
  Codes are :class:`~sparsecodes.codes.SparseCodes` ``[batch, k]``, so decoding
  (``embedding_bag``) and the backward cost ``O(batch * k * d_in)``.
- ``batchtopk`` (Bussmann et al. 2024): in training keep the ``batch * k`` largest entries of the
  whole batch (positive ones only), so busy rows take more latents and quiet rows fewer. A running
  threshold (EMA of the smallest kept activation, a saved buffer) replaces the batch at inference:
  in eval mode ``z = pre * (pre > threshold)`` (JumpReLU-like), so a row's codes do not depend on
  the other rows. Before any training step the threshold is unknown and eval falls back to per-row
  top-k. **Output form**: padded sparse codes ``[batch, width]``, ``width`` = the largest per-row
  count in the batch (padding: index 0, value 0).
- AuxK (both): with ``D`` the latents marked dead (``TrainStepInput.dead_mask``), the ``k_aux =
  min(aux_k, |D|)`` largest pre-activations per row among ``D`` (ReLU'd) reconstruct the detached
  residual ``e = x - x_hat`` without the bias: ``e_hat = z_aux @ W_dec``. Loss:
  ``aux_coef * min(|D| / aux_k, 1) * sum ||e_hat - e||^2 / sum ||e - mean(e)||^2`` (normalised by the
  residual's variance; the ``min(|D| / aux_k, 1)`` factor, as in sparsify and SAELens, keeps a few
  dead latents from getting a full-size loss). It is exactly 0 when no latent is dead.

Fast path (``fast=True``, default; CPU and CUDA): one dense matmul without autograd (in bf16 when
``matmul_dtype`` resolves to it), selection on it, and :class:`~sparsecodes.kernels.GatherAffine`
for a sparse backward (see :mod:`sparsecodes.kernels.sparse_affine`). ``fast=False`` is plain
autograd through the dense pre-activations; in fp32 both give the same gradients.
``matmul_dtype="auto"`` runs the encoder matmul in bf16 where the hardware does it natively
(CUDA with bf16, CPUs with oneDNN bf16) and the matmul is large (``batch * d_in * n_latents >=
2**27``; below that the casts cost more than they save), in fp32 elsewhere; parameters stay fp32. It applies to
training and inference alike; set ``matmul_dtype="float32"`` for exact fp32 codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from sparsecodes import flops
from sparsecodes.codes import Codes, SparseCodes
from sparsecodes.dictionary import Dictionary
from sparsecodes.encoders.base import (
    EncoderConfig,
    TrainStepInput,
    TrainStepOutput,
    mse_per_token,
)
from sparsecodes.encoders.registry import register
from sparsecodes.encoders.relu import LinearEncoderParams
from sparsecodes.kernels.losses import squared_error_per_token
from sparsecodes.kernels.selection import batch_topk_flat, pad_rows, row_index, row_topk_with_aux
from sparsecodes.kernels.sparse_affine import (
    MATMUL_DTYPES,
    SharedColumnGroups,
    encode_row_topk,
    encode_select,
    resolve_matmul_dtype,
)
from sparsecodes.kernels.sparse_decode import sparse_decode, sparse_decode_supported
from sparsecodes.validation import check_k, check_positive


@dataclass
class TopKConfig(EncoderConfig):
    """``k`` latents per row; AuxK with ``aux_k`` (None -> ``min(d_in // 2, n_latents)``) and
    weight ``aux_coef``; ``fast`` turns the sparse-backward path on/off; ``matmul_dtype`` is
    ``"auto"``, ``"float32"`` or ``"bfloat16"`` for the encoder matmul."""

    k: int = 32
    aux_k: int | None = None
    aux_coef: float = 1 / 32
    fast: bool = True
    matmul_dtype: str = "auto"

    def validate(self, d_in: int, n_latents: int) -> None:
        check_k(self.k, n_latents, "k")
        if self.aux_k is not None:
            check_k(self.aux_k, n_latents, "aux_k")
        check_positive("aux_coef", self.aux_coef, allow_zero=True)
        if not isinstance(self.fast, bool):
            raise ValueError(f"fast must be True or False, got {self.fast!r}")
        if self.matmul_dtype not in MATMUL_DTYPES:
            raise ValueError(
                f"matmul_dtype must be one of {', '.join(MATMUL_DTYPES)}, got {self.matmul_dtype!r}"
            )

    def resolved_aux_k(self, d_in: int, n_latents: int) -> int:
        if self.aux_k is not None:
            return self.aux_k
        return max(1, min(d_in // 2, n_latents))


@dataclass
class BatchTopKConfig(TopKConfig):
    """TopK's fields plus ``threshold_momentum``: weight of the newest batch in the threshold EMA."""

    threshold_momentum: float = 0.01

    def validate(self, d_in: int, n_latents: int) -> None:
        super().validate(d_in, n_latents)
        if not 0.0 < self.threshold_momentum <= 1.0:
            raise ValueError(
                f"threshold_momentum must be in (0, 1], got {self.threshold_momentum!r}"
            )


@register
class TopKEncoder(LinearEncoderParams):
    """``z = relu(TopK_k(pre))`` as :class:`SparseCodes` ``[batch, k]``; AuxK in training."""

    name: ClassVar[str] = "topk"
    config_cls = TopKConfig
    fixed_k: ClassVar[bool] = True
    config: TopKConfig

    def _init_state(self) -> None:
        super()._init_state()
        #: AuxK's latents per row (``config.aux_k`` resolved)
        self.aux_k = self.config.resolved_aux_k(self.d_in, self.n_latents)

    #: tied init ``W_enc = W_dec.T * ENC_INIT_SCALE``: the column norm of torch's default
    #: ``nn.Linear`` init (uniform in ``+-1/sqrt(d_in)``), which sparsify's TopK SAE also starts
    #: from; TopK's selection ignores the scale, but Adam's first steps do not.
    ENC_INIT_SCALE: ClassVar[float] = 3**-0.5

    def init_from_dictionary(self, dictionary: Dictionary) -> None:
        with torch.no_grad():
            self.W_enc.copy_(dictionary.W_dec.detach().T * self.ENC_INIT_SCALE)

    # ------------------------------------------------------------------ helpers
    def matmul_dtype(self, batch: int | None = None) -> torch.dtype:
        """The dtype the encoder matmul runs in on this encoder's device for ``batch`` rows."""
        work = None if batch is None else batch * self.d_in * self.n_latents
        return resolve_matmul_dtype(self.config.matmul_dtype, self.W_enc.device, work)

    def _dead_idx(self, dead_mask: Tensor | None) -> Tensor | None:
        if dead_mask is None or self.config.aux_coef == 0:
            return None
        idx = dead_mask.to(self.W_enc.device).nonzero().squeeze(1)
        return idx if idx.numel() else None

    def _select(
        self, x: Tensor, dictionary: Dictionary, select
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return encode_select(
            x,
            self.W_enc,
            self.b_enc,
            dictionary.input_bias,
            select,
            matmul_dtype=self.matmul_dtype(x.shape[0]),
            fast=self.config.fast,
        )

    def _row_topk(
        self,
        x: Tensor,
        dictionary: Dictionary,
        dead_idx: Tensor | None,
        groups: SharedColumnGroups | None = None,
    ) -> tuple[SparseCodes, SparseCodes | None]:
        """Top-k codes ``[batch, k]`` and, with dead latents, AuxK codes ``[batch, k_aux]``
        (``groups``: shared with the decode of the same step, see :meth:`train_step`)."""
        k = self.config.k
        values, cols, k_aux = encode_row_topk(
            x,
            self.W_enc,
            self.b_enc,
            dictionary.input_bias,
            k,
            dead_idx=dead_idx,
            aux_k=self.aux_k,
            matmul_dtype=self.matmul_dtype(x.shape[0]),
            fast=self.config.fast,
            groups=groups,
        )
        values = torch.relu(values)
        codes = SparseCodes(cols[:, :k], values[:, :k], self.n_latents)
        if k_aux == 0:
            return codes, None
        return codes, SparseCodes(cols[:, k:], values[:, k:], self.n_latents)

    # ------------------------------------------------------------------ API
    def encode(self, x: Tensor, dictionary: Dictionary, *, init: Codes | None = None) -> Codes:
        """:class:`SparseCodes` ``[batch, k]`` for ``x`` ``[batch, d_in]``."""
        return self._row_topk(x, dictionary, None)[0]

    def encode_train(
        self, x: Tensor, dictionary: Dictionary, dead_mask: Tensor | None
    ) -> tuple[SparseCodes, SparseCodes | None]:
        """Training codes and AuxK codes (None when no latent is dead) from one matmul."""
        return self._row_topk(x, dictionary, self._dead_idx(dead_mask))

    def auxk_loss(
        self,
        x: Tensor,
        x_hat: Tensor,
        aux: SparseCodes | None,
        dictionary: Dictionary,
        n_dead: int,
    ) -> Tensor:
        """AuxK loss (module docstring); 0 when ``aux`` is None."""
        if aux is None or n_dead == 0:
            return x_hat.new_zeros(())
        e = (x - x_hat).detach()  # [batch, d_in]
        zero_bias = dictionary.b_dec.detach().new_zeros(())  # no bias in the AuxK reconstruction
        if self.config.fast:
            e_hat = sparse_decode(aux.indices, aux.values, dictionary.W_dec, zero_bias)
        else:
            e_hat = F.embedding_bag(
                aux.indices,
                dictionary.W_dec,
                per_sample_weights=aux.values.to(dictionary.W_dec.dtype),
                mode="sum",
            )
        variance = (e - e.mean(dim=0)).pow(2).sum().clamp_min(torch.finfo(e.dtype).tiny)
        scale = min(n_dead / self.aux_k, 1.0)
        return self.config.aux_coef * scale * (e_hat - e).pow(2).sum() / variance

    def train_step(self, inp: TrainStepInput) -> TrainStepOutput:
        """MSE of the top-k reconstruction plus AuxK (``losses``: ``mse``, ``auxk``)."""
        if inp.target_codes is not None:
            return self.supervised_step(inp)
        dead_idx = self._dead_idx(inp.dead_mask)
        n_dead = 0 if dead_idx is None else int(dead_idx.numel())
        # the encoder's and the decoder's weight gradients group the same indices by latent: once
        groups = SharedColumnGroups() if self.config.fast else None
        codes, aux = self._train_codes(inp.x, inp.dictionary, dead_idx, groups)
        x_hat = self._decode(codes, inp.dictionary, groups)
        if self.config.fast:  # one autograd node, one-pass backward
            mse = squared_error_per_token(inp.target_out, x_hat)
        else:
            mse = mse_per_token(inp.target_out, x_hat)
        auxk = self.auxk_loss(inp.target_out, x_hat, aux, inp.dictionary, n_dead)
        return TrainStepOutput(mse + auxk, x_hat, codes, {"mse": mse, "auxk": auxk})

    def _train_codes(
        self,
        x: Tensor,
        dictionary: Dictionary,
        dead_idx: Tensor | None,
        groups: SharedColumnGroups | None = None,
    ) -> tuple[SparseCodes, SparseCodes | None]:
        return self._row_topk(x, dictionary, dead_idx, groups)

    def _decode(
        self, codes: SparseCodes, dictionary: Dictionary, groups: SharedColumnGroups | None = None
    ) -> Tensor:
        """Training decode: the sparse-backward kernel (CPU; CUDA with Triton) when the dictionary
        is a plain :class:`Dictionary` (its ``decode`` not overridden), else ``dictionary.decode``."""
        if (
            self.config.fast
            and type(dictionary).decode is Dictionary.decode
            and sparse_decode_supported(dictionary.W_dec.device)
        ):
            W_dec, b_dec = dictionary.W_dec, dictionary.b_dec
            return sparse_decode(codes.indices, codes.values, W_dec, b_dec, groups)
        return dictionary.decode(codes)

    # ------------------------------------------------------------------ FLOPs
    def inference_flops(self, batch: int = 1) -> int:
        """Centre, matmul, bias, top-k selection (~1 comparison per entry), ReLU on the kept:
        ``B d + 2 B d N + 2 B N + B k``."""
        b, d, n, k = batch, self.d_in, self.n_latents, self.config.k
        return b * d + flops.matmul(b, d, n) + 2 * b * n + b * k

    def train_step_flops(self, batch: int = 1) -> int:
        """Fast path, without AuxK:
        forward = inference + sparse decode ``(2 B k d + B d)`` + MSE ``(3 B d)``;
        backward = decoder (grad of codes and of ``W_dec``: ``4 B k d``) + sparse encoder grads
        (``dW_enc``: ``2 B k d``, ``db_enc``: ``B k``, ``db_dec``: ``2 d N``);
        Adam over ``2 d N + N + d`` parameters. AuxK, when latents are dead, adds about
        ``B n_dead + 8 B k_aux d``. (The eager path replaces the sparse encoder grads by two dense
        matmuls, ``4 B d N``.)"""
        b, d, n, k = batch, self.d_in, self.n_latents, self.config.k
        fwd = self.inference_flops(b) + flops.sparse_decode(b, k, d) + 3 * b * d
        bwd = 4 * b * k * d + 2 * b * k * d + b * k + 2 * d * n
        return fwd + bwd + flops.adam(2 * d * n + n + d)


@register
class BatchTopKEncoder(TopKEncoder):
    """BatchTopK: ``batch * k`` latents over the whole batch in training, a threshold at inference.

    Buffers: ``threshold`` (scalar, the EMA of the smallest kept activation) and
    ``threshold_updates`` (how many training batches have updated it). Codes are padded
    :class:`SparseCodes` ``[batch, width]`` in both modes (see the module docstring).
    """

    name: ClassVar[str] = "batchtopk"
    config_cls = BatchTopKConfig
    fixed_k: ClassVar[bool] = False
    config: BatchTopKConfig

    def _init_state(self) -> None:
        super()._init_state()
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.long))

    def encode(self, x: Tensor, dictionary: Dictionary, *, init: Codes | None = None) -> Codes:
        """Training mode: batch top-k. Eval mode: ``pre > threshold`` (row-independent)."""
        if self.training:
            return self._batch_topk(x, dictionary, None)[0]
        if int(self.threshold_updates) == 0:
            return self._row_topk(x, dictionary, None)[0]
        batch = x.shape[0]
        thr = float(self.threshold)

        def select(pre: Tensor) -> tuple[Tensor, Tensor]:
            mask = pre > max(thr, 0.0)
            rows, cols = mask.nonzero(as_tuple=True)
            return rows, cols

        values, rows, cols, _ = self._select(x, dictionary, select)
        idx, vals = pad_rows(rows, cols, torch.relu(values), batch)
        return SparseCodes(idx, vals, self.n_latents)

    def _train_codes(
        self,
        x: Tensor,
        dictionary: Dictionary,
        dead_idx: Tensor | None,
        groups: SharedColumnGroups | None = None,
    ) -> tuple[SparseCodes, SparseCodes | None]:
        if not self.training:
            return self._row_topk(x, dictionary, dead_idx, groups)
        return self._batch_topk(x, dictionary, dead_idx)

    def _batch_topk(
        self, x: Tensor, dictionary: Dictionary, dead_idx: Tensor | None
    ) -> tuple[SparseCodes, SparseCodes | None]:
        batch, k = x.shape[0], self.config.k
        sizes = [0, 0]  # [n_main, k_aux]

        def select(pre: Tensor) -> tuple[Tensor, Tensor]:
            rows, cols = batch_topk_flat(pre, batch * k)
            positive = pre[rows, cols] > 0
            rows, cols = rows[positive], cols[positive]
            sizes[0] = rows.numel()
            if dead_idx is None:
                return rows, cols
            aux_cols, k_aux = row_topk_with_aux(pre, 1, dead_idx, self.aux_k)
            sizes[1] = k_aux
            aux_cols = aux_cols[:, 1:].reshape(-1)
            aux_rows = row_index(batch, k_aux, pre.device)
            return torch.cat([rows, aux_rows]), torch.cat([cols, aux_cols])

        values, rows, cols, _ = self._select(x, dictionary, select)
        n_main, k_aux = sizes
        values = torch.relu(values)
        main_vals = values[:n_main]
        if n_main and self.training:
            self._update_threshold(main_vals.detach().min())
        idx, vals = pad_rows(rows[:n_main], cols[:n_main], main_vals, batch)
        codes = SparseCodes(idx, vals, self.n_latents)
        if not k_aux:
            return codes, None
        aux = SparseCodes(
            cols[n_main:].view(batch, k_aux), values[n_main:].view(batch, k_aux), self.n_latents
        )
        return codes, aux

    @torch.no_grad()
    def _update_threshold(self, smallest_kept: Tensor) -> None:
        m = self.config.threshold_momentum
        if int(self.threshold_updates) == 0:
            self.threshold.copy_(smallest_kept)
        else:
            self.threshold.mul_(1 - m).add_(m * smallest_kept.to(self.threshold.dtype))
        self.threshold_updates.add_(1)

    def inference_flops(self, batch: int = 1) -> int:
        """Centre, matmul, bias, threshold compare, ReLU: ``B d + 2 B d N + 3 B N``."""
        b, d, n = batch, self.d_in, self.n_latents
        return b * d + flops.matmul(b, d, n) + 3 * b * n
