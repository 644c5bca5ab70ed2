"""Training from an activation store much larger than the memory budget stays in bounded memory.

Writes a float16 store of ``--gb`` gigabytes of random d=576 rows (shards of 65536 rows), then
trains a TopK SAE (4608 latents, k=32, batch 4096) for one full epoch over it in a child process
that reads it with ``StoreSource`` and reports its peak resident memory (``ru_maxrss``). The
budget is 2 GB; the store is larger than the budget, so it cannot fit in it. (A store larger than
this machine's 24 GB RAM works the same way — the reader holds at most ``shuffle_buffer_shards``
shards — but takes long to write; pass ``--gb 25`` with a small coder (``--n-latents 256
--k 8``) to check that in reasonable time.)

    python benchmarks/bench_store_memory.py --gb 4 --out benchmarks/results/store_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(2)
from sparsecodes import SparseCoder
from sparsecodes.activations import StoreSource
from sparsecodes.training import TrainConfig, Trainer
src = StoreSource(sys.argv[1], seed=0, verify=False)
steps = int(sys.argv[2])
n_latents, k, batch = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
m = SparseCoder(src.d_in, n_latents, "topk", k=k, seed=0)
t = Trainer(m, TrainConfig(steps=steps, batch_size=batch, lr=1e-3))
t0 = time.perf_counter()
t.fit(src)
print(json.dumps({"steps": steps, "tokens": steps * batch, "n_latents": n_latents, "k": k, "seconds": time.perf_counter() - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "max_buffer_rows": src.max_buffer_rows, "store_rows": len(src)}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gb", type=float, default=4.0, help="store size in GB")
    p.add_argument("--d", type=int, default=576)
    p.add_argument("--dir", type=Path, default=None, help="where to write the store (default: tmp)")
    p.add_argument("--steps", type=int, default=None, help="default: one epoch over the store")
    p.add_argument(
        "--n-latents", type=int, default=4608, help="a small coder makes the epoch cheap"
    )
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--keep", action="store_true", help="keep the store (default: delete it)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/store_memory.json"))
    args = p.parse_args()

    import numpy as np

    from sparsecodes.activations import StoreWriter
    from sparsecodes.files import write_json

    root = Path(args.dir or tempfile.mkdtemp(prefix="sc_store_mem_"))
    store = root / "store"
    rows = int(args.gb * 1e9 / (args.d * 2))
    t0 = time.perf_counter()
    w = StoreWriter(
        store,
        model="random",
        hook="none",
        shape=(args.d,),
        dtype="float16",
        corpus_fingerprint="random",
        context_size=1,
        shard_rows=65536,
    )
    rng = np.random.default_rng(0)
    chunk = 65536
    for start in range(w.rows, rows, chunk):
        n = min(chunk, rows - start)
        w.append(rng.standard_normal((n, args.d), dtype=np.float32).astype(np.float16), start)
    w.close()
    write_s = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in store.glob("*.npy"))
    steps = args.steps or rows // args.batch
    argv = [str(store), str(steps), str(args.n_latents), str(args.k), str(args.batch)]
    try:
        res = subprocess.run(
            [sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, check=True
        )
    finally:
        if not args.keep:
            shutil.rmtree(store, ignore_errors=True)
    child = json.loads(res.stdout.strip().splitlines()[-1])
    out = {
        "store_bytes": size,
        "store_gb": size / 1e9,
        "write_seconds": write_s,
        **child,
        "budget_mb": 2048,
        "within_budget": child["peak_rss_mb"] < 2048,
        "command": " ".join(["python", *sys.argv]),
        "load_average_at_end": os.getloadavg(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "ram_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
