"""Triton kernels for decoding from sparse codes on CUDA (imported only where Triton is).

``x_hat[b] = sum_j values[b, j] * W_dec[indices[b, j]] + b_dec`` with ``indices``/``values``
``[batch, k]``, ``W_dec`` ``[n_latents, d_in]``, ``b_dec`` ``[d_in]``. The forward reads only the
``k`` selected rows of ``W_dec`` per token; the backward computes

- ``dvalues[b, j] = <g_b, W_dec[indices[b, j]]>`` (one program per ``(b, j)``);
- ``dW_dec[indices[b, j]] += values[b, j] * g_b`` with atomic adds (so the summation order, and
  the last bits of ``dW_dec``, may differ between runs on a GPU);
- ``db_dec = sum_b g_b`` (torch).

All arithmetic is fp32 (inputs are cast; under autocast the kernel runs in fp32 too). The module
imports without ``triton`` (an optional extra); the kernels are built on first use
(:func:`kernels`), which raises an ImportError naming ``pip install 'sparsecodes[gpu]'`` where
Triton is missing (:func:`sparsecodes.kernels.sparse_decode.triton_available` says whether it is
there). With ``TRITON_INTERPRET=1`` set before the first use, the kernels run (slowly) on CPU
tensors, which is how they are tested without a GPU.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

BLOCK_D = 128

# ``triton`` and ``triton.language``, set by kernels() on first use: the kernel functions below
# read them as module globals (Triton's compiler resolves ``tl`` there), and the module imports
# on a CPU-only install where triton is absent.
triton: Any = None
tl: Any = None
_JITTED: dict[str, Any] = {}


def kernels() -> dict[str, Any]:
    """The JIT-compiled kernels by name (Triton imported and the kernels wrapped on the first call).

    Raises ImportError naming ``pip install 'sparsecodes[gpu]'`` where Triton is not installed.
    """
    global triton, tl
    if not _JITTED:
        try:  # by name: triton is an optional extra, absent from CPU installs
            triton = importlib.import_module("triton")
            tl = importlib.import_module("triton.language")
        except ImportError as e:
            raise ImportError(
                "the Triton sparse decoder needs triton: pip install 'sparsecodes[gpu]'"
            ) from e
        for fn in (_decode_fwd, _decode_bwd_values, _decode_bwd_weights):
            _JITTED[fn.__name__] = triton.jit(fn)
    return _JITTED


def _decode_fwd(idx_ptr, val_ptr, w_ptr, out_ptr, k, d, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < d
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for j in range(k):
        i = tl.load(idx_ptr + b * k + j)
        v = tl.load(val_ptr + b * k + j)
        w = tl.load(w_ptr + i * d + offs, mask=mask, other=0.0)
        acc += v * w
    tl.store(out_ptr + b * d + offs, acc, mask=mask)


def _decode_bwd_values(idx_ptr, g_ptr, w_ptr, gv_ptr, k, d, BLOCK: tl.constexpr):
    e = tl.program_id(0)  # entry b * k + j
    b = e // k
    i = tl.load(idx_ptr + e)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, d, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < d
        g = tl.load(g_ptr + b * d + offs, mask=mask, other=0.0)
        w = tl.load(w_ptr + i * d + offs, mask=mask, other=0.0)
        acc += g * w
    tl.store(gv_ptr + e, tl.sum(acc, axis=0))


def _decode_bwd_weights(idx_ptr, val_ptr, g_ptr, gw_ptr, k, d, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < d
    g = tl.load(g_ptr + b * d + offs, mask=mask, other=0.0)
    for j in range(k):
        i = tl.load(idx_ptr + b * k + j)
        v = tl.load(val_ptr + b * k + j)
        tl.atomic_add(gw_ptr + i * d + offs, v * g, mask=mask)


class TritonSparseDecode(torch.autograd.Function):
    """``forward(indices [B, k], values [B, k], W_dec [N, d], b_dec [d]) -> [B, d]`` (fp32)."""

    @staticmethod
    def forward(ctx, indices: Tensor, values: Tensor, W_dec: Tensor, b_dec: Tensor) -> Tensor:  # type: ignore[override]
        jit = kernels()
        idx = indices.contiguous().to(torch.int64)
        vals = values.contiguous().float()
        W = W_dec.contiguous().float()
        batch, k = idx.shape
        d = W.shape[1]
        out = torch.empty(batch, d, device=W.device, dtype=torch.float32)
        if batch and d:
            jit["_decode_fwd"][(batch, triton.cdiv(d, BLOCK_D))](
                idx, vals, W, out, k, d, BLOCK=BLOCK_D
            )
        ctx.save_for_backward(idx, vals, W)
        ctx.dtypes = (values.dtype, W_dec.dtype)
        return out + b_dec.float()

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):  # type: ignore[override]
        jit = kernels()
        idx, vals, W = ctx.saved_tensors
        batch, k = idx.shape
        d = W.shape[1]
        g = g.contiguous().float()
        gv = gw = gb = None
        if ctx.needs_input_grad[1]:
            gv = torch.empty(batch, k, device=g.device, dtype=torch.float32)
            if gv.numel():
                jit["_decode_bwd_values"][(batch * k,)](idx, g, W, gv, k, d, BLOCK=BLOCK_D)
            gv = gv.to(ctx.dtypes[0])
        if ctx.needs_input_grad[2]:
            gw = torch.zeros_like(W)
            if batch and d:
                grid = (batch, triton.cdiv(d, BLOCK_D))
                jit["_decode_bwd_weights"][grid](idx, vals, g, gw, k, d, BLOCK=BLOCK_D)
            gw = gw.to(ctx.dtypes[1])
        if ctx.needs_input_grad[3]:
            gb = g.sum(dim=0)
        return None, gv, gw, gb
