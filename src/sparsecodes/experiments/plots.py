"""Figures of the synthetic study: code MCC vs FLOPs and code MCC vs training steps.

Drawn with matplotlib's object API on an Agg canvas, so no global backend is touched and no
display is needed. Each function takes result rows of one setting (see
:func:`sparsecodes.experiments.synth.run`) and writes one PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sparsecodes.files import write_figure


def _by_method(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["method"], []).append(r)
    return groups


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    return write_figure(path, fig, dpi=120)


def plot_mcc_vs_flops(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Code MCC (mean ± std over seeds) against total FLOPs (training + test inference), log x."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    for method, rs in _by_method(rows).items():
        flops = np.array([max(r["total_flops"], 1.0) for r in rs])
        mcc = np.array([r["code_mcc"] for r in rs])
        ax.scatter(flops, mcc, s=12, alpha=0.35)
        ax.errorbar(
            [flops.mean()],
            [mcc.mean()],
            yerr=[mcc.std()],
            fmt="o",
            capsize=3,
            label=method,
            color=ax.collections[-1].get_facecolor()[0][:3],
        )
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs (training + inference on the test set)")
    ax.set_ylabel("code MCC (test)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{title}: MCC vs FLOPs" if title else "MCC vs FLOPs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, Path(path))


def plot_mcc_vs_steps(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Test code MCC during training (mean over seeds, band = ± std) against training step.

    Methods without training (iterative inference on a known dictionary) are drawn as a
    horizontal line at their MCC.
    """
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    max_step = max((p["step"] for r in rows for p in r["curve"]), default=1) or 1
    for method, rs in _by_method(rows).items():
        curves = [r["curve"] for r in rs if r["curve"]]
        trained = any(p["step"] > 0 for c in curves for p in c)
        if not curves or not trained:
            mcc = float(np.mean([r["code_mcc"] for r in rs]))
            ax.hlines(
                mcc,
                0,
                max_step,
                linestyles="--",
                label=f"{method} (no training)",
                colors=f"C{len(ax.lines) + len(ax.collections)}",
            )
            continue
        n = min(len(c) for c in curves)
        steps = np.array([p["step"] for p in curves[0][:n]])
        vals = np.array([[p["code_mcc"] for p in c[:n]] for c in curves])
        mean, std = vals.mean(axis=0), vals.std(axis=0)
        (line,) = ax.plot(steps, mean, label=method)
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("training step")
    ax.set_ylabel("code MCC (test)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{title}: MCC vs training steps" if title else "MCC vs training steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, Path(path))
