"""Our encoders vs SAELens's, side by side on data from ``sae_lens.synthetic``, judged by SAELens.

World: a ``sae_lens.synthetic.SyntheticModel`` with Zipfian firing, a mutually exclusive hierarchy,
low-rank correlation and folded-normal magnitudes (``--n-features`` >= 4096 features in ``--d``
dimensions). Sampling it is slow on CPU (about 1 ms per row at 4096 features: the dense copula), so
ONE training set of ``--samples`` rows is drawn once and every trainer sees exactly those rows, in
the same order, for the same number of steps (``--epochs`` passes, batch ``--batch``, Adam at
``--lr``):

- SAELens: its own ``sae_lens.synthetic.train_toy_sae`` (its ``SAETrainer``), fed the pre-drawn
  rows through an identity feature dictionary (``train_toy_sae`` maps features -> hidden with the
  dictionary; here the "features" it is given are the hidden rows themselves), for each of its
  architectures in ``--saelens`` (standard, topk, batchtopk, jumprelu; SAELens defaults except
  ``k``).
- sparsecodes: ``Trainer`` on the same rows for every registered amortised encoder (``--encoders``,
  default all: encoders added later appear without editing this file). Count knobs (``k``) are set
  to ``--k`` like SAELens's; penalty encoders use fixed a-priori penalties (:data:`PENALTIES`),
  never tuned on the evaluation.

Judge: SAELens's ``eval_sae_on_synthetic_data`` on fresh samples (the same seed for every model).
Our coders are converted to SAELens SAEs by ``sparsecodes.formats.saelens.save_saelens`` then
``sae_lens.SAE.load_from_disk`` where SAELens has the architecture; LISTA and the MLP encoder have
none, so they are wrapped in an object with SAELens's ``encode``/``decode``/``W_dec`` (MCC there
depends only on the decoder, so the wrapper cannot change it). The headline metric is SAELens's
MCC (Hungarian matching of decoder rows to true features on ``|cosine|``). Iterative inference
on our best dictionary is not run: SAELens's MCC depends on the dictionary alone, so it cannot
change the headline number.

Floors: each seed also judges both tools' untrained models (``untrained``), never counted as a
best method. Random atoms already score MCC about 0.32 on this world, so a trained model counts
only by how far it rises above that. SAELens's models are initialised under a seed derived from
the model seed (:func:`saelens_init_seed`), never the world's own seed: ``SyntheticModel`` draws
its true features from torch's global generator, and an SAE initialised under the same seed starts
correlated with them (MCC 0.360 untrained, against 0.320 at other seeds).

The recorded run (``results/saelens_synthetic.json``, docs/synthetic.md) is d=128, 4096 latents,
300 steps of batch 128 over 12,800 pre-drawn rows (3 epochs), seeds 0, 1, 2 in parallel
processes; our training-loss curves (``mse_curve``) are in the JSON::

    python benchmarks/bench_saelens_synthetic.py --samples 12800 --epochs 3 --batch 128 \
        --seeds 0,1,2 --jobs 3 --threads 1 --saelens topk,batchtopk --encoders topk,batchtopk

The defaults (16,384 rows, one epoch, every amortised encoder of ours) are a broader, shorter
run::

    python benchmarks/bench_saelens_synthetic.py            # -> results/saelens_synthetic.json
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

RESULT = Path(__file__).parent / "results" / "saelens_synthetic.json"
log = logging.getLogger("bench_saelens_synthetic")

#: fixed penalties of our penalty-type encoders (the synthetic study's defaults, set a priori)
PENALTIES: dict[str, dict[str, float]] = {
    "relu": {"l1": 0.1},
    "gated": {"l1": 0.1},
    "lista": {"l1": 0.1},
    "mlp": {"l1": 0.1},
    "jumprelu": {"l0_coef": 0.01},
}


def build_world(args: argparse.Namespace) -> Any:
    import sae_lens.synthetic as syn

    return syn.SyntheticModel(
        syn.SyntheticModelConfig(
            num_features=args.n_features,
            hidden_dim=args.d,
            firing_probability=syn.ZipfianFiringProbabilityConfig(
                exponent=args.zipf, max_prob=args.max_prob, min_prob=args.min_prob
            ),
            hierarchy=syn.HierarchyConfig(
                total_root_nodes=args.roots,
                branching_factor=args.branching,
                max_depth=1,
                mutually_exclusive_portion=1.0,
            ),
            correlation=syn.LowRankCorrelationConfig(rank=args.rank, correlation_scale=0.1),
            std_firing_magnitudes=0.15,
            mean_firing_magnitudes=1.0,
            seed=args.world_seed,
        )
    )


@torch.no_grad()
def draw(world: Any, n: int, chunk: int = 4096) -> tuple[torch.Tensor, float]:
    """``[n, d]`` hidden rows (and their mean true L0), drawn in chunks."""
    xs, l0 = [], 0.0
    for lo in range(0, n, chunk):
        f = world.activation_generator.sample(min(chunk, n - lo))
        l0 += float((f != 0).sum())
        xs.append(world.feature_dict(f))
    return torch.cat(xs), l0 / n


class Rows:
    """The pre-drawn rows, in order, ``epochs`` times: one stream every trainer reads."""

    def __init__(self, x: torch.Tensor, batch: int, steps: int) -> None:
        self.x, self.batch, self.steps, self.served = x, batch, steps, 0

    def next(self) -> torch.Tensor:
        if self.served >= self.steps:
            raise RuntimeError(f"a trainer asked for more than the {self.steps} agreed batches")
        n = self.x.shape[0] // self.batch
        i = self.served % n
        self.served += 1
        return self.x[i * self.batch : (i + 1) * self.batch]


class IdentityDictionary(nn.Module):
    """Stands in for SAELens's ``FeatureDictionary`` so ``train_toy_sae`` trains on given rows."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.feature_vectors = torch.zeros(1, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class RowSource:
    """An ``ActivationSource`` over :class:`Rows` for our ``Trainer``."""

    def __init__(self, rows: Rows) -> None:
        self.rows, self.d_in = rows, rows.x.shape[1]

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, None]]:
        while True:
            yield self.rows.next(), None

    def state_dict(self) -> dict[str, Any]:
        return {"served": self.rows.served}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows.served = int(state["served"])


class WrappedCoder(nn.Module):
    """A SparseCoder with SAELens's evaluation interface (``W_dec``, ``encode``, ``decode``)."""

    def __init__(self, coder: Any) -> None:
        super().__init__()
        self.coder = coder
        self.W_dec = coder.W_dec.detach()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.coder.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.coder.decode(z)


def saelens_init_seed(seed: int) -> int:
    """The torch seed SAELens's models are initialised under at model seed ``seed``.

    Not ``seed`` itself: ``SyntheticModel(seed=world_seed)`` draws its true feature vectors from
    torch's global generator seeded with ``world_seed``, so an SAE initialised under the same seed
    starts with decoder rows correlated with the true features (measured: an untrained SAELens
    TopK SAE scores MCC 0.360 at seed 0 = world seed 0, against 0.320 at seeds 1 and 2).
    """
    from sparsecodes.seeding import derive_seed

    return derive_seed(seed, "bench_saelens_synthetic:saelens-init")


def train_saelens(arch: str, x: torch.Tensor, args: argparse.Namespace, seed: int) -> Any:
    import sae_lens
    from sae_lens.synthetic import train_toy_sae

    d, L = args.d, args.n_latents
    cfgs = {
        "standard": lambda: sae_lens.StandardTrainingSAEConfig(d_in=d, d_sae=L),
        "topk": lambda: sae_lens.TopKTrainingSAEConfig(d_in=d, d_sae=L, k=args.k),
        "batchtopk": lambda: sae_lens.BatchTopKTrainingSAEConfig(d_in=d, d_sae=L, k=args.k),
        "jumprelu": lambda: sae_lens.JumpReLUTrainingSAEConfig(d_in=d, d_sae=L),
    }
    classes = {
        "standard": sae_lens.StandardTrainingSAE,
        "topk": sae_lens.TopKTrainingSAE,
        "batchtopk": sae_lens.BatchTopKTrainingSAE,
        "jumprelu": sae_lens.JumpReLUTrainingSAE,
    }
    torch.manual_seed(saelens_init_seed(seed))
    sae = classes[arch](cfgs[arch]())
    rows = Rows(x, args.batch, args.steps)
    train_toy_sae(
        sae,
        IdentityDictionary(d),  # type: ignore[arg-type]
        lambda n: rows.next(),  # type: ignore[arg-type]
        training_samples=args.steps * args.batch,
        batch_size=args.batch,
        lr=args.lr,
    )
    if rows.served != args.steps:
        raise RuntimeError(f"SAELens trained on {rows.served} batches, expected {args.steps}")
    with tempfile.TemporaryDirectory() as tmp:
        sae.save_inference_model(tmp)
        return sae_lens.SAE.load_from_disk(tmp)


def train_ours(encoder: str, x: torch.Tensor, args: argparse.Namespace, seed: int) -> Any:
    import sae_lens

    from sparsecodes import SparseCoder
    from sparsecodes.experiments.worlds import sparsity_knob
    from sparsecodes.formats.saelens import ENCODER_TO_ARCH, save_saelens
    from sparsecodes.training.trainer import TrainConfig, Trainer

    knob = sparsity_knob(encoder)
    params = dict(PENALTIES.get(encoder, {}))
    if knob is not None and knob.kind == "count":
        params[knob.field] = args.k
    coder = SparseCoder(args.d, args.n_latents, encoder, seed=seed, **params)
    rows = Rows(x, args.batch, args.steps)
    log_every = max(1, args.steps // 16)
    trainer = Trainer(
        coder,
        TrainConfig(
            steps=args.steps, lr=args.lr, batch_size=args.batch, seed=seed, log_every=log_every
        ),
    )
    trainer.fit(RowSource(rows))
    curve = [[int(r["step"]), float(r["mse"])] for r in trainer.state.history]
    coder.mark_fitted()
    if rows.served != args.steps:
        raise RuntimeError(f"{encoder} trained on {rows.served} batches, expected {args.steps}")
    params = {**params, "mse_curve": curve}
    if encoder not in ENCODER_TO_ARCH:
        return WrappedCoder(coder), "wrapped (SAELens has no such architecture)", params
    with tempfile.TemporaryDirectory() as tmp:
        save_saelens(coder, tmp)
        return sae_lens.SAE.load_from_disk(tmp), "save_saelens -> SAE.load_from_disk", params


def untrained(tool: str, args: argparse.Namespace, seed: int) -> Any:
    """The initial model of ``tool`` at ``seed``: the floor every trained model must clear."""
    if tool == "sae-lens":
        import sae_lens

        torch.manual_seed(saelens_init_seed(seed))
        cfg = sae_lens.TopKTrainingSAEConfig(d_in=args.d, d_sae=args.n_latents, k=args.k)
        return sae_lens.TopKTrainingSAE(cfg)
    from sparsecodes import SparseCoder

    return WrappedCoder(SparseCoder(args.d, args.n_latents, "topk", seed=seed, k=args.k))


def judge(sae: Any, world: Any, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    from sae_lens.synthetic import eval_sae_on_synthetic_data

    torch.manual_seed(10_000 + seed)  # every model is judged on the same fresh samples
    with torch.no_grad():
        res = eval_sae_on_synthetic_data(
            sae,
            world.feature_dict,
            world.activation_generator,
            num_samples=args.eval_samples,
            batch_size=1024,
        )
    c = res.classification
    return {
        "mcc": float(res.mcc),
        "uniqueness": float(res.uniqueness),
        "sae_l0": float(res.sae_l0),
        "true_l0": float(res.true_l0),
        "dead_latents": int(res.dead_latents),
        "shrinkage": float(res.shrinkage),
        "explained_variance": float(res.explained_variance),
        "precision": float(c.precision),
        "recall": float(c.recall),
        "f1": float(c.f1_score),
    }


def make_report(
    args: argparse.Namespace,
    runs: list[dict[str, Any]],
    seeds: list[int],
    true_l0: float,
    sample_s: float,
    t0: float,
) -> dict[str, Any]:
    """The JSON report of the runs so far (summary per method, verdict, machine)."""
    summary: dict[str, dict[str, Any]] = {}
    for r in runs:
        key = f"{r['tool']}:{r['method']}"
        summary.setdefault(key, {"tool": r["tool"], "method": r["method"], "mcc": []})
        summary[key]["mcc"].append(r["mcc"])
    for s in summary.values():
        vals = s.pop("mcc")
        s.update(
            mcc_per_seed=vals,
            mcc_mean=statistics.fmean(vals),
            mcc_std=statistics.pstdev(vals) if len(vals) > 1 else 0.0,
        )
    trained = [s for s in summary.values() if s["method"] != "untrained"]
    best = {
        tool: max((s for s in trained if s["tool"] == tool), key=lambda s: s["mcc_mean"])
        for tool in ("sae-lens", "sparsecodes")
        if any(s["tool"] == tool for s in trained)
    }
    verdict = None
    if len(best) == 2:
        ours_best, theirs_best = best["sparsecodes"], best["sae-lens"]
        done = [r for r in runs if r["method"] != "untrained"]
        per_seed = [
            max(r["mcc"] for r in done if r["tool"] == "sparsecodes" and r["seed"] == s)
            >= max(r["mcc"] for r in done if r["tool"] == "sae-lens" and r["seed"] == s)
            for s in seeds
            if any(r["seed"] == s and r["tool"] == "sae-lens" for r in done)
            and any(r["seed"] == s and r["tool"] == "sparsecodes" for r in done)
        ]
        verdict = {
            "ours_best": ours_best["method"],
            "ours_best_mcc": ours_best["mcc_mean"],
            "saelens_best": theirs_best["method"],
            "saelens_best_mcc": theirs_best["mcc_mean"],
            "ours_best_at_least_saelens_best": ours_best["mcc_mean"] >= theirs_best["mcc_mean"],
            "holds_per_seed": per_seed,
        }
    import sae_lens

    report = {
        "benchmark": "saelens_synthetic",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "world": (
            f"sae_lens.synthetic.SyntheticModel: {args.n_features} features in R^{args.d}, "
            f"Zipfian firing (exponent {args.zipf}, probs {args.min_prob}..{args.max_prob}), "
            f"{args.roots} mutually exclusive trees of {args.branching} children, rank-"
            f"{args.rank} correlation (scale 0.1), magnitudes N(1, 0.15), bias norm 1, seed "
            f"{args.world_seed}; true L0 {true_l0:.3f}"
        ),
        "protocol": (
            f"one pre-drawn set of {args.samples} rows, read in the same order by every trainer "
            f"for {args.steps} steps of batch {args.batch} ({args.epochs} epochs), Adam lr "
            f"{args.lr}; SAELens via train_toy_sae, ours via Trainer; all judged by "
            f"eval_sae_on_synthetic_data on {args.eval_samples} fresh samples (same seed per "
            "model seed); seeds vary model initialisation only"
        ),
        "penalties": PENALTIES,
        "sampling_s": sample_s,
        "complete": len(runs) == len(seeds) * (2 + len(args.saelens_list) + len(args.encoder_list)),
        "runs": runs,
        "summary": list(summary.values()),
        "verdict": verdict,
        "machine": {
            "torch": torch.__version__,
            "sae_lens": sae_lens.__version__,
            "python": sys.version.split()[0],
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_after": os.getloadavg(),
            "wall_s": time.time() - t0,
        },
    }
    return report


#: the world and the pre-drawn rows, set before seed workers fork
_SHARED: dict[str, Any] = {}


def run_seed(
    seed: int, args: argparse.Namespace, report: tuple[Any, ...] | None = None
) -> list[dict[str, Any]]:
    """Every method of both tools at one model seed (untrained floors first)."""
    from sparsecodes.files import write_json

    torch.set_num_threads(args.threads)
    world, x = _SHARED["world"], _SHARED["x"]
    runs: list[dict[str, Any]] = []
    plan = [("sae-lens", "untrained"), ("sparsecodes", "untrained")]
    plan += [("sae-lens", n) for n in args.saelens_list]
    plan += [("sparsecodes", n) for n in args.encoder_list]
    for tool, name in plan:
        t = time.time()
        if name == "untrained":
            sae, how, params = untrained(tool, args, seed), "initial model", {}
        elif tool == "sae-lens":
            sae, how, params = train_saelens(name, x, args, seed), "SAE.load_from_disk", {}
        else:
            sae, how, params = train_ours(name, x, args, seed)
        train_s = time.time() - t
        m = judge(sae, world, args, seed)
        runs.append(
            {"tool": tool, "method": name, "seed": seed, "params": params,
             "conversion": how, "train_s": train_s, **m}
        )  # fmt: skip
        log.info(
            "seed %d %-11s %-20s MCC %.4f  L0 %.2f  F1 %.3f  (%.0fs)",
            seed, tool, name, m["mcc"], m["sae_l0"], m["f1"], train_s,
        )  # fmt: skip
        if report is not None:  # sequential: after every run, so an interruption keeps it
            done, seeds, true_l0, sample_s, t0 = report
            write_json(args.out, make_report(args, done + runs, seeds, true_l0, sample_s, t0))
    return runs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-features", type=int, default=4096)
    p.add_argument("--d", type=int, default=128, help="hidden dimension of the world")
    p.add_argument("--n-latents", type=int, default=4096)
    p.add_argument("--k", type=int, default=None, help="k of TopK-type SAEs [default: true L0]")
    p.add_argument("--zipf", type=float, default=0.5)
    p.add_argument("--max-prob", type=float, default=0.08)
    p.add_argument("--min-prob", type=float, default=0.0008)
    p.add_argument("--roots", type=int, default=128)
    p.add_argument("--branching", type=int, default=4)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--samples", type=int, default=16384, help="pre-drawn training rows")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-samples", type=int, default=2048)
    p.add_argument("--seeds", default="0,1", help="model-initialisation seeds")
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--saelens", default="standard,topk,batchtopk", help="also: jumprelu")
    p.add_argument("--encoders", default="all", help="our amortised encoders ('all': every one)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per process")
    p.add_argument("--jobs", type=int, default=1, help="seeds trained in parallel processes")
    p.add_argument("--out", type=Path, default=RESULT)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    from sparsecodes.encoders import available_encoders
    from sparsecodes.files import write_json

    ours = (
        available_encoders("amortised")
        if args.encoders == "all"
        else [e.strip() for e in args.encoders.split(",") if e.strip()]
    )
    theirs = [a.strip() for a in args.saelens.split(",") if a.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    args.saelens_list, args.encoder_list = theirs, ours
    args.steps = args.epochs * (args.samples // args.batch)

    t0 = time.time()
    world = build_world(args)
    torch.manual_seed(args.world_seed)  # SAELens samples from the global generator
    x, true_l0 = draw(world, args.samples)
    sample_s = time.time() - t0
    if args.k is None:
        args.k = max(1, round(true_l0))
    log.info(
        "drew %d rows in %.1fs (true L0 %.2f, k=%d); %d steps of %d",
        args.samples, sample_s, true_l0, args.k, args.steps, args.batch,
    )  # fmt: skip

    runs: list[dict[str, Any]] = []
    _SHARED.update(world=world, x=x)
    if args.jobs > 1 and len(seeds) > 1:
        # forked workers inherit the world and the rows; each trains one seed
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(min(args.jobs, len(seeds)), mp_context=ctx) as pool:
            for seed_runs in pool.map(run_seed, seeds, [args] * len(seeds)):
                runs += seed_runs
                write_json(args.out, make_report(args, runs, seeds, true_l0, sample_s, t0))
    else:
        for seed in seeds:
            runs += run_seed(seed, args, report=(runs, seeds, true_l0, sample_s, t0))

    report = make_report(args, runs, seeds, true_l0, sample_s, t0)
    log.info("verdict: %s", report["verdict"])
    write_json(args.out, report)
    log.info("wrote %s (%.0fs)", args.out, time.time() - t0)
    return report


if __name__ == "__main__":
    main()
