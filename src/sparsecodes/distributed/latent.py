"""Latent parallelism: each rank of a group holds a slice of the latents of one coder.

Rank ``r`` of ``R`` holds latents ``[r * n / R, (r + 1) * n / R)``: those columns of ``W_enc`` and
``b_enc`` and those rows (atoms) of ``W_dec``; ``b_dec`` and the normaliser are replicated. Every
rank of the group sees the same rows ``x`` ``[batch, d_in]``. One TopK step:

1. ``pre = (x - b_dec) @ W_enc[:, slice] + b_enc[slice]`` ``[batch, n / R]``, local;
2. each rank's ``k`` largest entries per row are its candidates; the candidates' values are
   all-gathered (``[batch, R * k]``, ``R * k`` numbers per row, not ``n``) and the global top ``k``
   of them is exactly the top ``k`` of the full ``pre`` row; each rank keeps its selected ones;
3. each rank decodes its selected latents with its atoms (a partial ``[batch, d_in]``) and the
   reconstruction is the all-reduced sum of the partial decodes plus ``b_dec``.

Backward: the loss is computed identically on every rank, so the sum in 3 passes its gradient
through unchanged (:class:`SumPartials`: forward all-reduce, backward identity), while the input
``x - b_dec`` feeds every rank's slice, so its gradient is the sum of the ranks' contributions
(:class:`SharedInput`: forward identity, backward all-reduce). Every per-latent step of the
trainer (the atom-parallel gradient removal, Adam, unit-norm projection, dead-latent counts) is
local to a latent, so it runs on the slice unchanged.

Only ``topk`` is supported (AuxK is not computed: ``aux_coef`` is ignored). The same candidates
scheme gives BatchTopK (``batch * k`` candidates per rank); it is not implemented yet.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from sparsecodes.codes import SparseCodes
from sparsecodes.encoders.base import Encoder, TrainStepInput, TrainStepOutput, mse_per_token


class SumPartials(torch.autograd.Function):
    """Forward: sum of ``t`` over the group's ranks. Backward: the gradient, unchanged."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, group: Any) -> Tensor:
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


class SharedInput(torch.autograd.Function):
    """Forward: ``t`` unchanged. Backward: the gradient summed over the group's ranks."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, group: Any) -> Tensor:
        ctx.group = group
        return t.view_as(t)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def latent_slice(n_latents: int, rank: int, size: int) -> slice:
    """The latents rank ``rank`` of ``size`` holds (``n_latents`` must divide evenly)."""
    if n_latents % size:
        raise ValueError(
            f"n_latents={n_latents} must be divisible by the {size} latent-parallel ranks"
        )
    per = n_latents // size
    return slice(rank * per, (rank + 1) * per)


def shard_coder(coder: Any, group: Any = None) -> Any:
    """This rank's slice of ``coder`` (a SparseCoder of ``n_latents / size`` latents)."""
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    sl = latent_slice(coder.n_latents, rank, size)
    cfg = coder.config()
    part = type(coder)(
        coder.d_in,
        sl.stop - sl.start,
        cfg["encoder"],
        normalize=cfg["normalize"],
        seed=cfg["seed"],
        device=coder.device,
        **cfg["encoder_config"],
    )
    state = {}
    for name, value in coder.state_dict().items():
        if name in ("encoder.W_enc",):
            value = value[:, sl]
        elif name in ("encoder.b_enc", "dictionary.W_dec"):
            value = value[sl]
        state[name] = value.clone()
    part.load_state_dict(state)
    return part


def gather_coder(part: Any, group: Any = None) -> Any:
    """The whole coder from every rank's slice (on every rank of ``group``)."""
    size = dist.get_world_size(group)
    cfg = part.config()
    full = type(part)(
        part.d_in,
        part.n_latents * size,
        cfg["encoder"],
        normalize=cfg["normalize"],
        seed=cfg["seed"],
        device=part.device,
        **cfg["encoder_config"],
    )
    state = {}
    for name, value in part.state_dict().items():
        dim = {"encoder.W_enc": 1, "encoder.b_enc": 0, "dictionary.W_dec": 0}.get(name)
        if dim is None:
            state[name] = value
            continue
        pieces = [torch.empty_like(value) for _ in range(size)]
        dist.all_gather(pieces, value.detach().contiguous(), group=group)
        state[name] = torch.cat(pieces, dim=dim)
    full.load_state_dict(state)
    full.train_config = dict(part.train_config)
    return full


def latent_train_step(encoder: Encoder, inp: TrainStepInput, group: Any) -> TrainStepOutput:
    """One TopK training step of this rank's slice (module docstring); loss = MSE.

    ``inp.x`` ``[batch, d_in]`` must be the same rows on every rank of ``group``. Returns the
    replicated loss, the full reconstruction ``x_hat`` ``[batch, d_in]`` and this rank's codes
    as :class:`SparseCodes` ``[batch, k]`` over its ``n_latents / size`` latents (entries that
    lost the global selection have value 0).
    """
    if encoder.name != "topk":
        raise ValueError(
            f"latent parallelism supports the topk encoder, not {encoder.name!r}; use data "
            "parallelism for it"
        )
    x, dictionary = inp.x, inp.dictionary
    k = encoder.config.k
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    centred = SharedInput.apply(x - dictionary.b_dec, group)
    pre = centred @ encoder.W_enc + encoder.b_enc  # [batch, n_local]
    vals, idx = pre.topk(k, dim=1)  # this rank's candidates [batch, k]
    cands = [torch.empty_like(vals) for _ in range(size)]
    dist.all_gather(cands, vals.detach().contiguous(), group=group)
    every = torch.cat(cands, dim=1)  # [batch, size * k], rank-major
    chosen = every.topk(k, dim=1).indices
    mine = (chosen >= rank * k) & (chosen < (rank + 1) * k)
    keep = torch.zeros(vals.shape[0], k + 1, dtype=torch.bool, device=vals.device)
    keep.scatter_(1, torch.where(mine, chosen - rank * k, k), True)  # column k: not mine
    values = torch.relu(vals) * keep[:, :k]
    partial = torch.einsum("bk,bkd->bd", values, dictionary.W_dec[idx])
    x_hat = SumPartials.apply(partial, group) + dictionary.b_dec
    mse = mse_per_token(x, x_hat)
    codes = SparseCodes(idx, values, encoder.n_latents)
    return TrainStepOutput(mse, x_hat, codes, {"mse": mse})
