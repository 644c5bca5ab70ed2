"""Encode-then-select for one-layer SAE encoders, with a sparse backward.

The affine map is ``pre = (x - b_dec) @ W_enc + b_enc`` with ``x`` ``[batch, d_in]``, ``W_enc``
``[d_in, n_latents]``, ``b_enc`` ``[n_latents]``, ``b_dec`` ``[d_in]``. A selection rule (top-k per
row, batch top-k, ...) picks ``nnz`` entries ``(rows[j], cols[j])``; only their values carry
gradient. The plain autograd graph would push a dense ``[batch, n_latents]`` gradient through two
dense matmuls; :class:`GatherAffine` instead builds, from the ``nnz`` gradients ``g``:

- ``dW_enc = (x - b_dec)^T G`` with ``G`` the ``[batch, n_latents]`` sparse matrix of ``g``: the
  entries sorted by latent, then one ``embedding_bag`` or the compiled kernel
  (``O(nnz * d_in)``; never a ``[nnz, d_in]`` copy, about twice as fast on CPU as a COO
  ``torch.sparse.mm``, which coalesces and zero-fills);
- ``db_enc = colsum(G)`` by ``index_add_``;
- ``db_dec = -W_enc @ colsum(G)`` (sum over the batch first: ``O(d_in * n_latents)``);
- ``dx = G @ W_enc^T`` only when ``x`` itself needs a gradient.

The forward matmul may run in bf16 (``matmul_dtype``): ``x`` and ``W_enc`` are cast for the matmul
only, the parameters stay fp32 (no autocast). Selection then happens on the bf16 pre-activations and
the selected values are returned in the parameters' dtype. The matmul itself always runs in the
resolved ``matmul_dtype`` with autocast disabled; ``"auto"`` resolves to bf16 inside a bf16
``torch.autocast`` region (how :class:`~sparsecodes.training.TrainConfig`'s ``autocast`` reaches
this matmul), so an explicit ``"float32"`` stays exact even under autocast.

Per-row top-k (:func:`encode_row_topk`, TopK's training and inference path), with the compiled
kernels (float32 CPU tensors), multiplies ``x @ W_enc`` into a reused buffer and lets
:func:`~sparsecodes.kernels.native.row_topk` add the folded bias ``b_enc - b_dec @ W_enc`` while it
selects; the encoder-weight gradient then takes ``x - b_dec`` row by row inside
:func:`~sparsecodes.kernels.native.sum_rows_by_col` and writes the ``[d_in, n_latents]`` layout
directly. Without them it folds both biases into the matmul,
``pre = [x, 1] @ [[W_enc], [b_enc - b_dec @ W_enc]]``, so the ``[batch, n_latents]``
pre-activations are written once by the matmul (no broadcast copy of ``b_enc`` into them, no
``x - b_dec`` pass), and takes the selected values from the selection itself
(:func:`~sparsecodes.kernels.selection.row_topk`; no gather from ``pre``).
The values equal the plain affine map's up to float32 rounding. (Row-chunking the matmul so that
each chunk's pre-activations stay in cache was measured and is slower on CPU: the matmul re-packs
``W_enc`` for every chunk.)
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from sparsecodes.kernels import native
from sparsecodes.kernels.gemm import matmul
from sparsecodes.kernels.selection import row_index, row_topk, row_topk_with_aux

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
    (default: ``W_enc``'s dtype); float32 CPU products go through :func:`~sparsecodes.kernels.
    gemm.matmul` (its backend decides)."""
    dtype = dtype or W_enc.dtype
    if dtype == torch.float32 == W_enc.dtype == x.dtype and x.device.type == "cpu":
        with torch.autocast(x.device.type, enabled=False):
            return matmul(x - b_dec, W_enc).add_(b_enc)
    return _affine(x, W_enc, b_enc, b_dec, dtype)


def _coo(rows: Tensor, cols: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, size, check_invariants=False)


def group_by_col(cols: Tensor, n_cols: int) -> tuple[Tensor, Tensor]:
    """``(order [nnz], offsets [n_cols + 1])``: the entries sorted by column, and where each
    column's run starts (``offsets[-1] = nnz``; the bags of :func:`sum_rows_by_col`). Within a
    column the order is unspecified (increasing with the compiled kernels' counting sort)."""
    cols = cols.reshape(-1)
    if native.usable(cols) and cols.dtype == torch.int64:
        return native.group_by_col(cols.contiguous(), n_cols)
    # int32 keys: torch's CPU sort of int64 is up to 100x slower on one thread
    keys = cols.to(torch.int32) if n_cols < 2**31 else cols
    order = torch.argsort(keys)
    offsets = cols.new_zeros(n_cols + 1)
    torch.cumsum(torch.bincount(cols, minlength=n_cols), 0, out=offsets[1:])
    return order, offsets


class SharedColumnGroups:
    """:func:`group_by_col` of a row-major ``[batch, width]`` pattern (``rows = row_index(batch,
    width)``), computed by the first backward pass that needs it and reused by the others of the
    same step: TopK's encoder-weight gradient and its decoder-weight gradient group the same
    ``[batch, k]`` latent indices. One object per step (it holds the indices, so their memory,
    the cache key, cannot be reused while it lives; autograd refuses indices changed in place)."""

    def __init__(self) -> None:
        self._key: tuple[int, int, int, int] | None = None
        self._cols: Tensor | None = None
        self._groups: tuple[Tensor, Tensor] | None = None

    def get(self, cols: Tensor, batch: int, n_cols: int) -> tuple[Tensor, Tensor]:
        """The groups of ``cols`` (flat ``[batch * width]``, row-major), computed once."""
        key = (cols.data_ptr(), cols.numel(), batch, n_cols)
        if self._key != key or self._groups is None:
            self._groups = group_by_col(cols, n_cols)
            self._key, self._cols = key, cols
        return self._groups


def sum_rows_by_col(
    rows: Tensor,
    cols: Tensor,
    weights: Tensor,
    src: Tensor,
    n_cols: int,
    groups: tuple[Tensor, Tensor] | None = None,
    *,
    shift: Tensor | None = None,
    transpose: bool = False,
) -> Tensor:
    """``[n_cols, d]``: ``out[c] = sum_j weights[j] * (src[rows[j]] - shift)`` over the ``j`` with
    ``cols[j] == c`` (``shift`` ``[d]`` or None for 0); with ``transpose``, the same as a contiguous
    ``[d, n_cols]`` (the encoder weight's layout).

    ``rows``/``cols``/``weights`` ``[nnz]``, ``src`` ``[n_rows, d]``; i.e. ``G^T @ src`` for the
    sparse ``[n_rows, n_cols]`` matrix ``G`` with entries ``weights`` at ``(rows, cols)`` (repeated
    positions add up). One ``argsort`` of ``cols`` (or ``groups``, :func:`group_by_col` of the
    same ``cols`` computed earlier), then a bag per column: the compiled kernel
    (:func:`~sparsecodes.kernels.native.sum_rows_by_col`, which also writes the transpose
    directly) where it runs, else one ``embedding_bag``.
    """
    order, offsets = groups if groups is not None else group_by_col(cols, n_cols)
    w = weights.to(src.dtype).contiguous()
    src, rows = src.contiguous(), rows.contiguous()
    if native.usable(order, offsets, w, src, rows) and (shift is None or native.usable(shift)):
        return native.sum_rows_by_col(
            order, offsets, w, src, rows, shift=shift, transpose=transpose
        )
    if shift is not None:
        src = src - shift
    out = F.embedding_bag(
        rows[order], src, offsets, per_sample_weights=w[order], mode="sum", include_last_offset=True
    )
    return out.t().contiguous() if transpose else out


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
        ctx.groups = None
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
            shared = ctx.groups.get(cols, batch, n_latents) if ctx.groups is not None else None
            x_, shift = x.to(W_enc.dtype), b_dec.to(W_enc.dtype)  # rows taken as x - b_dec
            gw = sum_rows_by_col(rows, cols, g, x_, n_latents, shared, shift=shift, transpose=True)
        if need_x:
            gx = torch.sparse.mm(_coo(rows, cols, g, (batch, n_latents)), W_enc.t())  # [B, d]
            gx = gx.to(x.dtype)
        rest = (None,) * (len(ctx.needs_input_grad) - 4)
        return gx, gw, gb, gbdec, *rest


class SelectedAffine(GatherAffine):
    """:class:`GatherAffine` whose forward is handed the selected values ``[nnz]`` themselves
    (already computed, detached) instead of the full pre-activations: ``forward(x, W_enc, b_enc,
    b_dec, rows, cols, values, groups=None)``, with ``rows = row_index(batch, width)`` when
    ``groups`` (a :class:`SharedColumnGroups`) is given; same backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: Tensor,
        W_enc: Tensor,
        b_enc: Tensor,
        b_dec: Tensor,
        rows: Tensor,
        cols: Tensor,
        values: Tensor,
        groups: SharedColumnGroups | None = None,
    ) -> Tensor:
        ctx.save_for_backward(x, W_enc, b_dec, rows, cols)
        ctx.groups = groups
        return values.to(W_enc.dtype, copy=True)


_WORKSPACE = threading.local()

#: :func:`workspace` keeps no buffer larger than this (a bigger request gets a fresh tensor)
WORKSPACE_MAX_BYTES = 256 * 2**20


def workspace(
    name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> Tensor:
    """An uninitialised scratch tensor, reused by later calls with the same ``name``, shape, dtype
    and device in the same thread (CPU only, up to :data:`WORKSPACE_MAX_BYTES`; otherwise a fresh
    one).

    On CPU a fresh large tensor is memory the kernel must fault in page by page (tens of ms for
    the ``[4096, 4608]`` pre-activations, more under memory pressure or in a VM); the matmul into a
    reused buffer skips that. The caller must not let the tensor escape: the next call with the
    same name overwrites it. :func:`release_workspace` frees this thread's buffers.
    """
    size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if torch.device(device).type != "cpu" or size > WORKSPACE_MAX_BYTES:
        return torch.empty(shape, dtype=dtype, device=device)
    bufs = getattr(_WORKSPACE, "bufs", None)
    if bufs is None:
        bufs = _WORKSPACE.bufs = {}
    t = bufs.get(name)
    if t is None or t.shape != torch.Size(shape) or t.dtype != dtype or t.device != device:
        bufs[name] = t = None  # free the old one first
        bufs[name] = t = torch.empty(shape, dtype=dtype, device=device)
    return t


def release_workspace() -> None:
    """Free the scratch buffers :func:`workspace` keeps for the calling thread."""
    _WORKSPACE.bufs = {}


@torch.no_grad()
def folded_preacts(
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    b_dec: Tensor,
    dtype: torch.dtype | None = None,
    *,
    scratch: bool = False,
) -> Tensor:
    """``[batch, n_latents]`` pre-activations ``(x - b_dec) @ W_enc + b_enc`` as one matmul with
    both biases folded in (``[x, 1] @ [[W_enc], [b_enc - b_dec @ W_enc]]``), in ``dtype``
    (default ``W_enc``'s); equal to :func:`preacts` up to float32 rounding. The product goes
    through :func:`~sparsecodes.kernels.gemm.matmul` (OpenBLAS or torch, by its backend).
    ``scratch=True`` computes into :func:`workspace` buffers (the result is overwritten by the next
    such call)."""
    dtype = dtype or W_enc.dtype
    with torch.autocast(x.device.type, enabled=False):
        (batch, d_in), n = x.shape, W_enc.shape[1]
        bias = b_enc - b_dec.to(W_enc.dtype) @ W_enc  # [N]
        if scratch:
            x1 = workspace("folded_x", (batch, d_in + 1), dtype, x.device)
            w1 = workspace("folded_w", (d_in + 1, n), dtype, x.device)
            out = workspace("folded_pre", (batch, n), dtype, x.device)
        else:
            x1 = torch.empty(batch, d_in + 1, dtype=dtype, device=x.device)
            w1 = torch.empty(d_in + 1, n, dtype=dtype, device=x.device)
            out = torch.empty(batch, n, dtype=dtype, device=x.device)
        x1[:, :d_in] = x
        x1[:, d_in] = 1
        w1[:d_in] = W_enc
        w1[d_in] = bias
        return matmul(x1, w1, out=out)


def encode_row_topk(
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    b_dec: Tensor,
    k: int,
    *,
    dead_idx: Tensor | None = None,
    aux_k: int = 0,
    matmul_dtype: torch.dtype = torch.float32,
    fast: bool = True,
    groups: SharedColumnGroups | None = None,
) -> tuple[Tensor, Tensor, int]:
    """Per-row top-``k`` of the pre-activations, plus (AuxK) the top-``k_aux`` among dead latents.

    Returns ``(values [B, k + k_aux], cols [B, k + k_aux], k_aux)`` with
    ``k_aux = min(aux_k, len(dead_idx))`` (0 without dead latents); ``values`` (pre-activations,
    no ReLU, in ``W_enc``'s dtype) carries gradient as in :func:`encode_select`, which
    ``fast=False`` (plain autograd, the reference) and unsupported devices use. The fast path
    folds the biases into the matmul and takes the values from ``topk`` (module docstring).
    ``groups``: a :class:`SharedColumnGroups` the encoder-weight gradient shares with the decoder's
    (:func:`~sparsecodes.kernels.sparse_decode.sparse_decode` given the same object).
    """
    batch = x.shape[0]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, W_enc, b_enc, b_dec))
    if not (fast and fast_path_supported(x.device)):
        width = [k]

        def select(pre: Tensor) -> tuple[Tensor, Tensor]:
            cols, k_aux = row_topk_with_aux(pre, k, dead_idx, aux_k)
            width[0] = k + k_aux
            return row_index(batch, width[0], pre.device), cols.reshape(-1)

        values, _rows, cols, _pre = encode_select(
            x, W_enc, b_enc, b_dec, select, matmul_dtype=matmul_dtype, fast=fast
        )
        return values.view(batch, width[0]), cols.view(batch, width[0]), width[0] - k
    with torch.no_grad():
        bias = None
        if matmul_dtype == torch.float32 and native.usable(x, W_enc, b_enc, b_dec):
            # the kernel adds the folded bias while it selects: no [x, 1], [[W_enc], [bias]] copies
            bias = (b_enc - b_dec @ W_enc).contiguous()  # [N]
            # the same scratch buffer as folded_preacts' (one [batch, N] buffer per thread)
            pre = workspace("folded_pre", (batch, W_enc.shape[1]), torch.float32, x.device)
            pre = matmul(x.contiguous(), W_enc, out=pre)
            vals, cols = native.row_topk(pre, k, bias)
        else:
            pre = folded_preacts(x, W_enc, b_enc, b_dec, matmul_dtype, scratch=True)
            vals, cols = row_topk(pre, k)
        k_aux = 0
        if dead_idx is not None and aux_k > 0 and dead_idx.numel() > 0:
            k_aux = min(aux_k, dead_idx.numel())
            dead_pre = pre.index_select(1, dead_idx)
            if bias is not None:
                dead_pre += bias[dead_idx]
            aux_vals, j = dead_pre.topk(k_aux, dim=1, sorted=False)
            vals, cols = torch.cat([vals, aux_vals], dim=1), torch.cat([cols, dead_idx[j]], dim=1)
        del pre
    width = k + k_aux
    if needs_grad:
        rows = row_index(batch, width, x.device)
        values = SelectedAffine.apply(
            x, W_enc, b_enc, b_dec, rows, cols.reshape(-1), vals.reshape(-1), groups
        ).view(batch, width)
    else:
        values = vals.to(W_enc.dtype)
    return values, cols, k_aux


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
