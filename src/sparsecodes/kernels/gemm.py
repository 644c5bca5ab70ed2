"""Dense float32 matrix products on the CPU through the faster BLAS the process already has.

torch's CPU wheels multiply matrices with MKL, numpy's wheels with OpenBLAS. On AMD CPUs MKL's
sgemm runs well below what the cores can do, and OpenBLAS's kernels for them are faster: on two
AMD EPYC cores (AVX2, 2 threads) ``[4096, 576] @ [576, 4608]`` took 245-280 ms through torch and
160-170 ms through numpy. :func:`matmul` sends large float32 CPU products to the backend chosen
once per process:

- ``"torch"``: ``torch.mm`` (MKL in the pip wheels; the only backend off the CPU);
- ``"openblas"``: ``numpy.matmul`` on zero-copy views of the tensors. The rows of ``a`` are split
  into ``torch.get_num_threads()`` blocks, each multiplied by single-threaded OpenBLAS in its own
  Python thread (numpy releases the GIL): the calling thread takes the first block, a small
  persistent pool the others (see "Threads" below);
- ``"auto"`` (default): ``"openblas"`` on an AMD x86 CPU when numpy's BLAS is OpenBLAS, else
  ``"torch"``.

The choice comes from the environment variable ``SPARSECODES_GEMM`` (or
:func:`set_gemm_backend`) and the CPU's vendor, never from timing, so one command gives the same
numbers on one machine. The two backends agree to float32 rounding (different summation orders),
not bit for bit. Products with fewer than :data:`MIN_MACS` multiply-adds, tensors that need a
gradient, and anything but 2-D float32 CPU tensors always go through torch.

Threads: torch's CPU ops run on OpenMP threads, OpenBLAS on its own pthreads, and both spin for a
while after each call before they sleep. A multi-threaded OpenBLAS call between torch ops leaves
its workers spinning on the cores torch's next op needs (and vice versa), which on two cores
cost a good part of the gain. So OpenBLAS is held to one thread for the duration of the call
(``threadpoolctl``; restored afterwards, so other numpy code in the process keeps its setting)
and the parallelism comes from Python threads that block, not spin, when idle. This needs no
environment variable set before start-up (``OMP_WAIT_POLICY``, ``OPENBLAS_THREAD_TIMEOUT``),
which a library cannot rely on.
"""

from __future__ import annotations

import functools
import itertools
import os
import platform
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from sparsecodes.devices import cpu_info

T = TypeVar("T")

GEMM_BACKENDS: tuple[str, ...] = ("auto", "torch", "openblas")
#: products smaller than this (``m * k * n``) stay in torch: the call overhead would dominate
MIN_MACS = 1 << 22
#: fewest rows of ``a`` per thread block (smaller products use fewer threads)
MIN_ROWS_PER_THREAD = 64

_chosen: str | None = None
_pool: list[queue.SimpleQueue] = []
_pool_lock = threading.Lock()
_in_worker = threading.local()
_limit_lock = threading.Lock()
_limit_users = 0
_limiter: Any = None


def _forget_workers() -> None:  # a forked child has none of the parent's threads
    global _pool, _pool_lock, _limit_lock, _limit_users, _limiter
    _pool, _pool_lock = [], threading.Lock()
    _limit_lock, _limit_users, _limiter = threading.Lock(), 0, None


os.register_at_fork(after_in_child=_forget_workers)


def cpu_vendor() -> str:
    """The CPU's vendor string (``"AuthenticAMD"``, ``"GenuineIntel"``, ...), or ``""``."""
    return cpu_info("vendor_id") or platform.processor()


@functools.cache
def _numpy_openblas():  # -> threadpoolctl controller of numpy's OpenBLAS, or None
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # a declared dependency; tolerate its absence by not using OpenBLAS
        return None
    ctl = ThreadpoolController().select(internal_api="openblas")
    return ctl if ctl.lib_controllers else None


@contextmanager
def one_openblas_thread() -> Iterator[None]:
    """numpy's OpenBLAS at one thread while any thread of the process is inside the block.

    Counted across threads: the first caller in saves the setting, the last one out restores it.
    (Each caller limiting and restoring on its own would let one that leaves early give another,
    still multiplying, OpenBLAS's full thread count, and leave the process at one thread.)
    """
    global _limit_users, _limiter
    with _limit_lock:
        if _limit_users == 0:
            _limiter = _numpy_openblas().limit(limits=1)
        _limit_users += 1
    try:
        yield
    finally:
        with _limit_lock:
            _limit_users -= 1
            if _limit_users == 0:
                _limiter.restore_original_limits()
                _limiter = None


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


def _serve(jobs: queue.SimpleQueue) -> None:
    _in_worker.active = True
    while True:
        fn, done = jobs.get()
        if done.set_running_or_notify_cancel():
            try:
                done.set_result(fn())
            except BaseException as e:  # handed to the caller, which re-raises it
                done.set_exception(e)


def _workers(n: int) -> list[queue.SimpleQueue]:
    """The job queues of ``n`` daemon worker threads, one queue each (so block ``i`` always runs
    on worker ``i``), kept for the process and grown on demand; idle workers block on their
    queue."""
    with _pool_lock:
        while len(_pool) < n:
            jobs: queue.SimpleQueue = queue.SimpleQueue()
            name = f"sparsecodes-gemm-{len(_pool)}"
            threading.Thread(target=_serve, args=(jobs,), name=name, daemon=True).start()
            _pool.append(jobs)
        return _pool[:n]


def _submit(jobs: queue.SimpleQueue, fn) -> Future:
    done: Future = Future()
    jobs.put((fn, done))
    return done


def row_blocks(m: int, threads: int, min_rows: int = MIN_ROWS_PER_THREAD) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: ``m`` rows in at most ``threads`` near-equal blocks of at least
    ``min_rows`` rows (one block when ``m`` is smaller)."""
    parts = max(1, min(threads, m // max(1, min_rows)))
    edges = [m * i // parts for i in range(parts + 1)]
    return list(itertools.pairwise(edges))


def run_row_blocks(
    m: int,
    fn: Callable[[int, int], T],
    *,
    min_rows: int = MIN_ROWS_PER_THREAD,
    threads: int | None = None,
) -> list[T]:
    """``[fn(start, stop) for each block]`` over :func:`row_blocks` of ``m`` rows for ``threads``
    threads (default ``torch.get_num_threads()``): the calling thread runs the first block, the
    process's worker threads the others, in parallel where ``fn`` releases the GIL (numpy's BLAS,
    torch ops). For work whose own kernel is single-threaded. Idle workers block, never spin.
    Called from inside a block (nested), it runs its blocks in the calling thread."""
    if getattr(_in_worker, "active", False):
        threads = 1
    elif threads is None:
        threads = torch.get_num_threads()
    blocks = row_blocks(m, threads, min_rows)
    pending = [
        _submit(w, functools.partial(fn, i, j))
        for w, (i, j) in zip(_workers(len(blocks) - 1), blocks[1:], strict=True)
    ]
    try:
        first = fn(*blocks[0])
    finally:
        rest = [f.result() for f in pending]
    return [first, *rest]


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
    (contiguous ``[m, n]``) when given. Transposed views are read in place (no copy). On the
    OpenBLAS backend the rows run in ``torch.get_num_threads()`` blocks (module docstring)."""
    if not uses_openblas(a, b) or (out is not None and not out.is_contiguous()):
        return torch.mm(a, b, out=out) if out is not None else torch.mm(a, b)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} do not chain")
    if out is not None and out.shape != (a.shape[0], b.shape[1]):
        raise ValueError(
            f"matmul: out has shape {tuple(out.shape)}, expected {(a.shape[0], b.shape[1])}"
        )
    if out is None:
        out = torch.empty(a.shape[0], b.shape[1])
    an, bn, on = a.detach().numpy(), b.detach().numpy(), out.detach().numpy()

    def block(i: int, j: int) -> None:
        np.matmul(an[i:j], bn, out=on[i:j])

    with one_openblas_thread():
        run_row_blocks(a.shape[0], block)
    return out
