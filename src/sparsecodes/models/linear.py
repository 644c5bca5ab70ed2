"""Route a model's ``nn.Linear`` products through :func:`sparsecodes.kernels.gemm.matmul`.

torch multiplies with MKL on the CPU; on AMD CPUs numpy's OpenBLAS is faster for the same
float32 shapes (see :mod:`sparsecodes.kernels.gemm`). Inside :func:`gemm_linears` every
``nn.Linear`` of the model computes ``x @ W.T + b`` with ``gemm.matmul`` (``x`` flattened to
``[rows, in_features]``), which sends the product to OpenBLAS when the process's GEMM backend
is ``"openblas"`` and the product qualifies (float32 CPU tensors, no gradient, large enough),
and to torch otherwise. The model's own code runs unchanged: only each ``Linear`` instance's
``forward`` is replaced for the duration of the block and restored after (also on an exception).
Values match torch's to float32 rounding (a different summation order), not bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch.nn.functional as F
from torch import Tensor, nn

from sparsecodes.kernels import gemm


def _gemm_linear(module: nn.Linear):  # -> the replacement forward of one Linear
    def forward(x: Tensor) -> Tensor:
        w, b = module.weight, module.bias
        x2 = x.reshape(-1, x.shape[-1])
        wt = w.t()  # [in, out] view: read in place by OpenBLAS (transposed flag), no copy
        if not gemm.uses_openblas(x2, wt):
            return F.linear(x, w, b)
        y = gemm.matmul(x2, wt)  # a fresh [rows, out] tensor
        if b is not None:
            y.add_(b)
        return y.view(*x.shape[:-1], y.shape[-1])

    return forward


@contextmanager
def swapped_forwards(
    modules: Sequence[nn.Module], make: Callable[[nn.Module], Callable[..., object]]
) -> Iterator[int]:
    """Inside the ``with`` block each of ``modules`` runs ``make(module)`` as its ``forward``
    (set on the instance, so the module's hooks still fire); restored after, also on an
    exception. Yields how many modules were switched. Modules whose ``forward`` is already
    replaced on the instance are left alone."""
    patched = [m for m in modules if "forward" not in vars(m)]
    try:
        for m in patched:
            m.forward = make(m)
        yield len(patched)
    finally:
        for m in patched:
            vars(m).pop("forward", None)


@contextmanager
def gemm_linears(model: nn.Module) -> Iterator[int]:
    """Inside the ``with`` block every ``nn.Linear`` of ``model`` multiplies through
    :func:`~sparsecodes.kernels.gemm.matmul`; yields how many modules were switched.

    ``Linear.forward(x [*, in]) -> [*, out]`` keeps its meaning; with the ``"torch"`` backend,
    a non-float32 model, a gradient or a small product it is exactly ``F.linear``.
    """
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    with swapped_forwards(linears, _gemm_linear) as n:
        yield n
