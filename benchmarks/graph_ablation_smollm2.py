"""Graph validation on SmolLM2-135M: does ablating a graph's top features do what it predicts?

Fits TopK skip transcoders for a subset of MLPs by least squares
(``sparsecodes.graphs.fit_transcoder``; no gradient training, so NOT well-trained transcoders:
large error nodes) on embedded text plus IOI prompts of one seed, then for held-out IOI prompts
(another seed) builds the attribution graph of the correct name's logit minus the wrong one's,
ablates its top-``k`` features by influence and ``k`` random active features
(``sparsecodes.graphs.ablation_check``), and records for each set the graph's prediction
(direct and total), the frozen replacement model's change and the real model's change.

Run: ``python benchmarks/graph_ablation_smollm2.py [--layers 0,5,10,15,20,25] [--k 5,20]``;
writes ``benchmarks/results/graph_ablation_smollm2.json``. One torch thread unless ``--threads``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from graphs_smollm2 import collect
from sparsecodes.circuits.metrics import roc_auc
from sparsecodes.circuits.tasks import ioi
from sparsecodes.data.corpus import embedded_texts
from sparsecodes.files import write_json
from sparsecodes.graphs import (
    ReplacementModel,
    ablation_check,
    attribute,
    fit_transcoder,
    graph_scores,
    head_scores,
    prune,
    target_head_scores,
)
from sparsecodes.models import load_model

OUT = Path(__file__).parent / "results" / "graph_ablation_smollm2.json"
CIRCUITS = Path(__file__).parent / "results" / "circuits_smollm2.json"


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
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="0,5,10,15,20,25")
    ap.add_argument("--n-latents", type=int, default=512)
    ap.add_argument("--k-active", type=int, default=8, help="TopK of the transcoders")
    ap.add_argument("--k", default="5,20", help="numbers of features ablated")
    ap.add_argument("--n-random", type=int, default=5)
    ap.add_argument("--fit-texts", type=int, default=24)
    ap.add_argument("--fit-ioi", type=int, default=24)
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--ctx", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    lm = load_model("smollm2-135m", device="cpu")
    layers = (
        list(range(lm.n_layers)) if a.layers == "all" else [int(s) for s in a.layers.split(",")]
    )
    ks = [int(s) for s in a.k.split(",")]
    texts = [t for t in embedded_texts(400_000) if len(t) > 200][: a.fit_texts]
    fit_ioi = [p.text for p in ioi(lm.tokenizer, a.fit_ioi, seed=0)]
    # held out: positive prompts of another seed that are not among the fitting prompts
    held = [p for p in ioi(lm.tokenizer, 4 * a.prompts, seed=1) if p.positive]
    held = [p for p in held if p.text not in set(fit_ioi)][: a.prompts]
    rm0 = ReplacementModel(lm, [])
    t0 = time.perf_counter()
    x, y = collect(rm0, lm, texts + fit_ioi, a.ctx)
    tcs = [
        fit_transcoder(x[i], y[i], i, a.n_latents, k=a.k_active, seed=i, ridge=0.1) for i in layers
    ]
    fit_seconds = time.perf_counter() - t0
    logging_rows: list[dict] = []
    rm = ReplacementModel(lm, tcs)
    per_prompt = []
    heads_kept = torch.zeros(lm.n_layers, lm.n_heads)
    heads_target = torch.zeros(lm.n_layers, lm.n_heads)
    for n, p in enumerate(held):
        tid, cid = p.correct[0], p.wrong[0]
        run = rm.run(lm.encode(p.text)[0][0])
        graph = attribute(rm, run, tid, cid)
        sc = graph_scores(graph)
        hs = head_scores(rm, run, graph, prune(graph))
        heads_kept += hs / hs.sum()
        ht = target_head_scores(rm, run, graph)
        heads_target += ht / ht.sum()
        entry = {
            "prompt": p.text,
            "target": lm.tokenizer.decode([tid]),
            "contrast": lm.tokenizer.decode([cid]),
            "target_value": float(graph.node_input[-1]),
            "n_features": graph.n_features,
            "attribution_seconds": round(graph.seconds, 2),
            "replacement_score": sc.replacement,
            "completeness_score": sc.completeness,
            "by_k": {},
        }
        for k in ks:
            chk = ablation_check(
                lm, tcs, p.text, tid, cid, k=k, n_random=a.n_random, seed=n, graph=graph
            )
            entry["by_k"][str(k)] = chk.to_json()
            logging_rows.append({"k": k, **chk.to_json()})
        per_prompt.append(entry)
        print(
            n,
            entry["target_value"],
            {k: v["top"]["predicted"] for k, v in entry["by_k"].items()},
            {k: v["top"]["real"] for k, v in entry["by_k"].items()},
            flush=True,
        )
    summaries = {}
    for k in ks:
        rows = [r for r in logging_rows if r["k"] == k]
        summaries[str(k)] = {
            "top": summary([r["top"] for r in rows]),
            "random": summary([x for r in rows for x in r["random"]]),
        }
    heads = {
        "scores": "graph-derived head scores (graphs.heads), each prompt's normalised to sum 1"
    }
    if CIRCUITS.is_file():  # the mean-ablation reference of `sparsecodes circuit` on IOI
        ref_run = json.loads(CIRCUITS.read_text())["runs"]["ioi/last-argmax"]
        ref = {tuple(h) for h in ref_run["reference"]["heads"]}
        for name, sc in (("kept_nodes", heads_kept), ("target_only", heads_target)):
            scores = {
                (i, j): float(sc[i, j]) for i in range(lm.n_layers) for j in range(lm.n_heads)
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
        "task": "ioi (correct name minus wrong name, last position)",
        "transcoders": {
            "layers": layers,
            "n_latents": a.n_latents,
            "k": a.k_active,
            "fit": "least squares (fit_transcoder), not gradient-trained",
            "fit_texts": len(texts),
            "fit_ioi_prompts": len(fit_ioi),
            "fit_tokens": int(x.shape[1]),
            "fit_seconds": round(fit_seconds, 1),
            "other_layers": "no transcoder: their MLP outputs are error nodes",
        },
        "held_out_prompts": len(held),
        "ks": ks,
        "n_random": a.n_random,
        "summary": summaries,
        "heads": heads,
        "prompts": per_prompt,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "machine": f"{platform.processor() or platform.machine()}, {a.threads} torch thread(s), "
        "shared 2-core machine under load from other jobs",
    }
    write_json(a.out, result)
    print(json.dumps(summaries, indent=1))
    print(json.dumps({k: v for k, v in heads.items() if k != "reference"}))


if __name__ == "__main__":
    main()
