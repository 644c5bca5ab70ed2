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

BatchTopK: each rank offers the ``batch * k`` largest entries of its ``[batch, n / R]`` block;
the global ``batch * k`` largest of all ranks' candidates are the batch's top ``batch * k``, and
their smallest (positive) value updates the inference threshold on every rank. AuxK: the same
candidate scheme over each rank's dead latents (``k_aux`` per row), the dead count summed over the
ranks, the partial decodes of the residual all-reduced. Encoders: ``topk`` and ``batchtopk``.

Checkpoints hold the full coder: :func:`gather_coder`, :func:`gather_optimizer_state` and
:func:`gather_along` collect the slices; :func:`shard_coder` and :func:`shard_optimizer_state`
cut a full checkpoint for any number of ranks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from sparsecodes.codes import SparseCodes
from sparsecodes.distributed.reduce import comm_device
from sparsecodes.encoders.base import Encoder, TrainStepInput, TrainStepOutput, mse_per_token
from sparsecodes.kernels.selection import batch_topk_flat, pad_rows


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


#: state-dict entries split between latent-parallel ranks, and the dimension that indexes latents
SHARD_DIMS = {"encoder.W_enc": 1, "encoder.b_enc": 0, "dictionary.W_dec": 0}

#: encoders latent parallelism supports
LATENT_ENCODERS = ("topk", "batchtopk")


def shard_state(
    state: dict[str, Tensor], n_latents: int, rank: int, size: int
) -> dict[str, Tensor]:
    """Rank ``rank``'s slice of a full coder's ``state_dict`` (other entries copied)."""
    sl = latent_slice(n_latents, rank, size)
    out = {}
    for name, value in state.items():
        dim = SHARD_DIMS.get(name)
        out[name] = (
            value if dim is None else value.narrow(dim, sl.start, sl.stop - sl.start)
        ).clone()
    return out


def gather_along(t: Tensor, dim: int, group: Any = None) -> Tensor:
    """Every rank's ``t`` concatenated along ``dim`` in rank order (on every rank)."""
    pieces = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(pieces, t.detach().contiguous(), group=group)
    return torch.cat(pieces, dim=dim)


def _empty_like_coder(coder: Any, n_latents: int) -> Any:
    cfg = coder.config()
    return type(coder)(
        coder.d_in,
        n_latents,
        cfg["encoder"],
        normalize=cfg["normalize"],
        seed=cfg["seed"],
        device=coder.device,
        **cfg["encoder_config"],
    )


def shard_coder(coder: Any, group: Any = None) -> Any:
    """This rank's slice of ``coder`` (a SparseCoder of ``n_latents / size`` latents)."""
    if coder.encoder.name not in LATENT_ENCODERS:
        raise ValueError(
            f"latent parallelism supports the {' and '.join(LATENT_ENCODERS)} encoders, not "
            f"{coder.encoder.name!r}; use data parallelism for it"
        )
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    sl = latent_slice(coder.n_latents, rank, size)
    part = _empty_like_coder(coder, sl.stop - sl.start)
    part.load_state_dict(shard_state(coder.state_dict(), coder.n_latents, rank, size))
    part.train_config = dict(coder.train_config)
    return part


def gather_coder(part: Any, group: Any = None) -> Any:
    """The whole coder from every rank's slice (on every rank of ``group``)."""
    full = _empty_like_coder(part, part.n_latents * dist.get_world_size(group))
    state = {}
    for name, value in part.state_dict().items():
        dim = SHARD_DIMS.get(name)
        state[name] = value if dim is None else gather_along(value, dim, group)
    full.load_state_dict(state)
    full.train_config = dict(part.train_config)
    return full


def gather_optimizer_state(
    state: dict[str, Any], names: list[str], params: list[Tensor], group: Any = None
) -> dict[str, Any]:
    """A full coder's optimiser ``state_dict`` from this rank's (on every rank).

    ``names[i]`` is the state-dict name of parameter ``i`` of the optimiser; per-parameter
    tensors shaped like a sharded parameter (Adam's moments) are concatenated over the ranks,
    the rest (step counts, replicated parameters' moments) are kept.
    """
    out = {"param_groups": state["param_groups"], "state": {}}
    for i, per in state["state"].items():
        dim = SHARD_DIMS.get(names[i])
        out["state"][i] = {
            key: gather_along(v, dim, group)
            if dim is not None and torch.is_tensor(v) and v.shape == params[i].shape
            else v
            for key, v in per.items()
        }
    return out


def shard_optimizer_state(
    state: dict[str, Any], names: list[str], n_latents: int, group: Any = None
) -> dict[str, Any]:
    """This rank's slice of a full coder's optimiser ``state_dict`` (``n_latents``: the full
    coder's); the inverse of :func:`gather_optimizer_state`."""
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    sl = latent_slice(n_latents, rank, size)
    out = {"param_groups": state["param_groups"], "state": {}}
    for i, per in state["state"].items():
        dim = SHARD_DIMS.get(names[i])
        out["state"][i] = {
            key: v.narrow(dim, sl.start, sl.stop - sl.start).clone()
            if dim is not None
            and torch.is_tensor(v)
            and v.dim() > dim
            and v.shape[dim] == n_latents
            else v
            for key, v in per.items()
        }
    return out


def _mine(every: Tensor, m: int, rank: int, width: int) -> Tensor:
    """``[batch, width]`` bool: which of this rank's ``width`` candidates per row are among the
    ``m`` largest of ``every`` ``[batch, size * width]`` (rank-major)."""
    chosen = every.topk(m, dim=1).indices
    mine = (chosen >= rank * width) & (chosen < (rank + 1) * width)
    keep = torch.zeros(every.shape[0], width + 1, dtype=torch.bool, device=every.device)
    # selections of other ranks go to the spare column ``width``, dropped below
    keep.scatter_(1, torch.where(mine, chosen - rank * width, width), True)
    return keep[:, :width]


def _row_topk(pre: Tensor, k: int, group: Any) -> tuple[Tensor, Tensor]:
    """Global TopK: ``(idx, values)`` ``[batch, k]`` of this rank's candidates, values ReLU'd
    and 0 where the candidate lost the global selection."""
    rank = dist.get_rank(group)
    vals, idx = pre.topk(k, dim=1)  # this rank's candidates [batch, k]
    every = gather_along(vals, 1, group)  # [batch, size * k]
    keep = _mine(every, k, rank, k)
    return idx, torch.relu(vals) * keep


def _batch_topk(encoder: Encoder, pre: Tensor, k: int, group: Any) -> tuple[Tensor, Tensor]:
    """Global BatchTopK: the ``batch * k`` largest entries of the whole ``[batch, n]`` (positive
    ones only) from each rank's ``batch * k`` candidates; updates the encoder's threshold with the
    smallest kept value over every rank (the one-process value). Returns padded ``(idx,
    values)`` ``[batch, width]`` of this rank's kept entries."""
    rank = dist.get_rank(group)
    batch, n_local = pre.shape
    m = batch * k
    if m > batch * n_local:
        raise ValueError(f"batchtopk k={k} exceeds the {n_local} latents of each rank")
    rows, cols = batch_topk_flat(pre.detach(), m)  # this rank's candidates [m]
    vals = pre[rows, cols]
    every = gather_along(vals.detach()[None], 1, group)  # [1, size * m]
    keep = _mine(every, m, rank, m)[0] & (vals.detach() > 0)
    top = every.topk(m, dim=1).values
    positive = top[top > 0]
    if positive.numel() and encoder.training:  # BatchTopKEncoder's EMA, on its public buffers
        with torch.no_grad():
            thr, n = encoder.threshold, encoder.threshold_updates
            mom = encoder.config.threshold_momentum
            smallest = positive.min().to(thr.dtype)
            thr.copy_(smallest if int(n) == 0 else (1 - mom) * thr + mom * smallest)
            n.add_(1)
    return pad_rows(rows[keep], cols[keep], torch.relu(vals[keep]), batch)


def _auxk(
    encoder: Encoder,
    pre: Tensor,
    x: Tensor,
    x_hat: Tensor,
    dictionary: Any,
    dead_mask: Tensor | None,
    group: Any,
) -> Tensor:
    """AuxK over every rank's dead latents (the one-process loss, see
    :mod:`sparsecodes.encoders.topk`): the ``k_aux`` largest dead pre-activations per row are
    chosen globally from each rank's candidates, their partial decodes are summed."""
    cfg = encoder.config
    zero = x_hat.new_zeros(())
    if cfg.aux_coef == 0:
        return zero
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    dead_idx = (
        dead_mask.nonzero().squeeze(1)
        if dead_mask is not None
        else torch.empty(0, dtype=torch.long, device=pre.device)
    ).to(pre.device)
    n_dead_t = torch.tensor([dead_idx.numel()], dtype=torch.long, device=comm_device(group))
    dist.all_reduce(n_dead_t, group=group)
    n_dead = int(n_dead_t)
    if n_dead == 0:
        return zero
    aux_k = cfg.resolved_aux_k(encoder.d_in, encoder.n_latents * size)
    k_aux = min(aux_k, n_dead)
    local = min(k_aux, dead_idx.numel())
    batch = pre.shape[0]
    vals = pre.new_full((batch, k_aux), float("-inf"))
    idx = torch.zeros(batch, k_aux, dtype=torch.long, device=pre.device)
    if local:
        v, j = pre.index_select(1, dead_idx).topk(local, dim=1)
        vals = torch.cat([v, vals[:, local:]], dim=1)
        idx[:, :local] = dead_idx[j]
    keep = _mine(gather_along(vals.detach(), 1, group), k_aux, rank, k_aux)
    values = torch.where(keep, torch.relu(vals), torch.zeros_like(vals))
    e = (x - x_hat).detach()
    e_hat = SumPartials.apply(torch.einsum("bk,bkd->bd", values, dictionary.W_dec[idx]), group)
    variance = (e - e.mean(dim=0)).pow(2).sum().clamp_min(torch.finfo(e.dtype).tiny)
    scale = min(n_dead / aux_k, 1.0)
    return cfg.aux_coef * scale * (e_hat - e).pow(2).sum() / variance


def latent_train_step(encoder: Encoder, inp: TrainStepInput, group: Any) -> TrainStepOutput:
    """One TopK or BatchTopK training step of this rank's slice (module docstring).

    ``inp.x`` ``[batch, d_in]`` must be the same rows on every rank of ``group``; ``inp.dead_mask``
    is this rank's slice. Returns the replicated loss (MSE + AuxK), the full reconstruction
    ``x_hat`` ``[batch, d_in]`` and this rank's codes as :class:`SparseCodes` over its
    ``n_latents / size`` latents (``[batch, k]`` for TopK with 0 for candidates that lost the
    global selection; padded ``[batch, width]`` for BatchTopK).
    """
    if encoder.name not in LATENT_ENCODERS:
        raise ValueError(
            f"latent parallelism supports the {' and '.join(LATENT_ENCODERS)} encoders, not "
            f"{encoder.name!r}; use data parallelism for it"
        )
    if inp.target_codes is not None or inp.y is not None:
        raise ValueError("latent parallelism trains autoencoders (no known codes, no transcoders)")
    x, dictionary = inp.x, inp.dictionary
    k = encoder.config.k
    centred = SharedInput.apply(x - dictionary.b_dec, group)
    pre = centred @ encoder.W_enc + encoder.b_enc  # [batch, n_local]
    if encoder.name == "batchtopk" and encoder.training:
        idx, values = _batch_topk(encoder, pre, k, group)
    else:
        idx, values = _row_topk(pre, k, group)
    partial = torch.einsum("bk,bkd->bd", values, dictionary.W_dec[idx])
    x_hat = SumPartials.apply(partial, group) + dictionary.b_dec
    mse = mse_per_token(x, x_hat)
    auxk = _auxk(encoder, pre, x, x_hat, dictionary, inp.dead_mask, group)
    codes = SparseCodes(idx, values, encoder.n_latents)
    return TrainStepOutput(mse + auxk, x_hat, codes, {"mse": mse, "auxk": auxk})
