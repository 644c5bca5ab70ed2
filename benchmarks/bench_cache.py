"""Caching a layer-12 hook of the embedded SmolLM2: full forward vs stopped at the hook vs cache.

Same windows of the embedded corpus (``--windows`` x 128 tokens) for each: the model's full
forward (logits), the forward stopped after ``blocks.12.resid_post`` (``adapter.run``), and
``cache_activations`` into a fresh store (its model time and store time measured separately).

    python benchmarks/bench_cache.py --out benchmarks/results/cache.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--hook", default="blocks.12.resid_post")
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/cache.json"))
    args = p.parse_args()
    torch.set_num_threads(2)

    from sparsecodes.activations.cache import cache_activations
    from sparsecodes.data import batch_windows, load_texts, token_windows
    from sparsecodes.models import load_model

    adapter = load_model(args.model, device="cpu")
    texts = list(load_texts(None))
    windows = []
    for w in token_windows(texts, adapter.tokenizer, 128):
        windows.append(w)
        if len(windows) == args.windows:
            break
    batches = list(batch_windows(windows, args.batch))
    tokens = sum(int(ids.numel()) for ids, _ in batches)

    def timed(fn) -> float:
        fn(batches[0][0][:2])  # warm up
        t0 = time.perf_counter()
        for ids, _ in batches:
            fn(ids)
        return time.perf_counter() - t0

    full = timed(lambda ids: adapter.logits(ids))
    stopped = timed(lambda ids: adapter.run(ids, hooks=[args.hook]))
    with tempfile.TemporaryDirectory() as d:
        res = cache_activations(
            adapter,
            texts,
            [args.hook],
            d,
            context_size=128,
            batch_size=args.batch,
            max_tokens=sum(int(k.sum()) for _, k in batches),
            progress=False,
        )
    out = {
        "model": args.model,
        "hook": args.hook,
        "tokens": tokens,
        "full_forward_tokens_per_s": tokens / full,
        "stopped_at_hook_tokens_per_s": tokens / stopped,
        "stop_speedup": full / stopped,
        "cache_rows": res.rows,
        "cache_seconds_model": res.seconds_model,
        "cache_seconds_store": res.seconds_store,
        "store_overhead_fraction": res.seconds_store / res.seconds_model,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
