"""FISTA vs FISTA + debiasing refit vs OMP on the true dictionary of synthetic data.

The compute-optimal inference paper's known-dictionary setting at its defaults
(:func:`sparsecodes.synthetic.make_train_test`: N=16 atoms in M=8 dimensions, K=3 active
``|N(0,1)|`` codes, 1024 test rows, seeds 0..4), inference on the *true* atoms with the synthetic
study's fixed hyperparameters (``sparsecodes.experiments.synth.DEFAULT_PARAMS``: FISTA l1 0.01,
100 iterations, tol 1e-4, non-negative; OMP k=K, non-negative), plus FISTA at larger l1 to show
how the refit's gain grows with the shrinkage. Optional ``--noise`` adds Gaussian noise to x.

Reported per method (mean ± std over seeds): code MCC against the true codes, FVU, mean abs
error of the codes, L0, analytical inference MFLOP per row (the refit counted at the measured
padded support width) and wall time per row of the encode call (noisy on a shared machine).

    python benchmarks/bench_debias_synthetic.py
    python benchmarks/bench_debias_synthetic.py --noise 0.05 --out /tmp/debias.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from sparsecodes import metrics
from sparsecodes.codes import to_dense
from sparsecodes.dictionary import Dictionary
from sparsecodes.encoders import make_encoder
from sparsecodes.experiments.synth import DEFAULT_PARAMS
from sparsecodes.synthetic import make_train_test


def methods(k: int, l1s: list[float]) -> list[tuple[str, str, dict]]:
    base = dict(DEFAULT_PARAMS["fista"])
    out = []
    for l1 in l1s:
        out.append((f"fista l1={l1:g}", "fista", {**base, "l1": l1}))
        out.append((f"fista l1={l1:g} + debias", "fista", {**base, "l1": l1, "debias": True}))
    out.append((f"omp k={k}", "omp", {**DEFAULT_PARAMS["omp"], "k": k}))
    return out


def run(args: argparse.Namespace) -> dict:
    rows: dict[str, list[dict]] = {}
    for seed in args.seeds:
        _, test = make_train_test(
            n_train=args.n_train,
            n_test=args.n_test,
            n_latents=args.n,
            n_dims=args.m,
            k=args.k,
            seed=seed,
            noise=args.noise,
        )
        D = Dictionary.from_atoms(test.dictionary)
        for label, name, params in methods(args.k, args.l1):
            enc = make_encoder(name, args.m, args.n, **params)
            t0 = time.perf_counter()
            z = to_dense(enc.encode(test.x, D))
            seconds = time.perf_counter() - t0
            kw = {"support": enc.last_refit_support} if params.get("debias") else {}
            b = test.n_samples
            rows.setdefault(label, []).append(
                {
                    "code_mcc": float(metrics.code_mcc(test.codes, z)),
                    "fvu": float(metrics.fvu(test.x, D.decode(z))),
                    "code_mae": float((z - test.codes).abs().mean()),
                    "l0": float((z != 0).sum(dim=1).float().mean()),
                    "mflop_per_row": enc.inference_flops(b, **kw) / b / 1e6,
                    "us_per_row": seconds / b * 1e6,
                }
            )
    summary = {}
    for label, rs in rows.items():
        summary[label] = {
            key: (
                statistics.mean(r[key] for r in rs),
                statistics.stdev(r[key] for r in rs) if len(rs) > 1 else 0.0,
            )
            for key in rs[0]
        }
    return {"config": vars(args), "per_seed": rows, "summary": summary}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--m", type=int, default=8)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--n-train", type=int, default=1024)
    p.add_argument("--n-test", type=int, default=1024)
    p.add_argument("--noise", type=float, default=0.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--l1", type=float, nargs="+", default=[0.01, 0.05, 0.1])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    res = run(args)
    keys = ("code_mcc", "fvu", "code_mae", "l0", "mflop_per_row", "us_per_row")
    print(f"{'method':<26}" + "".join(f"{k:>22}" for k in keys))
    for label, s in res["summary"].items():
        cells = "".join(f"{s[k][0]:>13.4g} ± {s[k][1]:<6.2g}" for k in keys)
        print(f"{label:<26}{cells}")
    if args.out is not None:
        args.out.write_text(json.dumps({**res, "config": {**vars(args), "out": str(args.out)}}))


if __name__ == "__main__":
    main()
