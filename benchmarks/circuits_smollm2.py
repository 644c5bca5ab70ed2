"""Circuit discovery on the embedded SmolLM2-135M: the discrete-code method in several declared
configurations side by side with attribution patching, a random baseline and the mean-ablation
reference, on IOI, greater-than and docstring.

Run: ``python benchmarks/circuits_smollm2.py [--seeds 10] [--cache-dir DIR]``; writes
``benchmarks/results/circuits_smollm2.json`` (one ``run_task`` result per task and configuration,
without the per-head score dumps) and prints a summary table. Every configuration is listed here
before any run (except ``last-argmax-relu`` and ``positions-argmax``, added afterwards: see the
comments); none is chosen by its AUC. One torch thread for every method, so wall times compare.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from sparsecodes.circuits.study import run_task
from sparsecodes.models import load_model

TASKS = {"ioi": 24, "greater-than": 16, "docstring": 16}
CONFIGS: dict[str, dict] = {
    # the published setting: final position, argmax code, one coder; every node-score variant
    # (raw = published, calibrated, coverage, label-free diversity) is reported for each
    "last-argmax": {"view": "last", "mode": "argmax"},
    "last-magnitude": {"view": "last", "mode": "magnitude"},
    "mean-set": {"view": "mean", "mode": "set"},
    "last-argmax-5coders": {"view": "last", "mode": "argmax", "n_coders": 5},
    # added after the sensitivity study (post hoc, so not a held-out result): the published
    # method's coder type, a ReLU SAE with an L1 penalty (fit_head_coder's default l1 = 1e-2)
    "last-argmax-relu": {"view": "last", "mode": "argmax", "encoder": "relu"},
    # added after all runs above (post hoc): codes at each of the last 16 positions, summed per
    # head, for heads that act before the final position (the blind spot in docs/groundtruth.md)
    "positions-argmax": {"view": "positions", "mode": "argmax"},
}
VARIANTS = ("raw", "coverage", "calibrated", "diversity")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--cache-dir", default="runs/circuit-cache")
    ap.add_argument("--out", default="benchmarks/results/circuits_smollm2.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    lm = load_model("smollm2-135m")
    out = Path(args.out)
    res = json.loads(out.read_text()) if out.exists() else {}
    res["env"] = {"torch": torch.__version__, "python": platform.python_version(), "threads": 1}
    res.setdefault("runs", {})
    for task in args.tasks.split(","):
        for name in args.configs.split(","):
            t0 = time.perf_counter()
            r = run_task(
                lm, task, n_pairs=TASKS[task], seeds=args.seeds, cache_dir=args.cache_dir,
                **CONFIGS[name],
            )  # fmt: skip
            r.pop("scores")
            r["reference"].pop("effect")
            r["wall_s"] = time.perf_counter() - t0
            res["runs"][f"{task}/{name}"] = r
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(res, indent=1, default=str))
            m = r["methods"]
            cells = " ".join(
                f"{v} {m[f'codes_{v}']['roc_auc']['mean']:.3f}±{m[f'codes_{v}']['roc_auc']['std']:.3f}"
                for v in VARIANTS
            )
            print(
                f"{task:13s} {name:20s} {cells} | attr {m['attribution_patching']['roc_auc']:.3f}"
                f" var {m['output_variance']['roc_auc']:.3f}"
                f" | codes/seed {r['time_s']['codes_per_seed']['mean']:.2f}s"
                f" fwd {r['time_s']['forward_heads_and_logits']:.2f}s"
                f" ablation {r['time_s']['mean_ablation_reference']:.0f}s",
                flush=True,
            )


if __name__ == "__main__":
    main()
