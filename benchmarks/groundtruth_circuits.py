"""Node ROC AUC of the discrete-code circuit method on models with circuits known exactly.

Run: ``python benchmarks/groundtruth_circuits.py [--seeds 10]``; writes
``benchmarks/results/groundtruth_circuits.json``. For each model and code mode (argmax,
magnitude): AUC of every node-score variant over seeds (prompt draw + coder init), the edge AUC
where the circuit has one known edge, the ground truth, and wall times (model build/training,
ablation, scoring).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from sparsecodes.circuits import roc_auc, score_heads
from sparsecodes.circuits.groundtruth import InductionConfig, handbuilt_task, induction_task
from sparsecodes.circuits.groundtruth.induction import induction_task_prompts
from sparsecodes.circuits.groundtruth.task import (
    GroundTruthTask,
    label_separation,
    task_activations,
)
from sparsecodes.circuits.groundtruth.tracr_models import tracr_available

MODES = ("argmax", "magnitude")


def _score(task_for_seed, seeds: list[int], view: str = "final", edge=None) -> dict:
    """AUC of every node-score variant for each code mode; ``edge``: the one true edge, if any."""
    rows = []
    for seed in seeds:
        t: GroundTruthTask = task_for_seed(seed)
        pos, neg = task_activations(t, view=view)
        row: dict = {
            "label_separation": {
                f"L{a}H{b}": round(v, 3) for (a, b), v in label_separation(pos, neg).items()
            }
        }
        for mode in MODES:
            s = score_heads(pos, neg, seed=seed, mode=mode, edges=edge is not None)
            row[mode] = {k: roc_auc(v, t.circuit) for k, v in s.node_variants.items()}
            row[mode]["score_time_s"] = s.meta["time_s"]
            if edge is not None:
                row[mode]["edge_calibrated"] = roc_auc(s.edge_variants["calibrated"], {edge})
                row[mode]["edge_raw"] = roc_auc(s.edge_variants["raw"], {edge})
            row[mode]["calibrated_scores"] = {
                f"L{a}H{b}": round(v, 3) for (a, b), v in s.node_variants["calibrated"].items()
            }
        rows.append(row)
    keys = [k for k in rows[0]["argmax"] if k != "calibrated_scores"]
    sep = {
        h: statistics.mean(r["label_separation"][h] for r in rows)
        for h in rows[0]["label_separation"]
    }
    summary = {
        mode: {
            k: {
                "mean": statistics.mean(r[mode][k] for r in rows),
                "std": statistics.pstdev(r[mode][k] for r in rows),
            }
            for k in keys
        }
        for mode in MODES
    }
    return {"view": view, "seeds": seeds, "summary": summary, "label_separation": sep,
            "per_seed": rows}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/results/groundtruth_circuits.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = list(range(args.seeds))
    res: dict = {
        "config": {"scorer": "score_heads defaults (topk k=4, 8 train prompts), modes " + str(MODES),
                   "n_pairs": 16, "torch": torch.__version__, "python": platform.python_version()},
        "models": {},
    }  # fmt: skip
    for variant in ("duplicate", "previous"):
        t0 = time.perf_counter()
        edge = ((0, 0), (1, 0)) if variant == "duplicate" else None
        r = _score(lambda s, v=variant: handbuilt_task(16, circuit=v, seed=s), seeds, edge=edge)
        r["circuit"] = sorted(f"L{a}H{b}" for a, b in handbuilt_task(2, circuit=variant).circuit)
        r["time_s"] = time.perf_counter() - t0
        res["models"][f"handbuilt-{variant}"] = r
        print(variant, json.dumps(r["summary"]), flush=True)
    cfg = InductionConfig(head_l1=0.01, steps=800)
    t0 = time.perf_counter()
    task, ab = induction_task(16, cfg=cfg)
    build = time.perf_counter() - t0

    def induction_for_seed(s: int) -> GroundTruthTask:
        t = induction_task_prompts(
            16, vocab_size=cfg.vocab_size, half=cfg.half, m=cfg.half // 2, seed=s
        )
        return GroundTruthTask("trained-induction", task.model, *t, circuit=ab.circuit)

    for view in ("final", "mean"):
        common = dict(
            circuit=sorted(f"L{a}H{b}" for a, b in ab.circuit),
            build_and_ablation_time_s=build,
            train=task.extra["train"],
            ablation_single=task.extra["ablation_single"],
            ablation_pairs={f"L{a[0]}H{a[1]}+L{b[0]}H{b[1]}": v for (a, b), v in ab.pairs.items()},
            ablation_threshold=ab.threshold,
        )
        if not ab.circuit:
            res["models"][f"trained-induction-{view}"] = {**common, "skipped": "empty circuit"}
            continue
        r = _score(induction_for_seed, seeds[:5], view)
        r.update(common)
        res["models"][f"trained-induction-{view}"] = r
        print("induction", view, json.dumps(r["summary"]), r["circuit"], flush=True)
    if tracr_available():
        from sparsecodes.circuits.groundtruth import tracr_models as tm

        t0 = time.perf_counter()
        progs = [
            tm.compile_program(n, {"a", "b", "c", "d", "x"}, 6)
            for n in ("hist", "frac_prevs", "reverse")
        ]
        comp = time.perf_counter() - t0
        r = _score(lambda s: tm.tracr_task(16, seed=s, programs=progs), seeds)
        t = tm.tracr_task(2, programs=progs)
        r.update(circuit=sorted(f"L{a}H{b}" for a, b in t.circuit), compile_time_s=comp,
                 empty_heads=[f"L{a}H{b}" for a, b in t.extra["empty_heads"]])  # fmt: skip
        res["models"]["tracr-hist-stack"] = r
        print("tracr", json.dumps(r["summary"]), flush=True)
    else:
        res["models"]["tracr-hist-stack"] = {"skipped": "tracr/jax/dm-haiku not installed"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
