"""References and baselines that touch the model: mean-ablation of every head, attribution patching.

**Mean ablation** (the reference): for each head ``(l, h)``, replace its output
(``blocks.{l}.attn.heads[..., h, :]``) at every position by its mean over the task's prompts of the
same token length at that position (:attr:`HeadRun.pos_mean`), run the positives, and record the
effect ``clean mean logit diff - ablated mean logit diff``. All heads of one layer are ablated in a
single forward pass over ``n_heads`` stacked copies of the prompts (same FLOPs, bigger matmuls).
Cost: ``n_layers * n_heads`` forward passes over the positives.

**Reference circuit rule** (uses only the ablation effects): heads with
``|effect| >= frac * |clean mean logit diff|`` (``frac=0.05`` by default). Negative effects
(heads whose ablation helps) count too, as in the IOI circuit's negative name movers.

**Attribution patching** (Nanda 2023; Syed et al. 2023): one forward and one backward over the
positives; the first-order estimate of the ablation effect is
``-sum_positions grad(logit diff) . (mean - clean)`` per head, averaged over prompts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparsecodes.circuits.heads import HeadRun, heads_hooks, logit_diff, tokenise
from sparsecodes.files import write_json
from sparsecodes.models import ModelAdapter

Head = tuple[int, int]

logger = logging.getLogger(__name__)


def report(progress: Callable[[str], None] | None, message: str) -> None:
    """Hand a progress ``message`` to ``progress``, or log it at DEBUG level when there is none."""
    if progress is not None:
        progress(message)
    else:
        logger.debug(message)


def _groups(adapter: ModelAdapter, run: HeadRun, idx: list[int]) -> dict[int, list[int]]:
    _rows, groups = tokenise(adapter, [run.prompts[i] for i in idx])
    return {length: [idx[j] for j in js] for length, js in groups.items()}


@torch.no_grad()
def mean_ablation(
    adapter: ModelAdapter,
    run: HeadRun,
    positives: list[int],
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Effect of mean-ablating each head on the mean logit difference over ``positives``.

    ``progress(message)`` receives a line per layer done (else they go to this module's logger
    at DEBUG level).

    Returns ``{"effect": {(l, h): float}, "clean_ld": float, "time_s": float, "n_prompts": int}``.
    """
    t0 = time.perf_counter()
    L, H = adapter.n_layers, adapter.n_heads
    groups = _groups(adapter, run, positives)
    total = torch.zeros(L, H)
    for length, idx in groups.items():
        ids = torch.stack([adapter.encode(run.prompts[i].text)[0][0] for i in idx])
        mean = run.pos_mean[length]  # [T, L, H, d]
        sub = [run.prompts[i] for i in idx]
        n = len(idx)
        big = ids.repeat(H, 1)  # block j ablates head j
        for layer in range(L):
            m = mean[:, layer].to(adapter.device, adapter.dtype)  # [T, H, d]

            def edit(a: Tensor, m: Tensor = m, n: int = n) -> Tensor:
                a = a.clone()
                for j in range(H):
                    a[j * n : (j + 1) * n, :, j] = m[:, j]
                return a

            logits = adapter.run_with_edit(big, f"blocks.{layer}.attn.heads", edit)
            ld = logit_diff(logits[:, -1].float().cpu(), sub * H).reshape(H, n)
            total[layer] += ld.sum(dim=1)
            report(progress, f"  ablation len {length} layer {layer + 1}/{L}")
    ablated = total / len(positives)
    clean = float(run.logit_diff[positives].mean())
    effect = {(l, h): clean - float(ablated[l, h]) for l in range(L) for h in range(H)}
    return {
        "effect": effect,
        "clean_ld": clean,
        "time_s": time.perf_counter() - t0,
        "n_prompts": len(positives),
        "n_forward_passes": L * len(groups),
        "n_head_ablations": L * H,
    }


def reference_circuit(effect: dict[Head, float], clean_ld: float, frac: float = 0.05) -> set[Head]:
    """Heads with ``|effect| >= frac * |clean_ld|`` (the documented reference rule)."""
    if not 0 < frac < 1:
        raise ValueError(f"frac must be in (0, 1), got {frac}")
    cut = frac * abs(clean_ld)
    return {h for h, e in effect.items() if abs(e) >= cut}


def attribution_patching(
    adapter: ModelAdapter, run: HeadRun, positives: list[int]
) -> dict[str, Any]:
    """First-order estimate of every head's mean-ablation effect from one forward + backward.

    Returns ``{"effect": {(l, h): float}, "time_s": float}`` (same sign convention as
    :func:`mean_ablation`: positive = ablation lowers the logit difference).
    """
    t0 = time.perf_counter()
    L, H = adapter.n_layers, adapter.n_heads
    groups = _groups(adapter, run, positives)
    total = torch.zeros(L, H)
    params = [p for p in adapter.model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        for length, idx in groups.items():
            ids = torch.stack([adapter.encode(run.prompts[i].text)[0][0] for i in idx])
            leaves: dict[int, Tensor] = {}

            def grab(layer: int, leaves: dict[int, Tensor] = leaves):
                def f(a: Tensor) -> Tensor:
                    leaf = a.detach().requires_grad_(True)
                    leaves[layer] = leaf
                    return leaf

                return f

            hooks = heads_hooks(adapter)
            logits = adapter.run_with_edits(
                ids, {h: grab(i) for i, h in enumerate(hooks)}, grad=True
            )
            ld = logit_diff(logits[:, -1].float(), [run.prompts[i] for i in idx]).sum()
            grads = torch.autograd.grad(ld, [leaves[i] for i in range(L)])
            mean = run.pos_mean[length]
            for layer, g in enumerate(grads):
                delta = mean[:, layer][None].to(g) - leaves[layer].detach()  # [B, T, H, d]
                total[layer] += (g * delta).sum(dim=(0, 1, 3)).float().cpu()
    finally:
        for p in params:
            p.requires_grad_(True)
    est = -total / len(positives)  # estimated clean - ablated
    return {
        "effect": {(l, h): float(est[l, h]) for l in range(L) for h in range(H)},
        "time_s": time.perf_counter() - t0,
    }


def cache_key(adapter: ModelAdapter, run: HeadRun, positives: list[int]) -> str:
    """A hash of the model name and the exact positive prompts (and the prompts averaged over)."""
    h = hashlib.sha256(adapter.name.encode())
    for p in run.prompts:
        h.update(f"{p.positive}|{p.text}|{p.correct}|{p.wrong}\n".encode())
    h.update(json.dumps(positives).encode())
    return h.hexdigest()[:16]


def cached_mean_ablation(
    adapter: ModelAdapter,
    run: HeadRun,
    positives: list[int],
    cache_dir: str | Path | None,
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """:func:`mean_ablation`, read from / written to ``cache_dir/ablation-<key>.json``."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"ablation-{cache_key(adapter, run, positives)}.json"
        if path.is_file():
            d = json.loads(path.read_text())
            d["effect"] = {tuple(map(int, k.split(","))): v for k, v in d["effect"].items()}
            d["cached"] = True
            return d
    out = mean_ablation(adapter, run, positives, progress=progress)
    if path is not None:
        ser = {**out, "effect": {f"{l},{h}": v for (l, h), v in out["effect"].items()}}
        write_json(path, ser, indent=None)
    out["cached"] = False
    return out
