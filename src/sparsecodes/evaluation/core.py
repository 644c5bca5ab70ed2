"""Held-out reconstruction and sparsity metrics of an SAE at a model's hook.

Definitions (docs/metrics.md), over the *kept* token positions only (BOS, separators and other special
tokens are excluded, since their huge-norm activations would dominate every average):

- ``fvu`` = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (variance about the mean over the
  evaluation set; :func:`sparsecodes.metrics.fvu_from_sums`, so zero variance gives 0.0 for an
  exact reconstruction, else inf); ``explained_variance`` = 1 - fvu.
- ``mse`` = per-token squared error summed over dimensions, averaged over tokens.
- ``cossim`` = mean over tokens of cos(x, x_hat) (0 for a zero vector).
- ``l0`` = mean per-token count of nonzero latents (a count); ``l1`` = mean per-token sum of |z|.
- ``l2_norm_in`` / ``l2_norm_out`` = mean ||x|| / mean ||x_hat||; ``l2_ratio`` = mean over tokens
  of ||x_hat|| / ||x||.
- feature density of latent j = fraction of tokens on which it is nonzero; dead = density 0;
  dense = density > ``dense_threshold``.

Sums are accumulated in float64, streaming, so any number of tokens fits in memory.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sparsecodes.codes import Codes, SparseCodes, to_dense
from sparsecodes.data import Window, batch_windows
from sparsecodes.metrics import fvu_from_sums


@dataclass
class ReconstructionAccumulator:
    """Streaming sums for the reconstruction/sparsity metrics of one SAE on many batches.

    The variance sums are taken about the first row seen (``shift``), which leaves the variance
    unchanged and keeps ``sum_sq - |sum_x|^2 / n`` free of cancellation: constant activations
    give exactly zero variance.
    """

    n_latents: int
    d_in: int
    n_tokens: int = 0
    sse: float = 0.0
    sum_sq: float = 0.0
    sum_x: Tensor = field(init=False)
    shift: Tensor | None = None
    cos_sum: float = 0.0
    l0_sum: float = 0.0
    l1_sum: float = 0.0
    norm_in_sum: float = 0.0
    norm_out_sum: float = 0.0
    ratio_sum: float = 0.0
    fires: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.sum_x = torch.zeros(self.d_in, dtype=torch.float64)
        self.fires = torch.zeros(self.n_latents, dtype=torch.long)

    @torch.no_grad()
    def update(self, x: Tensor, x_hat: Tensor, codes: Codes) -> None:
        """Add ``x``, ``x_hat`` ``[n, d_in]`` and their ``codes`` ``[n, n_latents]`` (kept rows)."""
        if x.shape != x_hat.shape or x.dim() != 2 or x.shape[1] != self.d_in:
            raise ValueError(
                f"x and x_hat must both be [n, d_in={self.d_in}], got {tuple(x.shape)} and "
                f"{tuple(x_hat.shape)}"
            )
        if x.shape[0] == 0:
            return
        xd, hd = x.detach().double().cpu(), x_hat.detach().double().cpu()
        self.n_tokens += xd.shape[0]
        self.sse += float((xd - hd).pow(2).sum())
        if self.shift is None:
            self.shift = xd[0].clone()
        xs = xd - self.shift
        self.sum_sq += float(xs.pow(2).sum())
        self.sum_x += xs.sum(0)
        n_in, n_out = xd.norm(dim=1), hd.norm(dim=1)
        dot = (xd * hd).sum(1)
        denom = n_in * n_out
        self.cos_sum += float(torch.where(denom > 0, dot / denom.clamp_min(1e-300), 0.0).sum())
        self.norm_in_sum += float(n_in.sum())
        self.norm_out_sum += float(n_out.sum())
        self.ratio_sum += float(torch.where(n_in > 0, n_out / n_in.clamp_min(1e-300), 0.0).sum())
        if isinstance(codes, SparseCodes):
            active = codes.values != 0
            self.l0_sum += float(active.sum())
            self.l1_sum += float(codes.values.detach().double().abs().sum())
            self.fires += torch.bincount(
                codes.indices[active].cpu(), minlength=self.n_latents
            ).long()
        else:
            z = to_dense(codes).detach()
            active = z != 0
            self.l0_sum += float(active.sum())
            self.l1_sum += float(z.double().abs().sum())
            self.fires += active.sum(0).cpu().long()

    def result(self, dense_threshold: float = 0.1) -> dict[str, Any]:
        """The metrics (see the module docstring) as a flat dict."""
        n = self.n_tokens
        if n == 0:
            raise ValueError("no tokens were evaluated (every position was BOS/special?)")
        total_var = self.sum_sq - float(self.sum_x.pow(2).sum()) / n
        fvu = fvu_from_sums(self.sse, total_var)
        density = self.fires.double() / n
        alive = self.fires > 0
        return {
            "fvu": fvu,
            "explained_variance": 1.0 - fvu,
            "mse": self.sse / n,
            "cossim": self.cos_sum / n,
            "l0": self.l0_sum / n,
            "l1": self.l1_sum / n,
            "l2_norm_in": self.norm_in_sum / n,
            "l2_norm_out": self.norm_out_sum / n,
            "l2_ratio": self.ratio_sum / n,
            "n_tokens": n,
            "n_dead": int((~alive).sum()),
            "frac_alive": float(alive.double().mean()),
            "n_dense": int((density > dense_threshold).sum()),
            "dense_threshold": dense_threshold,
            "freq_over_1_percent": float((density > 0.01).double().mean()),
            "freq_over_10_percent": float((density > 0.1).double().mean()),
            "density": density,
        }


def kept_rows(act: Tensor, keep: Tensor) -> Tensor:
    """``[n_kept, d]`` rows of ``act`` ``[B, T, *shape]`` where ``keep`` ``[B, T]`` is True."""
    flat = act.reshape(act.shape[0], act.shape[1], -1)
    return flat[keep.to(flat.device)]


@dataclass
class ReconstructionPass:
    """Result of :func:`reconstruction_pass`: metrics, the first rows kept for later use, timing."""

    metrics: dict[str, Any]
    rows: Tensor
    seconds_model: float
    seconds_sae: float


@torch.no_grad()
def reconstruction_pass(
    coder: Any,
    adapter: Any,
    hook: str,
    windows: Sequence[Window],
    *,
    batch_size: int = 16,
    keep_rows: int = 0,
    dense_threshold: float = 0.1,
    progress: Callable[[int], None] | None = None,
    cache: MutableMapping[Any, Any] | None = None,
) -> ReconstructionPass:
    """Run ``adapter`` on ``windows`` up to ``hook`` (later layers never run) and measure ``coder``.

    Args:
        coder: a :class:`~sparsecodes.sparse_coder.SparseCoder` with ``d_in`` = the hook's width.
        windows: token windows; their ``keep`` masks select the positions measured.
        batch_size: windows per forward pass.
        keep_rows: also return the first this-many kept activation rows ``[keep_rows, d_in]``
            (float32, CPU), e.g. for the amortisation-gap study.
        progress: called with the number of windows done after each batch.
        cache: a dict kept across coders of one model and hook (a bench run): each window's
            activation at ``hook`` is stored there, and a batch whose windows are all stored
            does not run the model.
    """
    acc = ReconstructionAccumulator(coder.n_latents, coder.d_in)
    rows: list[Tensor] = []
    n_rows = 0
    t_model = t_sae = 0.0
    done = 0
    for ids, keep in batch_windows(windows, batch_size):
        t0 = time.perf_counter()
        act = _hook_acts(adapter, hook, ids, cache)
        t1 = time.perf_counter()
        x = kept_rows(act, keep).to(coder.device, torch.float32)
        codes = coder.encode(x, sparse=coder.encoder.fixed_k)
        x_hat = coder.decode(codes)
        t_sae += time.perf_counter() - t1
        t_model += t1 - t0
        acc.update(x, x_hat, codes)
        if n_rows < keep_rows:
            take = x[: keep_rows - n_rows].cpu()
            rows.append(take)
            n_rows += take.shape[0]
        done += ids.shape[0]
        if progress is not None:
            progress(done)
    out_rows = torch.cat(rows) if rows else torch.zeros(0, coder.d_in)
    return ReconstructionPass(acc.result(dense_threshold), out_rows, t_model, t_sae)


def _hook_acts(
    adapter: Any, hook: str, ids: Tensor, cache: MutableMapping[Any, Any] | None
) -> Tensor:
    """``adapter.run(ids, hooks=[hook])[hook]``, per window through ``cache`` when given."""
    if cache is None:
        return adapter.run(ids, hooks=[hook])[hook]
    name = getattr(adapter, "name", id(adapter))
    keys = [
        ("hook_window", name, hook, hashlib.sha256(row.numpy().tobytes()).hexdigest())
        for row in ids.cpu()
    ]
    if all(k in cache for k in keys):
        return torch.stack([cache[k] for k in keys])
    act = adapter.run(ids, hooks=[hook])[hook]
    for k, a in zip(keys, act, strict=True):
        cache[k] = a.detach().clone()
    return act


@torch.no_grad()
def collect_rows(
    adapter: Any, hook: str, windows: Iterable[Window], max_rows: int, *, batch_size: int = 16
) -> Tensor:
    """The first ``max_rows`` kept activation rows ``[n, d]`` (float32, CPU) of ``windows``."""
    return collect_rows_at(adapter, [hook], windows, max_rows, batch_size=batch_size)[hook]


@torch.no_grad()
def collect_rows_at(
    adapter: Any,
    hooks: Sequence[str],
    windows: Iterable[Window],
    max_rows: int,
    *,
    batch_size: int = 16,
    workers: int = 1,
) -> dict[str, Tensor]:
    """The first ``max_rows`` kept activation rows ``[n, d_h]`` (float32, CPU) at each of
    ``hooks``, read in the same forward passes: row ``i`` is the same token at every hook (an
    MLP's input and output for a transcoder). ``workers > 1`` splits each pass over that many
    threads (``ModelAdapter.run``)."""
    out: dict[str, list[Tensor]] = {h: [] for h in hooks}
    kw = {"workers": workers} if workers > 1 else {}
    n = 0
    for ids, keep in batch_windows(windows, batch_size):
        acts = adapter.run(ids, hooks=list(hooks), **kw)
        for h in hooks:
            out[h].append(kept_rows(acts[h], keep).float().cpu()[: max_rows - n])
        n += out[hooks[0]][-1].shape[0]
        if n >= max_rows:
            break
    if n == 0:
        raise ValueError("no kept (non-special) tokens to collect activations from")
    return {h: torch.cat(v) for h, v in out.items()}
