"""Write an evaluation: ``eval.json`` (SAEBench core-eval key names) and PNG figures.

``eval_result_metrics`` uses SAEBench's core-eval categories and keys where they mean the same
thing: ``model_behavior_preservation.{kl_div_score, kl_div_with_ablation, kl_div_with_sae}``,
``model_performance_preservation.{ce_loss_score, ce_loss_with_ablation, ce_loss_with_sae,
ce_loss_without_sae}``, ``reconstruction_quality.{explained_variance, mse, cossim}``,
``shrinkage.{l2_norm_in, l2_norm_out, l2_ratio}``, ``sparsity.{l0, l1}``,
``misc.{frac_alive, freq_over_1_percent, freq_over_10_percent}`` and
``token_stats.{total_tokens_eval_reconstruction, total_tokens_eval_sparsity_variance}``. Our own
additions sit beside them (``fvu``, ``*_with_sae_and_error_term``, ``n_dead``, ``n_dense``, ...).
Note: our ``explained_variance`` is exactly ``1 - FVU`` with the variance about the mean over all
evaluated tokens (docs/metrics.md), and ``mse`` sums over dimensions (per token), then averages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from sparsecodes.files import write_figure


def json_safe(v: Any) -> Any:
    """JSON-safe value: NaN/inf -> None, tensors/numpy -> Python."""
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, Tensor):
        return json_safe(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def density_histogram(density: Tensor, bins: int = 40) -> dict[str, Any]:
    """Histogram of ``log10(density)`` of the alive latents, and the dead count."""
    d = density.double().cpu().numpy()
    alive = d[d > 0]
    lo = math.floor(float(np.log10(alive.min()))) if alive.size else -6
    counts, edges = np.histogram(np.log10(alive) if alive.size else [], bins=bins, range=(lo, 0.0))
    return {
        "log10_density_bin_edges": edges.tolist(),
        "counts": counts.tolist(),
        "n_dead": int((d == 0).sum()),
        "n_latents": int(d.size),
    }


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_density(hist: dict[str, Any], path: Path, title: str) -> Path:
    """Bar plot of the feature-density histogram (dead latents noted in the title)."""
    plt = _plt()
    edges = np.asarray(hist["log10_density_bin_edges"])
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.bar(edges[:-1], hist["counts"], width=np.diff(edges), align="edge", color="#3b6ea5")
    ax.set_xlabel("log10 feature density (fraction of held-out tokens a latent fires on)")
    ax.set_ylabel("latents")
    ax.set_title(
        f"{title}\n{hist['n_dead']} of {hist['n_latents']} latents dead (never fire on these "
        "tokens; not shown)",
        fontsize=9,
    )
    fig.tight_layout()
    write_figure(path, fig, dpi=120)
    plt.close(fig)
    return path


def plot_gap(rows: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Pareto plot of the amortisation gap: FVU vs FLOPs/token (log) and FVU vs L0."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    markers = {"sae": "*", "fista": "o", "ista": "s", "mp": "^", "omp": "D"}
    for r in rows:
        enc = "sae" if r["method"] == "sae" else r["encoder"]
        style = {
            "marker": markers.get(enc, "o"),
            "s": 160 if enc == "sae" else 60,
            "facecolors": "none" if not r["warm_start"] and enc != "sae" else None,
            "edgecolors": "C0" if enc == "sae" else f"C{list(markers).index(enc) % 10}",
            "color": "C0" if enc == "sae" else f"C{list(markers).index(enc) % 10}",
        }
        if style["facecolors"] is None:
            style.pop("facecolors")
        for ax, xkey in zip(axes, ("flops_per_token", "l0"), strict=True):
            ax.scatter(r[xkey], r["fvu"], label=r["method"], **style)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("inference FLOPs per token")
    axes[1].set_xlabel("L0 (held-out)")
    for ax in axes:
        ax.set_ylabel("FVU (held-out)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.85, 1))
    write_figure(path, fig, dpi=120)
    plt.close(fig)
    return path
