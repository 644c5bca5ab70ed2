"""Fast paths for hot training loops, each with an eager (plain autograd) fallback.

- :mod:`~sparsecodes.kernels.sparse_affine`: "encode then select" for one-layer SAE encoders.
  The forward is one dense matmul (optionally in bf16, fp32 master weights); the backward builds
  the encoder gradients from the selected ``[batch, k]`` entries only (COO ``torch.sparse.mm``,
  ``index_add_``), so it costs ``O(batch * k * d_in)`` instead of two dense matmuls.
- :mod:`~sparsecodes.kernels.sparse_decode`: decoding from ``[batch, k]`` codes whose backward uses
  a sampled matmul and a COO ``torch.sparse.mm`` instead of ``embedding_bag``'s slow CPU backward;
  on CUDA the Triton kernels of :mod:`~sparsecodes.kernels.triton_decode` where Triton is installed.
- :mod:`~sparsecodes.kernels.selection`: per-row top-k with an AuxK pass over dead latents, and an
  exact batch-wide top-k that avoids a slow flat ``topk`` over ``batch * n_latents`` entries.

Every fast path is opt-out (``fast=False``) and tested against the eager one.
"""

from sparsecodes.kernels.selection import batch_topk_flat, pad_rows, row_topk_with_aux
from sparsecodes.kernels.sparse_affine import (
    GatherAffine,
    encode_select,
    fast_path_supported,
    preacts,
    resolve_matmul_dtype,
)
from sparsecodes.kernels.sparse_decode import (
    SparseDecode,
    decode_backend,
    sparse_decode,
    triton_available,
)

__all__ = [
    "GatherAffine",
    "SparseDecode",
    "batch_topk_flat",
    "decode_backend",
    "encode_select",
    "fast_path_supported",
    "pad_rows",
    "preacts",
    "resolve_matmul_dtype",
    "row_topk_with_aux",
    "sparse_decode",
    "triton_available",
]
