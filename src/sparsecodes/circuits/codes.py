"""Discrete codes for attention heads: one sparse coder over all heads, one code per head and prompt.

A single :class:`~sparsecodes.SparseCoder` is trained on the outputs of *every* head for a few
prompts (``n_train_prompts * n_heads`` vectors of width ``d_head``). Each head's output on each
prompt is then encoded and discretised into one integer code:

- ``mode="argmax"``: the index of the most active latent;
- ``mode="set"``: the set of active latents (non-zero entries), as a frozenset;
- ``mode="magnitude"``: the most active latent and the octave of its activation,
  ``(latent, floor(log2(a)))`` (octaves clamped to -8..8). Argmax codes discard how strongly a
  head writes its direction; heads that encode a quantity in the size of one direction (a count,
  a fraction) keep it here at factor-of-two resolution.

A **silent** head-prompt (input vector of norm <= ``silent_tol`` times the largest norm, or an
all-zero sparse code) gets its own code, :data:`SILENT`, never latent 0.

Codes are returned as a compact ``LongTensor`` ``[n_heads, n_prompts]`` with values in
``0 .. n_codes - 1`` (each distinct discrete code, including silent, gets one id), plus the
vocabulary mapping ids back to codes. Comparing codes between heads is therefore meaningful:
all heads share one dictionary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from sparsecodes.seeding import derive_seed
from sparsecodes.sparse_coder import SparseCoder

CodeMode = Literal["argmax", "set", "magnitude"]
HeadNorm = Literal["none", "head", "center"]

SILENT = "silent"
"""The discrete code of a silent head (distinct from every latent index)."""


@dataclass
class HeadCodes:
    """Discrete codes of every head on every prompt.

    Attributes:
        codes: ``[n_heads, n_prompts]`` int64 compact code ids.
        vocab: id -> discrete code (an int latent index, a frozenset of latents, or :data:`SILENT`).
        silent_id: the id of :data:`SILENT` in ``vocab`` (-1 if no head was ever silent).
        coder: the trained sparse coder.
        train_prompts: indices (into the prompt axis) of the prompts the coder was trained on.
    """

    codes: Tensor
    vocab: list[Any]
    silent_id: int
    coder: SparseCoder
    train_prompts: list[int] = field(default_factory=list)


def stack_heads(acts: Tensor, norm: HeadNorm, fit_rows: Tensor | None = None) -> Tensor:
    """Scale ``acts`` ``[n_heads, n_prompts, d_head]`` per head.

    ``norm="head"`` divides each head by its mean vector norm over the prompts ``fit_rows``
    (all prompts if None), so that loud heads do not own the dictionary; silent heads stay zero.
    ``norm="center"`` first subtracts each head's mean over ``fit_rows`` (so codes describe how a
    head's output *varies* across prompts, not its constant part), then scales the same way; a
    head that is silent on a prompt stays exactly zero there.
    """
    if norm == "none":
        return acts
    if norm not in ("head", "center"):
        raise ValueError(f"head_norm must be 'none', 'head' or 'center', got {norm!r}")
    ref = acts if fit_rows is None else acts[:, fit_rows]
    if norm == "center":
        silent = acts.abs().amax(dim=-1, keepdim=True) == 0
        acts = torch.where(silent, acts, acts - ref.mean(dim=1, keepdim=True))
        ref = acts if fit_rows is None else acts[:, fit_rows]
    scale = ref.norm(dim=-1).mean(dim=1, keepdim=True)  # [n_heads, 1]
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return acts / scale[..., None]


def fit_head_coder(
    x: Tensor,
    *,
    encoder: str = "topk",
    n_latents: int = 256,
    seed: int = 0,
    steps: int = 400,
    lr: float = 3e-3,
    batch_size: int = 256,
    **encoder_params: Any,
) -> SparseCoder:
    """Train one sparse coder on ``x`` ``[n_samples, d_head]`` (all heads' outputs, stacked).

    Defaults for ``topk``: ``k=4``; for ``relu``: ``l1=1e-2`` (override through ``encoder_params``).
    """
    if encoder == "topk":
        encoder_params.setdefault("k", min(4, n_latents))
    elif encoder in ("relu", "gated"):
        encoder_params.setdefault("l1", 1e-2)
    coder = SparseCoder(x.shape[1], n_latents, encoder, seed=seed, **encoder_params)
    coder.fit(x, steps=steps, lr=lr, batch_size=min(batch_size, x.shape[0]), log_every=steps)
    return coder.eval()


_OCT = 8


def _decode(raw: int, mode: CodeMode) -> Any:
    if mode == "argmax":
        return raw
    return (raw // (2 * _OCT + 1), raw % (2 * _OCT + 1) - _OCT)


def discretise(
    coder: SparseCoder,
    acts: Tensor,
    *,
    mode: CodeMode = "argmax",
    silent_tol: float = 1e-6,
) -> tuple[Tensor, list[Any], int]:
    """Codes of ``acts`` ``[n_heads, n_prompts, d_head]`` -> ``(codes [n_heads, n_prompts], vocab,
    silent_id)`` with compact ids (see the module docstring for ``mode`` and silence)."""
    if mode not in ("argmax", "set", "magnitude"):
        raise ValueError(f"mode must be 'argmax', 'set' or 'magnitude', got {mode!r}")
    n_heads, n_prompts, d = acts.shape
    flat = acts.reshape(-1, d).float()
    norms = flat.norm(dim=-1)
    top = float(norms.max()) if norms.numel() else 0.0
    silent_in = norms <= silent_tol * max(top, 1e-30)
    z = coder.encode(flat)  # dense [n_heads * n_prompts, n_latents]
    active = z != 0
    silent = silent_in | ~active.any(dim=-1)
    if mode in ("argmax", "magnitude"):
        top_val, raw = z.max(dim=-1)
        if mode == "magnitude":
            octave = torch.floor(torch.log2(top_val.clamp_min(1e-30))).clamp(-_OCT, _OCT).long()
            raw = raw * (2 * _OCT + 1) + octave + _OCT
        raw = torch.where(silent, torch.full_like(raw, -1), raw)  # -1 = SILENT, never latent 0
        uniq, inv = torch.unique(raw, return_inverse=True)
        vocab: list[Any] = [SILENT if int(u) == -1 else _decode(int(u), mode) for u in uniq]
        codes = inv.reshape(n_heads, n_prompts)
    else:
        table: dict[Any, int] = {}
        vocab = []
        ids = []
        for row, s in zip(active.tolist(), silent.tolist(), strict=True):
            key: Any = SILENT if s else frozenset(i for i, a in enumerate(row) if a)
            if key not in table:
                table[key] = len(vocab)
                vocab.append(key)
            ids.append(table[key])
        codes = torch.tensor(ids, dtype=torch.long).reshape(n_heads, n_prompts)
    silent_id = vocab.index(SILENT) if SILENT in vocab else -1
    return codes, vocab, silent_id


def head_codes(
    acts: Tensor,
    train_prompts: list[int],
    *,
    encoder: str = "topk",
    n_latents: int = 256,
    seed: int = 0,
    mode: CodeMode = "argmax",
    head_norm: HeadNorm = "head",
    steps: int = 400,
    **encoder_params: Any,
) -> HeadCodes:
    """Train one coder on ``acts[:, train_prompts]`` and discretise every head on every prompt.

    Args:
        acts: ``[n_heads, n_prompts, d_head]`` head outputs (one view: final position or mean).
        train_prompts: prompt indices whose head outputs (all heads) train the coder.
    """
    if acts.dim() != 3:
        raise ValueError(f"acts must be [n_heads, n_prompts, d_head], got {tuple(acts.shape)}")
    if not train_prompts:
        raise ValueError("train_prompts is empty; pass n_train_prompts >= 1")
    rows = torch.tensor(train_prompts, dtype=torch.long)
    x_all = stack_heads(acts.float(), head_norm, rows)
    x_train = x_all[:, rows].reshape(-1, acts.shape[-1])
    torch.manual_seed(derive_seed(seed, "circuit-coder"))
    coder = fit_head_coder(
        x_train, encoder=encoder, n_latents=n_latents, seed=seed, steps=steps, **encoder_params
    )
    codes, vocab, silent_id = discretise(coder, x_all, mode=mode)
    return HeadCodes(codes, vocab, silent_id, coder, list(train_prompts))
