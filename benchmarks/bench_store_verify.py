"""What reading a store with checksums costs: one full epoch of ``StoreSource`` batches with
``verify=True`` (every shard's sha256 checked, the bytes hashed as they are read) vs ``verify=False``.

Writes a float32 store of ``--rows`` random rows of width ``--d`` (default 500k x 576 = 1.15 GB,
shards of 65536 rows), then times one epoch of batches of ``--batch`` rows in fresh child
processes (verification happens the first time a process reads a shard, so each measurement is a
new process), alternating off/on ``--repeats`` times. The store was just written, so it is in the
page cache: reading costs memory bandwidth only, the worst case for the checksum's relative cost
(from disk, reading would take longer and the hash the same). For scale, the epoch's training
time at the same batch comes from ``benchmarks/results/topk_training.json`` (TopK SAE, 4608
latents, k=32: median step time of sparsecodes) and from a few such steps timed now, under the
same load as the reads. The machine's load average is recorded: other jobs sharing the CPUs
slow every measurement.

    python benchmarks/bench_store_verify.py --out benchmarks/results/store_verify.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sparsecodes.devices import cpu_info

CHILD = r"""
import json, sys, time
t_import = time.perf_counter()
import torch
torch.set_num_threads(1)
from sparsecodes.activations import StoreSource
src = StoreSource(sys.argv[1], seed=0, verify=sys.argv[2] == "on")
batch = int(sys.argv[3])
n_batches = -(-len(src) // batch)  # one full epoch: every shard read (and checked) once
it = src.batches(batch)
t0 = time.perf_counter()
total = 0.0
for _ in range(n_batches):
    x, _ = next(it)
    total += float(x[0, 0])
print(json.dumps({"seconds": time.perf_counter() - t0, "batches": n_batches, "rows": len(src)}))
"""


# A TopK training step measured now, under the same load as the reads (2 threads, as in
# topk_training.json); the store's rows stand in for activations.
STEP_CHILD = r"""
import json, statistics, sys, time
import torch
torch.set_num_threads(2)
from sparsecodes import SparseCoder
from sparsecodes.activations import StoreSource
from sparsecodes.training.trainer import TrainConfig, Trainer
batch, n = int(sys.argv[2]), int(sys.argv[3])
it = StoreSource(sys.argv[1], seed=1).batches(batch)
xs = [next(it)[0] for _ in range(3)]
model = SparseCoder(xs[0].shape[1], 4608, "topk", seed=0, k=32, fast=True, matmul_dtype="auto")
trainer = Trainer(model, TrainConfig(steps=10**9, lr=1e-3, batch_size=batch))
times = []
for i in range(n + 2):
    t0 = time.perf_counter()
    trainer.step(xs[i % 3])
    times.append(time.perf_counter() - t0)
print(json.dumps({"step_ms_median": 1e3 * statistics.median(times[2:]), "steps": n}))
"""


def sha256_gbps(mb: int = 256) -> float:
    """Raw hashlib sha256 throughput on this machine right now (GB/s)."""
    block = os.urandom(16 << 20)
    h = hashlib.sha256()
    t = time.perf_counter()
    for _ in range(mb // 16):
        h.update(block)
    return mb * 2**20 / 1e9 / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=500_000)
    p.add_argument("--d", type=int, default=576)
    p.add_argument("--shard-rows", type=int, default=65536)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--live-steps", type=int, default=6, help="TopK steps timed now (0: none)")
    p.add_argument("--dir", type=Path, default=None, help="where to write the store (default: tmp)")
    p.add_argument("--keep", action="store_true", help="keep the store afterwards")
    p.add_argument(
        "--topk", type=Path, default=Path("benchmarks/results/topk_training.json"),
        help="TopK training benchmark results, for the training step time",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/store_verify.json"))
    args = p.parse_args()

    import numpy as np

    from sparsecodes.activations import StoreWriter

    root = Path(args.dir or tempfile.mkdtemp(prefix="sc_store_verify_"))
    store = root / "store"
    shutil.rmtree(store, ignore_errors=True)
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    w = StoreWriter(
        store,
        model="random",
        hook="none",
        shape=(args.d,),
        dtype="float32",
        corpus_fingerprint="random",
        context_size=1,
        shard_rows=args.shard_rows,
    )
    rng = np.random.default_rng(0)
    for start in range(0, args.rows, args.shard_rows):
        n = min(args.shard_rows, args.rows - start)
        w.append(rng.standard_normal((n, args.d), dtype=np.float32), start_row=start)
    w.close()
    write_s = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in store.glob("*.npy"))

    runs: dict[str, list[float]] = {"off": [], "on": []}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    loads = []
    for _ in range(args.repeats):
        for mode in ("off", "on"):
            r = subprocess.run(
                [sys.executable, "-c", CHILD, str(store), mode, str(args.batch)],
                capture_output=True,
                text=True,
                env=env,
            )
            if r.returncode != 0:
                raise SystemExit(r.stderr)
            res = json.loads(r.stdout.strip().splitlines()[-1])
            runs[mode].append(res["seconds"])
            loads.append(os.getloadavg()[0])
            print(f"verify={mode}: {res['seconds']:.2f} s for {res['batches']} batches", flush=True)
    live_step_s = None
    r = subprocess.run(
        [sys.executable, "-c", STEP_CHILD, str(store), str(args.batch), str(args.live_steps)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    if r.returncode == 0:
        live_step_s = json.loads(r.stdout.strip().splitlines()[-1])["step_ms_median"] / 1e3
        print(f"TopK step now: {1e3 * live_step_s:.0f} ms", flush=True)
    else:
        print(f"live TopK step not measured: {r.stderr[-500:]}", file=sys.stderr)
    loads.append(os.getloadavg()[0])
    n_batches = -(-args.rows // args.batch)
    off, on = min(runs["off"]), min(runs["on"])
    extra = on - off
    hash_gbps = sha256_gbps()

    step_s = None
    if args.topk.is_file():
        topk = json.loads(args.topk.read_text())
        for row in topk.get("results", []):
            if row.get("tool") == "sparsecodes":
                step_s = row["step_ms_median"] / 1e3
                topk_cfg = topk.get("config", {})
    train_epoch_s = n_batches * step_s if step_s is not None else None

    result = {
        "benchmark": "store_verify",
        "config": {
            "rows": args.rows,
            "d": args.d,
            "dtype": "float32",
            "shard_rows": args.shard_rows,
            "shards": len(list(store.glob("*.npy"))),
            "store_bytes": size,
            "batch": args.batch,
            "batches_per_epoch": n_batches,
            "repeats": args.repeats,
            "torch_threads": 1,
            "store_read_threads": min(4, os.cpu_count() or 1),  # shards of a group read at once
        },
        "write_seconds": write_s,
        "epoch_seconds": {"verify_off": runs["off"], "verify_on": runs["on"]},
        "epoch_seconds_best": {"verify_off": off, "verify_on": on},
        "verify_extra_seconds": extra,
        "verify_extra_pct_of_reading": 100 * extra / off,
        "sha256_gbps_now": hash_gbps,
        "sha256_seconds_for_store_at_that_rate": size / 1e9 / hash_gbps,
        "topk_training": None
        if step_s is None
        else {
            "source": str(args.topk),
            "step_ms_median": step_s * 1e3,
            "config": {k: topk_cfg.get(k) for k in ("batch", "d_in", "n_latents", "k", "threads")},
            "epoch_seconds": train_epoch_s,
            "verify_extra_pct_of_training_epoch": 100 * extra / (train_epoch_s + off),
        },
        "topk_training_now": None
        if live_step_s is None
        else {
            "step_ms_median": live_step_s * 1e3,
            "config": {"batch": args.batch, "n_latents": 4608, "k": 32, "threads": 2},
            "epoch_seconds": n_batches * live_step_s,
            "verify_extra_pct_of_training_epoch": 100 * extra / (n_batches * live_step_s + off),
        },
        "machine": {
            "cpu": cpu_info("model name") or platform.processor(),
            "cores": os.cpu_count(),
            "loadavg_1_5_15_at_start": load_start,
            "loadavg_1min_after_each_run": loads,
            "note": "shared machine: other jobs were running; both modes are slowed alike",
            "python": platform.python_version(),
            "openssl": __import__("ssl").OPENSSL_VERSION,
        },
        "page_cache": "warm (store just written, fits in RAM): reading costs memory bandwidth only",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from sparsecodes.files import write_json

    write_json(args.out, result)
    print(
        json.dumps({k: result[k] for k in ("verify_extra_seconds", "verify_extra_pct_of_reading")})
    )
    if result["topk_training"]:
        pct = result["topk_training"]["verify_extra_pct_of_training_epoch"]
        print(f"checksum cost: {pct:.1f}% of a TopK training epoch at batch {args.batch}")
    if result["topk_training_now"]:
        pct = result["topk_training_now"]["verify_extra_pct_of_training_epoch"]
        print(f"checksum cost: {pct:.1f}% of a TopK training epoch timed now, same load")
    if not args.keep and args.dir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
