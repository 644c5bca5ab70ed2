"""Writing a circuit study: JSON with everything, and a PNG of the layer-by-head grids.

The PNG has one panel per method (mean-ablation effect, the codes score averaged over seeds,
attribution patching), each a ``[n_layers, n_heads]`` heat map; reference-circuit heads are outlined
in black and heads the method selects (threshold rule, no reference) are marked with a dot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sparsecodes.files import write_figure


def _grid(scores: dict[str, float], n_layers: int, n_heads: int) -> np.ndarray:
    g = np.zeros((n_layers, n_heads))
    for k, v in scores.items():
        layer, head = map(int, k.split(","))
        g[layer, head] = v
    return g


def _save(fig: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = write_figure(path, fig, dpi=110)
    plt.close(fig)
    return path


def plot_grid(result: dict[str, Any], path: str | Path) -> Path:
    """Save the layer-by-head grid of ``result`` (from :func:`~.study.run_task`) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparsecodes.circuits.metrics import select_circuit

    lay = result["layout"]
    L, H = lay["n_layers"], lay["n_heads"]
    reference = result.get("reference")
    ref = {tuple(h) for h in reference["heads"]} if reference else set()
    variant = result.get("node_score", "raw")
    methods = result.get("methods", {})

    def auc(key: str) -> float | None:
        return methods[key]["roc_auc"] if key in methods else None

    # (title, scores, ROC AUC or None, rank by signed value?): effects are ranked by magnitude
    panels = [
        (
            f"codes score, {variant} (mean over seeds)",
            result["scores"]["codes_seed_mean"],
            auc(f"codes_{variant}_seed_mean"),
            True,
        ),
        (
            "attribution patching",
            result["scores"]["attribution_patching"],
            auc("attribution_patching"),
            False,
        ),
    ]
    if reference:
        panels.insert(0, ("mean-ablation effect (reference)", reference["effect"], None, False))
    n = len(panels)
    fig, axes = plt.subplots(
        1, n, figsize=(1 + n * (0.37 * H + 0.7), 0.28 * L + 2.2), squeeze=False
    )
    for ax, (title, sc, roc, keep_sign) in zip(axes[0], panels, strict=True):
        g = _grid(sc, L, H)
        im = ax.imshow(g, aspect="auto", cmap="viridis" if g.min() >= 0 else "coolwarm")
        fig.colorbar(im, ax=ax, fraction=0.08)
        found = select_circuit(
            {
                (int(k.split(",")[0]), int(k.split(",")[1])): v if keep_sign else abs(v)
                for k, v in sc.items()
            }
        )
        for layer, head in ref:
            ax.add_patch(
                plt.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, ec="black", lw=1.5)
            )
        for layer, head in found:
            ax.plot(head, layer, "o", ms=3, color="white", mec="black", mew=0.5)
        t = title if roc is None else f"{title}\nROC AUC {roc:.2f}"
        ax.set_title(t, fontsize=8)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    boxes = "boxes = reference, " if reference else "no reference run, "
    fig.suptitle(
        f"{result['model']} / {result['task']}: {boxes}dots = selected (z-score rule)", fontsize=9
    )
    return _save(fig, path)


def plot_sensitivity(
    rows_by_task: dict[str, list[dict[str, Any]]], path: str | Path, variant: str = "raw"
) -> Path:
    """One panel per factor of :func:`~.study.sensitivity`: node ROC AUC (mean +- std over seeds)
    of ``variant`` against the factor's value, one line per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    factors = ["n_train_prompts", "n_score_prompts", "k", "l1"]
    labels = {
        "n_train_prompts": "coder training prompts",
        "n_score_prompts": "scored prompts per class",
        "k": "TopK k",
        "l1": "ReLU coder L1 penalty",
    }
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2), sharey=True)
    for ax, factor in zip(axes, factors, strict=True):
        for task, rows in rows_by_task.items():
            sel = [r for r in rows if r["factor"] == factor]
            if not sel:
                continue
            x = [r["value"] for r in sel]
            m = np.array([r["roc_auc"][variant]["mean"] for r in sel])
            sd = np.array([r["roc_auc"][variant]["std"] for r in sel])
            ax.errorbar(x, m, yerr=sd, marker="o", capsize=3, label=task)
        if factor in ("k", "n_train_prompts"):
            ax.set_xscale("log", base=2)
            vals = sorted({r["value"] for rows in rows_by_task.values() for r in rows
                           if r["factor"] == factor})  # fmt: skip
            ax.set_xticks(vals, [str(v) for v in vals])
            ax.minorticks_off()
        elif factor == "l1":
            ax.set_xscale("log")
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(labels[factor])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"node ROC AUC ({variant})")
    axes[0].legend(fontsize=8)
    return _save(fig, path)
