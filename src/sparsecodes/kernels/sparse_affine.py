"""Encode-then-select for one-layer SAE encoders, with a sparse backward.

The affine map is ``pre = (x - b_dec) @ W_enc + b_enc`` with ``x`` ``[batch, d_in]``, ``W_enc``
``[d_in, n_latents]``, ``b_enc`` ``[n_latents]``, ``b_dec`` ``[d_in]``. A selection rule (top-k per
row, batch top-k, ...) picks ``nnz`` entries ``(rows[j], cols[j])``; only their values carry
gradient. The plain autograd graph would push a dense ``[batch, n_latents]`` gradient through two
dense matmuls; :class:`GatherAffine` instead builds, from the ``nnz`` gradients ``g``:

- ``dW_enc = (x - b_dec)^T G`` with ``G`` the ``[batch, n_latents]`` COO matrix of ``g``, as one
  ``torch.sparse.mm`` (``O(nnz * d_in)``; never a ``[nnz, d_in]`` copy);
- ``db_enc = colsum(G)`` by ``index_add_``;
- ``db_dec = -W_enc @ colsum(G)`` (sum over the batch first: ``O(d_in * n_latents)``);
- ``dx = G @ W_enc^T`` only when ``x`` itself needs a gradient.

The forward matmul may run in bf16 (``matmul_dtype``): ``x`` and ``W_enc`` are cast for the matmul
only, the parameters stay fp32 (no autocast). Selection then happens on the bf16 pre-activations and
the selected values are returned in the parameters' dtype. The matmul itself always runs in the
resolved ``matmul_dtype`` with autocast disabled; ``"auto"`` resolves to bf16 inside a bf16
``torch.autocast`` region (how :class:`~sparsecodes.training.TrainConfig`'s ``autocast`` reaches
this matmul), so an explicit ``"float32"`` stays exact even under autocast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

MatmulDType = Literal["auto", "float32", "bfloat16"]
MATMUL_DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16")

#: ``select(pre [batch, n_latents]) -> (rows [nnz], cols [nnz])`` int64 positions to keep.
Selector = Callable[[Tensor], tuple[Tensor, Tensor]]


def bf16_matmul_is_fast(device: torch.device) -> bool:
    """True where a bf16 matmul runs natively (CUDA with bf16, CPU with oneDNN bf16 support)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


#: below this many multiply-adds ``"auto"`` keeps fp32 (casts and bf16 kernel set-up dominate).
BF16_MIN_WORK = 1 << 27


def resolve_matmul_dtype(
    spec: str, device: torch.device | str, work: int | None = None
) -> torch.dtype:
    """``"float32"``/``"bfloat16"`` as given; ``"auto"`` -> bf16 inside a bf16 ``torch.autocast``
    region on ``device``, else bf16 where it is native and the matmul is big enough to profit
    (``work`` = ``batch * d_in * n_latents`` multiply-adds, when known, at least
    :data:`BF16_MIN_WORK`), else fp32."""
    device = torch.device(device)
    if spec == "float32":
        return torch.float32
    if spec == "bfloat16":
        return torch.bfloat16
    if spec == "auto" and autocast_dtype(device) == torch.bfloat16:
        return torch.bfloat16
    if spec == "auto":
        big = work is None or work >= BF16_MIN_WORK
        return torch.bfloat16 if big and bf16_matmul_is_fast(device) else torch.float32
    raise ValueError(f"matmul_dtype must be one of {', '.join(MATMUL_DTYPES)}, got {spec!r}")


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The dtype of the ``torch.autocast`` region active for ``device``'s type, or None."""
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda") or not torch.is_autocast_enabled(kind):
        return None
    return torch.get_autocast_dtype(kind)


def fast_path_supported(device: torch.device | str) -> bool:
    """Devices where ``torch.sparse.mm`` of a COO matrix, ``index_add_`` and ``topk`` all work."""
    return torch.device(device).type in ("cpu", "cuda")


def _affine(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, dtype: torch.dtype) -> Tensor:
    with torch.autocast(x.device.type, enabled=False):  # ``dtype`` decides, not autocast
        xc = x - b_dec
        if dtype == W_enc.dtype and xc.dtype == W_enc.dtype:
            return torch.addmm(b_enc, xc, W_enc)
        return torch.addmm(b_enc.to(dtype), xc.to(dtype), W_enc.to(dtype))


@torch.no_grad()
def preacts(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, dtype: torch.dtype | None = None
) -> Tensor:
    """``[batch, n_latents]`` pre-activations without autograd, computed and returned in ``dtype``
    (default: ``W_enc``'s dtype)."""
    return _affine(x, W_enc, b_enc, b_dec, dtype or W_enc.dtype)


def _coo(rows: Tensor, cols: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, size, check_invariants=False)


class GatherAffine(torch.autograd.Function):
    """``values[j] = ((x - b_dec) @ W_enc + b_enc)[rows[j], cols[j]]`` with a sparse backward.

    ``forward(x [B, d], W_enc [d, N], b_enc [N], b_dec [d], rows [nnz], cols [nnz], pre [B, N])``:
    ``pre`` holds the already computed (detached, any dtype) pre-activations, so the forward is a
    gather; the result ``[nnz]`` is in ``W_enc``'s dtype. Repeated positions are allowed (their
    gradients add up). See the module docstring for the backward.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: Tensor,
        W_enc: Tensor,
        b_enc: Tensor,
        b_dec: Tensor,
        rows: Tensor,
        cols: Tensor,
        pre: Tensor,
    ) -> Tensor:
        ctx.save_for_backward(x, W_enc, b_dec, rows, cols)
        return pre[rows, cols].to(W_enc.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, W_enc, b_dec, rows, cols = ctx.saved_tensors
        need_x, need_w, need_b, need_bdec = ctx.needs_input_grad[:4]
        g = grad.reshape(-1).to(W_enc.dtype)
        batch, n_latents = x.shape[0], W_enc.shape[1]
        gx = gw = gb = gbdec = None
        if need_b or need_bdec:
            colsum = g.new_zeros(n_latents).index_add_(0, cols, g)  # [N] = G summed over batch
            gb = colsum if need_b else None
            gbdec = -(W_enc @ colsum) if need_bdec else None  # [d]
        if need_w:
            xc = (x - b_dec).to(W_enc.dtype)  # [B, d]
            g_t = _coo(cols, rows, g, (n_latents, batch))  # G^T, [N, B]
            gw = torch.sparse.mm(g_t, xc).t().contiguous()  # [d, N]
        if need_x:
            gx = torch.sparse.mm(_coo(rows, cols, g, (batch, n_latents)), W_enc.t())  # [B, d]
            gx = gx.to(x.dtype)
        return gx, gw, gb, gbdec, None, None, None


def encode_select(
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    b_dec: Tensor,
    select: Selector,
    *,
    matmul_dtype: torch.dtype = torch.float32,
    fast: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pre-activations, a selection on them, and the selected values with gradient.

    Returns ``(values [nnz], rows [nnz], cols [nnz], pre [B, N])``; ``values`` is in ``W_enc``'s
    dtype and differentiable w.r.t. ``x``, ``W_enc``, ``b_enc``, ``b_dec``; ``pre`` is detached (in
    ``matmul_dtype``). ``fast=True`` uses :class:`GatherAffine` (falls back to eager autograd on
    devices :func:`fast_path_supported` rejects); ``fast=False`` is plain autograd through the
    dense pre-activations (the reference the fast path is tested against).
    """
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, W_enc, b_enc, b_dec))
    fast = fast and fast_path_supported(x.device)
    if fast or not needs_grad:
        pre = preacts(x, W_enc, b_enc, b_dec, matmul_dtype)
        rows, cols = select(pre)
        if needs_grad:
            values = GatherAffine.apply(x, W_enc, b_enc, b_dec, rows, cols, pre)
        else:
            values = pre[rows, cols].to(W_enc.dtype)
        return values, rows, cols, pre
    pre_g = _affine(x, W_enc, b_enc, b_dec, matmul_dtype)
    pre = pre_g.detach()
    rows, cols = select(pre)
    return pre_g[rows, cols].to(W_enc.dtype), rows, cols, pre
