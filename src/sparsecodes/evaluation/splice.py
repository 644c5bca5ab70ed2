"""Downstream scores: splice a reconstruction into the model at its hook, measure CE and KL.

For a batch of windows the clean model gives next-token log-probabilities ``log p``; a *variant*
replaces the hook's activation at the kept positions by ``recon(x)`` (``x`` the clean activation
there) and gives ``log q``. BOS/special positions keep their clean activation: the SAE never saw
them in training, and splicing them would measure the BOS outlier, not the SAE.

Averages run over the *counted* positions: position ``t`` counts when ``keep[t]`` and
``keep[t+1]`` are both True (its own token and the token it predicts are ordinary text), so the
BOS position, predictions of separators and the last position of a window are excluded. Then

- ``CE`` = mean over counted positions of ``-log q(token[t+1])``;
- ``KL(clean || variant)`` = mean over counted positions of ``sum_v p_v (log p_v - log q_v)``;
- ``ce_loss_score = (CE_zero - CE_spliced) / (CE_zero - CE_clean)`` and
  ``kl_score = 1 - KL(clean || spliced) / KL(clean || zero)`` (docs/metrics.md), where "zero" sets the
  hook's activation to 0 at the same kept positions.

The *error-term* variant splices ``x_hat + (x - x_hat)``, computed in float64 so that it equals
``x`` exactly: it must reproduce the clean loss exactly (a check of the splicing machinery).

Transcoders (:func:`transcoder_variant`): a variant may instead edit several hooks of one forward
pass (``Variant.edits``): for each transcoder the activation at its ``in_hook`` is read as it
flows past (after any earlier splice) and its ``out_hook`` is replaced at the kept positions by
``tc.forward_out(in)``; the baseline zeroes every ``out_hook`` at the same positions.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sparsecodes.data import Window, batch_windows

#: the most bytes of clean log-probabilities :func:`downstream_scores` keeps in a ``cache``
CLEAN_CACHE_BYTES = 1 << 30

Reconstruct = Callable[[Tensor], Tensor]
"""Maps kept activation rows ``x`` ``[n, d_in]`` to a replacement ``x_hat`` ``[n, d_in]``."""


@dataclass(frozen=True)
class Variant:
    """A replacement at the hook: ``recon`` at the kept positions, plus the error term if asked."""

    recon: Reconstruct | None = None
    error_term: bool = False
    #: several hooks instead of the scored one: ``edits(keep)`` -> ``{hook: edit}`` for one pass
    edits: Callable[[Tensor], dict[str, Callable[[Tensor], Tensor]]] | None = None
    #: the variant does not depend on the coder (the zero ablation): with a ``cache`` its sums
    #: are computed once per batch and reused by every coder
    coder_free: bool = False


def transcoder_variant(transcoders: Sequence[object], *, zero: bool = False) -> Variant:
    """Splice every transcoder of ``transcoders`` at once: ``out_hook`` <- ``tc(in_hook)`` at the
    kept positions (``zero=True``: ``out_hook`` <- 0 there, the baseline). Each transcoder needs
    ``in_hook``, ``out_hook`` and ``forward_out`` (:class:`~sparsecodes.transcoder.Transcoder`);
    an ``in_hook`` must run before its ``out_hook`` in the forward pass."""

    def edits(keep: Tensor) -> dict[str, Callable[[Tensor], Tensor]]:
        out: dict[str, Callable[[Tensor], Tensor]] = {}
        for tc in transcoders:
            seen: dict[str, Tensor] = {}
            in_hook, out_hook = tc.in_hook, tc.out_hook  # type: ignore[attr-defined]
            if zero:
                out[out_hook] = splice_edit(zero_ablation, keep)
                continue

            def read(act: Tensor, seen: dict[str, Tensor] = seen) -> Tensor:
                seen["x"] = act.reshape(*act.shape[:2], -1)[keep.to(act.device)]
                return act

            def recon(_y: Tensor, seen: dict[str, Tensor] = seen, tc: object = tc) -> Tensor:
                return tc.forward_out(seen.pop("x").float())  # type: ignore[attr-defined]

            if in_hook in out:
                raise ValueError(f"two transcoders read or write {in_hook}; splice them apart")
            out[in_hook] = read
            out[out_hook] = splice_edit(recon, keep)
        return out

    return Variant(edits=edits)


def zero_ablation(x: Tensor) -> Tensor:
    """``recon`` of the zero-ablation baseline: ``[n, d]`` zeros."""
    return torch.zeros_like(x)


def splice_edit(
    recon: Reconstruct, keep: Tensor, *, error_term: bool = False
) -> Callable[[Tensor], Tensor]:
    """An adapter edit that replaces the activation ``[B, T, *shape]`` at ``keep`` ``[B, T]``.

    The replacement rows are ``recon(x)`` (``x``: the activation's kept rows, flattened to
    ``[n, d]``), or with ``error_term`` ``recon(x) + (x - recon(x))`` evaluated in float64, which
    rounds back to ``x`` exactly. Other positions are untouched.
    """

    def edit(act: Tensor) -> Tensor:
        b, t = act.shape[:2]
        flat = act.reshape(b, t, -1)
        m = keep.to(flat.device)
        x = flat[m]
        x_hat = recon(x)
        if tuple(x_hat.shape) != tuple(x.shape):
            raise ValueError(
                f"the reconstruction must have shape {tuple(x.shape)} (kept rows x d_in), "
                f"got {tuple(x_hat.shape)}"
            )
        x_hat = x_hat.to(flat.device)
        if error_term:
            x64, h64 = x.double(), x_hat.double()
            new = (h64 + (x64 - h64)).to(flat.dtype)
        else:
            new = x_hat.to(flat.dtype)
        out = flat.clone()
        out[m] = new
        return out.reshape(act.shape)

    return edit


def counted_positions(keep: Tensor) -> Tensor:
    """``[B, T-1]`` bool: position ``t`` counts when ``keep[t]`` and ``keep[t+1]`` are True."""
    return keep[:, :-1] & keep[:, 1:]


@dataclass
class DownstreamResult:
    """Mean CE of the clean model and of each variant, and mean KL(clean || variant).

    ``n_positions`` is the number of counted positions (see the module docstring).
    """

    ce_clean: float
    ce: dict[str, float]
    kl: dict[str, float]
    n_positions: int
    seconds: dict[str, float] = field(default_factory=dict)

    def ce_loss_score(self, name: str, zero: str = "zero") -> float:
        """``(CE_zero - CE_name) / (CE_zero - CE_clean)``."""
        return ce_loss_score(self.ce[name], self.ce_clean, self.ce[zero])

    def kl_score(self, name: str, zero: str = "zero") -> float:
        """``1 - KL(clean || name) / KL(clean || zero)``."""
        return kl_score(self.kl[name], self.kl[zero])


def ce_loss_score(ce_spliced: float, ce_clean: float, ce_zero: float) -> float:
    """``(CE_zero - CE_spliced) / (CE_zero - CE_clean)``; NaN when zero ablation changes nothing."""
    den = ce_zero - ce_clean
    return (ce_zero - ce_spliced) / den if den != 0 else float("nan")


def kl_score(kl_spliced: float, kl_zero: float) -> float:
    """``1 - KL(clean || spliced) / KL(clean || zero)``; NaN when ``KL(clean || zero) == 0``."""
    return 1.0 - kl_spliced / kl_zero if kl_zero != 0 else float("nan")


@torch.no_grad()
def downstream_scores(
    adapter: object,
    hook: str,
    windows: Sequence[Window],
    variants: Mapping[str, Variant],
    *,
    batch_size: int = 4,
    progress: Callable[[int], None] | None = None,
    cache: MutableMapping[Any, Any] | None = None,
    cache_bytes: int = CLEAN_CACHE_BYTES,
) -> DownstreamResult:
    """Clean CE and, per variant, CE and KL(clean || variant) over ``windows`` (causal LMs).

    One clean full forward pass per batch, then one full pass per variant with its splice.
    Memory: about ``3 * batch_size * context_size * vocab`` floats at a time.

    ``cache``: a dict kept by the caller across coders of one model and hook (a bench run).
    Each batch's clean log-probabilities (while their total stays under ``cache_bytes``) and
    the sums of ``coder_free`` variants are stored there and not recomputed for the next coder.
    """
    if not getattr(adapter, "is_causal", True):
        raise ValueError(
            f"CE/KL scores need a causal language model; {getattr(adapter, 'name', 'this model')} "
            "is an encoder (use --ce-tokens 0 to skip the downstream scores)"
        )
    ce_sum = {name: 0.0 for name in variants}
    kl_sum = {name: 0.0 for name in variants}
    secs = {"clean": 0.0, **{name: 0.0 for name in variants}}
    ce_clean_sum = 0.0
    count = 0
    done = 0
    for ids, keep in batch_windows(windows, batch_size):
        mask = counted_positions(keep).to(adapter.device)  # type: ignore[attr-defined]
        target = ids[:, 1:].to(adapter.device)  # type: ignore[attr-defined]
        n = int(mask.sum())
        key = (
            "downstream",
            getattr(adapter, "name", id(adapter)),
            hook,
            tuple(ids.shape),
            hashlib.sha256(ids.numpy().tobytes() + keep.numpy().tobytes()).hexdigest(),
        )
        t0 = time.perf_counter()
        if cache is not None and (key, "clean") in cache:
            logp = cache[(key, "clean")]
        else:
            logits = adapter.logits(ids)  # type: ignore[attr-defined]
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            del logits
            size = logp.numel() * logp.element_size()
            if cache is not None and cache.get("downstream_bytes", 0) + size <= cache_bytes:
                cache[(key, "clean")] = logp
                cache["downstream_bytes"] = cache.get("downstream_bytes", 0) + size
        secs["clean"] += time.perf_counter() - t0
        done += ids.shape[0]
        if n == 0:
            continue
        count += n
        ce_clean_sum += float(-logp.gather(-1, target[..., None]).squeeze(-1)[mask].double().sum())
        p = logp.exp()
        for name, v in variants.items():
            t0 = time.perf_counter()
            if v.coder_free and cache is not None and (key, name) in cache:
                ce_b, kl_b = cache[(key, name)]
                ce_sum[name] += ce_b
                kl_sum[name] += kl_b
                continue
            if v.edits is not None:
                logits = adapter.run_with_edits(ids, v.edits(keep))  # type: ignore[attr-defined]
            else:
                assert v.recon is not None, f"variant {name!r} has neither recon nor edits"
                edit = splice_edit(v.recon, keep, error_term=v.error_term)
                logits = adapter.run_with_edit(ids, hook, edit)  # type: ignore[attr-defined]
            logq = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            del logits
            ce = -logq.gather(-1, target[..., None]).squeeze(-1)
            ce_b = float(ce[mask].double().sum())
            kl = (p * (logp - logq)).sum(-1)
            kl_b = float(kl[mask].double().sum())
            ce_sum[name] += ce_b
            kl_sum[name] += kl_b
            if v.coder_free and cache is not None:
                cache[(key, name)] = (ce_b, kl_b)
            secs[name] += time.perf_counter() - t0
        if progress is not None:
            progress(done)
    if count == 0:
        raise ValueError(
            "no counted positions for the CE/KL scores (every position is BOS/special or the "
            "last of its window); use more text or a larger --ce-tokens"
        )
    return DownstreamResult(
        ce_clean=ce_clean_sum / count,
        ce={k: v / count for k, v in ce_sum.items()},
        kl={k: v / count for k, v in kl_sum.items()},
        n_positions=count,
        seconds=secs,
    )
