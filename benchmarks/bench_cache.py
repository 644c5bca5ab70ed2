"""Caching a layer-12 hook of the embedded SmolLM2: full forward vs stopped at the hook vs cache.

Same windows of the embedded corpus (``--windows`` x 128 tokens) for each: the model's full
forward (logits), the forward stopped after ``blocks.12.resid_post`` (``adapter.run``), and
``cache_activations`` into a fresh store (its model time and store time measured separately).

``--forward-dtype bfloat16`` loads the model in bf16 (as ``sparsecodes cache --forward-dtype``);
``--device cuda`` runs on a GPU (clock read after ``torch.cuda.synchronize``). The JSON records
the device name and the load average (the machine may be shared).

    python benchmarks/bench_cache.py --out benchmarks/results/cache.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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
    p.add_argument("--forward-dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/cache.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from sparsecodes.devices import device_name, resolve_device, synchronize

    device = resolve_device(args.device)
    load_before = os.getloadavg()

    from sparsecodes.activations.cache import cache_activations
    from sparsecodes.data import batch_windows, load_texts, token_windows
    from sparsecodes.models import load_model

    adapter = load_model(args.model, device=str(device), dtype=args.forward_dtype)
    texts = list(load_texts(None))
    windows = []
    for w in token_windows(texts, adapter.tokenizer, 128):
        windows.append(w)
        if len(windows) == args.windows:
            break
    batches = list(batch_windows(windows, args.batch))
    tokens = sum(int(ids.numel()) for ids, _ in batches)

    def timed(fn) -> float:
        with torch.inference_mode():  # as cache_activations runs the model
            fn(batches[0][0][:2].to(device))  # warm up
            synchronize(device)
            t0 = time.perf_counter()
            for ids, _ in batches:
                fn(ids.to(device))
            synchronize(device)
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
        "cache_tokens_per_s_model": res.rows / res.seconds_model,
        "forward_dtype": args.forward_dtype,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
        "device_name": device_name(device),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "command": " ".join(["python", *sys.argv]),
    }
    from sparsecodes.files import write_json

    write_json(args.out, out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
