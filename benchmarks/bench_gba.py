"""Group Bias Adaptation (GBA) against TopK on synthetic worlds with known features.

The GBA paper (Chen et al., arXiv 2506.14002) compares GBA with TopK (and L1) on LLM activations
and studies feature recovery on synthetic data ``x = h V`` with non-negative sparse ``h``. Its
synthetic results are reported as figures (feature recovery rate over a grid of frequencies and
widths); we could not find numbers to copy (see docs/training.md), so the JSON reports ours only
and says so.

Two worlds (``sparsecodes.worlds``), both with non-negative magnitudes as in the paper's model:

- ``uniform``: every feature fires with the same probability (the paper's section-3 setting).
- ``zipf``: a spectrum of frequencies (Zipf exponent 1), where GBA's groups of target
  frequencies should matter.

Each world: 128 features in 32 dimensions (L0 about 4), 256 latents, 1500 steps of 256 rows
(``--steps``; the stored results used 600), seeds 0, 1, 2 (world and model seed). Methods: ``gba`` (``GBA_PARAMS``: 10 groups, targets 0.1 .. 0.001) and ``topk`` at ``k`` = GBA's measured L0 (matched L0) and at ``k`` = the world's L0.
Scores on 8192 held-out rows: feature recovery rate (best atom cosine > 0.9, the paper's FRR
criterion), dictionary MCC, firing F1 (Hungarian matching), FVU, L0, dead fraction.

    python benchmarks/bench_gba.py                     # ~4 minutes on 2 idle cores
    python benchmarks/bench_gba.py --steps 500 --seeds 0 --out /tmp/gba.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from sparsecodes import SparseCoder
from sparsecodes.codes import to_dense
from sparsecodes.files import write_json
from sparsecodes.metrics import dictionary_mcc
from sparsecodes.metrics.features import firing_scores, recovery_rate
from sparsecodes.training.trainer import TrainConfig, Trainer
from sparsecodes.worlds import FiringSpec, MagnitudeSpec, World, WorldConfig, WorldSource

OUT = Path(__file__).parent / "results" / "gba_vs_topk.json"
#: the public code's groups and targets. Changed: a shorter window and larger down-step than
#: its defaults (50 steps, 0.01) so the biases settle within this short run, and a bias floor of
#: -10 instead of -1: at this data scale (|x| about 2) the encoder weights grow and a -1 floor
#: leaves L0 at ~32 with every bias pinned there (measured), so the targets are never reached
GBA_PARAMS = {
    "n_groups": 10,
    "htf": 0.1,
    "ltf": 0.001,
    "update_every": 10,
    "gamma_minus": 0.05,
    "bias_range": 10.0,
}

PAPER = {
    "source": "Chen, Sheen, Xiong, Wang, Yang, arXiv 2506.14002",
    "synthetic_numbers": None,
    "note": (
        "the paper's synthetic experiments (feature recovery over frequency/width grids) are "
        "reported as figures; no table of GBA vs TopK numbers on synthetic data could be found "
        "in the text available to us, so no paper numbers are listed beside ours"
    ),
}


def world_config(kind: str, seed: int) -> WorldConfig:
    zipf = 1.0 if kind == "zipf" else 0.0
    return WorldConfig(
        n_features=128,
        n_dims=32,
        firing=FiringSpec(l0=4.0, zipf_exponent=zipf, max_prob=0.5),
        magnitude=MagnitudeSpec(mean=1.0, std=0.25),
        seed=seed,
    )


def evaluate(coder: SparseCoder, world: World, n_test: int) -> dict[str, float]:
    data = world.sample(n_test, stream="test")
    with torch.no_grad():
        codes = coder.encode(data.x)
        dense = to_dense(codes)
        x_hat = coder.decode(codes)
    fvu = float((data.x - x_hat).pow(2).sum() / (data.x - data.x.mean(0)).pow(2).sum())
    fired = (dense != 0).any(dim=0)
    return {
        "recovery_rate": recovery_rate(data.dictionary, coder),
        "mcc": float(dictionary_mcc(data.dictionary, coder.W_dec.detach())),
        "f1": firing_scores(data.codes, dense, data.dictionary, coder).means()["f1"],
        "fvu": fvu,
        "l0": float((dense != 0).sum(dim=1).float().mean()),
        "dead_frac": float((~fired).float().mean()),
    }


def train(encoder: str, params: dict, world: World, seed: int, args) -> tuple[SparseCoder, float]:
    coder = SparseCoder(world.n_dims, args.latents, encoder, seed=seed, **params)
    cfg = TrainConfig(
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch,
        seed=seed,
        b_dec_init="zeros",
        log_every=args.steps,
    )
    t0 = time.perf_counter()
    Trainer(coder, cfg).fit(WorldSource(world))
    coder.eval()
    return coder, time.perf_counter() - t0


def summarise(runs: list[dict]) -> dict[str, list[float]]:
    keys = [k for k in runs[0] if isinstance(runs[0][k], float)]
    out = {}
    for k in keys:
        vals = [r[k] for r in runs]
        out[k] = [statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0]
    return out


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    result: dict = {
        "paper": PAPER,
        "setting": {
            "features": 128,
            "dims": 32,
            "world_l0": 4.0,
            "latents": args.latents,
            "steps": args.steps,
            "batch": args.batch,
            "lr": args.lr,
            "seeds": args.seeds,
            "n_test": args.n_test,
            "gba": GBA_PARAMS,
        },
        "worlds": {},
    }
    for kind in args.worlds:
        per: dict[str, list[dict]] = {}
        for seed in args.seeds:
            world = World(world_config(kind, seed))
            gba, secs = train("gba", GBA_PARAMS, world, seed, args)
            g = evaluate(gba, world, args.n_test) | {"seconds": secs}
            per.setdefault("gba", []).append(g)
            k_match = max(1, round(g["l0"]))
            for label, k in (("topk_matched_l0", k_match), ("topk_k=world_l0", 4)):
                tk, secs = train("topk", {"k": k}, world, seed, args)
                per.setdefault(label, []).append(
                    evaluate(tk, world, args.n_test) | {"seconds": secs, "k": float(k)}
                )
            print(kind, seed, {m: round(v[-1]["recovery_rate"], 3) for m, v in per.items()})
        result["worlds"][kind] = {m: {"mean_std": summarise(v), "runs": v} for m, v in per.items()}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worlds", nargs="+", default=["uniform", "zipf"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--latents", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--n-test", type=int, default=8192)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    res = run(args)
    write_json(args.out, res)
    for kind, methods in res["worlds"].items():
        for m, v in methods.items():
            ms = v["mean_std"]
            print(
                f"{kind:8s} {m:18s} FRR {ms['recovery_rate'][0]:.3f}±{ms['recovery_rate'][1]:.3f}"
                f"  MCC {ms['mcc'][0]:.3f}  F1 {ms['f1'][0]:.3f}  FVU {ms['fvu'][0]:.3f}"
                f"  L0 {ms['l0'][0]:.1f}  dead {ms['dead_frac'][0]:.3f}  {ms['seconds'][0]:.0f}s"
            )


if __name__ == "__main__":
    main()
