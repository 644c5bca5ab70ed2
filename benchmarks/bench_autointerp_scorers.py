"""Do the offline auto-interp scorers tell a latent's own explanation from another latent's?

On a TopK SAE of the embedded SmolLM2-135M (``blocks.12.resid_post``; ``--sae DIR``, default: the
small SAE of ``uses_common.ensure_sae``, trained here if absent), for ``--n-latents`` latents drawn
(seeded) among those that fire in the searched windows (the held-out split of the embedded
corpus, windows of 32 tokens):

1. explanations, written from each latent's top contexts only (never chosen with a score):
   ``top_tokens`` (default): an LLM-free baseline naming the three most frequent active tokens
   of the top contexts; ``llm`` (``--explainers llm,top_tokens``, slow): the embedded
   SmolLM2-135M-Instruct explainer (greedy);
2. each latent is scored with its **own** explanation and with a **shuffled** one (the explanation
   of another latent, a seeded derangement) by
   - ``embedding``: ROC AUC of MiniLM cosine(explanation, context), held-out activating vs
     non-activating contexts (no chat model), per latent (as delphi's embedding scorer, whose
     per-latent AUCs are then averaged);
   - ``detection``: the local SmolLM2 judge, yes/no per excerpt (balanced accuracy), for the LLM
     explanations only (``--no-detection`` skips it);
3. separation = ROC AUC, over latents, of own-explanation scores against shuffled-explanation
   scores (0.5: the scorer cannot tell them apart), with a stratified bootstrap 95% interval; also
   the mean paired difference.

Run: ``python benchmarks/bench_autointerp_scorers.py [--sae DIR] [--n-latents 200]``; writes
``benchmarks/results/autointerp_scorers.json`` (with the seconds of each stage and the load
average, since the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from sparsecodes.autointerp import (
    ChatCallError,
    LocalChatBackend,
    SentenceEmbedder,
    collect_examples,
    detect,
    embedding_score,
    top_tokens_explanation,
)
from sparsecodes.autointerp.client import call_with_retries
from sparsecodes.autointerp.explain import explain_messages, parse_explanation
from sparsecodes.data import load_texts
from sparsecodes.files import write_json
from sparsecodes.loading import load_with_model
from sparsecodes.metrics.intervals import auroc, auroc_interval, mean_interval
from sparsecodes.models import load_model
from sparsecodes.seeding import derive_seed

logger = logging.getLogger("bench_autointerp_scorers")


def derangement(n: int, seed: int) -> list[int]:
    rng = random.Random(derive_seed(seed, "shuffle-explanations"))
    while True:
        p = list(range(n))
        rng.shuffle(p)
        if all(i != j for i, j in enumerate(p)):
            return p


def separation(own: list[float], shuffled: list[float]) -> dict:
    o, s = np.array(own), np.array(shuffled)
    iv = auroc_interval(o, s, seed=0)
    diff = o - s
    div = mean_interval(diff, seed=0)
    return {
        "auroc_own_vs_shuffled": auroc(o, s),
        "auroc_low": iv.low,
        "auroc_high": iv.high,
        "mean_own": float(o.mean()),
        "mean_shuffled": float(s.mean()),
        "mean_paired_difference": float(diff.mean()),
        "difference_low": div.low,
        "difference_high": div.high,
        "fraction_own_higher": float((diff > 0).mean()),
        "n_latents": len(o),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sae", type=Path, default=None, help="SAE directory (sparsecodes.load)")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/sparsecodes_uses"))
    ap.add_argument("--n-latents", type=int, default=200)
    ap.add_argument("--n-windows", type=int, default=512)
    ap.add_argument("--context-size", type=int, default=32)
    ap.add_argument("--n-held-out", type=int, default=10)
    ap.add_argument("--n-non-activating", type=int, default=10)
    ap.add_argument("--no-detection", action="store_true")
    ap.add_argument("--explainers", default="top_tokens",
                    help="llm (the local SmolLM2 explainer, slow) and/or top_tokens")  # fmt: skip
    ap.add_argument("--detection-latents", type=int, default=16,
                    help="latents scored by the (slow) local detection judge")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" /
                    "autointerp_scorers.json")  # fmt: skip
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    seconds: dict[str, float] = {}
    if args.sae is None:
        from uses_common import HOOK, MODEL, ensure_sae

        adapter = load_model(MODEL, device="cpu")
        ensure_sae(args.work_dir, adapter)
        sae_dir = args.work_dir / "sae"
        coder, adapter, hook = load_with_model(sae_dir, model=MODEL, hook=HOOK, device="cpu")
    else:
        sae_dir = args.sae
        coder, adapter, hook = load_with_model(
            sae_dir, model="smollm2-135m", hook="blocks.12.resid_post", device="cpu"
        )
    # held-out text: every 20th document of the embedded corpus (the SAEs train on the others)
    texts = [t for i, t in enumerate(load_texts(None)) if i % 20 == 0]
    rng = random.Random(derive_seed(args.seed, "latents"))
    candidates = rng.sample(range(coder.n_latents), min(coder.n_latents, 6 * args.n_latents))
    t1 = time.perf_counter()
    exs = collect_examples(
        coder, adapter, hook, texts, candidates, context_size=args.context_size,
        n_windows=args.n_windows, n_top=8, n_held_out=args.n_held_out,
        n_non_activating=args.n_non_activating, seed=args.seed,
    )  # fmt: skip
    usable = [
        e for e in exs
        if len(e.top) >= 3 and len(e.held_out_activating) >= args.n_held_out // 2
        and e.non_activating
    ][: args.n_latents]  # fmt: skip
    seconds["contexts"] = round(time.perf_counter() - t1, 1)
    logger.info("%d usable latents of %d candidates (%.0f s)", len(usable), len(exs),
                time.perf_counter() - t0)  # fmt: skip
    t1 = time.perf_counter()
    explainer = LocalChatBackend.from_adapter(adapter, max_new_tokens=32, seed=args.seed)
    use_llm = "llm" in args.explainers.split(",")
    cache_file = args.work_dir / f"explanations_{sae_dir.name}_{args.seed}.json"
    cached = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    llm_expl = []
    for e in usable if use_llm else []:
        if str(e.latent) not in cached:
            cached[str(e.latent)], _ = call_with_retries(
                explainer, explain_messages(e.top), parse_explanation, attempts=2, backoff=0.0
            )
            write_json(cache_file, cached)  # resumable: a rerun skips explained latents
        llm_expl.append(cached[str(e.latent)])
    tok_expl = [top_tokens_explanation(e.top) for e in usable]
    seconds["explain"] = round(time.perf_counter() - t1, 1)
    logger.info("explained (%.0f s)", time.perf_counter() - t0)
    t1 = time.perf_counter()
    perm = derangement(len(usable), args.seed)
    embedder = SentenceEmbedder(load_model("minilm-l6", device="cpu"))
    results: dict = {}
    sources = (
        (("llm", llm_expl), ("top_tokens", tok_expl)) if use_llm else (("top_tokens", tok_expl),)
    )
    for name, expl in sources:
        own = [embedding_score(embedder, expl[i], e.held_out_activating, e.non_activating).score
               for i, e in enumerate(usable)]  # fmt: skip
        shuf = [embedding_score(embedder, expl[perm[i]], e.held_out_activating,
                                e.non_activating).score for i, e in enumerate(usable)]  # fmt: skip
        results[f"embedding/{name}"] = separation(own, shuf)
        logger.info("embedding/%s: %s", name, results[f"embedding/{name}"])
    seconds["embedding"] = round(time.perf_counter() - t1, 1)
    seconds["embedded_texts"] = embedder.n_embedded
    report = {
        "what": "separation of own vs shuffled explanations by offline scorers (AUROC over "
        "latents, stratified bootstrap 95% interval)",
        "sae": str(sae_dir),
        "model": "smollm2-135m",
        "hook": hook,
        "n_latents": coder.n_latents,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": results,
        "examples": [
            {"latent": e.latent, "llm": llm_expl[i] if use_llm else None, "top_tokens": tok_expl[i]}
            for i, e in enumerate(usable[:10])
        ],
        "torch_threads": torch.get_num_threads(),
        "seconds": seconds,
        "loadavg_before": load_before,
    }
    report["loadavg_after"] = os.getloadavg()
    report["elapsed_s"] = round(time.perf_counter() - t0, 1)
    write_json(args.out, report)  # the embedding results, before the slow detection runs
    if use_llm and not args.no_detection:
        judge = LocalChatBackend.from_adapter(adapter, max_new_tokens=3, seed=args.seed)
        own, shuf, failed = [], [], 0
        for i, e in enumerate(usable[: args.detection_latents]):
            kw = dict(answer_format="yesno", attempts=2, backoff=0.0, seed=args.seed)
            try:  # a latent whose either call fails is left out (never scored 0)
                a = detect(judge, llm_expl[i], e.held_out_activating, e.non_activating, **kw)
                b = detect(judge, llm_expl[perm[i]], e.held_out_activating, e.non_activating,
                           **kw)  # fmt: skip
            except ChatCallError:
                failed += 1
                continue
            own.append(a.score)
            shuf.append(b.score)
        results["detection/llm"] = {**separation(own, shuf), "n_failed": failed}
        logger.info("detection/llm: %s", results["detection/llm"])
    report["elapsed_s"] = round(time.perf_counter() - t0, 1)
    report["loadavg_after"] = os.getloadavg()
    write_json(args.out, report)
    logger.info("wrote %s (%.0f s)", args.out, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
