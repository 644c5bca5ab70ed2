"""Permutation-calibrated node scores: raw score minus its mean under shuffled labels.

The raw node score (codes seen only on positives) grows with a head's code diversity even when
labels carry no information: a head with many distinct codes gets many "positive-only" codes by
chance. Subtracting the mean score over ``n_perm`` label permutations (same codes) removes that
bias, so shuffled labels give scores centred on 0 for every head and ROC AUC near 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from sparsecodes.circuits.codes import head_codes
from sparsecodes.circuits.scores import node_counts

Head = tuple[int, int]


def calibrated_node_scores(
    head_acts_pos: Mapping[Head, Tensor],
    head_acts_neg: Mapping[Head, Tensor],
    *,
    seed: int = 0,
    n_train_prompts: int = 8,
    n_perm: int = 200,
    variant: str = "raw",
    **code_kwargs,
) -> dict[Head, float]:
    """``{head: raw - mean_perm(raw)}`` from the same discrete codes as ``score_heads``.

    ``head_acts_*``: ``{(layer, head): [n, d_head]}``. The coder is trained on ``n_train_prompts``
    prompts (half from each class, drawn with ``seed``); labels never choose the threshold.
    """
    heads = sorted(head_acts_pos)
    pos = torch.stack([head_acts_pos[h].float() for h in heads])
    neg = torch.stack([head_acts_neg[h].float() for h in heads])
    acts = torch.cat([pos, neg], dim=1)
    labels = torch.tensor([True] * pos.shape[1] + [False] * neg.shape[1])
    g = torch.Generator().manual_seed(seed)
    n_tp = min((n_train_prompts + 1) // 2, pos.shape[1])
    n_tn = min(n_train_prompts - n_tp, neg.shape[1])
    train = torch.randperm(pos.shape[1], generator=g)[:n_tp].tolist() + [
        pos.shape[1] + i for i in torch.randperm(neg.shape[1], generator=g)[:n_tn].tolist()
    ]
    hc = head_codes(acts, sorted(train), seed=seed, **code_kwargs)
    raw = node_counts(hc.codes, labels)[variant]
    null = torch.zeros_like(raw)
    for _ in range(n_perm):
        perm = labels[torch.randperm(len(labels), generator=g)]
        null += node_counts(hc.codes, perm)[variant]
    score = raw - null / n_perm
    return {h: float(s) for h, s in zip(heads, score.tolist(), strict=True)}
