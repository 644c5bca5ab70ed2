"""The whole experiment on one model and task: prompts, reference, baselines, the method over seeds,
and a sensitivity study.

:func:`run_task` returns one JSON-ready dict (see ``docs/circuits.md`` for its fields);
:func:`sensitivity` sweeps the number of coder training prompts, the number of scored prompts and
the sparsity (``k`` for topk, ``l1`` for relu) against a fixed reference.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sparsecodes.circuits.ablation import (
    attribution_patching,
    cached_mean_ablation,
    reference_circuit,
    report,
)
from sparsecodes.circuits.heads import HeadRun, collect_heads, head_dict, keep_solved
from sparsecodes.circuits.metrics import evaluate, select_circuit
from sparsecodes.circuits.scores import HeadScores, score_heads
from sparsecodes.circuits.tasks import make_task
from sparsecodes.models import ModelAdapter
from sparsecodes.seeding import derive_seed

Head = tuple[int, int]


def summarise(values: list[float]) -> dict[str, float]:
    """Mean, sample std, min and max (std 0 for one value)."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def random_scores(heads: list[Head], seed: int) -> dict[Head, float]:
    """The random baseline: i.i.d. uniform scores."""
    rng = random.Random(derive_seed(seed, "circuit-random"))
    return {h: rng.random() for h in heads}


def prepare(
    adapter: ModelAdapter,
    task: str,
    *,
    n_pairs: int = 24,
    prompt_seed: int = 0,
    keep_rule: str = "logit_diff",
) -> tuple[HeadRun, list[int], list[int], float]:
    """Generate ``n_pairs`` pairs, run the model once, keep solved positives and their negatives."""
    prompts = make_task(task, adapter.tokenizer, n_pairs, seed=prompt_seed)
    run = collect_heads(adapter, prompts)
    pos, neg, frac = keep_solved(run, rule=keep_rule)
    return run, pos, neg, frac


VIEWS = ("last", "mean", "positions")


def method_scores(
    run: HeadRun,
    pos: list[int],
    neg: list[int],
    *,
    view: str = "last",
    seed: int = 0,
    **kwargs: Any,
) -> HeadScores:
    """:func:`score_heads` on the ``view`` of the kept prompts.

    ``last`` / ``mean``: one code per head and prompt. ``positions``: one code per head, prompt and
    each of the last ``P`` positions (:attr:`HeadRun.tail`); every (head, position) is scored as a
    unit and a head's node score is the sum over its positions. Positions before the token where a
    pair differs give identical codes on both prompts, so they add nothing. No edges in this view.
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    if view != "positions":
        v = run.last if view == "last" else run.mean
        return score_heads(head_dict(v, pos), head_dict(v, neg), seed=seed, **kwargs)
    if run.tail is None:
        raise ValueError("this HeadRun has no per-position outputs; collect it with collect_heads")
    tail = run.tail  # [n, P, L, H, d]
    n_pos = tail.shape[1]

    def units(idx: list[int]) -> dict[tuple[int, int, int], Any]:
        sub = tail[idx]
        return {
            (l, h, j): sub[:, j, l, h]
            for l in range(sub.shape[2])
            for h in range(sub.shape[3])
            for j in range(n_pos)
        }

    sc = score_heads(units(pos), units(neg), seed=seed, **{**kwargs, "edges": False})
    sums: dict[str, dict[Head, float]] = {}
    for name, scores in sc.node_variants.items():
        agg: dict[Head, float] = {}
        for (l, h, _j), v in scores.items():
            agg[(l, h)] = agg.get((l, h), 0.0) + v
        sums[name] = agg
    node = sums[sc.meta["node_score"]]
    meta = {**sc.meta, "view": "positions", "n_positions": n_pos}
    return HeadScores(node, {}, sums, {}, sorted(node), meta)


def output_variance(run: HeadRun, idx: list[int], view: str = "last") -> dict[Head, float]:
    """Label-free baseline: each head's mean squared deviation from its mean output over the
    prompts ``idx`` (the quantity a mean ablation removes, before the model weighs it)."""
    if view == "positions" and run.tail is not None:
        v = run.tail[idx].float()  # [n, P, L, H, d]: summed over positions
        var = (v - v.mean(0)).pow(2).sum(-1).mean(0).sum(0)  # [L, H]
    else:
        v = (run.last if view == "last" else run.mean)[idx].float()  # [n, L, H, d]
        var = (v - v.mean(0)).pow(2).sum(-1).mean(0)  # [L, H]
    return {(l, h): float(var[l, h]) for l in range(var.shape[0]) for h in range(var.shape[1])}


def run_task(
    adapter: ModelAdapter,
    task: str,
    *,
    n_pairs: int = 24,
    seeds: int = 10,
    view: str = "last",
    ref_frac: float = 0.05,
    threshold_rule: str = "zscore",
    cache_dir: str | Path | None = None,
    reference: bool = True,
    progress: Callable[[str], None] | None = None,
    **method_kwargs: Any,
) -> dict[str, Any]:
    """Reference, attribution patching, random baseline and the method over ``seeds`` seeds.

    ``method_kwargs`` go to :func:`score_heads` (``encoder``, ``n_train_prompts``, ``n_latents``,
    ``node_score``, ``n_coders``, ``k``, ...). Every method is scored against the same
    mean-ablation reference with the same threshold rule (chosen from each method's own scores).
    ``reference=False`` skips the mean ablation (minutes) and every metric that needs it: the
    result then holds the scores, the found circuit and the timings only (``"reference": None``).
    ``progress(message)`` receives a line per ablated layer and per seed (else they are logged at
    DEBUG level).
    """
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    node_score = method_kwargs.get("node_score", "raw")
    run, pos, neg, frac = prepare(adapter, task, n_pairs=n_pairs)
    heads = [(l, h) for l in range(adapter.n_layers) for h in range(adapter.n_heads)]
    abl = (
        cached_mean_ablation(adapter, run, pos, cache_dir, progress=progress) if reference else None
    )
    ref = reference_circuit(abl["effect"], abl["clean_ld"], ref_frac) if abl else set()
    attr = attribution_patching(adapter, run, pos)
    attr_abs = {h: abs(e) for h, e in attr["effect"].items()}
    variance = output_variance(run, pos + neg, view)
    rule = {"rule": threshold_rule}

    per_seed: list[dict[str, Any]] = []
    all_scores: list[HeadScores] = []
    for s in range(seeds):
        sc = method_scores(run, pos, neg, view=view, seed=s, **method_kwargs)
        all_scores.append(sc)
        row: dict[str, Any] = {
            "seed": s,
            "time_s": sc.meta["time_s"],
            "n_codes": sc.meta["n_codes"],
        }
        if abl:
            for name, variant in sc.node_variants.items():
                row[name] = evaluate(variant, ref, **rule)
            row["random"] = evaluate(random_scores(heads, s), ref, **rule)
        per_seed.append(row)
        auc = f"roc_auc {node_score} {row[node_score]['roc_auc']:.3f}" if abl else "scored"
        report(progress, f"  seed {s}: {auc} ({row['time_s']:.2f} s)")
    variants = list(all_scores[0].node_variants)
    mean_scores = {
        v: {h: statistics.fmean(sc.node_variants[v][h] for sc in all_scores) for h in heads}
        for v in variants
    }
    method_time = summarise([r["time_s"] for r in per_seed])
    total_method = method_time["mean"] + run.time_s
    top_edges = sorted(all_scores[0].edge.items(), key=lambda kv: -kv[1])[:20]
    seed_mean = mean_scores[node_score]
    times: dict[str, Any] = {
        "forward_heads_and_logits": run.time_s,
        "codes_per_seed": method_time,
        "codes_total_with_forward": total_method,
        "attribution_patching": attr["time_s"],
    }
    methods: dict[str, Any] = {}
    ref_block: dict[str, Any] | None = None
    if abl:
        keys = ("roc_auc", "pr_auc", "precision", "recall", "f1")
        methods = {
            **{f"codes_{v}": {k: summarise([r[v][k] for r in per_seed]) for k in keys}
               for v in variants},
            **{f"codes_{v}_seed_mean": evaluate(mean_scores[v], ref, **rule) for v in variants},
            "attribution_patching": evaluate(attr_abs, ref, **rule),
            "output_variance": evaluate(variance, ref, **rule),
            "random": {k: summarise([r["random"][k] for r in per_seed]) for k in keys},
            "ablation_self": evaluate({h: abs(e) for h, e in abl["effect"].items()}, ref, **rule),
        }  # fmt: skip
        ref_block = {
            "rule": f"|mean-ablation effect| >= {ref_frac} * |clean mean logit diff|",
            "heads": sorted(ref),
            "n_heads": len(ref),
            "effect": {f"{l},{h}": e for (l, h), e in abl["effect"].items()},
            "time_s": abl["time_s"],
            "cached": abl.get("cached", False),
        }
        times["mean_ablation_reference"] = abl["time_s"]
        times["speedup_vs_ablation"] = abl["time_s"] / total_method
    return {
        "task": task,
        "model": adapter.name,
        "layout": {
            "n_layers": adapter.n_layers,
            "n_heads": adapter.n_heads,
            "d_head": adapter.d_head,
        },
        "config": {
            "n_pairs": n_pairs,
            "seeds": seeds,
            "view": view,
            "ref_frac": ref_frac,
            "threshold_rule": threshold_rule,
            "keep_rule": "logit_diff > 0",
            "method": {**all_scores[0].meta, "seed": f"0..{seeds - 1}"},
        },
        "prompts": {
            "n_positive": sum(p.positive for p in run.prompts),
            "n_kept_positive": len(pos),
            "n_kept_negative": len(neg),
            "kept_fraction": frac,
            "clean_logit_diff": abl["clean_ld"] if abl else float(run.logit_diff[pos].mean()),
            "negative_logit_diff": float(run.logit_diff[neg].mean()),
            "example_positive": run.prompts[pos[0]].text,
            "example_negative": run.prompts[neg[0]].text,
        },
        "reference": ref_block,
        "methods": methods,
        "time_s": times,
        "per_seed": per_seed,
        "scores": {
            "codes_seed_mean": {f"{l},{h}": v for (l, h), v in seed_mean.items()},
            "attribution_patching": {f"{l},{h}": v for (l, h), v in attr["effect"].items()},
            "output_variance": {f"{l},{h}": v for (l, h), v in variance.items()},
        },
        "node_score": node_score,
        "found_circuit": sorted(select_circuit(seed_mean, rule=threshold_rule)),
        "top_edges_seed0": [[list(a), list(b), v] for (a, b), v in top_edges],
    }


def sensitivity(
    adapter: ModelAdapter,
    task: str,
    *,
    n_pairs: int = 24,
    seeds: int = 5,
    view: str = "last",
    ref_frac: float = 0.05,
    cache_dir: str | Path | None = None,
    train_prompts: tuple[int, ...] = (2, 4, 8, 16),
    score_prompts: tuple[int, ...] = (4, 8, 12, 16, 24),
    ks: tuple[int, ...] = (1, 2, 4, 8, 16),
    l1s: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
    **method_kwargs: Any,
) -> list[dict[str, Any]]:
    """Node ROC AUC vs one factor at a time, the others at their defaults.

    Factors: ``n_train_prompts`` (coder training prompts), ``n_score_prompts`` (scored prompts per
    class); values above what the kept prompts allow are skipped, ``k`` of the TopK coder, and the L1 penalty
    ``l1`` of a ReLU coder (the sparsity penalty of the published method). Every row holds the
    AUC of every node-score variant over ``seeds`` seeds.
    """
    t0 = time.perf_counter()
    run, pos, neg, _ = prepare(adapter, task, n_pairs=n_pairs)
    abl = cached_mean_ablation(adapter, run, pos, cache_dir)
    ref = reference_circuit(abl["effect"], abl["clean_ld"], ref_frac)
    n_avail = min(len(pos), len(neg))
    grid: list[tuple[str, Any, dict[str, Any]]] = []
    grid += [
        ("n_train_prompts", n, {"n_train_prompts": n}) for n in train_prompts if n <= 2 * n_avail
    ]
    grid += [("n_score_prompts", n, {"n_score_prompts": n}) for n in score_prompts if n <= n_avail]
    grid += [("k", k, {"encoder": "topk", "k": k}) for k in ks]
    grid += [("l1", v, {"encoder": "relu", "l1": v}) for v in l1s]
    rows: list[dict[str, Any]] = []
    for factor, value, kw in grid:
        per: dict[str, list[float]] = {}
        n_codes: list[float] = []
        for s in range(seeds):
            args = {**method_kwargs, **kw, "edges": False}
            sc = method_scores(run, pos, neg, view=view, seed=s, **args)
            n_codes.append(statistics.fmean(sc.meta["n_codes"]))
            for name, variant in sc.node_variants.items():
                per.setdefault(name, []).append(evaluate(variant, ref)["roc_auc"])
        rows.append(
            {
                "factor": factor,
                "value": value,
                "roc_auc": {k: summarise(v) for k, v in per.items()},
                "n_codes": statistics.fmean(n_codes),
            }
        )
    rows.append({"factor": "_time_s", "value": time.perf_counter() - t0})
    return rows
