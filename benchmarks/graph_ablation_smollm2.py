"""Graph validation on SmolLM2-135M: does ablating a graph's top features do what it predicts?

Transcoders come from one of two places:

- ``--transcoders DIR``: trained ones (``sparsecodes train --transcoder`` run directories, one per
  MLP, or anything ``sparsecodes.graphs.io.open_transcoders`` reads), e.g. all 30 MLPs;
- otherwise TopK skip transcoders for ``--layers`` fitted here by least squares
  (``sparsecodes.graphs.fit_transcoder``; no gradient training: large error nodes) on embedded
  text plus IOI prompts of one seed.

For held-out prompts of each ``--tasks`` task (IOI: correct name minus wrong name; greater-than:
the model's top later tens digit minus its top earlier one; prompts of another seed) it builds the
attribution graph, ablates its top-``k`` features by influence and ``--n-random`` draws of ``k``
random active features (``sparsecodes.graphs.ablation_check``), and records for each set the
graph's prediction (direct and total), the frozen replacement model's change, the replacement
model run for real (error terms held, transcoder features recomputed, attention and norms
recomputed), the real model's change, and the real model's change with attention patterns
and/or norm scales held (which locate the gap; None where held norm scales made the pass
overflow), and the real model's first-order prediction (``sparsecodes.graphs.first_order_change``:
the derivative of the target along the ablation through the real model, with everything
recomputed and with attention and norms held). ``--max-feature-nodes N`` caps each graph (incoming edges for the N features of
largest estimated influence; sets are drawn from those). Per prompt it records the graph's size,
attribution and pruning time. ``--time-caps 1024,4096,all`` then times attribution and pruning
of the first prompt at each cap and compares each capped graph's top features with the full
graph's. Each set is judged against the tolerance fixed before the run
(``within_tolerance``): the real change has the predicted sign and
``|real - predicted| <= tol * |predicted| + floor * |target value|``, with ``tol`` the square
root of the transcoders' mean held-out FVU of the MLP output (the share of each MLP's output the
graph holds frozen as error, in norm) and ``floor`` = 2% of the logit difference explained.
``within_tolerance_of_first_order`` applies the same rule with the real model's first-order
prediction in place of the graph's: whether any linear prediction could meet it.

Run: ``python benchmarks/graph_ablation_smollm2.py [--transcoders DIR | --layers 0,5,10] [--k 5,20]
[--tasks ioi,greater-than] [--max-feature-nodes 4096] [--time-caps 1024,4096,all]``; writes ``benchmarks/results/graph_ablation_smollm2.json`` (``--out``).
One torch thread unless ``--threads``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from graphs_smollm2 import collect
from sparsecodes.circuits.metrics import roc_auc
from sparsecodes.circuits.tasks import greater_than, ioi
from sparsecodes.data.corpus import embedded_texts
from sparsecodes.files import write_json
from sparsecodes.graphs import (
    ReplacementModel,
    ablation_check,
    attribute,
    fit_transcoder,
    graph_scores,
    head_scores,
    predicted_change,
    prune,
    target_head_scores,
    top_features,
)
from sparsecodes.graphs.io import open_transcoders
from sparsecodes.metrics import fvu
from sparsecodes.models import load_model

OUT = Path(__file__).parent / "results" / "graph_ablation_smollm2.json"
CIRCUITS = Path(__file__).parent / "results" / "circuits_smollm2.json"
FLOOR = 0.02  # of |target value|: changes below this are not judged for their size


def within(row: dict, tol: float, floor: float, predicted: str = "predicted") -> bool:
    """The tolerance: the predicted sign (when the prediction exceeds the floor) and
    ``|real - predicted| <= tol * |predicted| + floor``; ``predicted`` names the column taken
    as the prediction (the graph's, or the real model's first order)."""
    pred, real = row[predicted], row["real"]
    sign_ok = abs(pred) <= floor or math.copysign(1, pred) == math.copysign(1, real)
    return sign_ok and abs(real - pred) <= tol * abs(pred) + floor


def gap_parts(rows: list[dict]) -> dict:
    """Median |difference| between the stages prediction -> real model with attention and norms
    held -> real, and the real model with only patterns or only norms held."""

    def med(a: str, b: str) -> float | None:
        v = [abs(r[a] - r[b]) for r in rows if r.get(a) is not None and r.get(b) is not None]
        return statistics.median(v) if v else None

    return {
        "median_abs_real_minus_predicted": med("real", "predicted"),
        "median_abs_frozen_attention_minus_predicted": med("real_frozen_attention", "predicted"),
        "median_abs_real_minus_frozen_attention": med("real", "real_frozen_attention"),
        "median_abs_real_minus_frozen_patterns": med("real", "real_frozen_patterns"),
        "median_abs_real_minus_frozen_norms": med("real", "real_frozen_norms"),
        "median_abs_replacement_minus_predicted": med("replacement", "predicted"),
        "median_abs_real_minus_replacement": med("real", "replacement"),
        "median_abs_real_minus_first_order": med("real", "real_first_order"),
        "median_abs_first_order_frozen_minus_predicted": med(
            "real_first_order_frozen", "predicted"
        ),
        "median_abs_first_order_minus_first_order_frozen": med(
            "real_first_order", "real_first_order_frozen"
        ),
        "n_diverged_frozen_norms": sum("real_frozen_norms" in r.get("diverged", []) for r in rows),
    }


def summary(rows: list[dict]) -> dict:
    """Agreement of real and predicted changes over a list of ablation results."""
    pred = torch.tensor([r["predicted"] for r in rows])
    real = torch.tensor([r["real"] for r in rows])
    direct = torch.tensor([r["predicted_direct"] for r in rows])
    frozen = torch.tensor([r["frozen"] for r in rows])
    big = pred.abs() > 0.05  # sign agreement only where the prediction is not ~0
    corr = float(torch.corrcoef(torch.stack([pred, real]))[0, 1]) if len(rows) > 2 else None
    return {
        "n": len(rows),
        "mean_abs_predicted": float(pred.abs().mean()),
        "mean_abs_real": float(real.abs().mean()),
        "mean_abs_direct": float(direct.abs().mean()),
        "sign_agreement": float((pred[big].sign() == real[big].sign()).float().mean())
        if bool(big.any())
        else None,
        "n_sign_checked": int(big.sum()),
        "median_relative_error": statistics.median(r["relative_error"] for r in rows),
        "median_abs_error": float((real - pred).abs().median()),
        "real_over_predicted_median": statistics.median(
            float(r / p) for r, p in zip(real, pred, strict=True) if abs(float(p)) > 0.05
        )
        if bool(big.any())
        else None,
        "correlation_predicted_real": corr,
        "max_abs_frozen_minus_predicted": float((frozen - pred).abs().max()),
        "replacement_sign_agreement": float(
            (pred[big].sign() == torch.tensor([r["replacement"] for r in rows])[big].sign())
            .float()
            .mean()
        )
        if bool(big.any())
        else None,
    }


def graph_size(graph, pr) -> dict:
    """Nodes and nonzero edges of a graph, and of its pruned graph."""
    return {
        "n_nodes": graph.n_nodes,
        "n_edges": int((graph.adjacency != 0).sum()),
        "n_nodes_kept": int(pr.node_mask.sum()),
        "n_features_kept": int(pr.node_mask[: graph.n_features].sum()),
        "n_edges_kept": int(pr.edge_mask.sum()),
    }


def time_caps(rm, lm, text, tid, cid, caps: str, batch_size: int, ks: list[int]):
    """Attribution and pruning time, size, scores and top-k features (``(layer, position,
    latent)``, by influence) of one prompt's graph at each cap; returns the rows and the full
    graph (None unless ``all`` is among the caps)."""
    run = rm.run(lm.encode(text)[0][0])
    out, full = [], None
    for c in caps.split(","):
        cap = None if c == "all" else int(c)
        load = list(os.getloadavg())
        g = attribute(rm, run, tid, cid, batch_size=batch_size, max_feature_nodes=cap)
        pr = prune(g)
        sc = graph_scores(g)
        tops = {k: top_features(g, k) for k in ks}
        out.append(
            {
                "max_feature_nodes": c,
                "n_features": g.n_features,
                "n_features_visited": g.n_features if g.visited is None else int(g.visited.sum()),
                **graph_size(g, pr),
                "attribution_seconds": round(g.seconds, 2),
                "pruning_seconds": round(pr.seconds, 2),
                "replacement_score": sc.replacement,
                "completeness_score": sc.completeness,
                "load_average_before": load,
                "load_average_after": list(os.getloadavg()),
                "top": {str(k): g.features[t].tolist() for k, t in tops.items()},
                "predicted": {str(k): predicted_change(g, t)[0] for k, t in tops.items()},
            }
        )
        print("cap", c, out[-1]["attribution_seconds"], out[-1]["pruning_seconds"], flush=True)
        if cap is None:
            full = g
        del pr, g
    return out, full


def compare_with_full(rows: list[dict], full, ks: list[int]) -> None:
    """Add to each row the share of its top-k features that are the full graph's top-k, and the
    full graph's prediction for ablating its top-k set."""
    index = {tuple(f): i for i, f in enumerate(full.features.tolist())}
    for row in rows:
        for k in ks:
            ref = {tuple(f) for f in full.features[top_features(full, k)].tolist()}
            mine = [tuple(f) for f in row["top"][str(k)]]
            row.setdefault("top_overlap_with_full", {})[str(k)] = len(set(mine) & ref) / k
            nodes = torch.tensor([index[f] for f in mine])
            row.setdefault("full_graph_predicted_for_these", {})[str(k)] = predicted_change(
                full, nodes
            )[0]


def held_out(lm, task: str, n: int, avoid: set[str]) -> list[tuple[str, int, int]]:
    """``(prompt, target id, contrast id)`` for ``n`` held-out positive prompts of ``task``."""
    if task == "ioi":
        ps = [p for p in ioi(lm.tokenizer, 4 * n, seed=1) if p.positive and p.text not in avoid]
        return [(p.text, p.correct[0], p.wrong[0]) for p in ps[:n]]
    if task == "greater-than":
        ps = [p for p in greater_than(lm.tokenizer, 4 * n, seed=1) if p.positive]
        out = []
        for p in ps[:n]:  # the model's top later tens digit minus its top earlier one
            last = lm.logits(lm.encode(p.text)[0])[0, -1]
            out.append(
                (
                    p.text,
                    max(p.correct, key=lambda i: float(last[i])),
                    max(p.wrong, key=lambda i: float(last[i])),
                )
            )
        return out
    raise SystemExit(f"--tasks: unknown task {task!r}; use ioi and/or greater-than")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--transcoders",
        type=Path,
        default=None,
        help="directory of trained transcoders (one per MLP); default: fit by least squares",
    )
    ap.add_argument(
        "--layers",
        default=None,
        help="MLPs with a transcoder, e.g. 0,5,10 or all [least squares: 0,5,10,15,20,25; "
        "--transcoders: every one found]",
    )
    ap.add_argument("--n-latents", type=int, default=512, help="least-squares mode only")
    ap.add_argument("--k-active", type=int, default=8, help="TopK (least-squares mode only)")
    ap.add_argument("--k", default="5,20", help="numbers of features ablated")
    ap.add_argument("--n-random", type=int, default=4)
    ap.add_argument(
        "--max-feature-nodes",
        type=int,
        default=None,
        help="cap each graph's feature rows (attribute(max_feature_nodes=)) [default: all]",
    )
    ap.add_argument(
        "--time-caps",
        default="",
        help="e.g. 1024,4096,all: time attribution and pruning of the first prompt at each cap",
    )
    ap.add_argument("--fit-texts", type=int, default=24)
    ap.add_argument("--fit-ioi", type=int, default=24)
    ap.add_argument("--fvu-texts", type=int, default=8, help="held-out texts for the FVU")
    ap.add_argument("--tasks", default="ioi", help="comma-separated: ioi, greater-than")
    ap.add_argument("--prompts", type=int, default=6, help="held-out prompts per task")
    ap.add_argument("--ctx", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    lm = load_model("smollm2-135m", device="cpu")
    ks = [int(s) for s in a.k.split(",")]
    tasks = a.tasks.split(",")
    all_texts = [t for t in embedded_texts(400_000) if len(t) > 200]
    texts = all_texts[: a.fit_texts]
    fvu_texts = all_texts[a.fit_texts : a.fit_texts + a.fvu_texts]
    fit_ioi = [p.text for p in ioi(lm.tokenizer, a.fit_ioi, seed=0)]
    rm0 = ReplacementModel(lm, [])
    t0 = time.perf_counter()
    if a.transcoders is not None:
        _, tcs = open_transcoders([a.transcoders], model="smollm2-135m")
        if a.layers not in (None, "all"):
            keep = {int(s) for s in a.layers.split(",")}
            tcs = [tc for tc in tcs if int(tc.in_hook.split(".")[1]) in keep]
        src = {
            "from": str(a.transcoders),
            "fit": "trained (sparsecodes train --transcoder / training.jobs.train_coders)",
            "n_latents": sorted({int(tc.W_dec_out.shape[0]) for tc in tcs}),
            "architecture": sorted({type(tc).__name__ for tc in tcs}),
        }
    else:
        layers = (
            list(range(lm.n_layers))
            if a.layers == "all"
            else [int(s) for s in (a.layers or "0,5,10,15,20,25").split(",")]
        )
        x, y = collect(rm0, lm, texts + fit_ioi, a.ctx)
        tcs = [
            fit_transcoder(x[i], y[i], i, a.n_latents, k=a.k_active, seed=i, ridge=0.1)
            for i in layers
        ]
        src = {
            "fit": "least squares (fit_transcoder), not gradient-trained",
            "n_latents": a.n_latents,
            "k": a.k_active,
            "fit_texts": len(texts),
            "fit_ioi_prompts": len(fit_ioi),
            "fit_tokens": int(x.shape[1]),
        }
        del x, y
    setup_seconds = time.perf_counter() - t0
    rm = ReplacementModel(lm, tcs)
    layers = sorted(rm.transcoders)
    # the tolerance, fixed before any ablation: sqrt of the mean held-out FVU of the MLP outputs
    xh, yh = collect(rm0, lm, fvu_texts, a.ctx)
    fvus = {}
    for layer, tc in rm.transcoders.items():
        pred = rm.transcoder_output(layer, tc.activate(tc.encode_pre(xh[layer])), xh[layer])
        fvus[layer] = fvu(yh[layer], pred)
    del xh, yh
    # an MLP without a transcoder is all error (FVU 1)
    mean_fvu = statistics.mean(fvus.get(i, 1.0) for i in range(lm.n_layers))
    tol = math.sqrt(mean_fvu)
    print(f"transcoders: layers {layers}; mean held-out FVU {mean_fvu:.3f}; tol {tol:.3f}")
    rows_by: dict[tuple[str, int], list[dict]] = {}
    per_prompt = []
    heads_kept = torch.zeros(lm.n_layers, lm.n_heads)
    heads_target = torch.zeros(lm.n_layers, lm.n_heads)
    extra: dict = {}

    def report() -> tuple[dict, dict]:
        """Write the results so far to ``--out`` (after every prompt: a cut run keeps them)."""
        summaries: dict[str, dict] = {}
        for (task, k), rows in rows_by.items():
            top = [r["top"] for r in rows]
            rnd = [x for r in rows for x in r["random"]]
            summaries.setdefault(task, {})[str(k)] = {
                "top": {
                    **summary(top),
                    **gap_parts(top),
                    "within_tolerance": sum(r["within_tolerance"] for r in top),
                    "within_tolerance_of_first_order": sum(
                        r["within_tolerance_of_first_order"] for r in top
                    ),
                },
                "random": {
                    **summary(rnd),
                    **gap_parts(rnd),
                    "within_tolerance": sum(r["within_tolerance"] for r in rnd),
                    "within_tolerance_of_first_order": sum(
                        r["within_tolerance_of_first_order"] for r in rnd
                    ),
                },
            }
        heads = {
            "scores": "graph-derived head scores (graphs.heads) over the IOI prompts, each prompt's "
            "normalised to sum 1"
        }
        if CIRCUITS.is_file() and "ioi" in tasks:  # the mean-ablation reference of `circuit` on IOI
            ref_run = json.loads(CIRCUITS.read_text())["runs"]["ioi/last-argmax"]
            ref = {tuple(h) for h in ref_run["reference"]["heads"]}
            for name, hsc in (("kept_nodes", heads_kept), ("target_only", heads_target)):
                scores = {
                    (i, j): float(hsc[i, j]) for i in range(lm.n_layers) for j in range(lm.n_heads)
                }
                top = sorted(scores, key=scores.get, reverse=True)[: len(ref)]
                heads[name] = {
                    "roc_auc": roc_auc(scores, ref),
                    "top_heads": [list(h) for h in top],
                    "top_in_reference": sum(h in ref for h in top),
                }
            heads["reference"] = {
                "rule": ref_run["reference"]["rule"],
                "heads": sorted(list(h) for h in ref),
                "from": "benchmarks/results/circuits_smollm2.json (ioi, 24 pairs, seed 0 prompts)",
            }
        result = {
            "model": "smollm2-135m",
            "tasks": {
                "ioi": "correct name minus wrong name, last position; held out: seed-1 prompts not "
                "among the seed-0 fitting prompts",
                "greater-than": "the model's top later tens digit minus its top earlier one; seed 1",
            },
            "transcoders": {
                "layers": layers,
                **src,
                "setup_seconds": round(setup_seconds, 1),
                "other_layers": "no transcoder: their MLP outputs are error nodes",
                "held_out_fvu": {str(k): round(v, 4) for k, v in sorted(fvus.items())},
                "fvu_texts": len(fvu_texts),
            },
            "tolerance": {
                "rule": "the real change has the predicted sign (when |predicted| > floor) and "
                "|real - predicted| <= tol * |predicted| + floor",
                "tol": tol,
                "tol_from": "sqrt(mean held-out FVU of the MLP outputs over all layers, 1 for an MLP "
                "without a transcoder): the share, in norm, of each MLP's output the graph holds "
                "frozen as error",
                "floor": f"{FLOOR} * |target value| of the prompt",
                "fixed": "before the run, from the transcoders alone",
            },
            "prompts_per_task": a.prompts,
            "ks": ks,
            "n_random": a.n_random,
            "summary": summaries,
            "heads": heads,
            "max_feature_nodes": a.max_feature_nodes,
            "prompts": per_prompt,
            **extra,
            "wall_seconds": round(time.perf_counter() - t_start, 1),
            "machine": f"{platform.processor() or platform.machine()}, {a.threads} torch thread(s), "
            "the load average at the end is recorded beside it",
            "load_average_at_end": list(os.getloadavg()),
        }
        write_json(a.out, result)
        return summaries, heads

    for task in tasks:
        for n, (text, tid, cid) in enumerate(held_out(lm, task, a.prompts, set(fit_ioi))):
            run = rm.run(lm.encode(text)[0][0])
            load_before = list(os.getloadavg())
            graph = attribute(
                rm, run, tid, cid, batch_size=a.batch_size, max_feature_nodes=a.max_feature_nodes
            )
            sc = graph_scores(graph)
            pr = prune(graph)
            entry = {
                "task": task,
                "prompt": text,
                "target": lm.tokenizer.decode([tid]),
                "contrast": lm.tokenizer.decode([cid]),
                "target_value": float(graph.node_input[-1]),
                "n_features": graph.n_features,
                "n_features_visited": graph.n_features
                if graph.visited is None
                else int(graph.visited.sum()),
                **graph_size(graph, pr),
                "attribution_seconds": round(graph.seconds, 2),
                "pruning_seconds": round(pr.seconds, 2),
                "load_average_before": load_before,
                "replacement_score": sc.replacement,
                "completeness_score": sc.completeness,
                "by_k": {},
            }
            if task == "ioi":
                hs = head_scores(rm, run, graph, pr)
                heads_kept += hs / hs.sum()
                ht = target_head_scores(rm, run, graph)
                heads_target += ht / ht.sum()
            floor = FLOOR * abs(entry["target_value"])
            for k in ks:
                t1 = time.perf_counter()
                chk = ablation_check(
                    lm,
                    tcs,
                    text,
                    tid,
                    cid,
                    k=k,
                    n_random=a.n_random,
                    seed=n,
                    graph=graph,
                    partly_frozen=True,
                    first_order=True,
                ).to_json()
                for r in [chk["top"], *chk["random"]]:
                    r["within_tolerance"] = within(r, tol, floor)
                    # the same rule with the real model's linearisation as the prediction
                    r["within_tolerance_of_first_order"] = within(r, tol, floor, "real_first_order")
                    r["floor"] = floor
                chk["seconds"] = round(time.perf_counter() - t1, 2)
                entry["by_k"][str(k)] = chk
                rows_by.setdefault((task, k), []).append(chk)
            per_prompt.append(entry)
            print(
                task,
                n,
                f"{entry['target_value']:.3f}",
                graph.n_features,
                f"{graph.seconds:.1f}s",
                f"repl {sc.replacement:.3f} compl {sc.completeness:.3f}",
                flush=True,
            )
            del graph, run, pr
            report()
    if a.time_caps:
        text, tid, cid = held_out(lm, tasks[0], 1, set(fit_ioi))[0]
        rows, full = time_caps(rm, lm, text, tid, cid, a.time_caps, a.batch_size, ks)
        first = per_prompt[0]  # the same prompt, at the main run's cap
        if a.max_feature_nodes is not None and first["prompt"] == text:
            keys = ("n_features", "n_features_visited", "n_nodes", "n_edges", "n_nodes_kept")
            keys += ("n_features_kept", "n_edges_kept", "attribution_seconds", "pruning_seconds")
            keys += ("replacement_score", "completeness_score", "load_average_before")
            rows.append(
                {
                    "max_feature_nodes": str(a.max_feature_nodes),
                    "from": "the main run's graph of this prompt (above)",
                    **{key: first[key] for key in keys},
                    "top": {str(k): first["by_k"][str(k)]["top"]["features"] for k in ks},
                    "predicted": {str(k): first["by_k"][str(k)]["top"]["predicted"] for k in ks},
                }
            )
        if full is not None:
            compare_with_full(rows, full, ks)
            del full
        extra["cap_cost"] = {"task": tasks[0], "prompt": text, "caps": rows}
    summaries, heads = report()
    print(json.dumps(summaries, indent=1))
    print(json.dumps({k: v for k, v in heads.items() if k != "reference"}))


if __name__ == "__main__":
    main()
