"""Batched FISTA / OMP (sparsecodes) against scikit-learn's ``SparseCoder`` on the same problem.

Synthetic sparse-coding problem (the compute-optimal inference paper's model, larger): ``N``
unit-norm Gaussian atoms in ``R^M``, codes with exactly ``K`` active ``|N(0,1)|`` entries,
``x = s D`` without noise. On the same machine, in the same run:

- ``fista`` (ours, non-negative, adaptive restart) vs sklearn ``transform_algorithm="lasso_cd"``
  with ``positive_code=True``. Both minimise ``0.5 ||x - z D||^2 + l1 ||z||_1`` per row: sklearn
  divides ``transform_alpha`` by ``n_features`` and its Lasso divides the squared error by
  ``2 n_features``, so ``transform_alpha = l1`` is the matched value (the JSON reports both mean
  objectives to show it).
- ``omp`` (ours, ``k = K``, signed) vs sklearn ``transform_algorithm="omp"`` with
  ``transform_n_nonzero_coefs = K``.

Reported per method: code MCC against the true codes (``sparsecodes.metrics.code_mcc`` when it
exists, else the DESIGN.md definition computed here), wall time of each repeat, exact-support
rate, mean nonzeros, FVU; and sklearn-time / our-time ratios. torch runs on ``--threads`` threads,
sklearn with ``n_jobs=--threads``. The repeats are interleaved: round ``i`` runs every method once
(ours, then sklearn's) before round ``i + 1``, so a change of machine load hits all methods
alike; the 1-minute load average before each repeat is recorded, because timings on a shared
machine are noisy.

Our dense float32 CPU products go through :func:`sparsecodes.kernels.gemm.matmul` (numpy's
OpenBLAS on AMD CPUs, where it beats the MKL inside torch's wheels; scikit-learn runs with its
own BLAS). The JSON names the backend (``gemm_backend``), and when it is not ``torch`` our
methods are also timed with ``SPARSECODES_GEMM=torch`` (result keys ``...,gemm=torch]``).

``--device cuda`` (or ``auto``) runs our encoders on the GPU unchanged (rows, dictionary and
encoders on the device, one batched call, ``torch.cuda.synchronize`` before each clock read; the
``chunks`` mode is CPU-only and skipped); sklearn stays on the CPU. The JSON records the device
name.

    python benchmarks/bench_inference_sklearn.py                      # full size, writes JSON
    python benchmarks/bench_inference_sklearn.py --samples 512 --out /tmp/quick.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import scipy
import sklearn
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from sklearn.decomposition import SparseCoder as SkSparseCoder

from sparsecodes.codes import to_dense
from sparsecodes.devices import cpu_info
from sparsecodes.dictionary import Dictionary
from sparsecodes.encoders import make_encoder

DEFAULT_OUT = Path(__file__).parent / "results" / "inference_sklearn.json"


def _code_mcc_local(true: np.ndarray, codes: np.ndarray) -> float:
    """DESIGN.md code MCC: |Pearson| between latents over samples, zero-variance -> 0, optimal
    one-to-one matching (``linear_sum_assignment``), mean over matched pairs."""
    a = true - true.mean(0)
    b = codes - codes.mean(0)
    na, nb = np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0)
    corr = np.abs(a.T @ b)
    denom = np.outer(na, nb)
    corr = np.divide(corr, denom, out=np.zeros_like(corr), where=denom > 0)
    rows, cols = linear_sum_assignment(corr, maximize=True)
    return float(corr[rows, cols].mean())


def code_mcc(true: np.ndarray, codes: np.ndarray) -> tuple[float, str]:
    try:
        from sparsecodes.metrics import code_mcc as lib_mcc
    except ImportError:
        return _code_mcc_local(true, codes), "benchmark-local (DESIGN.md definition)"
    return float(lib_mcc(torch.from_numpy(true), torch.from_numpy(codes))), "sparsecodes.metrics"


def make_problem(n: int, m: int, k: int, samples: int, seed: int):
    """``(x [S, M], codes [S, N], atoms [N, M])`` float32, exactly ``k`` active per row."""
    g = torch.Generator().manual_seed(seed)
    atoms = F.normalize(torch.randn(n, m, generator=g), dim=1)
    idx = torch.rand(samples, n, generator=g).argsort(dim=1)[:, :k]
    vals = torch.randn(samples, k, generator=g).abs()
    codes = torch.zeros(samples, n).scatter_(1, idx, vals)
    return codes @ atoms, codes, atoms


def timed(
    fn: Callable[[], np.ndarray], repeats: int, *, quiet: bool = False
) -> tuple[np.ndarray, list[float], dict[str, int]]:
    """Run ``fn`` ``repeats`` times; its output, wall times, and counts of warnings it raised.

    ``quiet`` ignores warnings instead (for sklearn: it hands the parent's warning filters to its
    worker processes, and lasso_cd on float32 rows warns once per row that its 1e-8 duality-gap
    tolerance was not met)."""
    times, out, counts = [], None, {}
    for _ in range(repeats):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("ignore" if quiet else "always")
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        for w in caught:
            counts[w.category.__name__] = counts.get(w.category.__name__, 0) + 1
    assert out is not None
    return out, times, counts


MODE_DOC = {
    "threads": "torch.set_num_threads(T), one call on all rows",
    "chunks": "T Python threads x 1 intra-op thread, rows split in T chunks",
}


def prepare_ours(name, m, n, enc_kw, x_t, dictionary, mode, threads, device="cpu", gemm=None):
    """A call that encodes all rows with encoder ``name`` (dense codes as numpy) and its encoders.

    Each call sets the thread count of ``mode`` and the gemm backend (``gemm``; None: this
    process's choice) itself and restores both, so calls of different methods can interleave."""
    from sparsecodes.devices import synchronize
    from sparsecodes.kernels import gemm as gemm_mod

    x_t, dictionary = x_t.to(device), dictionary.to(device)
    if mode == "threads":
        encs = [make_encoder(name, m, n, **enc_kw).to(device)]
        chunks = [x_t]
    else:
        encs = [make_encoder(name, m, n, **enc_kw).to(device) for _ in range(threads)]
        chunks = list(x_t.chunk(threads))

    def one(e, xs):
        return to_dense(e.encode(xs, dictionary))

    def call() -> np.ndarray:
        before = gemm_mod.gemm_backend()
        if gemm is not None:
            gemm_mod.set_gemm_backend(gemm)
        torch.set_num_threads(threads if mode == "threads" else 1)
        try:
            synchronize(device)
            if len(encs) == 1:
                out = one(encs[0], chunks[0])
            else:
                with ThreadPoolExecutor(len(encs)) as ex:  # torch ops release the GIL
                    out = torch.cat(list(ex.map(one, encs, chunks)))
            synchronize(device)
        finally:
            torch.set_num_threads(threads)
            gemm_mod.set_gemm_backend(before)
        return out.cpu().numpy()

    for e in encs:  # warm-up (first-call allocation), not timed
        e.encode(x_t[:64], dictionary)
    return call, encs


def run_interleaved(
    calls: dict[str, Callable[[], np.ndarray]], repeats: dict[str, int], quiet: set[str]
) -> dict[str, tuple[np.ndarray, list[float], dict[str, int], list[float]]]:
    """Time every method ``repeats[name]`` times, round by round: round ``i`` runs each method
    that has an ``i``-th repeat once before round ``i + 1`` starts, so a change of machine load
    during the run hits every method alike. Per method: its output, wall times, warning counts
    and the 1-minute load average before each repeat."""
    out: dict[str, tuple] = {name: (None, [], {}, []) for name in calls}
    for i in range(max(repeats.values())):
        for name, fn in calls.items():
            if i >= repeats[name]:
                continue
            load = os.getloadavg()[0]
            codes, times, warns = timed(fn, 1, quiet=name in quiet)
            _, all_times, all_warns, loads = out[name]
            all_times.extend(times)
            loads.append(load)
            for key, v in warns.items():
                all_warns[key] = all_warns.get(key, 0) + v
            out[name] = (codes, all_times, all_warns, loads)
            print(f"  round {i + 1}: {name:28s} {times[0]:7.2f} s  (load {load:.2f})", flush=True)
    return out


def summarise(name, codes, times, true, x, atoms, extra=None) -> dict:
    codes = np.asarray(codes, dtype=np.float64)
    true64 = true.astype(np.float64)
    mcc, mcc_src = code_mcc(true64, codes)
    x64 = x.astype(np.float64)
    x_hat = codes @ atoms.astype(np.float64)
    fvu = float(((x64 - x_hat) ** 2).sum() / ((x64 - x64.mean(0)) ** 2).sum())
    support_exact = float(((codes != 0) == (true != 0)).all(axis=1).mean())
    out = {
        "method": name,
        "code_mcc": mcc,
        "mcc_source": mcc_src,
        "wall_s": times,
        "wall_s_min": min(times),
        "wall_s_median": statistics.median(times),
        "exact_support_rate": support_exact,
        "mean_nonzeros": float((codes != 0).sum(1).mean()),
        "fvu": fvu,
    }
    out.update(extra or {})
    return out


def lasso_objective(x: np.ndarray, codes: np.ndarray, atoms: np.ndarray, l1: float) -> float:
    """Mean over rows of ``0.5 ||x - z D||^2 + l1 ||z||_1`` (float64)."""
    r = x.astype(np.float64) - codes.astype(np.float64) @ atoms.astype(np.float64)
    return float((0.5 * (r**2).sum(1) + l1 * np.abs(codes).sum(1)).mean())


def machine_info(threads: int) -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "sklearn": sklearn.__version__,
        "sklearn_n_jobs": threads,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }
    info["cpu_model"] = cpu_info("model name")
    return info


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n-latents", type=int, default=1024, help="N atoms")
    p.add_argument("--d-in", type=int, default=256, help="M dimensions")
    p.add_argument("--k", type=int, default=16, help="K active latents per sample")
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--l1", type=float, default=0.1, help="lasso weight (= sklearn transform_alpha)")
    p.add_argument("--fista-iters", type=int, default=200)
    p.add_argument("--fista-tol", type=float, default=1e-4)
    p.add_argument("--sk-max-iter", type=int, default=1000, help="sklearn transform_max_iter")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of our methods")
    p.add_argument(
        "--sk-repeats", type=int, default=3, help="timed repeats of sklearn's (interleaved)"
    )
    p.add_argument(
        "--torch-parallel",
        default="threads,chunks",
        help="how our encoders use --threads cores (comma list): 'threads' = "
        "torch.set_num_threads(T), one batched call; 'chunks' = T Python threads, one intra-op "
        "thread each, each encoding 1/T of the rows (sklearn's n_jobs splits rows the same way)",
    )
    p.add_argument("--methods", default="fista,lasso_cd,omp,sk_omp")
    p.add_argument("--device", default="cpu", help="our encoders' device: cpu, cuda or auto")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    from sparsecodes.devices import device_name, resolve_device

    device = resolve_device(args.device)

    torch.set_num_threads(args.threads)
    # sklearn's worker processes (joblib/loky) print one ConvergenceWarning per row; silence them
    # there (the parent's own warnings are still counted in the JSON)
    if not os.environ.get("PYTHONWARNINGS"):
        os.environ["PYTHONWARNINGS"] = "ignore"
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    modes = [m.strip() for m in args.torch_parallel.split(",") if m.strip()]
    for mode in modes:
        if mode not in MODE_DOC:
            p.error(f"--torch-parallel: unknown mode {mode!r}; choose from {sorted(MODE_DOC)}")
    if device.type != "cpu":  # thread chunks split CPU cores; a GPU takes one batched call
        modes = [mode for mode in modes if mode == "threads"] or ["threads"]
    n, m, k = args.n_latents, args.d_in, args.k
    x_t, codes_t, atoms_t = make_problem(n, m, k, args.samples, args.seed)
    x, true, atoms = x_t.numpy(), codes_t.numpy(), atoms_t.numpy()
    dictionary = Dictionary.from_atoms(atoms_t)
    load_before = os.getloadavg()

    from sparsecodes.kernels.gemm import gemm_backend

    backend = gemm_backend()
    # our methods: (result key, encoder, encoder kwargs, mode, gemm backend or None)
    ours: list[tuple[str, str, dict, str, str | None]] = []
    fista_kw = {"l1": args.l1, "iters": args.fista_iters, "tol": args.fista_tol}
    gemms: list[str | None] = [None]
    if device.type == "cpu" and backend != "torch":
        gemms.append("torch")  # also our figure with torch's own BLAS (MKL in the pip wheels)
    for gemm in gemms:
        tag = "" if gemm is None else f",gemm={gemm}"
        for mode in modes:
            if "fista" in methods:
                ours.append((f"fista[{mode}{tag}]", "fista", fista_kw, mode, gemm))
            if "omp" in methods:
                ours.append((f"omp[{mode}{tag}]", "omp", {"k": k}, mode, gemm))
    calls: dict[str, Callable[[], np.ndarray]] = {}
    encoders: dict[str, list] = {}
    repeats: dict[str, int] = {}
    for key, name, kw, mode, gemm in ours:
        calls[key], encoders[key] = prepare_ours(
            name, m, n, kw, x_t, dictionary, mode, args.threads, device, gemm
        )
        repeats[key] = args.repeats
    if "lasso_cd" in methods:
        sk_cd = SkSparseCoder(
            dictionary=atoms,
            transform_algorithm="lasso_cd",
            transform_alpha=args.l1,
            transform_max_iter=args.sk_max_iter,
            positive_code=True,
            n_jobs=args.threads,
        )
        calls["lasso_cd"], repeats["lasso_cd"] = (lambda: sk_cd.transform(x)), args.sk_repeats
    if "sk_omp" in methods:
        sk_omp = SkSparseCoder(
            dictionary=atoms,
            transform_algorithm="omp",
            transform_n_nonzero_coefs=k,
            n_jobs=args.threads,
        )
        calls["sk_omp"], repeats["sk_omp"] = (lambda: sk_omp.transform(x)), args.sk_repeats
    timings = run_interleaved(calls, repeats, quiet={"lasso_cd", "sk_omp"})

    results: dict[str, dict] = {}
    for key, name, _kw, mode, gemm in ours:
        codes, times, warns, loads = timings[key]
        label = f"sparsecodes {name} ({'batched, restart, nonneg; ' if name == 'fista' else 'batched; '}"
        extra = {
            "gemm_backend": gemm or backend,
            "load_avg_1m_before_each": loads,
            "warnings": warns,
        }
        if name == "fista":
            extra["iterations_run"] = [e.last_n_iter for e in encoders[key]]
            extra["mean_objective"] = lasso_objective(x, codes, atoms, args.l1)
        results[key] = summarise(f"{label}{MODE_DOC[mode]})", codes, times, true, x, atoms, extra)
    for key, label in (
        ("lasso_cd", "sklearn SparseCoder lasso_cd (positive_code)"),
        ("sk_omp", "sklearn SparseCoder omp"),
    ):
        if key in timings:
            codes, times, warns, loads = timings[key]
            extra = {"load_avg_1m_before_each": loads, "warnings": warns}
            if key == "lasso_cd":
                extra["mean_objective"] = lasso_objective(x, codes, atoms, args.l1)
            results[key] = summarise(label, codes, times, true, x, atoms, extra)

    ratios = {}
    pairs = [(key, "lasso_cd" if name == "fista" else "sk_omp") for key, name, _kw, _m, _g in ours]
    for ours, theirs in pairs:
        if ours in results and theirs in results:
            ratios[f"{theirs}/{ours}"] = {
                "speedup_min": results[theirs]["wall_s_min"] / results[ours]["wall_s_min"],
                "speedup_median": results[theirs]["wall_s_median"] / results[ours]["wall_s_median"],
                "mcc_diff": results[ours]["code_mcc"] - results[theirs]["code_mcc"],
            }
    report = {
        "benchmark": "inference_sklearn",
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "config": {k_: (str(v) if isinstance(v, Path) else v) for k_, v in vars(args).items()},
        "problem": "unit-norm Gaussian atoms, exactly K active |N(0,1)| codes, x = s D, no noise",
        "dtype": "float32 inputs for both libraries",
        "results": results,
        "speed_ratios": ratios,
        "device": str(device),
        "device_name": device_name(device),
        "machine": machine_info(args.threads),
        "gemm_backend": backend,
        "gemm_note": "our dense float32 CPU products go through sparsecodes.kernels.gemm (backend "
        "'openblas': numpy's OpenBLAS, 'torch': torch.mm, MKL in the pip wheels); rows "
        "'[...,gemm=torch]' are ours with SPARSECODES_GEMM=torch. scikit-learn runs with its own "
        "BLAS (numpy's OpenBLAS / scipy).",
        "timing": "interleaved: round i runs every method once (ours, then sklearn) before round "
        "i + 1, so load changes hit all methods alike",
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "note": "shared 2-core machine; other jobs ran concurrently, so timings are noisy",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for key, r in results.items():
        print(
            f"{key:9s} mcc={r['code_mcc']:.4f} wall_min={r['wall_s_min']:.2f}s "
            f"support_exact={r['exact_support_rate']:.3f} nnz={r['mean_nonzeros']:.1f} "
            f"fvu={r['fvu']:.2e}"
            + (f" obj={r['mean_objective']:.4f}" if "mean_objective" in r else "")
        )
    for key, r in ratios.items():
        print(
            f"{key}: speedup(min)={r['speedup_min']:.1f}x "
            f"(median {r['speedup_median']:.1f}x) mcc_diff={r['mcc_diff']:+.4f}"
        )
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
