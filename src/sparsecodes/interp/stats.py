"""Per-latent feature statistics in one streamed pass, with memory bounded per latent.

:func:`collect` runs a model over token windows up to a hook, encodes the non-special positions
with a coder and keeps, for every latent:

- the ``top_k`` highest activations with their window, position and the context tokens around
  them (and this latent's activation on each context token, for highlighting);
- ``n_samples`` firing tokens drawn uniformly at random (bottom-k sampling: every firing token
  gets a uniform random key and the largest keys are kept), shown grouped by activation
  quantile; unlike top-k these show what the latent does at typical strengths;
- a histogram over fixed log-spaced bins (bin 0 counts the tokens where the latent is off), the
  firing density, the maximum and the mean activation when active;
- for causal LMs, the logit lens: the tokens its decoder direction promotes and suppresses
  (:func:`logit_lens`);
- for an attention-output coder (hook ``blocks.{i}.attn.heads`` of a llama-style model, linear
  encoder): each latent's share per head (decoder norm per head block) and, for every top
  example, the ``n_sources`` source positions whose direct feature attribution (summed over heads)
  is largest (:mod:`sparsecodes.uses.head_attribution`).

Both kinds of examples live in a :class:`TopKBuffer`: fixed ``[n_latents, k]`` tensors merged
with each batch by one ``torch.topk`` over the batch dimension and one over the concatenation,
so memory never grows with the number of tokens. BOS, separators and padding (``keep == False``
in :class:`~sparsecodes.data.Window`) are never encoded, counted or selected. Activations are
assumed non-negative (every SAE encoder here): a latent "fires" when its activation is > 0.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from sparsecodes.files import atomic_write, write_json

STATS_TENSORS = "stats.safetensors"
STATS_META = "stats.json"


# ---------------------------------------------------------------------------- bounded top-k
class TopKBuffer:
    """Keeps, per latent, the ``k`` entries with the largest scores seen so far.

    Tensors (``L = n_latents``, ``C = ctx_left + 1 + ctx_right``):
    ``scores`` ``[L, k]`` (``-inf`` = empty slot), ``acts`` ``[L, k]`` (the latent's activation at
    the entry), ``window`` / ``pos`` ``[L, k]`` int64 (-1 = empty), ``ctx_ids`` ``[L, k, C]`` int64
    token ids around the entry (-1 outside the window), ``ctx_acts`` ``[L, k, C]`` the latent's
    activation on those tokens. Sizes are fixed at construction: memory is ``O(L * k * C)``
    whatever the number of tokens.
    """

    def __init__(
        self,
        n_latents: int,
        k: int,
        ctx_len: int,
        device: torch.device | str = "cpu",
        n_sources: int = 0,
    ):
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.k = k
        self.scores = torch.full((n_latents, k), -math.inf, device=device)
        self.acts = torch.zeros((n_latents, k), device=device)
        self.window = torch.full((n_latents, k), -1, dtype=torch.long, device=device)
        self.pos = torch.full((n_latents, k), -1, dtype=torch.long, device=device)
        self.ctx_ids = torch.full((n_latents, k, ctx_len), -1, dtype=torch.long, device=device)
        self.ctx_acts = torch.zeros((n_latents, k, ctx_len), device=device)
        # attention coders: top source positions of each entry (absolute in its window, -1 =
        # none), their token ids and direct feature attributions ``[L, k, n_sources]``
        self.src_pos: Tensor | None = None
        self.src_ids: Tensor | None = None
        self.src_val: Tensor | None = None
        if n_sources > 0:
            shape = (n_latents, k, n_sources)
            self.src_pos = torch.full(shape, -1, dtype=torch.long, device=device)
            self.src_ids = torch.full(shape, -1, dtype=torch.long, device=device)
            self.src_val = torch.zeros(shape, device=device)

    @torch.no_grad()
    def update(self, scores: Tensor, batch: _Batch) -> None:
        """Merge ``scores`` ``[n, L]`` (``-inf`` = never select) of ``batch``'s ``n`` tokens."""
        n, n_latents = scores.shape
        kk = min(self.k, n)
        if kk == 0:
            return
        cand_scores, cand_rows = scores.topk(kk, dim=0)  # [kk, L] each
        merged = torch.cat([self.scores, cand_scores.T], dim=1)  # [L, k + kk]
        new_scores, slot = merged.topk(self.k, dim=1)  # [L, k]
        # an empty slot (-inf) is never filled from the batch: no payload work for it
        from_batch = (slot >= self.k) & torch.isfinite(new_scores)
        old_slot = slot.clamp(max=self.k - 1)
        latents = torch.arange(n_latents, device=scores.device)[:, None].expand_as(slot)
        rows = cand_rows.T.gather(1, (slot - self.k).clamp(min=0))  # [L, k] batch rows
        # old entries move to their new slots
        acts = self.acts.gather(1, old_slot)
        window = self.window.gather(1, old_slot)
        pos = self.pos.gather(1, old_slot)
        ctx_ids = self.ctx_ids.gather(1, old_slot[..., None].expand_as(self.ctx_ids))
        ctx_acts = self.ctx_acts.gather(1, old_slot[..., None].expand_as(self.ctx_acts))
        # new entries are filled from the batch
        lat_new, r_new = latents[from_batch], rows[from_batch]  # [M]
        acts[from_batch] = batch.codes[r_new, lat_new]
        window[from_batch] = batch.window[r_new]
        pos[from_batch] = batch.pos[r_new]
        ids_new, acts_ctx_new = batch.context(r_new, lat_new)
        ctx_ids[from_batch] = ids_new
        ctx_acts[from_batch] = acts_ctx_new
        if self.src_pos is not None and batch.sources is not None:
            src = []
            for t in (self.src_pos, self.src_ids, self.src_val):
                moved = t.gather(1, old_slot[..., None].expand_as(t))
                src.append(moved)
            if len(r_new):
                new = batch.sources(r_new, lat_new)
                for moved, fresh in zip(src, new, strict=True):
                    moved[from_batch] = fresh.to(moved.device, moved.dtype)
            self.src_pos, self.src_ids, self.src_val = src
        self.scores, self.acts, self.window, self.pos = new_scores, acts, window, pos
        self.ctx_ids, self.ctx_acts = ctx_ids, ctx_acts

    def valid(self) -> Tensor:
        """``[L, k]`` bool: slots that hold an entry."""
        return torch.isfinite(self.scores)

    def nbytes(self) -> int:
        tensors = (self.scores, self.acts, self.window, self.pos, self.ctx_ids, self.ctx_acts)
        extra = (self.src_pos, self.src_ids, self.src_val)
        return sum(t.numel() * t.element_size() for t in (*tensors, *extra) if t is not None)


@dataclass
class _Batch:
    """One forward pass's encoded tokens.

    ``codes`` ``[n, L]`` for the ``n`` kept tokens; ``window`` / ``pos`` ``[n]`` where each came
    from; ``ids`` ``[B, T]`` the windows' tokens; ``row_of`` ``[B, T]`` the row of ``codes`` for each
    position (-1 at special positions); ``window0`` the global id of the batch's first window.
    """

    codes: Tensor
    window: Tensor
    pos: Tensor
    ids: Tensor
    row_of: Tensor
    window0: int
    ctx_left: int
    ctx_right: int
    sources: Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]] | None = None
    """``(rows [M], latents [M]) -> (src_pos, src_ids, src_val)`` each ``[M, n_sources]``."""

    def context(self, rows: Tensor, latents: Tensor) -> tuple[Tensor, Tensor]:
        """Token ids ``[M, C]`` (-1 off the window) and ``latents``' activations ``[M, C]``."""
        left, right = self.ctx_left, self.ctx_right
        b = self.window[rows] - self.window0
        offsets = torch.arange(-left, right + 1, device=rows.device)
        t = self.pos[rows][:, None] + offsets  # [M, C]
        inside = (t >= 0) & (t < self.ids.shape[1])
        tc = t.clamp(0, self.ids.shape[1] - 1)
        ids = torch.where(inside, self.ids[b[:, None], tc], -1)
        r = torch.where(inside, self.row_of[b[:, None], tc], -1)
        acts = self.codes[r.clamp(min=0), latents[:, None]]
        return ids, torch.where(r >= 0, acts, torch.zeros_like(acts))


# ---------------------------------------------------------------------------- results
@dataclass
class FeatureStats:
    """Everything the browser shows, as tensors over latents (``L``).

    ``hist`` ``[L, n_bins + 1]``: column 0 counts tokens where the latent is off, column ``j >= 1``
    counts activations in ``[hist_edges[j-1], hist_edges[j])`` (values below the first edge are
    counted in column 1, above the last in the last column), so each row sums to ``n_tokens``.
    ``top`` / ``samples``: :class:`TopKBuffer` contents (see there). ``logit_*``: ``[L, logit_k]``
    promoted (``pos``) and suppressed (``neg``) token ids and logit effects; None for encoders.
    ``head_shares`` ``[L, n_heads]`` (attention-output coders, else None): each latent's decoder
    norm per head block, rows summing to 1; ``top.src_*`` then hold the top examples' sources.
    """

    n_latents: int
    n_tokens: int
    n_windows: int
    context_size: int
    ctx_left: int
    ctx_right: int
    fire_count: Tensor
    max_act: Tensor
    sum_act: Tensor
    hist: Tensor
    hist_edges: Tensor
    top: TopKBuffer
    samples: TopKBuffer
    logit_pos_ids: Tensor | None = None
    logit_pos_vals: Tensor | None = None
    logit_neg_ids: Tensor | None = None
    logit_neg_vals: Tensor | None = None
    head_shares: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def density(self) -> Tensor:
        """``[L]`` fraction of non-special tokens on which each latent fires."""
        return self.fire_count.double() / max(self.n_tokens, 1)

    @property
    def mean_act(self) -> Tensor:
        """``[L]`` mean activation over the tokens where the latent fires (0 if it never does)."""
        return self.sum_act / self.fire_count.clamp(min=1).to(self.sum_act.dtype)

    # -------------------------------------------------------------- persistence
    _BUFFER_FIELDS = ("scores", "acts", "window", "pos", "ctx_ids", "ctx_acts")
    _SOURCE_FIELDS = ("src_pos", "src_ids", "src_val")
    _TENSOR_FIELDS = (
        "fire_count",
        "max_act",
        "sum_act",
        "hist",
        "hist_edges",
        "logit_pos_ids",
        "logit_pos_vals",
        "logit_neg_ids",
        "logit_neg_vals",
        "head_shares",
    )
    _INT_FIELDS = ("n_latents", "n_tokens", "n_windows", "context_size", "ctx_left", "ctx_right")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path/stats.safetensors`` and ``path/stats.json`` (reload with :meth:`load`)."""
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, Tensor] = {}
        for name in self._TENSOR_FIELDS:
            t = getattr(self, name)
            if t is not None:
                tensors[name] = t
        for prefix, buf in (("top", self.top), ("samples", self.samples)):
            for name in self._BUFFER_FIELDS + self._SOURCE_FIELDS:
                if getattr(buf, name) is not None:
                    tensors[f"{prefix}.{name}"] = getattr(buf, name)
        flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        atomic_write(p / STATS_TENSORS, write_path=lambda tmp: save_file(flat, tmp))
        meta = {name: getattr(self, name) for name in self._INT_FIELDS}
        meta["meta"] = self.meta
        write_json(p / STATS_META, meta, default=str)
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FeatureStats:
        p = Path(path)
        for f in (STATS_TENSORS, STATS_META):
            if not (p / f).is_file():
                raise FileNotFoundError(f"{p / f} not found: write it with FeatureStats.save")
        meta = json.loads((p / STATS_META).read_text())
        t = load_file(str(p / STATS_TENSORS))
        bufs = []
        for prefix in ("top", "samples"):
            ids = t[f"{prefix}.ctx_ids"]
            buf = TopKBuffer(ids.shape[0], ids.shape[1], ids.shape[2])
            for name in cls._BUFFER_FIELDS:
                setattr(buf, name, t[f"{prefix}.{name}"])
            for name in cls._SOURCE_FIELDS:
                setattr(buf, name, t.get(f"{prefix}.{name}"))
            bufs.append(buf)
        return cls(
            **{name: int(meta[name]) for name in cls._INT_FIELDS},
            **{name: t.get(name) for name in cls._TENSOR_FIELDS},
            top=bufs[0],
            samples=bufs[1],
            meta=meta.get("meta", {}),
        )


# ---------------------------------------------------------------------------- logit lens
def _final_norm_weight(model: torch.nn.Module) -> Tensor | None:
    """The elementwise weight of the model's final norm (None when there is none)."""
    base = getattr(model, "base_model", model)
    for name in ("norm", "ln_f", "final_layernorm", "final_layer_norm", "final_norm"):
        mod = getattr(base, name, None)
        w = getattr(mod, "weight", None) if mod is not None else None
        if isinstance(w, Tensor):
            w = w.detach().float()
            # Gemma's RMSNorm multiplies by (1 + weight)
            return w + 1 if "gemma" in type(mod).__name__.lower() else w
    return None


def unembedding(adapter: Any) -> Tensor:
    """``W_U`` ``[d_model, vocab]``: the output embedding with the final norm's weight folded in.

    The norm's division by the RMS / standard deviation is left out (it only rescales a token's
    whole logit vector), as in TransformerLens's ``fold_ln``. Raises ValueError for models without
    an unembedding (BERT-style encoders).
    """
    if not getattr(adapter, "is_causal", False):
        raise ValueError(
            f"the logit lens needs a causal LM with an unembedding; {adapter.name!r} is an encoder"
        )
    out = adapter.model.get_output_embeddings()
    if out is None:
        raise ValueError(f"{adapter.name!r} has no output embedding (lm_head)")
    w_u = out.weight.detach().float().T  # [d, V]
    gamma = _final_norm_weight(adapter.model)
    return w_u * gamma[:, None].to(w_u.device) if gamma is not None else w_u


@torch.no_grad()
def logit_lens(
    coder: Any, adapter: Any, k: int = 10, *, chunk: int = 1024
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Tokens each latent's decoder direction promotes and suppresses.

    Effect ``[L, vocab] = (W_dec / s) @ W_U`` where ``s`` is the coder's input normalisation scale
    (so the atom is in the model's own units) and ``W_U`` is :func:`unembedding`. Computed in
    chunks of latents (the full ``[L, vocab]`` matrix is never held). Returns ``(pos_ids,
    pos_vals, neg_ids, neg_vals)``, each ``[L, k]``, largest first / most negative first.
    """
    w_u = unembedding(adapter).to(coder.W_dec.device)
    scale = coder.normaliser.scale.float() if coder.normaliser.kind != "none" else 1.0
    k = min(k, w_u.shape[1])
    outs: list[tuple[Tensor, ...]] = []
    for i in range(0, coder.n_latents, chunk):
        eff = (coder.W_dec[i : i + chunk].float() / scale) @ w_u  # [c, V]
        pv, pi = eff.topk(k, dim=1)
        nv, ni = eff.topk(k, dim=1, largest=False)
        outs.append((pi, pv, ni, nv))
    return tuple(torch.cat([o[j] for o in outs]).cpu() for j in range(4))  # type: ignore[return-value]


# ---------------------------------------------------------------------------- collection
def hist_edges(n_bins: int = 60, lo: float = 1e-3, hi: float = 1e3) -> Tensor:
    """``[n_bins + 1]`` log-spaced bin edges from ``lo`` to ``hi``."""
    if n_bins < 1 or not (0 < lo < hi):
        raise ValueError(f"need n_bins >= 1 and 0 < lo < hi, got {n_bins}, {lo}, {hi}")
    return torch.logspace(math.log10(lo), math.log10(hi), n_bins + 1, dtype=torch.float64)


def _bin_index(values: Tensor, edges: Tensor) -> Tensor:
    """Histogram column (1..n_bins) of positive ``values`` (any shape), clamped at both ends."""
    n_bins = edges.numel() - 1
    lo, hi = math.log10(edges[0].item()), math.log10(edges[-1].item())
    logv = torch.log10(values.double().clamp(min=1e-300))
    return ((logv - lo) * (n_bins / (hi - lo))).floor().long().clamp(0, n_bins - 1) + 1


def collect(
    sae: Any,
    adapter: Any,
    texts: Iterable[str],
    hook: str,
    n_tokens: int,
    *,
    context_size: int = 128,
    batch_size: int = 8,
    top_k: int = 16,
    n_samples: int = 16,
    ctx_left: int = 12,
    ctx_right: int = 4,
    n_bins: int = 60,
    hist_range: tuple[float, float] = (1e-3, 1e3),
    logit_k: int = 10,
    skip_windows: int = 0,
    seed: int = 0,
    progress: bool = False,
    n_sources: int = 5,
) -> FeatureStats:
    """One streamed pass: statistics of every latent of ``sae`` over ``n_tokens`` tokens.

    Args:
        sae: a :class:`~sparsecodes.sparse_coder.SparseCoder` reading ``hook`` activations.
        adapter: the :class:`~sparsecodes.models.ModelAdapter` the activations come from.
        texts: documents (e.g. ``sparsecodes.data.load_texts(spec)``), cut into windows of
            ``context_size`` tokens; the first ``skip_windows`` windows are skipped (held out
            from training that read the same corpus from its start).
        n_tokens: stop after this many non-special tokens (whole batches; at least one).
        top_k / n_samples: examples kept per latent (top activations / uniform samples).
        ctx_left / ctx_right: context tokens kept on each side of an example.
        n_bins / hist_range: the log-spaced histogram bins.
        logit_k: promoted/suppressed tokens per latent (causal LMs only; 0 disables).
        seed: seeds the sampling keys.
        n_sources: for an attention-output coder, source positions kept per top example (by
            direct feature attribution; 0 disables). Needs a llama-style model and a linear
            encoder; the attention pattern is then read with eager attention in the same pass.

    Memory is bounded by ``n_latents * (top_k + n_samples) * (ctx_left + 1 + ctx_right)`` plus one
    batch's codes ``[batch_size * context_size, n_latents]``.
    """
    from sparsecodes.data import batch_windows, token_windows
    from sparsecodes.models.attention import attention_internals
    from sparsecodes.uses.head_attribution import (
        attention_layer,
        head_shares,
        linear_preactivation,
    )

    for name, v in (("n_tokens", n_tokens), ("batch_size", batch_size)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if ctx_left < 0 or ctx_right < 0:
        raise ValueError(f"ctx_left and ctx_right must be >= 0, got {ctx_left}, {ctx_right}")
    shape = adapter.hook_shape(hook)
    d_in = math.prod(shape)
    if d_in != sae.d_in:
        raise ValueError(
            f"hook {hook!r} of {adapter.name} has width {d_in} but the coder reads d_in={sae.d_in};"
            " pass the hook it was trained on (--hook)"
        )
    device = sae.device
    n_latents = sae.n_latents
    ctx_len = ctx_left + 1 + ctx_right
    layer = attention_layer(hook)
    shares = head_shares(sae, adapter.n_heads).cpu() if layer is not None else None
    dfa_ok = layer is not None and n_sources > 0 and getattr(adapter, "family", None) == "llama"
    if dfa_ok:
        try:
            linear_preactivation(sae)
        except ValueError:
            dfa_ok = False
    top = TopKBuffer(n_latents, top_k, ctx_len, device, n_sources=n_sources if dfa_ok else 0)
    samples = TopKBuffer(n_latents, n_samples, ctx_len, device)
    edges = hist_edges(n_bins, *hist_range)
    hist = torch.zeros((n_bins + 1, n_latents), dtype=torch.long, device=device)  # transposed
    fire = torch.zeros(n_latents, dtype=torch.long, device=device)
    max_act = torch.zeros(n_latents, device=device)
    sum_act = torch.zeros(n_latents, dtype=torch.float64, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    seen = n_windows = 0
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_tokens, unit="tok", desc="feature stats")
    windows = token_windows(texts, adapter.tokenizer, context_size)
    for _ in range(skip_windows):
        if next(windows, None) is None:
            raise ValueError(f"the corpus has fewer than skip_windows={skip_windows} windows")
    for ids, keep in batch_windows(windows, batch_size):
        ids, keep = ids.to(adapter.device), keep.to(adapter.device)
        sources = None
        if dfa_ok:
            internals = attention_internals(adapter, ids, None, layer)
            acts = internals.z
            sources = _source_fn(internals, ids, keep, sae, n_sources)
        else:
            acts = adapter.run(ids, None, [hook])[hook]
        acts = acts.flatten(2) if acts.dim() > 3 else acts
        b_idx, t_idx = keep.nonzero(as_tuple=True)
        x = acts[b_idx, t_idx].float().to(device)
        codes = sae.encode(x).float()  # [n, L]
        row_of = torch.full(ids.shape, -1, dtype=torch.long, device=device)
        row_of[b_idx.to(device), t_idx.to(device)] = torch.arange(len(b_idx), device=device)
        batch = _Batch(
            codes=codes,
            window=b_idx.to(device) + n_windows,
            pos=t_idx.to(device),
            ids=ids.to(device),
            row_of=row_of,
            window0=n_windows,
            ctx_left=ctx_left,
            ctx_right=ctx_right,
            sources=sources,
        )
        # work on the firing entries only: sparse codes touch k of n_latents per token
        rows, lats = (codes > 0).nonzero(as_tuple=True)
        vals = codes[rows, lats]
        n_fire = torch.bincount(lats, minlength=n_latents)
        fire += n_fire
        max_act = torch.maximum(max_act, codes.max(0).values.clamp(min=0))
        sum_act.index_add_(0, lats, vals.double())
        flat = _bin_index(vals, edges) * n_latents + lats
        hist += torch.bincount(flat, minlength=hist.numel()).view_as(hist)
        hist[0] += codes.shape[0] - n_fire
        scores = torch.full_like(codes, -math.inf)
        scores[rows, lats] = vals
        top.update(scores, batch)
        scores[rows, lats] = torch.rand(vals.shape, generator=gen, device=device)
        samples.update(scores, batch)
        seen += codes.shape[0]
        n_windows += ids.shape[0]
        if bar is not None:
            bar.update(codes.shape[0])
        if seen >= n_tokens:
            break
    if bar is not None:
        bar.close()
    if seen == 0:
        raise ValueError("the corpus yielded no tokens; pass a larger corpus (--corpus)")
    lens: tuple[Tensor | None, ...] = (None, None, None, None)
    if logit_k > 0 and getattr(adapter, "is_causal", False):
        lens = logit_lens(sae, adapter, logit_k)
    return FeatureStats(
        n_latents=n_latents,
        n_tokens=seen,
        n_windows=n_windows,
        context_size=context_size,
        ctx_left=ctx_left,
        ctx_right=ctx_right,
        fire_count=fire.cpu(),
        max_act=max_act.cpu(),
        sum_act=sum_act.cpu(),
        hist=hist.T.contiguous().cpu(),
        hist_edges=edges,
        top=_to_cpu(top),
        samples=_to_cpu(samples),
        logit_pos_ids=lens[0],
        logit_pos_vals=lens[1],
        logit_neg_ids=lens[2],
        logit_neg_vals=lens[3],
        head_shares=shares,
        meta={
            "model_name": getattr(adapter, "name", None),
            "hook_name": hook,
            "n_heads": getattr(adapter, "n_heads", None) if layer is not None else None,
            "seconds": round(time.perf_counter() - t0, 2),
            "skip_windows": skip_windows,
            "seed": seed,
        },
    )


def _source_fn(
    internals: Any, ids: Tensor, keep: Tensor, sae: Any, n_sources: int
) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]:
    """The :attr:`_Batch.sources` of one batch: top DFA sources of (code row, latent) pairs."""
    from sparsecodes.uses.head_attribution import direct_feature_attribution, top_sources

    b_idx, t_idx = keep.nonzero(as_tuple=True)

    def sources(rows: Tensor, latents: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        rows = rows.to(b_idx.device)
        b, t = b_idx[rows], t_idx[rows]
        dfa = direct_feature_attribution(sae, internals, b, t, latents.to(b.device))
        pos, val = top_sources(dfa, n_sources)
        src_ids = torch.where(pos >= 0, ids[b[:, None], pos.clamp(min=0)], -1)
        return pos, src_ids, val

    return sources


def _to_cpu(buf: TopKBuffer) -> TopKBuffer:
    for name in FeatureStats._BUFFER_FIELDS + FeatureStats._SOURCE_FIELDS:
        t = getattr(buf, name)
        setattr(buf, name, None if t is None else t.cpu())
    return buf
