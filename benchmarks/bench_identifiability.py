"""Identifiability probe (``sparsecodes.experiments.identifiability``): how much of a synthetic
world's latents sparse coding recovers from a small network's hidden layer.

Writes ``benchmarks/results/identifiability.json`` and ``docs/figures/identifiability.png``.

    python benchmarks/bench_identifiability.py                    # 3 seeds
    python benchmarks/bench_identifiability.py --seeds 0 --out /tmp/a.json --no-figure
    python benchmarks/bench_identifiability.py --merge /tmp/a.json /tmp/b.json  # parts -> one
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from sparsecodes.experiments.identifiability import (
    CODERS,
    IdentifiabilityConfig,
    plot_identifiability,
    run_identifiability,
    summarise,
)
from sparsecodes.files import write_figure, write_json

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "identifiability.json"
FIG = ROOT / "docs" / "figures" / "identifiability.png"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--figure", type=Path, default=FIG)
    p.add_argument("--no-figure", action="store_true")
    p.add_argument("--merge", nargs="+", type=Path, help="merge these result files into --out")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    if args.merge:
        parts = [json.loads(f.read_text()) for f in args.merge]
        res = parts[0]
        for part in parts[1:]:
            res["runs"].update(part["runs"])
        res["config"]["seeds"] = sorted(int(s) for s in res["runs"])
        res["summary"] = summarise(res["runs"])
    else:
        res = run_identifiability(IdentifiabilityConfig(seeds=tuple(args.seeds)))
    write_json(args.out, res)
    if not args.no_figure:
        write_figure(args.figure, plot_identifiability(res))
    for kind, by_coder in res["summary"].items():
        cells = "  ".join(
            f"{c} R2 {by_coder[c]['r2'][0]:.3f}±{by_coder[c]['r2'][1]:.3f} "
            f"MCC {by_coder[c]['mcc'][0]:.3f}±{by_coder[c]['mcc'][1]:.3f}"
            for c in CODERS
        )
        print(f"{kind:9s} {cells}")


if __name__ == "__main__":
    main()
