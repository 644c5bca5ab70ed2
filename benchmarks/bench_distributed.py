"""Data- or latent-parallel training throughput on the CPU: tokens/s with 1 and 2 processes.

Writes a float32 activation store of ``--rows`` random rows of width ``--d`` (shards of
``--shard-rows``), then runs, for each ``NxT`` in ``--runs`` (N processes of T threads),

    torchrun --standalone --nproc-per-node N -m sparsecodes train --store S --encoder topk ...

with the same global batch, steps and seed and ``OMP_NUM_THREADS=T`` per process, and reads the throughput (global tokens/s, ``tokens_per_s`` of the last
row of ``metrics.csv``) and the wall time of the whole command (process start, gloo rendezvous
and the final save included). On one machine with few cores the 2-process run shows the cost of
data parallelism (an all-reduce of every gradient per step, through gloo over loopback) rather
than a speed-up: both runs share the same cores. The machine's load average is recorded: other
jobs sharing the CPUs slow every measurement. ``--parallel latent`` runs ``train --parallel
latent`` instead (each process holds half of the latents and steps on the whole batch).

    python benchmarks/bench_distributed.py --out benchmarks/results/distributed.json
    python benchmarks/bench_distributed.py --parallel latent \
        --out benchmarks/results/distributed_latent.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_store(path: Path, rows: int, d: int, shard_rows: int) -> None:
    from sparsecodes.activations.store import StoreWriter

    w = StoreWriter(
        path, model="bench", hook="blocks.0.resid_post", shape=(d,), dtype="float32",
        corpus_fingerprint="bench", context_size=128, shard_rows=shard_rows,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    for start in range(0, rows, shard_rows):
        n = min(shard_rows, rows - start)
        w.append(rng.standard_normal((n, d)).astype(np.float32), start_row=start)
    w.close()


def run(store: Path, out: Path, spec: str, args: argparse.Namespace) -> dict:
    n, threads = (int(v) for v in spec.split("x"))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        "torchrun", "--standalone", f"--nproc-per-node={n}", "-m", "sparsecodes", "train",
        "--store", str(store), "--encoder", "topk", "--param", f"k={args.k}",
        "--n-latents", str(args.n_latents), "--steps", str(args.steps),
        "--batch-size", str(args.batch), "--device", "cpu", "--no-saelens",
        "--checkpoint-every", str(args.steps), "--out", str(out), "--parallel", args.parallel,
    ]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    with open(out / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    return {
        "processes": n,
        "threads_per_process": threads,
        "tokens_per_s": float(last["tokens_per_s"]),
        "wall_s": wall,
        "final_mse": float(last["mse"]),
        "steps": int(float(last["step"])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=131072)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--shard-rows", type=int, default=16384)
    ap.add_argument("--n-latents", type=int, default=2048)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument(
        "--runs", nargs="+", default=["1x2", "1x1", "2x1"], help="NxT: N procs, T threads"
    )
    ap.add_argument("--parallel", choices=["data", "latent"], default="data")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    try:
        store = tmp / "store"
        make_store(store, args.rows, args.d, args.shard_rows)
        load_before = os.getloadavg()
        runs = [run(store, tmp / f"run{spec}", spec, args) for spec in args.runs]
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = runs[0]["tokens_per_s"]
    for r in runs:
        r["ratio_to_first"] = r["tokens_per_s"] / base
    result = {
        "benchmark": f"{args.parallel}-parallel TopK training, torchrun on the CPU (gloo)",
        "device": cpu_name(),
        "cpu_count": os.cpu_count(),
        "loadavg_before_after": [load_before, load_after],
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "runs": runs,
        "python": sys.version.split()[0],
        "note": (
            "all runs share the same cores, so on one small machine the 2-process figure shows "
            f"{args.parallel} parallelism's overhead (data: gradient all-reduce; latent: "
            "candidate all-gather and reconstruction all-reduce, through gloo) beside 1 process "
            "with 1 and with 2 threads, not a scaling result; the machine was shared with other "
            "jobs (load average recorded), which penalises multi-threaded runs most"
        ),
    }
    text = json.dumps(result, indent=1)
    if args.out is not None:
        from sparsecodes.files import write_text

        write_text(args.out, text + "\n")
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
