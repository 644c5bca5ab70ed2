"""One TopK SAE training step: sparsecodes vs sae-lens vs sparsify, side by side (CPU or CUDA).

Setting (defaults): d_in=576, n_latents=4608, k=32, batch 4096, fp32 master weights,
``torch.set_num_threads(2)``. A step is what each tool's own training loop does per batch:

- sparsecodes: ``Trainer.step`` (TopK encode with the sparse-backward fast path, embedding_bag
  decode, backward, parallel-gradient removal, Adam, atom projection, dead-latent bookkeeping).
  Variants: ``fast`` (default config: ``matmul_dtype="auto"`` -> bf16 encoder matmul on CPUs with
  native bf16), ``fast-fp32`` and ``eager-fp32`` (plain autograd); ``torch-ops`` (not in the
  default list) is the default row with the compiled CPU kernels of
  ``sparsecodes.kernels.native`` turned off, so one run shows what they give.
- sae-lens 6: ``TopKTrainingSAE.training_forward_pass`` + backward + Adam.
- sparsify: ``sparsify.SparseCoder.forward`` (fvu + auxk) + backward + parallel-gradient removal
  + Adam + decoder renormalisation.

Every tool gets the same batches, in the same order, with the same Adam lr; no latent is dead
(fresh models), so AuxK costs nothing for anyone. Data: synthetic sparse data, x = s D with
``n_true`` unit-norm Gaussian atoms in R^576 and exactly ``k_true`` active |N(0,1)| codes per row
(so FVU is meaningful: a perfect SAE reaches 0). FVU (variance about the mean) is measured on
held-out rows after every tool has trained on the same ``(warmup + steps) * batch`` tokens.

Other encoders: every SAE-style encoder registered in sparsecodes (``--encoders``, default all
of them but ``topk``, which is the ``sparsecodes`` row) runs the same ``Trainer.step`` on the same
batches as ``encoder:<name>``, so encoders added later appear without editing this file. SAE-style
means amortised, or iterative but trained end to end: an iterative encoder that overrides
``IterativeEncoder.train_step`` (``mp_sae``: the pursuit runs with gradient through the atoms, so
its step includes the differentiable pursuit and its backward); classic sparse coding with an
iterative encoder (codes inferred without gradient) is not an SAE training step and is left out.
A count-type sparsity knob (``k``) is set to ``--k``; penalty-type encoders keep their default
penalty (their L0 is whatever it gives and is reported as ``l0_eval``).

``--device cuda`` (or ``auto``) runs every tool on the GPU, unchanged otherwise: batches and
models live on the device, each timed step ends with ``torch.cuda.synchronize``, and the JSON
records the device name. sparsecodes then uses bf16 autocast (``TrainConfig.autocast="auto"``) in
the ``sparsecodes`` row and fp32 in the ``-fp32`` rows; peers run in fp32 as configured here.

CPU specifics, recorded in the JSON: our dense products go through
``sparsecodes.kernels.gemm`` (numpy's OpenBLAS on AMD CPUs, torch's MKL elsewhere;
``SPARSECODES_GEMM=torch`` forces torch for a like-for-like BLAS), peers use torch's own BLAS;
all tools share the process's ``OMP_WAIT_POLICY`` (PASSIVE unless set: what our command line
uses).

The CPU may be shared: the tools' steps are interleaved batch by batch (``--sequential`` to run
one tool after another), and the JSON records the load average before and after. Re-run on a
quiet machine for publishable numbers::

    python benchmarks/bench_topk_training.py --warmup 3 --steps 20
    python benchmarks/bench_topk_training.py --device cuda --out benchmarks/results/topk_training_gpu.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Every tool runs in this one process under the OpenMP wait policy the `sparsecodes` command sets
# (idle threads sleep; docs/training.md). It must be set before torch loads; an OMP_WAIT_POLICY
# in the environment wins. The JSON records it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torch.nn.functional as F

from sparsecodes.devices import cpu_info

RESULT = Path(__file__).parent / "results" / "topk_training.json"


def make_data(n_rows: int, d: int, n_true: int, k_true: int, seed: int) -> torch.Tensor:
    """``[n_rows, d]`` rows of x = s D (k_true active |N(0,1)| codes on unit-norm atoms)."""
    g = torch.Generator().manual_seed(seed)
    atoms = F.normalize(torch.randn(n_true, d, generator=g), dim=1)
    out = torch.empty(n_rows, d)
    for i in range(0, n_rows, 4096):
        b = min(4096, n_rows - i)
        idx = torch.rand(b, n_true, generator=g).topk(k_true, dim=1).indices
        vals = torch.randn(b, k_true, generator=g).abs()
        out[i : i + b] = F.embedding_bag(idx, atoms, per_sample_weights=vals, mode="sum")
    return out


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return float((x - x_hat).pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum())


# ---------------------------------------------------------------------------- the tools
def sparsecodes_tool(args, variant: str):
    from sparsecodes import SparseCoder
    from sparsecodes.kernels import native
    from sparsecodes.training.trainer import TrainConfig, Trainer

    params = {
        "fast": {"fast": True, "matmul_dtype": "auto"},
        "fast-fp32": {"fast": True, "matmul_dtype": "float32"},
        "eager-fp32": {"fast": False, "matmul_dtype": "float32"},
        "torch-ops": {"fast": True, "matmul_dtype": "auto"},
    }[variant]
    autocast = "off" if variant in ("fast-fp32", "eager-fp32") else "auto"
    model = SparseCoder(args.d_in, args.n_latents, "topk", seed=args.seed, k=args.k, **params)
    model.to(args.device)
    cfg = TrainConfig(steps=10**9, lr=args.lr, batch_size=args.batch, autocast=autocast)
    trainer = Trainer(model, cfg)
    mm = model.encoder.matmul_dtype(args.batch)
    kernels = variant != "torch-ops"  # torch-ops: the default row without the compiled kernels

    def step(x: torch.Tensor) -> None:
        native.set_native(kernels)
        try:
            trainer.step(x, host_scalars=False)  # as the training loop's unlogged steps
        finally:
            native.set_native(True)

    @torch.no_grad()
    def reconstruct(x: torch.Tensor) -> torch.Tensor:
        return model.reconstruct(x)

    info = {"matmul_dtype": str(mm).replace("torch.", ""), "autocast": autocast, **params}
    info["native_kernels"] = kernels and native.library() is not None
    return step, reconstruct, info


def sae_style_encoders() -> list[str]:
    """Registered encoders with an SAE training step: amortised ones, and iterative ones that
    override ``IterativeEncoder.train_step`` (trained end to end, e.g. ``mp_sae``)."""
    from sparsecodes.encoders import available_encoders, get_encoder_class
    from sparsecodes.encoders.base import IterativeEncoder

    out = []
    for name in available_encoders():
        cls = get_encoder_class(name)
        if cls.kind == "amortised" or cls.train_step is not IterativeEncoder.train_step:
            out.append(name)
    return out


def encoder_tool(args, encoder: str):
    """Any SAE-style encoder's ``Trainer.step`` (its count knob set to ``--k``)."""
    from sparsecodes import SparseCoder
    from sparsecodes.experiments.worlds import sparsity_knob
    from sparsecodes.training.trainer import TrainConfig, Trainer

    knob = sparsity_knob(encoder)
    params = {knob.field: args.k} if knob is not None and knob.kind == "count" else {}
    model = SparseCoder(args.d_in, args.n_latents, encoder, seed=args.seed, **params)
    model.to(args.device)
    trainer = Trainer(model, TrainConfig(steps=10**9, lr=args.lr, batch_size=args.batch))

    def step(x: torch.Tensor) -> None:
        trainer.step(x, host_scalars=False)

    @torch.no_grad()
    def reconstruct(x: torch.Tensor) -> torch.Tensor:
        return model.reconstruct(x)

    @torch.no_grad()
    def l0(x: torch.Tensor) -> float:
        return float((model.encode(x) != 0).sum(dim=1).float().mean())

    info = {"encoder": encoder, "encoder_config": model.encoder.config.to_dict(), "l0_fn": l0}
    return step, reconstruct, info


def saelens_tool(args):
    import sae_lens
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    torch.manual_seed(args.seed)
    cfg = TopKTrainingSAEConfig(
        d_in=args.d_in, d_sae=args.n_latents, k=args.k, device=str(args.device)
    )
    sae = TopKTrainingSAE(cfg)
    sae.train()
    opt = torch.optim.Adam(sae.parameters(), lr=args.lr)
    dead = torch.zeros(args.n_latents, dtype=torch.bool, device=args.device)
    n = [0]

    def step(x: torch.Tensor) -> None:
        out = sae.training_forward_pass(
            TrainStepInput(
                sae_in=x,
                coefficients={},
                dead_neuron_mask=dead,
                n_training_steps=n[0],
                is_logging_step=False,
            )
        )
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        n[0] += 1

    @torch.no_grad()
    def reconstruct(x: torch.Tensor) -> torch.Tensor:
        sae.eval()
        y = sae(x)
        sae.train()
        return y

    return step, reconstruct, {"version": sae_lens.__version__, "class": "TopKTrainingSAE"}


def sparsify_tool(args):
    import contextlib
    import importlib.metadata
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # sparsify prints a Triton notice at import
        from sparsify import SparseCoder as SparsifyCoder
        from sparsify import SparseCoderConfig

    torch.manual_seed(args.seed)
    sae = SparsifyCoder(
        args.d_in, SparseCoderConfig(num_latents=args.n_latents, k=args.k), device=args.device
    )
    opt = torch.optim.Adam(sae.parameters(), lr=args.lr)
    dead = torch.zeros(args.n_latents, dtype=torch.bool, device=args.device)

    def step(x: torch.Tensor) -> None:
        out = sae(x, dead_mask=dead)
        loss = out.fvu + out.auxk_loss / 32
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        sae.set_decoder_norm_to_unit_norm()

    @torch.no_grad()
    def reconstruct(x: torch.Tensor) -> torch.Tensor:
        return sae(x).sae_out

    return step, reconstruct, {"version": importlib.metadata.version("eai-sparsify")}


# ---------------------------------------------------------------------------- harness
def run_tools(
    names: list[str],
    builders: dict[str, Callable],
    batches: list[torch.Tensor],
    x_eval: torch.Tensor,
    warmup: int,
    device: torch.device,
    interleave: bool = True,
) -> list[dict]:
    """Time every tool's step on every batch; one result row per tool.

    ``interleave`` (default): all tools are built first, then batch ``i`` is stepped by each tool
    in turn before batch ``i + 1``, so a change of machine load during the run hits every tool
    alike (the ratios stay comparable on a shared machine); otherwise each tool runs all its
    batches before the next tool starts."""
    from sparsecodes.devices import synchronize

    def time_step(step: Callable, x: torch.Tensor) -> float:
        synchronize(device)
        t0 = time.perf_counter()
        step(x)
        synchronize(device)
        return time.perf_counter() - t0

    def row(name: str, built: tuple, times: list[float]) -> dict:
        _step, reconstruct, info = built
        l0_fn = info.pop("l0_fn", None)
        batch = batches[0].shape[0]
        med = statistics.median(times)
        res = {
            "tool": name,
            **info,
            "step_ms_median": 1e3 * med,
            "step_ms_min": 1e3 * min(times),
            "step_ms_mean": 1e3 * statistics.fmean(times),
            "tokens_per_s": batch / med,
            "tokens_per_s_best": batch / min(times),
            "timed_steps": len(times),
            "train_tokens": batch * len(batches),
            "fvu_eval": fvu(x_eval, reconstruct(x_eval)),
        }
        if l0_fn is not None:
            res["l0_eval"] = l0_fn(x_eval)
        print(
            f"{name:26s} {res['step_ms_median']:8.1f} ms/step  {res['tokens_per_s']:9.0f} tok/s  "
            f"FVU {res['fvu_eval']:.4f}",
            flush=True,
        )
        return res

    if not interleave:
        out = []
        for name in names:
            built = builders[name]()
            times = [time_step(built[0], x) for x in batches]
            out.append(row(name, built, times[warmup:]))
        return out
    built = {name: builders[name]() for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for x in batches:
        for name in names:
            times[name].append(time_step(built[name][0], x))
    return [row(name, built[name], times[name][warmup:]) for name in names]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20, help="timed steps per tool")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (they train too)")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--d-in", type=int, default=576)
    p.add_argument("--n-latents", type=int, default=4608)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--n-true", type=int, default=4608, help="true latents of the synthetic data")
    p.add_argument("--k-true", type=int, default=32, help="active true latents per row")
    p.add_argument("--eval-rows", type=int, default=8192)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument(
        "--tools",
        default="sparsecodes,sparsecodes-fast-fp32,sparsecodes-eager-fp32,sparsify,sae-lens",
        help="comma-separated subset to run",
    )
    p.add_argument(
        "--encoders",
        default="all",
        help="comma-separated registered SAE-style encoders (amortised, or iterative trained "
        "end to end such as mp_sae) to time as 'encoder:<name>' rows; "
        "'all' (default): every one registered except topk (the 'sparsecodes' row); 'none'",
    )
    p.add_argument(
        "--sequential",
        action="store_true",
        help="run each tool's steps before the next tool's (default: interleaved, batch by "
        "batch, so load changes on a shared machine hit all tools alike)",
    )
    p.add_argument("--out", type=Path, default=RESULT)
    p.add_argument(
        "--merge",
        action="store_true",
        help="add this run's rows to the existing --out report (same tool replaced; each merged "
        "row records its own load and, if 'sparsecodes' ran too, that run's TopK throughput)",
    )
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    torch.set_num_threads(args.threads)
    from sparsecodes.devices import device_name, resolve_device
    from sparsecodes.kernels.gemm import gemm_backend

    args.device = resolve_device(args.device)

    n_train = (args.warmup + args.steps) * args.batch
    data = make_data(n_train + args.eval_rows, args.d_in, args.n_true, args.k_true, args.seed)
    data = data.to(args.device)
    batches = list(data[:n_train].split(args.batch))
    x_eval = data[n_train:]

    builders = {
        "sparsecodes": lambda: sparsecodes_tool(args, "fast"),
        "sparsecodes-fast-fp32": lambda: sparsecodes_tool(args, "fast-fp32"),
        "sparsecodes-eager-fp32": lambda: sparsecodes_tool(args, "eager-fp32"),
        "sparsecodes-torch-ops": lambda: sparsecodes_tool(args, "torch-ops"),
        "sparsify": lambda: sparsify_tool(args),
        "sae-lens": lambda: saelens_tool(args),
    }
    trainable = sae_style_encoders()
    if args.encoders == "all":
        encoders = [e for e in trainable if e != "topk"]
    elif args.encoders == "none":
        encoders = []
    else:
        encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
        bad = sorted(set(encoders) - set(trainable))
        if bad:
            p.error(
                f"not SAE-style encoders (amortised, or iterative trained end to end): {bad}; "
                f"choose from {trainable}"
            )
    for e in encoders:
        builders[f"encoder:{e}"] = lambda e=e: encoder_tool(args, e)
    wanted = [t.strip() for t in args.tools.split(",") if t.strip()]
    wanted += [f"encoder:{e}" for e in encoders if f"encoder:{e}" not in wanted]
    unknown = sorted(set(wanted) - set(builders))
    if unknown:
        p.error(f"unknown tools {unknown}; choose from {sorted(builders)}")

    load_before = os.getloadavg()
    t_start = time.time()
    results = run_tools(
        wanted, builders, batches, x_eval, args.warmup, args.device, not args.sequential
    )
    by = {r["tool"]: r for r in results}
    ratios = {}
    if "sparsecodes" in by:
        for peer in ("sparsify", "sae-lens", *[f"encoder:{e}" for e in encoders]):
            if peer in by:
                ratios[f"sparsecodes_vs_{peer}"] = (
                    by["sparsecodes"]["tokens_per_s"] / by[peer]["tokens_per_s"]
                )
    report = {
        "benchmark": "topk_training_step",
        "config": {
            k: (str(v) if isinstance(v, Path | torch.device) else v) for k, v in vars(args).items()
        },
        "device": str(args.device),
        "device_name": device_name(args.device),
        "data": (
            f"synthetic sparse: x = s D, {args.n_true} unit-norm Gaussian atoms in "
            f"R^{args.d_in}, exactly {args.k_true} active |N(0,1)| codes per row, no noise; "
            f"{n_train} training rows shared by all tools, {args.eval_rows} held-out rows for FVU"
        ),
        "step_definition": "forward + backward + Adam (+ each tool's own decoder-norm upkeep)",
        "results": results,
        "ratios_tokens_per_s": ratios,
        "machine": {
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_model": cpu_info("model name"),
            "gemm_backend": gemm_backend(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "platform": platform.platform(),
            "load_avg_before": load_before,
            "load_avg_after": os.getloadavg(),
            "wall_s": time.time() - t_start,
        },
    }
    for name, r in ratios.items():
        print(f"{name}: {r:.2f}x")
    from sparsecodes.files import write_json

    if args.merge:
        report = merge_into(args.out, report)
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return report


def merge_into(path: Path, new: dict) -> dict:
    """``path``'s report with ``new``'s rows added (a row of the same tool replaced).

    Each merged row keeps its own run: ``row["run"]`` has the new run's config and machine block
    (load average before/after) and, when that run also timed the ``sparsecodes`` (TopK) row, its
    TopK throughput under the same load; the row's ratio in ``ratios_tokens_per_s`` is then
    against that same-run TopK, not against the older report's. The older report's own
    ``sparsecodes`` row is left as it was.
    """
    import json

    old = json.loads(Path(path).read_text())
    topk = next((r for r in new["results"] if r["tool"] == "sparsecodes"), None)
    rows = {r["tool"]: r for r in old["results"]}
    for r in new["results"]:
        if r["tool"] == "sparsecodes":
            continue
        run = {"config": new["config"], "machine": new["machine"]}
        if topk is not None:
            run["same_run_topk_tokens_per_s"] = topk["tokens_per_s"]
            run["same_run_topk_step_ms_median"] = topk["step_ms_median"]
            old.setdefault("ratios_tokens_per_s", {})[f"sparsecodes_vs_{r['tool']}"] = (
                topk["tokens_per_s"] / r["tokens_per_s"]
            )
        rows[r["tool"]] = {**r, "run": run}
    old["results"] = list(rows.values())
    return old


if __name__ == "__main__":
    main()
