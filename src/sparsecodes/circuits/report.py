"""Writing a circuit study: JSON with everything, and a PNG of the layer-by-head grids.

The PNG has one panel per method (mean-ablation effect, the codes score averaged over seeds,
attribution patching), each a ``[n_layers, n_heads]`` heat map; reference-circuit heads are outlined
in black and heads the method selects (threshold rule, no reference) are marked with a dot.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def _grid(scores: dict[str, float], n_layers: int, n_heads: int) -> np.ndarray:
    g = np.zeros((n_layers, n_heads))
    for k, v in scores.items():
        layer, head = map(int, k.split(","))
        g[layer, head] = v
    return g


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    return path


def plot_grid(result: dict[str, Any], path: str | Path) -> Path:
    """Save the layer-by-head grid of ``result`` (from :func:`~.study.run_task`) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparsecodes.circuits.metrics import select_circuit

    lay = result["layout"]
    L, H = lay["n_layers"], lay["n_heads"]
    ref = {tuple(h) for h in result["reference"]["heads"]}
    panels = [
        ("mean-ablation effect (reference)", result["reference"]["effect"]),
        ("codes score (mean over seeds)", result["scores"]["codes_seed_mean"]),
        ("attribution patching", result["scores"]["attribution_patching"]),
    ]
    aucs = [
        None,
        result["methods"]["codes_raw_seed_mean"]["roc_auc"],
        result["methods"]["attribution_patching"]["roc_auc"],
    ]
    fig, axes = plt.subplots(1, 3, figsize=(3 + 1.1 * H, 0.28 * L + 2.2), squeeze=False)
    for ax, (title, sc), auc in zip(axes[0], panels, aucs, strict=True):
        g = _grid(sc, L, H)
        im = ax.imshow(g, aspect="auto", cmap="viridis" if g.min() >= 0 else "coolwarm")
        fig.colorbar(im, ax=ax, fraction=0.08)
        found = select_circuit(
            {(int(k.split(",")[0]), int(k.split(",")[1])): abs(v) for k, v in sc.items()}
        )
        for layer, head in ref:
            ax.add_patch(
                plt.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, ec="black", lw=1.5)
            )
        for layer, head in found:
            ax.plot(head, layer, "o", ms=3, color="white", mec="black", mew=0.5)
        t = title if auc is None else f"{title}\nROC AUC {auc:.2f}"
        ax.set_title(t, fontsize=8)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    fig.suptitle(
        f"{result['model']} / {result['task']}: boxes = reference, dots = selected (z-score rule)",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
