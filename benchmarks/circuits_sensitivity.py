"""How the discrete-code method's node ROC AUC depends on the number of coder training prompts,
the number of scored prompts, TopK's k and a ReLU coder's L1 penalty (one factor at a time, the
others at their defaults), on the embedded SmolLM2-135M, against the cached mean-ablation
reference.

Run: ``python benchmarks/circuits_sensitivity.py [--seeds 5]``; writes
``benchmarks/results/circuits_sensitivity.json`` and ``docs/figures/circuits_sensitivity_{raw,calibrated}.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sparsecodes.circuits.report import plot_sensitivity
from sparsecodes.circuits.study import sensitivity
from sparsecodes.models import load_model

TASKS = {"ioi": 24, "greater-than": 16, "docstring": 16}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--cache-dir", default="runs/circuit-cache")
    ap.add_argument("--out", default="benchmarks/results/circuits_sensitivity.json")
    ap.add_argument("--png", default="docs/figures/circuits_sensitivity.png")
    args = ap.parse_args()
    torch.set_num_threads(1)
    lm = load_model("smollm2-135m")
    res: dict[str, list] = {}
    for task in args.tasks.split(","):
        res[task] = sensitivity(
            lm, task, n_pairs=TASKS[task], seeds=args.seeds, cache_dir=args.cache_dir
        )
        Path(args.out).write_text(json.dumps(res, indent=1))
        print(task, f"{res[task][-1]['value']:.0f} s", flush=True)
    for variant in ("calibrated", "raw"):
        png = Path(args.png)
        plot_sensitivity(res, png.with_name(f"{png.stem}_{variant}{png.suffix}"), variant)


if __name__ == "__main__":
    main()
