"""Attribution graphs on the embedded SmolLM2-135M with quickly fitted transcoders.

Fits one TopK skip transcoder per MLP (all 30 by default) by least squares
(``sparsecodes.graphs.fit_transcoder``: skip path by least squares, encoder rows drawn from the
inputs, decoder by least squares; no gradient training, so these are NOT well-trained
transcoders), reports each one's held-out FVU of the MLP output, then builds the attribution
graph of an IOI prompt (" Mary" minus " John") and a greater-than prompt (the model's top later
tens digit minus its top earlier one) and records graph size, attribution and pruning time,
the exactness of the graph (worst relative reconstruction of a node's input) and the replacement
and completeness scores, full and pruned.

Run: ``python benchmarks/graphs_smollm2.py [--layers all|0,3,6] [--n-latents 1024] [--k 8]``;
writes ``benchmarks/results/graphs_smollm2.json``. One torch thread unless ``--threads``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from sparsecodes.circuits.tasks import greater_than
from sparsecodes.data.corpus import embedded_texts
from sparsecodes.files import write_json
from sparsecodes.graphs import (
    ReplacementModel,
    attribute,
    fit_transcoder,
    graph_scores,
    prune,
    single_token,
)
from sparsecodes.models import load_model

OUT = Path(__file__).parent / "results" / "graphs_smollm2.json"
IOI = "When John and Mary went to the store, John gave a drink to"


def collect(rm: ReplacementModel, lm, texts: list[str], ctx: int) -> tuple[torch.Tensor, ...]:
    """MLP inputs and outputs ``[L, N, d]`` over the texts' first ``ctx`` tokens."""
    xs, ys = [], []
    for t in texts:
        ids = lm.encode(t)[0][0, :ctx]
        run = rm.run(ids)
        xs.append(run.mlp_in[:, 1:])  # BOS left out: its activations are outliers
        ys.append(run.mlp_out[:, 1:])
    return torch.cat(xs, 1), torch.cat(ys, 1)


def graph_report(rm, run, tid, cid, batch_size):
    g = attribute(rm, run, tid, cid, batch_size=batch_size)
    m = ~g.node_input.isnan()
    scale = g.adjacency.abs().sum(1) + g.bias.abs()
    rel = float(((g.reconstruction() - g.node_input).abs()[m] / scale[m]).max())
    pr = prune(g)
    full, pruned = graph_scores(g), graph_scores(g, pr.node_mask)
    nf = g.n_features
    return {
        "n_tokens": g.n_pos,
        "target_value": float(g.node_input[-1]),
        "n_features": nf,
        "n_nodes": g.n_nodes,
        "n_edges_nonzero": int((g.adjacency != 0).sum()),
        "n_nodes_kept": int(pr.node_mask.sum()),
        "n_features_kept": int(pr.node_mask[:nf].sum()),
        "n_errors_kept": int(pr.node_mask[g.error_slice].sum()),
        "n_edges_kept": int(pr.edge_mask.sum()),
        "kept_influence_fraction": pr.kept_influence_fraction,
        "attribution_seconds": round(g.seconds, 2),
        "pruning_seconds": round(pr.seconds, 2),
        "max_relative_reconstruction_error": rel,
        "replacement_score": full.replacement,
        "completeness_score": full.completeness,
        "pruned_replacement_score": pruned.replacement,
        "pruned_completeness_score": pruned.completeness,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="all")
    ap.add_argument("--n-latents", type=int, default=1024)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--ridge", type=float, default=0.1)
    ap.add_argument("--fit-texts", type=int, default=40)
    ap.add_argument("--ctx", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    lm = load_model("smollm2-135m", device="cpu")
    layers = (
        list(range(lm.n_layers)) if a.layers == "all" else [int(s) for s in a.layers.split(",")]
    )
    texts = [t for t in embedded_texts(400_000) if len(t) > 200]
    gt = [p.text for p in greater_than(lm.tokenizer, 8, seed=1)]
    fit_texts = texts[: a.fit_texts] + gt[:8]
    held = texts[a.fit_texts : a.fit_texts + 8]
    rm0 = ReplacementModel(lm, [])
    t0 = time.perf_counter()
    x, y = collect(rm0, lm, fit_texts, a.ctx)
    xh, yh = collect(rm0, lm, held, a.ctx)
    tcs, fvu = [], {}
    for layer in layers:
        tc = fit_transcoder(
            x[layer], y[layer], layer, a.n_latents, k=a.k, seed=layer, ridge=a.ridge
        )
        tcs.append(tc)
        resid = ((yh[layer] - tc(xh[layer])) ** 2).sum()
        skip_only = yh[layer] - xh[layer] @ tc.W_skip
        fvu[layer] = {
            "fvu": float(resid / ((yh[layer] - yh[layer].mean(0)) ** 2).sum()),
            "fvu_skip_only": float(
                ((skip_only - skip_only.mean(0)) ** 2).sum()
                / ((yh[layer] - yh[layer].mean(0)) ** 2).sum()
            ),
        }
    fit_seconds = time.perf_counter() - t0
    rm = ReplacementModel(lm, tcs)
    prompts = {}
    ids = lm.encode(IOI)[0][0]
    run = rm.run(ids)
    ref = lm.logits(ids[None])[0]
    logit_err = float((rm.forward(run) - ref).abs().max() / ref.abs().max())
    tid, cid = single_token(lm, " Mary"), single_token(lm, " John")
    prompts["ioi"] = {"prompt": IOI, "target": " Mary", "contrast": " John"}
    prompts["ioi"].update(graph_report(rm, run, tid, cid, a.batch_size))
    gtp = greater_than(lm.tokenizer, 1, seed=7)[0]
    run = rm.run(lm.encode(gtp.text)[0][0])
    last = run.logits[-1]
    tid = max(gtp.correct, key=lambda i: float(last[i]))
    cid = max(gtp.wrong, key=lambda i: float(last[i]))
    prompts["greater-than"] = {
        "prompt": gtp.text,
        "target": lm.tokenizer.decode([tid]),
        "contrast": lm.tokenizer.decode([cid]),
    }
    prompts["greater-than"].update(graph_report(rm, run, tid, cid, a.batch_size))
    result = {
        "model": "smollm2-135m",
        "transcoders": {
            "layers": layers,
            "n_latents": a.n_latents,
            "k": a.k,
            "ridge": a.ridge,
            "fit": "least squares (fit_transcoder), not gradient-trained",
            "fit_tokens": int(x.shape[1]),
            "heldout_tokens": int(xh.shape[1]),
            "fit_seconds": round(fit_seconds, 1),
            "fvu_per_layer": fvu,
            "mean_fvu": sum(v["fvu"] for v in fvu.values()) / len(fvu),
        },
        "replacement_logits_max_relative_error": logit_err,
        "graphs": prompts,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "machine": f"{platform.processor() or platform.machine()}, {a.threads} torch thread(s)",
        "load_average_at_end": list(os.getloadavg()),
    }
    write_json(a.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "transcoders"}, indent=1))
    print("mean held-out FVU", result["transcoders"]["mean_fvu"])


if __name__ == "__main__":
    main()
