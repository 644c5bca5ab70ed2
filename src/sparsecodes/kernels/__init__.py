"""Fast paths for hot training loops, each with an eager (plain autograd) fallback.

- :mod:`~sparsecodes.kernels.sparse_affine`: "encode then select" for one-layer SAE encoders.
  The forward is one dense matmul (optionally in bf16, fp32 master weights); the backward builds
  the encoder gradients from the selected ``[batch, k]`` entries only (``embedding_bag`` over the
  entries sorted by latent, :func:`sum_rows_by_col`; ``index_add_``), so it costs
  ``O(batch * k * d_in)`` instead of two dense matmuls. Per-row top-k (:func:`encode_row_topk`)
  folds the biases into the matmul and writes it into a reused CPU :func:`workspace` buffer;
  :class:`SharedColumnGroups` lets the encoder's and the decoder's weight gradients of one step
  sort their shared indices once.
- :mod:`~sparsecodes.kernels.sparse_decode`: decoding from ``[batch, k]`` codes whose backward uses
  a sampled matmul and :func:`sum_rows_by_col` instead of ``embedding_bag``'s slow CPU
  backward; on CUDA the Triton kernels of :mod:`~sparsecodes.kernels.triton_decode` where Triton is installed.
- :mod:`~sparsecodes.kernels.gemm`: large float32 CPU matmuls through numpy's OpenBLAS where it
  beats torch's MKL (AMD CPUs), chosen once per process (``SPARSECODES_GEMM``), rows split over
  Python worker threads (:func:`run_row_blocks`, also used by the split caching forward).
- :mod:`~sparsecodes.kernels.selection`: per-row top-k (:func:`row_topk`, through strided block
  maxima), per-row top-k with an AuxK pass over dead latents, and an exact batch-wide top-k that
  avoids a slow flat ``topk`` over ``batch * n_latents`` entries.
- :mod:`~sparsecodes.kernels.native`: compiled C kernels (built on first use by the machine's C
  compiler, cached per machine) for the per-row top-k, the sparse decode's backward, the encoder
  weight's gradient and the decoder upkeep; every caller falls back to the torch ops above when
  they do not build or the tensors are not float32 CPU tensors (``SPARSECODES_NATIVE``).
- :mod:`~sparsecodes.kernels.losses`: the per-token squared error as one autograd node with a
  one-pass backward (:func:`squared_error_per_token`).

Every fast path is opt-out (``fast=False``) and tested against the eager one.
"""

from sparsecodes.kernels.gemm import gemm_backend, matmul, run_row_blocks, set_gemm_backend
from sparsecodes.kernels.losses import squared_error_per_token
from sparsecodes.kernels.selection import batch_topk_flat, pad_rows, row_topk, row_topk_with_aux
from sparsecodes.kernels.sparse_affine import (
    GatherAffine,
    SelectedAffine,
    SharedColumnGroups,
    encode_row_topk,
    encode_select,
    fast_path_supported,
    folded_preacts,
    preacts,
    release_workspace,
    resolve_matmul_dtype,
    sum_rows_by_col,
    workspace,
)
from sparsecodes.kernels.sparse_decode import (
    SparseDecode,
    decode_backend,
    sparse_decode,
    triton_available,
)

__all__ = [
    "GatherAffine",
    "SelectedAffine",
    "SharedColumnGroups",
    "SparseDecode",
    "batch_topk_flat",
    "decode_backend",
    "encode_row_topk",
    "encode_select",
    "fast_path_supported",
    "folded_preacts",
    "gemm_backend",
    "matmul",
    "pad_rows",
    "preacts",
    "release_workspace",
    "resolve_matmul_dtype",
    "row_topk",
    "row_topk_with_aux",
    "run_row_blocks",
    "set_gemm_backend",
    "sparse_decode",
    "squared_error_per_token",
    "sum_rows_by_col",
    "triton_available",
    "workspace",
]
