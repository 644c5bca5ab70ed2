"""Dense float32 matrix products on the CPU through the faster BLAS the process already has.

torch's CPU wheels multiply matrices with MKL, numpy's wheels with OpenBLAS. On AMD CPUs MKL's
sgemm runs well below what the cores can do, and OpenBLAS's kernels for them are faster: on two
AMD EPYC cores (AVX2, 2 threads) ``[4096, 576] @ [576, 4608]`` took 245-280 ms through torch and
160-170 ms through numpy. :func:`matmul` sends large float32 CPU products to the backend chosen
once per process:

- ``"torch"``: ``torch.mm`` (MKL in the pip wheels; the only backend off the CPU);
- ``"openblas"``: ``numpy.matmul`` on zero-copy views of the tensors, with OpenBLAS limited to
  ``torch.get_num_threads()`` threads (through ``threadpoolctl``);
- ``"auto"`` (default): ``"openblas"`` on an AMD x86 CPU when numpy's BLAS is OpenBLAS, else
  ``"torch"``.

The choice comes from the environment variable ``SPARSECODES_GEMM`` (or
:func:`set_gemm_backend`) and the CPU's vendor, never from timing, so one command gives the same
numbers on one machine. The two backends agree to float32 rounding (different summation orders),
not bit for bit. Products with fewer than :data:`MIN_MACS` multiply-adds, tensors that need a
gradient, and anything but 2-D float32 CPU tensors always go through torch.
"""

from __future__ import annotations

import functools
import os
import platform

import numpy as np
import torch
from torch import Tensor

GEMM_BACKENDS: tuple[str, ...] = ("auto", "torch", "openblas")
#: products smaller than this (``m * k * n``) stay in torch: the call overhead would dominate
MIN_MACS = 1 << 22

_chosen: str | None = None
_blas_threads: int | None = None


def cpu_vendor() -> str:
    """The CPU's vendor string (``"AuthenticAMD"``, ``"GenuineIntel"``, ...), or ``""``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


@functools.cache
def _numpy_openblas():  # -> threadpoolctl controller of numpy's OpenBLAS, or None
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # a declared dependency; tolerate its absence by not using OpenBLAS
        return None
    ctl = ThreadpoolController().select(internal_api="openblas")
    return ctl if ctl.lib_controllers else None


def resolve_gemm_backend(spec: str | None = None) -> str:
    """``"torch"`` or ``"openblas"`` for ``spec`` (default: ``$SPARSECODES_GEMM`` or ``"auto"``)."""
    spec = (spec or os.environ.get("SPARSECODES_GEMM") or "auto").lower()
    if spec not in GEMM_BACKENDS:
        raise ValueError(
            f"gemm backend must be one of {', '.join(GEMM_BACKENDS)}, got {spec!r} "
            "(set SPARSECODES_GEMM to one of them)"
        )
    if spec == "torch":
        return "torch"
    available = _numpy_openblas() is not None
    if spec == "openblas":
        if not available:
            raise ValueError(
                "gemm backend 'openblas' needs numpy built with OpenBLAS and threadpoolctl; "
                "use SPARSECODES_GEMM=torch"
            )
        return "openblas"
    is_amd = cpu_vendor() == "AuthenticAMD" and platform.machine() in ("x86_64", "AMD64")
    return "openblas" if available and is_amd else "torch"


def gemm_backend() -> str:
    """The backend :func:`matmul` uses in this process (resolved on first use)."""
    global _chosen
    if _chosen is None:
        _chosen = resolve_gemm_backend()
    return _chosen


def set_gemm_backend(spec: str | None) -> str:
    """Choose the backend (``"auto"``, ``"torch"``, ``"openblas"``; ``None``: from the
    environment again) and return the resolved name."""
    global _chosen
    _chosen = resolve_gemm_backend(spec)
    return _chosen


def _limit_threads() -> None:
    global _blas_threads
    n = torch.get_num_threads()
    if n != _blas_threads:
        _numpy_openblas().limit(limits=n)
        _blas_threads = n


def uses_openblas(a: Tensor, b: Tensor) -> bool:
    """Whether :func:`matmul` would send ``a @ b`` to OpenBLAS."""
    return (
        gemm_backend() == "openblas"
        and a.device.type == "cpu"
        and b.device.type == "cpu"
        and a.dtype == torch.float32
        and b.dtype == torch.float32
        and a.dim() == 2
        and b.dim() == 2
        and not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad))
        and a.shape[0] * a.shape[1] * b.shape[1] >= MIN_MACS
    )


def matmul(a: Tensor, b: Tensor, *, out: Tensor | None = None) -> Tensor:
    """``a @ b`` for ``a`` ``[m, k]`` and ``b`` ``[k, n]`` -> ``[m, n]``, written into ``out``
    (contiguous ``[m, n]``) when given. Transposed views are read in place (no copy)."""
    if not uses_openblas(a, b) or (out is not None and not out.is_contiguous()):
        return torch.mm(a, b, out=out) if out is not None else torch.mm(a, b)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} do not chain")
    _limit_threads()
    an, bn = a.detach().numpy(), b.detach().numpy()
    if out is None:
        return torch.from_numpy(np.matmul(an, bn))
    np.matmul(an, bn, out=out.detach().numpy())
    return out
