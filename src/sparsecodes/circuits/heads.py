"""Per-head outputs of every layer, and the answer logits, in one forward pass per batch.

Prompts are grouped by token length so that no padding is needed and positions align within a
group (a positive and its matched negative have the same length by construction). Every layer's
``blocks.{i}.attn.heads`` is read through an identity edit during one full forward pass, so the
same pass gives the logits used to check whether the model gets each prompt right.

Views per prompt (all kept): ``last`` = output at the final position, ``mean`` = mean over
positions after BOS, ``tail`` = the outputs at each of the last ``P`` positions (``P`` = at most
``max_positions``, and no more than the shortest prompt has after BOS). A positive and its matched
negative have the same length, so position ``-j`` is the same slot in both; before the token where
they differ their outputs are identical. Per length group, ``pos_mean`` is the mean over all prompts of that group at
each position: the values mean-ablation writes in.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import Tensor

from sparsecodes.circuits.tasks import Prompt
from sparsecodes.models import ModelAdapter


@dataclass
class HeadRun:
    """Result of :func:`collect_heads`.

    Attributes:
        prompts: the prompts, in the order of every tensor's first axis.
        last: ``[n_prompts, n_layers, n_heads, d_head]`` head outputs at the final position.
        mean: same shape, mean over positions after BOS.
        tail: ``[n_prompts, P, n_layers, n_heads, d_head]`` outputs at the last ``P`` positions
            (``tail[:, -1]`` equals ``last``).
        logit_diff: ``[n_prompts]`` logit difference at the final position (see tasks).
        top1: ``[n_prompts]`` bool, the argmax token is one of the prompt's correct tokens.
        groups: token length -> prompt indices.
        pos_mean: token length -> ``[T, n_layers, n_heads, d_head]`` mean over that group.
        time_s: wall time of the forward passes.
    """

    prompts: list[Prompt]
    last: Tensor
    mean: Tensor
    logit_diff: Tensor
    top1: Tensor
    groups: dict[int, list[int]]
    pos_mean: dict[int, Tensor]
    time_s: float
    tail: Tensor | None = None

    @property
    def labels(self) -> Tensor:
        """``[n_prompts]`` bool, True for positives (read from each prompt)."""
        return torch.tensor([p.positive for p in self.prompts])


def logit_diff(logits: Tensor, prompts: list[Prompt]) -> Tensor:
    """``[n]`` ``LSE(logits[correct]) - LSE(logits[wrong])`` for final-position ``logits`` ``[n,
    vocab]``."""
    out = []
    for row, p in zip(logits, prompts, strict=True):
        good = torch.logsumexp(row[list(p.correct)], 0)
        bad = torch.logsumexp(row[list(p.wrong)], 0)
        out.append(good - bad)
    return torch.stack(out)


def tokenise(
    adapter: ModelAdapter, prompts: list[Prompt]
) -> tuple[list[Tensor], dict[int, list[int]]]:
    """Token ids ``[T_i]`` per prompt (BOS first) and the groups of equal length."""
    rows = [adapter.encode(p.text)[0][0] for p in prompts]
    groups: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[int(r.shape[0])].append(i)
    return rows, dict(groups)


def heads_hooks(adapter: ModelAdapter) -> list[str]:
    return [f"blocks.{i}.attn.heads" for i in range(adapter.n_layers)]


@torch.no_grad()
def collect_heads(
    adapter: ModelAdapter, prompts: list[Prompt], *, batch_size: int = 32, max_positions: int = 16
) -> HeadRun:
    """Run every prompt once; capture all layers' head outputs and the final logits."""
    if not prompts:
        raise ValueError("prompts is empty")
    t0 = time.perf_counter()
    rows, groups = tokenise(adapter, prompts)
    L, H, d = adapter.n_layers, adapter.n_heads, adapter.d_head
    n = len(prompts)
    last = torch.zeros(n, L, H, d)
    mean = torch.zeros(n, L, H, d)
    n_tail = max(1, min(max_positions, min(groups) - 1))
    tail = torch.zeros(n, n_tail, L, H, d)
    ld = torch.zeros(n)
    top1 = torch.zeros(n, dtype=torch.bool)
    pos_mean: dict[int, Tensor] = {}
    hooks = heads_hooks(adapter)
    for length, idx in groups.items():
        acc = torch.zeros(length, L, H, d)
        for s in range(0, len(idx), batch_size):
            chunk = idx[s : s + batch_size]
            ids = torch.stack([rows[i] for i in chunk])
            cache: dict[int, Tensor] = {}

            def grab(layer: int, cache: dict[int, Tensor] = cache):
                def f(a: Tensor) -> Tensor:
                    cache[layer] = a.detach().float().cpu()
                    return a

                return f

            logits = adapter.run_with_edits(ids, {h: grab(i) for i, h in enumerate(hooks)})
            acts = torch.stack([cache[i] for i in range(L)], dim=2)  # [B, T, L, H, d]
            last[chunk] = acts[:, -1]
            tail[chunk] = acts[:, -n_tail:]
            mean[chunk] = acts[:, 1:].mean(dim=1) if length > 1 else acts[:, 0]
            acc += acts.sum(dim=0)
            fin = logits[:, -1].float().cpu()
            sub = [prompts[i] for i in chunk]
            ld[chunk] = logit_diff(fin, sub)
            top1[chunk] = torch.tensor(
                [int(r.argmax()) in p.correct for r, p in zip(fin, sub, strict=True)]
            )
        pos_mean[length] = acc / len(idx)
    t = time.perf_counter() - t0
    return HeadRun(prompts, last, mean, ld, top1, groups, pos_mean, t, tail)


def keep_solved(run: HeadRun, *, rule: str = "logit_diff") -> tuple[list[int], list[int], float]:
    """Indices of positives the model gets right and of their matched negatives, and the kept
    fraction of positives.

    ``rule="logit_diff"``: logit difference > 0; ``rule="top1"``: the argmax token is correct.
    Raises ValueError when the model gets no positive right.
    """
    if rule not in ("logit_diff", "top1"):
        raise ValueError(f"rule must be 'logit_diff' or 'top1', got {rule!r}")
    ok = run.logit_diff > 0 if rule == "logit_diff" else run.top1
    pos = [i for i, p in enumerate(run.prompts) if p.positive]
    kept = [i for i in pos if bool(ok[i])]
    if not kept:
        task = run.prompts[0].task
        raise ValueError(
            f"the model gets none of the {len(pos)} positive {task!r} prompts right "
            f"(rule {rule}); circuit discovery needs prompts the model solves. Use a model that "
            "solves this task or another task"
        )
    pairs = {run.prompts[i].pair for i in kept}
    neg = [i for i, p in enumerate(run.prompts) if not p.positive and p.pair in pairs]
    return kept, neg, len(kept) / len(pos)


def head_dict(view: Tensor, idx: list[int]) -> dict[tuple[int, int], Tensor]:
    """``{(layer, head): Tensor [len(idx), d_head]}`` from a view ``[n, L, H, d]``."""
    sub = view[idx]
    return {(l, h): sub[:, l, h] for l in range(sub.shape[1]) for h in range(sub.shape[2])}
