"""Caching a layer-12 hook of the embedded SmolLM2: today's forward vs the split CPU forward.

Same windows of the embedded corpus (``--windows`` x 128 tokens, batches of ``--batch``) for
every variant, run *interleaved*: batch by batch, each variant in turn (the order rotates), so a
change of load on a shared machine hits all of them alike. Variants (``--modes``):

- ``baseline``: today's settings: ``adapter.run(ids, hooks=[hook])`` (stopped at the hook), one
  pass over the batch with ``--threads`` torch threads, ``SPARSECODES_GEMM=torch``;
- ``split``: what ``cache_activations`` now runs (``activations.cache.caching_forward``): the
  batch split into ``--threads`` slices run at once in as many threads of one torch thread
  each, the llama layers fused (``models.fused``: one product for q|k|v and one for gate|up,
  element-wise work in place), the products through ``kernels.gemm`` where the process's
  backend is OpenBLAS (AMD CPUs);
- ``split_unfused``: ``split`` with the model's own layers (``caching_forward(fused=False)``;
  not in the default list);
- ``split_torch``: ``split`` with torch's matmuls (``SPARSECODES_GEMM=torch``);
- ``openblas``: ``baseline`` with the Linear layers through OpenBLAS (``models.linear``).
  Not in the default list: its 2-thread OpenBLAS calls wake OpenBLAS's own thread pool, whose
  threads keep spinning after each call and slow every other mode of the same run (measure it
  alone: ``--modes baseline,openblas``).

Each variant's activations are compared with the baseline's (largest difference relative to
the largest activation). Then ``cache_activations`` writes a fresh store of the same windows
twice, with ``forward_workers=1`` (today) and the default (split), recording model, store and
total seconds (these two are sequential, not interleaved). ``--full`` also times the full
forward (logits) once. The JSON records the device, the GEMM backends and the load average
(the machine may be shared).

    python benchmarks/bench_cache.py --windows 64 --out benchmarks/results/cache_avx2_<date>.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

MODES = ("baseline", "split", "split_unfused", "split_torch", "openblas")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--hook", default="blocks.12.resid_post")
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--forward-dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--modes", default="baseline,split_torch,split")
    p.add_argument("--full", action="store_true", help="also time the full forward (logits)")
    p.add_argument("--skip-cache", action="store_true", help="skip the two cache_activations runs")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from sparsecodes.devices import device_name, resolve_device, synchronize

    device = resolve_device(args.device)
    load_before = os.getloadavg()

    from sparsecodes.activations.cache import (
        cache_activations,
        caching_forward,
        resolve_forward_workers,
    )
    from sparsecodes.data import batch_windows, load_texts, token_windows
    from sparsecodes.kernels import gemm
    from sparsecodes.models import load_model
    from sparsecodes.models.linear import gemm_linears

    modes = [m for m in args.modes.split(",") if m]
    if modes[0] != "baseline" or any(m not in MODES for m in modes):
        p.error(f"--modes must start with baseline and name only {', '.join(MODES)}")
    auto_gemm = gemm.resolve_gemm_backend()
    try:
        gemm.resolve_gemm_backend("openblas")
    except ValueError:
        modes = [m for m in modes if "openblas" not in m]  # numpy without OpenBLAS here

    adapter = load_model(args.model, device=str(device), dtype=args.forward_dtype)
    workers = resolve_forward_workers(adapter)
    texts = list(load_texts(None))
    windows = []
    for w in token_windows(texts, adapter.tokenizer, 128):
        windows.append(w)
        if len(windows) == args.windows:
            break
    batches = list(batch_windows(windows, args.batch))
    tokens = sum(int(ids.numel()) for ids, _ in batches)

    cached = caching_forward(adapter)  # as cache_activations runs the model
    unfused = caching_forward(adapter, fused=False)

    def forward(mode: str, ids: torch.Tensor) -> torch.Tensor:
        if mode in ("split", "split_unfused"):
            gemm.set_gemm_backend(auto_gemm)
            return (cached if mode == "split" else unfused)(ids, None, [args.hook])[args.hook]
        gemm.set_gemm_backend("openblas" if mode == "openblas" else "torch")
        linears = gemm_linears(adapter.model) if mode == "openblas" else contextlib.nullcontext()
        with linears:
            n = workers if mode == "split_torch" else 1
            return adapter.run(ids, hooks=[args.hook], workers=n)[args.hook]

    seconds = dict.fromkeys(modes, 0.0)
    diff = dict.fromkeys(modes, 0.0)
    per_batch: dict[str, list[float]] = {m: [] for m in modes}
    with torch.inference_mode():  # as cache_activations runs the model
        for m in modes:  # warm up
            forward(m, batches[0][0][:2].to(device))
        for b, (ids, _) in enumerate(batches):
            ids = ids.to(device)
            order = modes[b % len(modes) :] + modes[: b % len(modes)]
            acts = {}
            for m in order:
                synchronize(device)
                t0 = time.perf_counter()
                acts[m] = forward(m, ids)
                synchronize(device)
                dt = time.perf_counter() - t0
                seconds[m] += dt
                per_batch[m].append(ids.numel() / dt)
            ref = acts["baseline"]
            scale = float(ref.abs().max())
            for m in modes:
                diff[m] = max(diff[m], float((acts[m] - ref).abs().max()) / scale)
    gemm.set_gemm_backend(None)
    load_mid = os.getloadavg()

    out: dict = {
        "benchmark": f"caching {args.model} at {args.hook}: today's forward vs the split forward",
        "model": args.model,
        "hook": args.hook,
        "windows": len(windows),
        "tokens": tokens,
        "batch": args.batch,
        "threads": args.threads,
        "forward_workers": workers,
        "modes": modes,
        "tokens_per_s": {m: tokens / seconds[m] for m in modes},
        "speedup_vs_baseline": {m: seconds["baseline"] / seconds[m] for m in modes},
        "per_batch_tokens_per_s": per_batch,
        "max_abs_diff_vs_baseline_relative_to_max_abs": diff,
        "interleaved": "per batch, each mode in turn, order rotating by batch",
        "gemm_backend": {
            "baseline": "torch",
            "split": f"{auto_gemm} (the process's auto backend, fused products through "
            "kernels.gemm)",
            "split_unfused": f"{auto_gemm} (the process's auto backend, Linear through "
            "kernels.gemm)",
            "split_torch": "torch",
            "openblas": "openblas (Linear through kernels.gemm.matmul)",
        },
    }
    if args.full:
        with torch.inference_mode():
            adapter.logits(batches[0][0][:2].to(device))
            t0 = time.perf_counter()
            for ids, _ in batches:
                adapter.logits(ids.to(device))
            synchronize(device)
        out["full_forward_tokens_per_s"] = tokens / (time.perf_counter() - t0)

    if not args.skip_cache:
        out["cache_activations"] = {}
        for label, fw in (("split", None), ("baseline", 1)):
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
                    forward_workers=fw,
                )
            out["cache_activations"][label] = {
                "forward_workers": resolve_forward_workers(adapter, fw),
                "rows": res.rows,
                "seconds_model": res.seconds_model,
                "seconds_store": res.seconds_store,
                "seconds_total": res.seconds_total,
                "tokens_per_s_model": res.rows / res.seconds_model,
                "tokens_per_s_total": res.rows / res.seconds_total,
                "store_overhead_fraction": res.store_overhead,
            }
        c = out["cache_activations"]
        out["cache_activations"]["speedup_total"] = (
            c["baseline"]["seconds_total"] / c["split"]["seconds_total"]
        )
        out["cache_activations"]["note"] = (
            "the two runs are sequential (split first), not interleaved"
        )

    out.update(
        {
            "forward_dtype": args.forward_dtype,
            "torch": torch.__version__,
            "device": str(device),
            "device_name": device_name(device),
            "cpu_count": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after_interleaved": load_mid,
            "load_average_after": os.getloadavg(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": " ".join(["python", *sys.argv]),
        }
    )
    from sparsecodes.files import write_json

    if args.out is None:
        cap = device_name(device).split("(")[-1].rstrip(")").lower() or "cpu"
        day = datetime.date.today().isoformat()
        args.out = Path(f"benchmarks/results/cache_{cap}_{day}.json")
    write_json(args.out, out)
    print(json.dumps({k: v for k, v in out.items() if k != "per_batch_tokens_per_s"}, indent=2))


if __name__ == "__main__":
    main()
