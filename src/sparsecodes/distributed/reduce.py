"""Reductions the trainer applies across data-parallel ranks (no-ops without a group).

All take an optional ``group`` (``None`` = the default group). Each is one collective over a
flat buffer, so the number of messages per step does not grow with the number of parameters.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from sparsecodes.distributed.context import active


def group_size(group: Any = None) -> int:
    """Ranks in ``group`` (1 without a process group)."""
    return dist.get_world_size(group) if active() else 1


def comm_device(group: Any = None) -> torch.device:
    """Where tensors must be for the group's backend: this rank's GPU for nccl, else the CPU."""
    if active() and dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean_(tensors: Sequence[Tensor], group: Any = None) -> None:
    """Replace each tensor (same dtype, floating) by its mean over the ranks, in place."""
    n = group_size(group)
    if n == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat /= n
    off = 0
    for t in tensors:
        t.copy_(flat[off : off + t.numel()].view_as(t))
        off += t.numel()


def average_gradients_(params: Iterable[nn.Parameter], group: Any = None) -> None:
    """Average ``p.grad`` over the ranks (a missing gradient counts as zeros).

    With every rank's loss a mean over its own rows and equal rows per rank, the average is the
    gradient of the mean over the global batch: one process with the whole batch gets the same.
    """
    if group_size(group) == 1:
        return
    params = list(params)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    mean_([p.grad for p in params], group)  # type: ignore[misc]


def any_(mask: Tensor, group: Any = None) -> Tensor:
    """Elementwise OR of a bool tensor over the ranks (a latent fired on any rank)."""
    if group_size(group) == 1:
        return mask
    m = mask.to(comm_device(group), torch.uint8)
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    return m.bool().to(mask.device)


def mean_floats(values: Sequence[float], group: Any = None) -> list[float]:
    """Mean over the ranks of a few Python floats (one small collective)."""
    if group_size(group) == 1:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=comm_device(group))
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return (t / group_size(group)).tolist()


def broadcast_module_(module: nn.Module, src: int = 0, group: Any = None) -> None:
    """Copy every parameter and buffer of ``module`` from rank ``src`` of ``group`` (its rank in
    the group, not the global rank) to every rank of the group."""
    if group_size(group) == 1:
        return
    src = dist.get_global_rank(group, src) if group is not None else src
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=src, group=group)


def gather_objects(obj: Any, group: Any = None) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    n = group_size(group)
    if n == 1:
        return [obj]
    out: list[Any] = [None] * n
    dist.all_gather_object(out, obj, group=group)
    return out
