"""Node and edge scores from discrete head codes, counted sparsely.

Given codes ``[n_heads, n_prompts]`` and a boolean label per prompt (True = positive: the model
predicts the answer; False = matched negative: the answer is undetermined):

- **node score** of head ``h``: the number of distinct codes of ``h`` seen on positives and never
  on negatives (``raw``); ``normalised`` = raw / number of distinct codes of ``h`` on positives
  (in [0, 1]); ``coverage`` = fraction of positive prompts whose code of ``h`` is never seen on a
  negative.
- **edge score** of an ordered head pair ``(a, b)`` with ``layer(a) < layer(b)`` (information can
  only flow forward): the same quantities for the joint code ``(code_a, code_b)``.

Counting is sparse: each (head or pair, code or code pair) becomes one int64 key; ``torch.unique``
and ``torch.isin`` on the ``O(n_pairs * n_prompts)`` keys replace any dense
``[heads, heads, latents, latents]`` table.

The public entry point for other modules is :func:`score_heads`, which works on activations only
(model-agnostic).
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sparsecodes.circuits.codes import CodeMode, HeadNorm, head_codes
from sparsecodes.sparse_coder import derive_seed

Head = tuple[int, int]
Edge = tuple[Head, Head]

_MAX_KEY = 2**62


@dataclass
class HeadScores:
    """Scores of one run of the method.

    Attributes:
        node: head -> score (the variant named by ``node_score``; default ``raw``).
        edge: (head_a, head_b) -> raw edge score, for every pair with ``layer_a < layer_b``.
        node_variants: variant name (``raw``, ``normalised``, ``coverage``) -> head -> score.
        edge_normalised: (head_a, head_b) -> normalised edge score.
        heads: the head order used for the code tensor.
        meta: settings, timings (``time_s``), number of codes, train prompt indices.
    """

    node: dict[Head, float]
    edge: dict[Edge, float]
    node_variants: dict[str, dict[Head, float]] = field(default_factory=dict)
    edge_normalised: dict[Edge, float] = field(default_factory=dict)
    heads: list[Head] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def _check_labels(labels: Tensor, n_prompts: int) -> Tensor:
    labels = torch.as_tensor(labels, dtype=torch.bool).reshape(-1)
    if labels.numel() != n_prompts:
        raise ValueError(f"labels has {labels.numel()} entries for {n_prompts} prompts")
    if not labels.any() or labels.all():
        raise ValueError(
            "labels must hold both positives (True) and negatives (False); got "
            f"{int(labels.sum())} positives of {labels.numel()}"
        )
    return labels


def _unique_only(keys: Tensor, labels: Tensor, group_of: int) -> tuple[Tensor, Tensor]:
    """``keys`` ``[n_groups, n_prompts]`` int64 (key already offset by group). Returns per group
    the count of distinct positive keys never seen on a negative, and of distinct positive keys."""
    n_groups = keys.shape[0]
    pos = torch.unique(keys[:, labels].reshape(-1))
    neg = torch.unique(keys[:, ~labels].reshape(-1))
    only = pos[~torch.isin(pos, neg)]
    raw = torch.bincount(only // group_of, minlength=n_groups)
    distinct = torch.bincount(pos // group_of, minlength=n_groups)
    return raw, distinct


def _coverage(keys: Tensor, labels: Tensor) -> Tensor:
    """Fraction of positive prompts whose key (per group, row of ``keys``) is absent on negatives."""
    neg = torch.unique(keys[:, ~labels].reshape(-1))
    pos_keys = keys[:, labels]
    return (~torch.isin(pos_keys, neg)).float().mean(dim=1)


def node_counts(codes: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """Node scores ``{"raw", "normalised", "coverage"}``, each ``[n_heads]``, from codes
    ``[n_heads, n_prompts]`` (non-negative ids) and labels ``[n_prompts]`` (bool)."""
    labels = _check_labels(labels, codes.shape[1])
    n_codes = int(codes.max()) + 1
    offset = torch.arange(codes.shape[0], dtype=torch.long)[:, None] * n_codes
    keys = codes.long() + offset
    raw, distinct = _unique_only(keys, labels, n_codes)
    norm = raw.float() / distinct.clamp_min(1).float()
    return {"raw": raw.float(), "normalised": norm, "coverage": _coverage(keys, labels)}


def forward_pairs(heads: Sequence[Head]) -> tuple[Tensor, Tensor]:
    """Index tensors ``(a, b)`` over every pair with ``layer(heads[a]) < layer(heads[b])``."""
    layer = torch.tensor([h[0] for h in heads])
    a, b = torch.meshgrid(torch.arange(len(heads)), torch.arange(len(heads)), indexing="ij")
    keep = layer[a] < layer[b]
    return a[keep], b[keep]


def edge_counts(
    codes: Tensor, labels: Tensor, pairs: tuple[Tensor, Tensor], *, chunk: int = 8192
) -> dict[str, Tensor]:
    """Edge scores ``{"raw", "normalised"}``, each ``[n_pairs]``, for the head pairs ``pairs``
    (index tensors into the head axis of ``codes`` ``[n_heads, n_prompts]``).

    The joint code of a pair on a prompt is ``code_a * n_codes + code_b``; keys are offset by the
    pair index, so memory is ``O(n_pairs * n_prompts)``. Pairs are processed in chunks of ``chunk``.
    """
    labels = _check_labels(labels, codes.shape[1])
    n_codes = int(codes.max()) + 1
    group = n_codes * n_codes
    a_all, b_all = pairs
    if group * max(min(chunk, a_all.numel()), 1) >= _MAX_KEY:
        raise ValueError(f"too many distinct codes ({n_codes}) for int64 pair keys; lower chunk")
    raws, norms = [], []
    codes = codes.long()
    for s in range(0, a_all.numel(), chunk):
        a, b = a_all[s : s + chunk], b_all[s : s + chunk]
        offset = torch.arange(a.numel(), dtype=torch.long)[:, None] * group
        keys = codes[a] * n_codes + codes[b] + offset
        raw, distinct = _unique_only(keys, labels, group)
        raws.append(raw.float())
        norms.append(raw.float() / distinct.clamp_min(1).float())
    if not raws:
        empty = torch.zeros(0)
        return {"raw": empty, "normalised": empty}
    return {"raw": torch.cat(raws), "normalised": torch.cat(norms)}


def _as_tensor_dict(acts: Mapping[Head, Tensor], name: str) -> tuple[list[Head], Tensor]:
    if not acts:
        raise ValueError(f"{name} is empty; pass {{(layer, head): Tensor [n_prompts, d_head]}}")
    heads = sorted(acts)
    mats = [torch.as_tensor(acts[h]).detach().float().cpu() for h in heads]
    shapes = {tuple(m.shape) for m in mats}
    if len(shapes) != 1 or mats[0].dim() != 2:
        raise ValueError(
            f"every entry of {name} must be a Tensor [n_prompts, d_head] of one shape, got {shapes}"
        )
    return heads, torch.stack(mats)


def score_heads(
    head_acts_pos: Mapping[Head, Tensor],
    head_acts_neg: Mapping[Head, Tensor],
    *,
    encoder: str = "topk",
    seed: int = 0,
    n_train_prompts: int = 8,
    n_score_prompts: int | None = None,
    n_latents: int = 256,
    mode: CodeMode = "argmax",
    head_norm: HeadNorm = "head",
    node_score: str = "raw",
    edges: bool = True,
    steps: int = 400,
    **encoder_params: Any,
) -> HeadScores:
    """Score every head (and forward head pair) by codes that occur only on positive prompts.

    Model-agnostic: works on activations only.

    Args:
        head_acts_pos: ``{(layer, head): Tensor [n_pos, d_head]}``; row ``i`` of every head is the
            same positive prompt ``i`` (the model gets it right).
        head_acts_neg: same keys, ``Tensor [n_neg, d_head]``, matched negatives (answer
            undetermined).
        encoder: any registered encoder of the core (``"topk"``, ``"relu"``, ``"jumprelu"``, ...).
        seed: fixes the training-prompt draw, the scored-prompt draw and the coder init.
        n_train_prompts: prompts (half positive, half negative, drawn with ``seed``) whose outputs
            at all heads train the one sparse coder.
        n_score_prompts: if set, score only this many prompts per class (drawn with ``seed``);
            default all.
        n_latents: dictionary size.
        mode: ``"argmax"`` (most active latent) or ``"set"`` (set of active latents).
        head_norm: ``"head"`` scales each head by its mean norm on the training prompts;
            ``"none"`` uses raw outputs.
        node_score: which variant fills ``HeadScores.node`` (``raw``, ``normalised``,
            ``coverage``); all variants are in ``node_variants``.
        edges: compute edge scores (pairs with ``layer_a < layer_b``).
        steps: coder training steps.
        **encoder_params: encoder config fields (``k=``, ``l1=``, ...).

    Returns:
        :class:`HeadScores`; ``meta["time_s"]`` is the wall time of coding and scoring.

    Example:
        >>> s = score_heads(pos, neg, encoder="topk", seed=0)   # doctest: +SKIP
        >>> roc_auc(s.node, reference_heads)                      # doctest: +SKIP
    """
    t0 = time.perf_counter()
    heads, pos = _as_tensor_dict(head_acts_pos, "head_acts_pos")
    heads_n, neg = _as_tensor_dict(head_acts_neg, "head_acts_neg")
    if heads != heads_n or pos.shape[2] != neg.shape[2]:
        raise ValueError("head_acts_pos and head_acts_neg must have the same heads and d_head")
    if node_score not in ("raw", "normalised", "coverage"):
        raise ValueError(f"node_score must be raw, normalised or coverage, got {node_score!r}")
    rng = random.Random(derive_seed(seed, "circuit-prompts"))
    n_pos, n_neg = pos.shape[1], neg.shape[1]
    pos_idx, neg_idx = list(range(n_pos)), list(range(n_neg))
    if n_score_prompts is not None:
        if n_score_prompts < 1:
            raise ValueError(f"n_score_prompts must be >= 1 or None, got {n_score_prompts}")
        pos_idx = sorted(rng.sample(pos_idx, min(n_score_prompts, n_pos)))
        neg_idx = sorted(rng.sample(neg_idx, min(n_score_prompts, n_neg)))
    acts = torch.cat([pos[:, pos_idx], neg[:, neg_idx]], dim=1)  # [H, P, d]
    labels = torch.tensor([True] * len(pos_idx) + [False] * len(neg_idx))
    if not 1 <= n_train_prompts <= acts.shape[1]:
        raise ValueError(
            f"n_train_prompts must be in 1..{acts.shape[1]} (prompts available), "
            f"got {n_train_prompts}"
        )
    n_tp = (n_train_prompts + 1) // 2
    n_tp = min(n_tp, len(pos_idx))
    n_tn = min(n_train_prompts - n_tp, len(neg_idx))
    train = rng.sample(range(len(pos_idx)), n_tp) + [
        len(pos_idx) + i for i in rng.sample(range(len(neg_idx)), n_tn)
    ]
    hc = head_codes(
        acts,
        sorted(train),
        encoder=encoder,
        n_latents=n_latents,
        seed=seed,
        mode=mode,
        head_norm=head_norm,
        steps=steps,
        **encoder_params,
    )
    nodes = node_counts(hc.codes, labels)
    variants = {
        k: {h: float(v) for h, v in zip(heads, t.tolist(), strict=True)} for k, t in nodes.items()
    }
    edge: dict[Edge, float] = {}
    edge_norm: dict[Edge, float] = {}
    if edges:
        a, b = forward_pairs(heads)
        ec = edge_counts(hc.codes, labels, (a, b))
        for i, j, r, n in zip(
            a.tolist(), b.tolist(), ec["raw"].tolist(), ec["normalised"].tolist(), strict=True
        ):
            edge[(heads[i], heads[j])] = r
            edge_norm[(heads[i], heads[j])] = n
    meta = {
        "encoder": encoder,
        "seed": seed,
        "n_train_prompts": n_train_prompts,
        "n_pos_scored": len(pos_idx),
        "n_neg_scored": len(neg_idx),
        "n_latents": n_latents,
        "mode": mode,
        "head_norm": head_norm,
        "node_score": node_score,
        "steps": steps,
        "encoder_params": dict(encoder_params),
        "n_codes": len(hc.vocab),
        "silent_code": hc.silent_id,
        "time_s": time.perf_counter() - t0,
    }
    return HeadScores(variants[node_score], edge, variants, edge_norm, heads, meta)
