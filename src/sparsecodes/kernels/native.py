"""Compiled CPU kernels for the sparse passes of a TopK training step, with torch as the fallback.

The C source (``native.c``, shipped with the package) is compiled on first use by the machine's
C compiler (``$CC``, else ``cc`` or ``gcc``) with ``-O3 -march=native`` into a shared library
kept under the cache directory (``$SPARSECODES_CACHE``, else ``~/.cache/sparsecodes``;
``native/``), keyed by the source, the compiler's version and the CPU's flags, written
atomically; later processes load it in milliseconds. It is called through ``ctypes``, which
releases the GIL, so the rows are split over threads by
:func:`~sparsecodes.kernels.gemm.run_row_blocks`. Kernels (float32 values, int64 indices):

- :func:`row_topk`: the ``k`` largest entries of each row, optionally after adding a bias
  (a lower bound of the k-th largest from strided block maxima, the entries above it collected
  with vector comparisons, then a branch-free quickselect), in place of two ``topk`` calls;
- :func:`remove_parallel_` and :func:`unit_rows_`: the decoder's per-atom gradient projection and
  renormalisation, one pass each (torch's ``vecdot`` materialises the products);
- :func:`group_by_col`: the entries of a sparse pattern grouped by column (a counting sort, in
  place of ``argsort``, ``bincount`` and ``cumsum``);
- :func:`sum_rows_by_col`: the column sums of a sparse matrix times dense rows, written as
  ``[n_cols, d]`` or directly as its transpose ``[d, n_cols]`` (the encoder weight's layout);
- :func:`decode_backward`: a sparse decode's value and weight gradients in one pass over the
  entries grouped by latent, in place of ``sampled_addmm`` and ``embedding_bag``;
- :func:`sampled_dots`: ``out[b, j] = <g[b], W[i[b, j]]>`` (the value gradients alone, when
  the weights are frozen).

Sums run in the order of the entries, so results do not depend on the thread count; they equal
torch's up to float32 rounding (other summation orders). ``$SPARSECODES_NATIVE``: ``auto``
(default: use the kernels when they compile, else log once at info level and use torch),
``0``/``off`` (never), ``1``/``on`` (an error if they cannot be built). No compiler, a failed
build or a non-CPU, non-float32 or non-contiguous tensor all mean the torch path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from sparsecodes.devices import cpu_info
from sparsecodes.files import atomic_write, cache_root
from sparsecodes.kernels.gemm import run_row_blocks

logger = logging.getLogger(__name__)

_OFF = ("0", "off", "false", "no")
_ON = ("1", "on", "true", "yes")

_P, _I = ctypes.c_void_p, ctypes.c_int64
_SIGNATURES = {
    "sc_row_topk": (_P, _I, _I, _I, _I, _P, _I, _I, _P, _P),
    "sc_sum_rows_by_col": (_P, _P, _I, _P, _P, _P, _P, _I, _P, _I, _I, _I, _I),
    "sc_decode_backward": (_P, _I, _P, _P, _P, _P, _I, _P, _P, _I, _I),
    "sc_sampled_dots": (_P, _I, _P, _P, _I, _P, _I, _I),
    "sc_group_by_col": (_P, _I, _I, _P, _P),
    "sc_remove_parallel": (_P, _P, _I, _I, _I),
    "sc_unit_rows": (_P, _I, _I, _I),
}
#: functions that return a status (0, or 1 when their scratch memory could not be allocated)
_RETURNS = {
    name: ctypes.c_int
    for name in ("sc_row_topk", "sc_sum_rows_by_col", "sc_decode_backward", "sc_group_by_col")
}


class NativeBuildError(RuntimeError):
    """The C kernels could not be compiled or loaded (the message says why and what to do)."""


def native_mode() -> str:
    """``"auto"``, ``"on"`` or ``"off"`` from ``$SPARSECODES_NATIVE`` (default ``"auto"``)."""
    v = os.environ.get("SPARSECODES_NATIVE", "auto").strip().lower()
    if v in _OFF:
        return "off"
    if v in _ON:
        return "on"
    if v in ("", "auto"):
        return "auto"
    raise ValueError(f"SPARSECODES_NATIVE must be auto, on (1) or off (0), got {v!r}")


def _compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise NativeBuildError(
            "no C compiler found (set CC, or install gcc: `apt-get install gcc`); "
            "SPARSECODES_NATIVE=0 silences this"
        )
    return cc


def _build_key(source: bytes, cc: str, flags: list[str]) -> str:
    try:
        version = subprocess.run(
            [cc, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise NativeBuildError(f"C compiler {cc!r} does not run: {e}") from e
    h = hashlib.sha256(source)
    for part in (cc, version, " ".join(flags), platform.machine(), cpu_info("flags")):
        h.update(b"\0" + part.encode())
    return h.hexdigest()[:20]


def _compile(source: Path, cc: str, flags: list[str], target: Path) -> None:
    def build(tmp: str) -> None:
        cmd = [cc, *flags, "-shared", "-fPIC", "-std=c99", str(source), "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise NativeBuildError(f"`{' '.join(cmd)}` failed:\n{done.stderr.strip()[-2000:]}")

    atomic_write(target, write_path=build)


def _load(source_path: Path, source: bytes, cc: str, flags: list[str], root: Path) -> ctypes.CDLL:
    target = root / "native" / f"sc_native_{_build_key(source, cc, flags)}.so"
    if target.exists():
        try:
            return ctypes.CDLL(str(target))
        except OSError as e:  # a damaged file: build it again
            logger.warning("rebuilding the sparse CPU kernels (%s did not load: %s)", target, e)
    logger.info("compiling the sparse CPU kernels into %s", target)
    _compile(source_path, cc, flags, target)
    return ctypes.CDLL(str(target))


def _build() -> ctypes.CDLL:
    cc = _compiler()
    getuid = getattr(os, "getuid", lambda: 0)
    root = cache_root() or Path(tempfile.gettempdir()) / f"sparsecodes-{getuid()}"
    try:
        with resources.as_file(resources.files("sparsecodes.kernels") / "native.c") as src:
            source = src.read_bytes()
            try:
                lib = _load(src, source, cc, ["-O3", "-march=native"], root)
            except (NativeBuildError, OSError, subprocess.SubprocessError) as e:
                logger.info("building without -march=native (%s)", e)  # not every compiler has it
                lib = _load(src, source, cc, ["-O3"], root)
    except (OSError, subprocess.SubprocessError) as e:
        raise NativeBuildError(f"could not build the sparse CPU kernels: {e}") from e
    for name, args in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, _RETURNS.get(name)
    return lib


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels (built on first use), or None where ``$SPARSECODES_NATIVE`` is off or
    (mode ``auto``) they cannot be built; mode ``on`` raises :class:`NativeBuildError` then."""
    mode = native_mode()
    if mode == "off":
        return None
    try:
        return _build()
    except NativeBuildError as e:
        if mode == "on":
            raise
        logger.info("sparse CPU kernels not available, using torch ops instead: %s", e)
        return None


def _checked(statuses: list[int]) -> None:
    if any(statuses):
        raise MemoryError("the sparse CPU kernels could not allocate their scratch memory")


_enabled = True


def set_native(enabled: bool) -> None:
    """Turn the kernels off (``False``: every caller takes the torch path) or back on (``True``:
    as ``$SPARSECODES_NATIVE`` decides) for this process, e.g. to time or compare both paths in
    one run."""
    global _enabled
    _enabled = bool(enabled)


def usable(*tensors: Tensor) -> bool:
    """Whether the kernels take these tensors: all on the CPU, contiguous, float32 or int64 (and
    the library loads, and :func:`set_native` has not turned them off)."""
    if not _enabled:
        return False
    ok = all(
        t.device.type == "cpu" and t.is_contiguous() and t.dtype in (torch.float32, torch.int64)
        for t in tensors
    )
    return ok and library() is not None


def row_topk(pre: Tensor, k: int, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(values [batch, k], cols [batch, k])``, the ``k`` largest entries of each row of
    ``pre + bias`` (``pre`` ``[batch, n]`` float32, contiguous; ``bias`` ``[n]`` or None;
    ``1 <= k <= n``), unsorted; among equal values the earlier column is kept. A row holding
    NaN gets ``k`` distinct valid columns, which ones is unspecified."""
    batch, n = pre.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the row length {n}, got {k}")
    lib = library()
    vals = torch.empty(batch, k, dtype=pre.dtype)
    cols = torch.empty(batch, k, dtype=torch.int64)
    p, v, c = pre.data_ptr(), vals.data_ptr(), cols.data_ptr()
    b = None if bias is None else bias.data_ptr()
    nb = 4 * k if 8 * k <= n else 0  # strided blocks for the threshold's lower bound (native.c)
    _checked(
        run_row_blocks(
            batch, lambda r0, r1: lib.sc_row_topk(p, n, n, k, nb, b, r0, r1, v, c), min_rows=16
        )
    )
    return vals, cols


def sampled_dots(indices: Tensor, g: Tensor, W: Tensor) -> Tensor:
    """``[batch, k]``: ``out[b, j] = <g[b], W[indices[b, j]]>`` (``g`` ``[batch, d]``, ``W``
    ``[n, d]``)."""
    batch, k = indices.shape
    lib = library()
    out = torch.empty(batch, k, dtype=g.dtype)
    args = (indices.data_ptr(), k, g.data_ptr(), W.data_ptr(), g.shape[1], out.data_ptr())
    run_row_blocks(batch, lambda r0, r1: lib.sc_sampled_dots(*args, r0, r1), min_rows=16)
    return out


def group_by_col(cols: Tensor, n_cols: int) -> tuple[Tensor, Tensor]:
    """``(order [nnz], offsets [n_cols + 1])`` for ``cols`` ``[nnz]`` (int64, each in
    ``[0, n_cols)``): the entries column by column (increasing within a column; a counting sort)
    and where each column's run starts (``offsets[-1] = nnz``)."""
    nnz = cols.numel()
    order = torch.empty(nnz, dtype=torch.int64)
    offsets = torch.empty(n_cols + 1, dtype=torch.int64)
    status = library().sc_group_by_col(
        cols.data_ptr(), nnz, n_cols, order.data_ptr(), offsets.data_ptr()
    )
    if status:
        raise IndexError(f"a column index is outside [0, {n_cols})")
    return order, offsets


def sum_rows_by_col(
    order: Tensor,
    offsets: Tensor,
    weights: Tensor,
    src: Tensor,
    rows: Tensor | None = None,
    width: int = 1,
    *,
    shift: Tensor | None = None,
    transpose: bool = False,
) -> Tensor:
    """``out[c] = sum_e weights[e] * src[row(e)]`` over the entries ``e = order[j]``,
    ``offsets[c] <= j < offsets[c + 1]`` (the entries grouped by column), for the
    ``n_cols = len(offsets) - 1`` columns: ``[n_cols, d]``, or its transpose ``[d, n_cols]``
    (contiguous) when ``transpose``. ``row(e) = rows[e]``, or ``e // width`` without ``rows``
    (a row-major ``[batch, width]`` pattern); ``weights`` ``[nnz]`` in entry order. ``shift``
    ``[d]``: rows taken as ``src[row(e)] - shift`` (subtracted once per column, times the sum of
    its weights)."""
    n_cols, d = offsets.numel() - 1, src.shape[1]
    lib = library()
    out = torch.empty((d, n_cols) if transpose else (n_cols, d), dtype=src.dtype)
    args = (order.data_ptr(), None if rows is None else rows.data_ptr(), width, weights.data_ptr())
    args += (offsets.data_ptr(), src.data_ptr(), None if shift is None else shift.data_ptr(), d)
    args += (out.data_ptr(), n_cols, int(transpose))
    _checked(
        run_row_blocks(n_cols, lambda c0, c1: lib.sc_sum_rows_by_col(*args, c0, c1), min_rows=16)
    )
    return out


def decode_backward(
    order: Tensor,
    offsets: Tensor,
    values: Tensor,
    g: Tensor,
    W: Tensor,
    *,
    need_values: bool = True,
    need_W: bool = True,
) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of ``x_hat[b] = sum_j values[b, j] W[i[b, j]]`` from ``g`` ``[batch, d]``:
    ``(dvalues [batch, k], dW [n, d])`` (None where not needed), with the entries of
    ``i`` ``[batch, k]`` grouped by latent (``order``, ``offsets`` as :func:`sum_rows_by_col`).
    Each latent's gradient rows are read once for both (``dvalues[b, j] = <g[b], W[i[b, j]]>``,
    ``dW[c] = sum_{i[b, j] = c} values[b, j] g[b]``); latents with no entry get ``dW = 0``."""
    batch, k = values.shape
    n, d = W.shape
    lib = library()
    dv = torch.empty(batch, k, dtype=g.dtype) if need_values else None
    dW = torch.empty(n, d, dtype=g.dtype) if need_W else None
    args = (order.data_ptr(), k, values.data_ptr(), offsets.data_ptr(), g.data_ptr())
    args += (W.data_ptr(), d, None if dv is None else dv.data_ptr())
    args += (None if dW is None else dW.data_ptr(),)
    _checked(run_row_blocks(n, lambda c0, c1: lib.sc_decode_backward(*args, c0, c1), min_rows=16))
    return dv, dW


def remove_parallel_(g: Tensor, w: Tensor) -> None:
    """In place, row by row: ``g[r] -= (<g[r], w[r]> / max(|w[r]|^2, 1e-12)) w[r]``
    (``g``, ``w`` ``[rows, d]``)."""
    lib = library()
    args = (g.data_ptr(), w.data_ptr(), g.shape[1])
    run_row_blocks(g.shape[0], lambda r0, r1: lib.sc_remove_parallel(*args, r0, r1), min_rows=16)


def unit_rows_(w: Tensor) -> None:
    """In place: every row of ``w`` ``[rows, d]`` divided by ``max(its L2 norm, 1e-12)``."""
    lib = library()
    p, d = w.data_ptr(), w.shape[1]
    run_row_blocks(w.shape[0], lambda r0, r1: lib.sc_unit_rows(p, d, r0, r1), min_rows=16)
