"""A tiny attention-only transformer trained on CPU for induction; its circuit by exhaustive ablation.

Training data: ``[BOS, x_1..x_n, x_1..x_n]`` with ``n`` distinct random tokens (so the second
half is predictable only by copying); the loss is next-token cross-entropy on the second half.
A 2-layer x 4-head model (``d_model=64``, ``d_head=16``) learns it in well under a minute on one
CPU thread (seeded, so the same seed gives the same weights on CPU).

Task: positives ``[BOS, x_1..x_n, x_1..x_m]`` (answer ``x_{m+1}``); the matched negative replaces
the final token by a token ``z`` that is not in the prompt (no earlier occurrence, so nothing to
copy). Ground truth: :func:`~sparsecodes.circuits.groundtruth.task.exhaustive_ablation` on the
positives (every head and every head pair, mean-ablated), with its documented rule.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from sparsecodes.circuits.groundtruth.model import HeadTransformer
from sparsecodes.circuits.groundtruth.task import (
    AblationResult,
    GroundTruthTask,
    accuracy,
    exhaustive_ablation,
)


@dataclass
class InductionConfig:
    """Model and training sizes (defaults train in about 10-40 s on one CPU thread)."""

    vocab_size: int = 24
    half: int = 8
    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 64
    d_head: int = 16
    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    head_l1: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.vocab_size <= self.half:
            raise ValueError(
                f"vocab_size={self.vocab_size} must exceed half={self.half} (distinct tokens in "
                "the first half plus a fresh token for the negatives)"
            )


def repeated_halves(n: int, vocab_size: int, half: int, generator: torch.Generator) -> Tensor:
    """``[n, 1 + 2 * half]`` sequences ``[BOS=0, x, x]`` with ``half`` distinct tokens in 1..V."""
    x = torch.argsort(torch.rand(n, vocab_size, generator=generator), dim=1)[:, :half] + 1
    return torch.cat([torch.zeros(n, 1, dtype=torch.long), x, x], dim=1)


def train_induction_model(cfg: InductionConfig | None = None) -> tuple[HeadTransformer, dict]:
    """Train the model; returns it and a log ``{"loss", "acc", "time_s", "config"}``.

    ``acc``: second-half next-token accuracy on fresh sequences after training.
    """
    cfg = cfg or InductionConfig()
    g = torch.Generator().manual_seed(cfg.seed)
    T = 1 + 2 * cfg.half
    V1 = cfg.vocab_size + 1
    m = HeadTransformer(V1, T, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_head, V1, causal=True)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() >= 2:
                fan_in = p.shape[-2]
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
    opt = torch.optim.Adam(m.parameters(), lr=cfg.lr)
    t0 = time.perf_counter()
    h = cfg.half
    loss = torch.tensor(0.0)
    m.train()
    for step in range(cfg.steps):
        ids = repeated_halves(cfg.batch_size, cfg.vocab_size, h, g)
        out = m.run(ids)
        logits = out.logits[:, h + 1 : T - 1]  # positions of the repeated x_1..x_{h-1}
        target = ids[:, h + 2 : T]
        loss = F.cross_entropy(logits.reshape(-1, V1), target.reshape(-1))
        if cfg.head_l1 > 0:  # group lasso on each head's written output: unused heads go quiet
            written = [
                torch.einsum("bthe,hed->bthd", z, m.W_O[layer]).norm(dim=-1).mean((0, 1)).sum()
                for layer, z in enumerate(out.heads)
            ]
            loss = loss + cfg.head_l1 * torch.stack(written).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for group in opt.param_groups:  # linear decay over the last 30%
            frac = (step + 1) / cfg.steps
            group["lr"] = cfg.lr * min(1.0, (1 - frac) / 0.3)
    m.eval()
    test = repeated_halves(512, cfg.vocab_size, h, g)
    with torch.no_grad():
        pred = m(test)[:, h + 1 : T - 1].argmax(-1)
    acc = float((pred == test[:, h + 2 : T]).float().mean())
    return m, {
        "loss": float(loss.detach()),
        "acc": acc,
        "time_s": time.perf_counter() - t0,
        "config": vars(cfg).copy(),
    }


def induction_task_prompts(
    n_pairs: int, *, vocab_size: int, half: int, m: int, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Matched prompts ``[2 * n_pairs, 1 + half + m]`` (shuffled), labels, answers (-1 = none)."""
    if not 1 <= m < half:
        raise ValueError(f"m must be in 1..half-1 = 1..{half - 1}, got {m}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.argsort(torch.rand(n_pairs, vocab_size, generator=g), dim=1) + 1
    x, fresh = perm[:, :half], perm[:, half:]
    bos = torch.zeros(n_pairs, 1, dtype=torch.long)
    pos = torch.cat([bos, x, x[:, :m]], dim=1)
    z = fresh.gather(1, torch.randint(fresh.shape[1], (n_pairs, 1), generator=g))
    neg = torch.cat([bos, x, x[:, : m - 1], z], dim=1)
    ids = torch.cat([pos, neg])
    labels = torch.cat(
        [torch.ones(n_pairs, dtype=torch.bool), torch.zeros(n_pairs, dtype=torch.bool)]
    )
    answers = torch.cat([x[:, m], torch.full((n_pairs,), -1)])
    order = torch.randperm(2 * n_pairs, generator=g)
    return ids[order], labels[order], answers[order]


def induction_task(
    n_pairs: int = 16,
    *,
    cfg: InductionConfig | None = None,
    m: int | None = None,
    model: HeadTransformer | None = None,
    seed: int = 0,
    n_ablation: int = 256,
) -> tuple[GroundTruthTask, AblationResult]:
    """Train (or reuse ``model``), establish the circuit by exhaustive ablation, build the task.

    ``m``: number of repeated tokens in the prompt (default ``half // 2``). Ablation runs on
    ``n_ablation`` separate positives (seed + 1), the mean for mean-ablation over repeated-halves
    sequences of the training distribution.
    """
    cfg = cfg or InductionConfig()
    m = cfg.half // 2 if m is None else m
    log: dict = {}
    if model is None:
        model, log = train_induction_model(cfg)
    ab_ids, ab_lab, ab_ans = induction_task_prompts(
        n_ablation, vocab_size=cfg.vocab_size, half=cfg.half, m=m, seed=seed + 1
    )
    g = torch.Generator().manual_seed(seed + 2)
    ref = repeated_halves(n_ablation, cfg.vocab_size, cfg.half, g)[:, : 1 + cfg.half + m]
    pos_ids, pos_ans = ab_ids[ab_lab], ab_ans[ab_lab]
    ablation = exhaustive_ablation(
        model, pos_ids, pos_ans, reference_ids=ref, chance=1 / cfg.vocab_size
    )
    ids, labels, answers = induction_task_prompts(
        n_pairs, vocab_size=cfg.vocab_size, half=cfg.half, m=m, seed=seed
    )
    neg_acc = accuracy(model, ab_ids[~ab_lab], ab_ans[ab_lab])
    task = GroundTruthTask(
        name="trained-induction",
        model=model,
        ids=ids,
        labels=labels,
        answers=answers,
        circuit=ablation.circuit,
        notes="circuit = heads whose (single or paired) mean-ablation destroys induction accuracy",
        extra={
            "train": log,
            "clean_accuracy": ablation.clean,
            "negatives_hit_positive_answer": neg_acc,
            "ablation_single": {f"L{a}H{b}": v for (a, b), v in ablation.single.items()},
            "ablation_threshold": ablation.threshold,
        },
    )
    return task, ablation
