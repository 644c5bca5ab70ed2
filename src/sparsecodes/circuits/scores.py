"""Node and edge scores from discrete head codes, counted sparsely.

Given codes ``[n_heads, n_prompts]`` and a boolean label per prompt (True = positive: the model
predicts the answer; False = matched negative: the answer is undetermined):

- **node score** of head ``h``: the number of distinct codes of ``h`` seen on positives and never
  on negatives (``raw``); ``normalised`` = raw / number of distinct codes of ``h`` on positives
  (in [0, 1]); ``coverage`` = fraction of positive prompts whose code of ``h`` is never seen on a
  negative.
- **calibrated** = raw minus its exact expectation under randomly shuffled labels (same codes,
  same number of positives). A code seen ``m`` times among ``N`` prompts, ``n_pos`` of them
  positive, lands only on positives by chance with probability
  ``C(n_pos, m) / C(N, m)`` (hypergeometric), so ``E[raw] = sum_codes C(n_pos, m) / C(N, m)``;
  ``coverage_calibrated`` subtracts ``E[coverage] = sum_codes m * C(n_pos, m) / C(N, m) / n_pos``
  the same way. Raw counts grow with a head's code diversity even when labels carry no
  information (a head with a fresh code on every prompt scores ``n_pos``); the calibrated scores
  are 0 in expectation for every head under shuffled labels. Exact and deterministic: no sampled
  permutations. (On SmolLM2 they rank heads *worse* against mean ablation than raw counts do,
  because mean ablation also rewards heads whose output varies; see ``docs/circuits.md``.)
- **diversity** (a label-free baseline, not the method): the number of distinct codes of a head
  over all scored prompts. If it ranks heads as well as ``raw``, the labels add nothing.
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
from sparsecodes.seeding import derive_seed

Head = tuple[int, int]
Edge = tuple[Head, Head]

_MAX_KEY = 2**62


@dataclass
class HeadScores:
    """Scores of one run of the method.

    Attributes:
        node: head -> score (the variant named by ``node_score``; default ``raw``).
        edge: (head_a, head_b) -> edge score (variant ``edge_score``), for every pair with
            ``layer_a < layer_b`` (empty when ``edges=False``).
        node_variants: variant name (every name in :data:`NODE_SCORES`) -> head -> score.
        edge_variants: variant name -> (head_a, head_b) -> edge score.
        heads: the head order used for the code tensor.
        meta: settings, timings (``time_s``), number of codes, train prompt indices.
    """

    node: dict[Head, float]
    edge: dict[Edge, float]
    node_variants: dict[str, dict[Head, float]] = field(default_factory=dict)
    edge_variants: dict[str, dict[Edge, float]] = field(default_factory=dict)
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


def _chance_only_positive(
    uniq: Tensor, counts: Tensor, n_groups: int, n: int, n_pos: int, group_of: int
) -> tuple[Tensor, Tensor]:
    """Exact expectations under shuffled labels, per group: the number of distinct keys seen only
    on positives, and the number of prompts carrying such a key.

    ``uniq``/``counts``: every distinct key (offset by group) and how often it occurs among the
    ``n`` prompts. A key occurring ``m`` times falls only on the ``n_pos`` positives with
    probability ``C(n_pos, m) / C(n, m)`` (0 when ``m > n_pos``).
    """
    m = counts.double()
    lg = torch.lgamma
    log_p = (
        lg(torch.tensor(n_pos + 1.0, dtype=torch.float64))
        - lg(n_pos - m + 1).where(m <= n_pos, torch.zeros_like(m))
        - lg(torch.tensor(n + 1.0, dtype=torch.float64))
        + lg(n - m + 1)
    )
    p = torch.where(m <= n_pos, log_p.exp(), torch.zeros_like(m))
    group = uniq // group_of
    e_raw = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, group, p)
    e_prompts = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, group, p * m)
    return e_raw.float(), e_prompts.float()


def _coverage(keys: Tensor, labels: Tensor) -> Tensor:
    """Fraction of positive prompts whose key (per group, row of ``keys``) is absent on negatives."""
    neg = torch.unique(keys[:, ~labels].reshape(-1))
    pos_keys = keys[:, labels]
    return (~torch.isin(pos_keys, neg)).float().mean(dim=1)


NODE_SCORES = ("raw", "normalised", "coverage", "calibrated", "coverage_calibrated", "diversity")
"""The node score variants (see the module docstring)."""


def _variants(keys: Tensor, labels: Tensor, group_of: int) -> dict[str, Tensor]:
    """Every score in :data:`NODE_SCORES` for ``keys`` ``[n_groups, n_prompts]`` (offset by
    group, ``group_of`` keys per group)."""
    n_groups, n = keys.shape
    n_pos = int(labels.sum())
    raw, distinct = _unique_only(keys, labels, group_of)
    raw = raw.float()
    cover = _coverage(keys, labels)
    uniq, counts = torch.unique(keys.reshape(-1), return_counts=True)
    e_raw, e_prompts = _chance_only_positive(uniq, counts, n_groups, n, n_pos, group_of)
    return {
        "raw": raw,
        "normalised": raw / distinct.clamp_min(1).float(),
        "coverage": cover,
        "calibrated": raw - e_raw,
        "coverage_calibrated": cover - e_prompts / n_pos,
        "diversity": torch.bincount(uniq // group_of, minlength=n_groups).float(),
    }


def node_counts(codes: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """Node scores (every name in :data:`NODE_SCORES`), each ``[n_heads]``, from codes
    ``[n_heads, n_prompts]`` (non-negative ids) and labels ``[n_prompts]`` (bool)."""
    labels = _check_labels(labels, codes.shape[1])
    n_codes = int(codes.max()) + 1
    offset = torch.arange(codes.shape[0], dtype=torch.long)[:, None] * n_codes
    return _variants(codes.long() + offset, labels, n_codes)


def forward_pairs(heads: Sequence[Head]) -> tuple[Tensor, Tensor]:
    """Index tensors ``(a, b)`` over every pair with ``layer(heads[a]) < layer(heads[b])``."""
    layer = torch.tensor([h[0] for h in heads])
    a, b = torch.meshgrid(torch.arange(len(heads)), torch.arange(len(heads)), indexing="ij")
    keep = layer[a] < layer[b]
    return a[keep], b[keep]


def edge_counts(
    codes: Tensor, labels: Tensor, pairs: tuple[Tensor, Tensor], *, chunk: int = 8192
) -> dict[str, Tensor]:
    """Edge scores (every name in :data:`NODE_SCORES`), each ``[n_pairs]``, for the head pairs
    ``pairs``
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
    parts: list[dict[str, Tensor]] = []
    codes = codes.long()
    for s in range(0, a_all.numel(), chunk):
        a, b = a_all[s : s + chunk], b_all[s : s + chunk]
        offset = torch.arange(a.numel(), dtype=torch.long)[:, None] * group
        parts.append(_variants(codes[a] * n_codes + codes[b] + offset, labels, group))
    return {k: torch.cat([p[k] for p in parts]) if parts else torch.zeros(0) for k in NODE_SCORES}


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
    edge_score: str = "calibrated",
    n_coders: int = 1,
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
        mode: ``"argmax"`` (most active latent), ``"set"`` (set of active latents) or
            ``"magnitude"`` (most active latent and the octave of its activation).
        head_norm: ``"head"`` scales each head by its mean norm on the training prompts;
            ``"none"`` uses raw outputs.
        node_score: which variant fills ``HeadScores.node`` and ``HeadScores.edge`` (any name in
            :data:`NODE_SCORES`; default ``raw``, the published count; ``calibrated`` is raw minus
            its exact chance level under shuffled labels); all variants are in
            ``node_variants`` / ``edge_variants``.
        edge_score: which variant fills ``HeadScores.edge`` (default ``calibrated``: raw joint-code
            counts of a pair are dominated by whichever of its two heads is label-dependent; on
            the hand-built circuit the calibrated edge score ranks the planted edge first on
            every seed, raw edge ROC AUC is 0.91).
        n_coders: train this many coders (seeds derived from ``seed``; each on its own draw of
            training prompts) and average every score over them. 1 = the published method.
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
    for name, v in (("node_score", node_score), ("edge_score", edge_score)):
        if v not in NODE_SCORES:
            raise ValueError(f"{name} must be one of {NODE_SCORES}, got {v!r}")
    if n_coders < 1:
        raise ValueError(f"n_coders must be >= 1, got {n_coders}")
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
    n_tp = min((n_train_prompts + 1) // 2, len(pos_idx))
    n_tn = min(n_train_prompts - n_tp, len(neg_idx))
    pairs = forward_pairs(heads) if edges else None
    node_sum: dict[str, Tensor] = {}
    edge_sum: dict[str, Tensor] = {}
    n_codes = []
    for c in range(n_coders):
        train = rng.sample(range(len(pos_idx)), n_tp) + [
            len(pos_idx) + i for i in rng.sample(range(len(neg_idx)), n_tn)
        ]
        hc = head_codes(
            acts,
            sorted(train),
            encoder=encoder,
            n_latents=n_latents,
            seed=seed if c == 0 else derive_seed(seed, f"circuit-coder-{c}"),
            mode=mode,
            head_norm=head_norm,
            steps=steps,
            **encoder_params,
        )
        n_codes.append(len(hc.vocab))
        _accumulate(node_sum, node_counts(hc.codes, labels))
        if pairs is not None:
            _accumulate(edge_sum, edge_counts(hc.codes, labels, pairs))
    variants = {
        k: {h: v / n_coders for h, v in zip(heads, t.tolist(), strict=True)}
        for k, t in node_sum.items()
    }
    edge_variants: dict[str, dict[Edge, float]] = {}
    if pairs is not None:
        keys = [(heads[i], heads[j]) for i, j in zip(*(t.tolist() for t in pairs), strict=True)]
        edge_variants = {
            k: {e: v / n_coders for e, v in zip(keys, t.tolist(), strict=True)}
            for k, t in edge_sum.items()
        }
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
        "edge_score": edge_score,
        "n_coders": n_coders,
        "steps": steps,
        "encoder_params": dict(encoder_params),
        "n_codes": n_codes,
        "time_s": time.perf_counter() - t0,
    }
    edge = edge_variants.get(edge_score, {})
    return HeadScores(variants[node_score], edge, variants, edge_variants, heads, meta)


def _accumulate(total: dict[str, Tensor], part: dict[str, Tensor]) -> None:
    for k, v in part.items():
        total[k] = total[k] + v if k in total else v.double()
