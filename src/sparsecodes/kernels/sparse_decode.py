"""Decode from sparse codes with a sparse backward: ``x_hat = sum_j v_bj W_dec[i_bj] + b_dec``.

``indices``/``values`` ``[batch, k]``, ``W_dec`` ``[n_latents, d_in]``, ``b_dec`` ``[d_in]``.
The forward is ``embedding_bag`` (as :meth:`Dictionary.decode`). On CPU, ``embedding_bag``'s own
backward (a dense per-row scatter plus a per-entry dot product) costs several times the forward, so
:class:`SparseDecode` computes, from the output gradient ``g`` ``[batch, d_in]``:

- with the compiled kernels (:func:`~sparsecodes.kernels.native.decode_backward`, float32 CPU
  tensors), both of the following in one pass over the entries grouped by latent, each latent's
  gradient rows read once;
- otherwise ``dvalues[b, j] = <g_b, W_dec[i_bj]>`` as a sampled dense-dense matmul
  (``torch.sparse.sampled_addmm`` on the CSR pattern of the codes; no ``[batch * k, d_in]`` copy;
  its CPU kernel splits the rows over torch's threads itself), and
  ``dW_dec = V^T g`` with ``V`` the ``[batch, n_latents]`` sparse matrix of the values (entries
  sorted by latent, one ``embedding_bag``: :func:`~sparsecodes.kernels.sparse_affine.sum_rows_by_col`);
- ``db_dec = sum_b g_b``.

On CUDA, :func:`sparse_decode` uses the Triton kernels of :mod:`sparsecodes.kernels.triton_decode`
where ``triton`` is importable (``pip install 'sparsecodes[gpu]'``; CUDA builds of torch ship it),
else ``embedding_bag`` with its own backward (a debug log line says so once). Elsewhere (MPS, ...)
callers use ``embedding_bag``.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from sparsecodes.kernels import native
from sparsecodes.kernels.selection import row_index, rows_csr
from sparsecodes.kernels.sparse_affine import SharedColumnGroups, sum_rows_by_col

logger = logging.getLogger(__name__)


@functools.cache
def triton_available() -> bool:
    """True where the Triton kernels can run: ``triton`` importable and (unless
    ``TRITON_INTERPRET=1``, Triton's CPU interpreter) a CUDA device present. Logs at debug level
    when it is not, once."""
    if importlib.util.find_spec("triton") is None:
        logger.debug("Triton not installed, using the torch implementation of the sparse decoder")
        return False
    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        logger.debug("no CUDA device: Triton sparse decoder not used")
        return False
    return True


def decode_backend(device: torch.device | str) -> str:
    """Which sparse decoder runs on ``device``: ``"cpu_sparse"`` (:class:`SparseDecode`),
    ``"triton"`` (CUDA with Triton) or ``"embedding_bag"``."""
    kind = torch.device(device).type
    if kind == "cpu":
        return "cpu_sparse"
    if kind == "cuda" and triton_available():
        return "triton"
    return "embedding_bag"


def sparse_decode_supported(device: torch.device | str) -> bool:
    """Where :func:`sparse_decode` has a sparse backward (CPU always; CUDA with Triton)."""
    return decode_backend(device) != "embedding_bag"


def _sampled_dots(indices: Tensor, g: Tensor, W_dec: Tensor) -> Tensor:
    """``[batch, k]``: ``out[b, j] = <g[b], W_dec[indices[b, j]]>`` (``torch.sparse.sampled_addmm``
    on the CSR pattern of ``indices``, one call: its CPU kernel balances the rows over torch's
    threads; at 4096 x 32 codes of 576 dimensions, 12.5 ms on 2 threads against 15.3 ms for two
    row blocks on two worker threads, and 24 ms on one thread)."""
    if native.usable(indices, g, W_dec):
        return native.sampled_dots(indices, g, W_dec)
    batch, k = indices.shape
    pattern = rows_csr(indices, g.new_zeros(batch * k), W_dec.shape[0])
    return torch.sparse.sampled_addmm(pattern, g, W_dec.t(), beta=0.0).values().view(batch, k)


class SparseDecode(torch.autograd.Function):
    """``forward(indices [B, k], values [B, k], W_dec [N, d], b_dec [d], groups=None) -> [B, d]``
    (``groups``: see :func:`sparse_decode`)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        indices: Tensor,
        values: Tensor,
        W_dec: Tensor,
        b_dec: Tensor,
        groups: SharedColumnGroups | None = None,
    ) -> Tensor:
        indices = indices.contiguous()
        ctx.groups = groups
        values = values.contiguous().to(W_dec.dtype)
        ctx.save_for_backward(indices, values, W_dec)
        # detached: embedding_bag's forward-only kernel (no bag bookkeeping for its own backward)
        out = F.embedding_bag(
            indices, W_dec.detach(), per_sample_weights=values.detach(), mode="sum"
        )
        return out.add_(b_dec)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):  # type: ignore[override]
        indices, values, W_dec = ctx.saved_tensors
        batch, k = indices.shape
        n_latents = W_dec.shape[0]
        g = g.contiguous()
        gv = gw = gb = None
        need_v, need_w = ctx.needs_input_grad[1:3]
        cols = indices.reshape(-1)
        if need_w and native.usable(indices, values, g, W_dec):
            groups = ctx.groups if ctx.groups is not None else SharedColumnGroups()
            order, offsets = groups.get(cols, batch, n_latents)
            gv, gw = native.decode_backward(order, offsets, values, g, W_dec, need_values=need_v)
        else:
            if need_v:
                gv = _sampled_dots(indices, g, W_dec)
            if need_w:
                rows = row_index(batch, k, g.device)
                shared = ctx.groups.get(cols, batch, n_latents) if ctx.groups is not None else None
                gw = sum_rows_by_col(rows, cols, values.reshape(-1), g, n_latents, shared)
        if ctx.needs_input_grad[3]:
            gb = g.sum(dim=0)
        return None, gv, gw, gb, None


def sparse_decode(
    indices: Tensor,
    values: Tensor,
    W_dec: Tensor,
    b_dec: Tensor,
    groups: SharedColumnGroups | None = None,
) -> Tensor:
    """``[batch, d_in]`` reconstruction: :class:`SparseDecode` on CPU, the Triton kernel on CUDA
    where Triton is installed, ``embedding_bag`` elsewhere (:func:`decode_backend`). ``groups``
    (CPU): the :class:`~sparsecodes.kernels.sparse_affine.SharedColumnGroups` the encoder of the
    same step was given, so the two weight gradients sort the shared indices once."""
    backend = decode_backend(W_dec.device)
    if backend == "cpu_sparse":
        return SparseDecode.apply(indices, values, W_dec, b_dec, groups)
    if backend == "triton":
        from sparsecodes.kernels.triton_decode import TritonSparseDecode

        return TritonSparseDecode.apply(indices, values, W_dec, b_dec)
    out = F.embedding_bag(indices, W_dec, per_sample_weights=values.to(W_dec.dtype), mode="sum")
    return out + b_dec
