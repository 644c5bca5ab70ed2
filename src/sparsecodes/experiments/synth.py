"""The compute-optimal inference paper's three synthetic settings, run as one study.

Settings (data from :func:`sparsecodes.synthetic.make_train_test`, train and test share the true
dictionary; every metric is measured on the *test* rows):

- ``known_dictionary``: the dictionary is fixed to the true atoms; amortised encoders (SAE, MLP,
  TopK, LISTA) learn only their encoder (``SparseCoder.fit(x, dictionary=D)``); iterative methods
  (FISTA, OMP) need no training and infer directly on the true dictionary.
- ``known_codes``: supervised; ``SparseCoder.fit(x, codes=S)`` fits the encoder to the true codes
  and the dictionary to ``x`` given them. Iterative methods learn only the dictionary (regression
  on the true codes) and then infer on it.
- ``unknown``: both learned from ``x`` alone. An amortised encoder is an SAE-style joint fit;
  an iterative method (``fista``/``sparse_coding``, ``omp``) is classic sparse coding: the
  dictionary learns from codes inferred by that method each step.

``sae+fista`` trains the ReLU SAE as in the setting, then infers with FISTA on the SAE's dictionary
warm-started from its codes (``encode(x, inference="fista", warm_start=True)``).

Hyperparameters are fixed defaults (:data:`DEFAULT_PARAMS`, :data:`DEFAULT_TRAIN`), chosen before
looking at any ground-truth metric and never selected on test MCC; callers may override them.

FLOPs: ``train_flops = steps * encoder.train_step_flops(batch_size)`` (0 where nothing trains);
``infer_flops`` = the inference encoder's ``inference_flops(n_test)`` plus, for a warm start, the
trained encoder's. Iterative encoders report their cost at the full iteration budget (an upper
bound when a tolerance stops them early).
"""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparsecodes.encoders import available_encoders, get_encoder_class, make_encoder
from sparsecodes.files import write_json
from sparsecodes.sparse_coder import SparseCoder
from sparsecodes.synthetic import SyntheticData, make_train_test

SETTINGS: tuple[str, ...] = ("known_dictionary", "known_codes", "unknown")


@dataclass(frozen=True)
class MethodSpec:
    """How a named method trains and infers.

    Attributes:
        name: the method's name in results (``"sae"``, ``"sae+fista"``, ...).
        encoder: the registered encoder that is trained (or, if iterative, that infers).
        inference: an iterative encoder run on the dictionary at test time, or None for
            ``encoder`` itself.
        warm_start: start ``inference`` from ``encoder``'s codes.
        description: one line for tables and ``--help``.
    """

    name: str
    encoder: str
    inference: str | None = None
    warm_start: bool = False
    description: str = ""

    def needs(self) -> list[str]:
        """Registered encoders this method needs."""
        return [self.encoder] + ([self.inference] if self.inference else [])


METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        MethodSpec("sae", "relu", description="ReLU SAE (linear + ReLU encoder, L1 penalty)"),
        MethodSpec("mlp", "mlp", description="MLP encoder (L1 penalty)"),
        MethodSpec("topk", "topk", description="TopK SAE with k = K"),
        MethodSpec("lista", "lista", description="LISTA (unrolled ISTA, learned)"),
        MethodSpec("fista", "fista", description="FISTA inference (sparse coding when learned)"),
        MethodSpec(
            "sparse_coding",
            "fista",
            description="dictionary learned with FISTA codes; alias of fista",
        ),
        MethodSpec("ista", "ista", description="ISTA inference (sparse coding when learned)"),
        MethodSpec("omp", "omp", description="OMP with k = K (sparse coding when learned)"),
        MethodSpec("mp", "mp", description="matching pursuit with k = K"),
        MethodSpec(
            "sae+fista",
            "relu",
            inference="fista",
            warm_start=True,
            description="ReLU SAE, then FISTA on its dictionary warm-started from its codes",
        ),
    )
}

DEFAULT_METHODS: tuple[str, ...] = ("sae", "mlp", "topk", "lista", "fista", "omp", "sae+fista")

#: Encoder hyperparameters, fixed a priori (scale: unit-norm atoms, |N(0,1)| codes, ||x|| ~ 1.5).
#: Only fields an encoder's config actually has are passed; ``"K"`` means the data's k.
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "relu": {"l1": 0.1},
    "mlp": {"l1": 0.1, "hidden": 128, "depth": 2},
    "topk": {"k": "K"},
    "batchtopk": {"k": "K"},
    "lista": {"l1": 0.1, "iters": 5},
    "fista": {"l1": 0.01, "iters": 100, "tol": 1e-4, "nonneg": True},
    "ista": {"l1": 0.01, "iters": 100, "tol": 1e-4, "nonneg": True},
    "omp": {"k": "K", "nonneg": True},
    "mp": {"k": "K", "nonneg": True},
}

#: Training defaults (Adam); the paper used 10k full-batch-ish Adam steps, we use fewer.
DEFAULT_TRAIN: dict[str, Any] = {"steps": 1000, "lr": 3e-3, "batch_size": 256}


def method_spec(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}") from None


def method_available(name: str) -> tuple[bool, str]:
    """Whether every encoder the method needs is registered (and if not, which is missing)."""
    spec = method_spec(name)
    have = set(available_encoders())
    missing = [e for e in spec.needs() if e not in have]
    if missing:
        return False, f"encoder(s) {', '.join(missing)} not registered"
    return True, ""


def encoder_params(encoder: str, k: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults merged with ``overrides``, filtered to the encoder config's fields; ``"K"`` -> k."""
    cls = get_encoder_class(encoder)
    fields = {f.name for f in dataclasses.fields(cls.config_cls)}
    merged = {**DEFAULT_PARAMS.get(encoder, {}), **(overrides or {})}
    unknown = sorted(set(overrides or {}) - fields)
    if unknown:
        raise ValueError(
            f"encoder {encoder!r} has no parameter(s) {', '.join(unknown)}; "
            f"its parameters are: {', '.join(sorted(fields))}"
        )
    return {n: (k if v == "K" else v) for n, v in merged.items() if n in fields}


def _params_for(
    encoder: str, k: int, signed: bool, overrides: dict[str, Any] | None
) -> dict[str, Any]:
    """:func:`encoder_params`, with ``nonneg`` off for signed codes unless set explicitly."""
    out = encoder_params(encoder, k, overrides)
    if signed and "nonneg" in out and "nonneg" not in (overrides or {}):
        out["nonneg"] = False
    return out


# ---------------------------------------------------------------------------- metrics


def _metrics() -> Any:
    from sparsecodes import metrics

    missing = [f for f in ("code_mcc", "dictionary_mcc", "fvu", "l0") if not hasattr(metrics, f)]
    if missing:
        raise ImportError(f"sparsecodes.metrics lacks {', '.join(missing)}")
    return metrics


def evaluate(
    coder: SparseCoder, spec: MethodSpec, test: SyntheticData, inference_params: dict[str, Any]
) -> dict[str, float]:
    """Code MCC, dictionary MCC, FVU and L0 of ``coder`` under ``spec``'s inference on ``test``."""
    m = _metrics()
    codes = infer(coder, spec, test.x, inference_params)
    x_hat = coder.decode(codes)
    return {
        "code_mcc": float(m.code_mcc(test.codes, codes)),
        "dict_mcc": float(m.dictionary_mcc(test.dictionary, coder.W_dec.detach())),
        "fvu": float(m.fvu(test.x, x_hat)),
        "l0": float(m.l0(codes)),
    }


def infer(
    coder: SparseCoder, spec: MethodSpec, x: Tensor, inference_params: dict[str, Any]
) -> Tensor:
    """``[n, n_latents]`` dense codes of ``x`` by the method's inference."""
    if spec.inference is None:
        return coder.encode(x)
    return coder.encode(x, inference=spec.inference, warm_start=spec.warm_start, **inference_params)


# ---------------------------------------------------------------------------- one run


def run_one(
    setting: str,
    method: str,
    train: SyntheticData,
    test: SyntheticData,
    *,
    seed: int = 0,
    steps: int = DEFAULT_TRAIN["steps"],
    lr: float = DEFAULT_TRAIN["lr"],
    batch_size: int = DEFAULT_TRAIN["batch_size"],
    params: dict[str, dict[str, Any]] | None = None,
    curve_points: int = 20,
) -> dict[str, Any]:
    """Train and evaluate one method in one setting. Returns the result row (see :func:`run`)."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose from {', '.join(SETTINGS)}")
    spec = method_spec(method)
    ok, why = method_available(method)
    if not ok:
        raise ValueError(f"method {method!r} cannot run: {why}")
    k = int(train.config.get("k", int((train.codes != 0).sum(dim=1).max())))
    params = params or {}
    signed = bool(train.config.get("signed", False))
    enc_params = _params_for(spec.encoder, k, signed, params.get(spec.encoder))
    inf_params = (
        _params_for(spec.inference, k, signed, params.get(spec.inference)) if spec.inference else {}
    )
    n, d = train.n_latents, train.n_dims
    t0 = time.perf_counter()
    coder = SparseCoder(d, n, spec.encoder, seed=seed, **enc_params)
    iterative = coder.encoder.kind == "iterative"
    trains = not (iterative and setting == "known_dictionary")
    batch_size = min(batch_size, train.n_samples)
    curve: list[dict[str, float]] = []
    every = max(1, steps // curve_points) if curve_points > 0 else None
    step_flops = coder.encoder.train_step_flops(batch_size) if trains else 0

    def callback(step: int, c: SparseCoder) -> dict[str, float]:
        mcc = float(_metrics().code_mcc(test.codes, infer(c, spec, test.x, inf_params)))
        curve.append({"step": step, "code_mcc": mcc, "train_flops": float(step * step_flops)})
        return {"test_code_mcc": mcc}

    fit_kwargs: dict[str, Any] = {
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "callback": callback if every else None,
        "callback_every": every,
        "log_every": every or max(1, steps // 20),
    }
    if setting == "known_dictionary":
        coder.set_dictionary(train.dictionary)
        if trains:
            coder.fit(train.x, dictionary=train.dictionary, **fit_kwargs)
        elif every:
            callback(0, coder)
    elif setting == "known_codes":
        coder.fit(train.x, codes=train.codes, **fit_kwargs)
    else:
        coder.fit(train.x, **fit_kwargs)
    metrics = evaluate(coder, spec, test, inf_params)
    seconds = time.perf_counter() - t0
    infer_flops = (
        make_encoder(spec.inference, d, n, **inf_params).inference_flops(test.n_samples)
        if spec.inference
        else 0
    )
    if spec.inference is None or spec.warm_start:
        infer_flops += coder.encoder.inference_flops(test.n_samples)
    train_flops = steps * step_flops if trains else 0
    final_loss = coder.history[-1]["loss"] if trains and coder.history else None
    return {
        "setting": setting,
        "method": method,
        "seed": seed,
        **metrics,
        "train_flops": float(train_flops),
        "infer_flops": float(infer_flops),
        "total_flops": float(train_flops + infer_flops),
        "seconds": seconds,
        "final_train_loss": final_loss,
        "curve": curve,
        "config": {
            "encoder": spec.encoder,
            "encoder_params": enc_params,
            "inference": spec.inference,
            "inference_params": inf_params,
            "warm_start": spec.warm_start,
            "trained": trains,
            "steps": steps if trains else 0,
            "lr": lr,
            "batch_size": batch_size,
            "data": train.config,
            "n_train": train.n_samples,
            "n_test": test.n_samples,
        },
    }


# ---------------------------------------------------------------------------- the study


def run(
    settings: Sequence[str] = SETTINGS,
    methods: Sequence[str] = DEFAULT_METHODS,
    seeds: int | Iterable[int] = 5,
    *,
    n_latents: int = 16,
    n_dims: int = 8,
    k: int = 3,
    n_train: int = 1024,
    n_test: int = 1024,
    steps: int = DEFAULT_TRAIN["steps"],
    lr: float = DEFAULT_TRAIN["lr"],
    batch_size: int = DEFAULT_TRAIN["batch_size"],
    params: dict[str, dict[str, Any]] | None = None,
    curve_points: int = 20,
    data_kwargs: dict[str, Any] | None = None,
    out: str | Path | None = None,
    plots: bool = True,
    threads: int | None = 1,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every (setting, method, seed); optionally write ``results.json`` and PNGs to ``out``.

    ``seeds``: a count (seeds ``0..n-1``) or explicit seeds; seed ``s`` draws the data and
    initialises the model. Methods whose encoders are not registered are skipped and listed under
    ``"skipped"``.

    Returns ``{"config", "results", "summary", "skipped", "environment", "files"}``; each result
    row has ``setting, method, seed, code_mcc, dict_mcc, fvu, l0, train_flops, infer_flops,
    total_flops, seconds, final_train_loss, curve, config``.
    """
    settings = list(settings)
    for s in settings:
        if s not in SETTINGS:
            raise ValueError(f"unknown setting {s!r}; choose from {', '.join(SETTINGS)}")
    methods = list(dict.fromkeys(methods))
    for m in methods:
        method_spec(m)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("seeds must be a positive count or a non-empty list of seeds")
    _metrics()  # fail early and clearly if the metrics are missing
    say = log or (lambda _msg: None)
    skipped = []
    runnable = []
    for m in methods:
        ok, why = method_available(m)
        if ok:
            runnable.append(m)
        else:
            skipped.append({"method": m, "reason": why})
            say(f"skipping {m}: {why}")
    config = {
        "settings": settings,
        "methods": runnable,
        "seeds": seed_list,
        "n_latents": n_latents,
        "n_dims": n_dims,
        "k": k,
        "n_train": n_train,
        "n_test": n_test,
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "params": params or {},
        "curve_points": curve_points,
        "threads": threads,
        "data_kwargs": data_kwargs or {},
        "hyperparameters": "fixed defaults (DEFAULT_PARAMS), never selected on test MCC",
    }
    results: list[dict[str, Any]] = []
    old_threads = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1 (or None), got {threads!r}")
        torch.set_num_threads(threads)
    try:
        t_all = time.perf_counter()
        _run_grid(
            results,
            seed_list,
            settings,
            runnable,
            say,
            n_latents=n_latents,
            n_dims=n_dims,
            k=k,
            n_train=n_train,
            n_test=n_test,
            steps=steps,
            lr=lr,
            batch_size=batch_size,
            params=params,
            curve_points=curve_points,
            data_kwargs=data_kwargs or {},
        )
        total_seconds = time.perf_counter() - t_all
        env = environment(total_seconds)
    finally:
        torch.set_num_threads(old_threads)
    report: dict[str, Any] = {
        "config": config,
        "results": results,
        "summary": summarise(results),
        "skipped": skipped,
        "environment": env,
        "files": [],
    }
    if out is not None:
        report["files"] = write_outputs(report, out, plots=plots)
    return report


def _run_grid(
    results: list[dict[str, Any]],
    seed_list: list[int],
    settings: list[str],
    runnable: list[str],
    say: Callable[[str], None],
    *,
    n_latents: int,
    n_dims: int,
    k: int,
    n_train: int,
    n_test: int,
    steps: int,
    lr: float,
    batch_size: int,
    params: dict[str, dict[str, Any]] | None,
    curve_points: int,
    data_kwargs: dict[str, Any],
) -> None:
    for seed in seed_list:
        train, test = make_train_test(
            n_train,
            n_test,
            n_latents=n_latents,
            n_dims=n_dims,
            k=k,
            seed=seed,
            **data_kwargs,
        )
        for setting in settings:
            for m in runnable:
                row = run_one(
                    setting,
                    m,
                    train,
                    test,
                    seed=seed,
                    steps=steps,
                    lr=lr,
                    batch_size=batch_size,
                    params=params,
                    curve_points=curve_points,
                )
                results.append(row)
                say(
                    f"[seed {seed}] {setting:16s} {m:14s} code_mcc={row['code_mcc']:.3f} "
                    f"dict_mcc={row['dict_mcc']:.3f} fvu={row['fvu']:.3g} l0={row['l0']:.2f} "
                    f"({row['seconds']:.1f}s)"
                )


def environment(total_seconds: float) -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "total_seconds": total_seconds,
    }


SUMMARY_KEYS = ("code_mcc", "dict_mcc", "fvu", "l0", "train_flops", "infer_flops", "seconds")


def summarise(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per (setting, method), in first-seen order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["setting"], r["method"]), []).append(r)
    rows = []
    for (setting, method), rs in groups.items():
        row: dict[str, Any] = {"setting": setting, "method": method, "n_seeds": len(rs)}
        for key in SUMMARY_KEYS:
            vals = torch.tensor([float(r[key]) for r in rs], dtype=torch.float64)
            row[key] = float(vals.mean())
            row[f"{key}_std"] = float(vals.std(unbiased=False)) if len(rs) > 1 else 0.0
        rows.append(row)
    return rows


def format_table(summary: Sequence[dict[str, Any]]) -> str:
    """Fixed-width text table of a summary (mean ± std over seeds)."""
    head = (
        f"{'setting':16s} {'method':14s} {'code MCC':>13s} {'dict MCC':>13s} {'FVU':>9s} "
        f"{'L0':>6s} {'train FLOPs':>11s} {'infer FLOPs':>11s} {'s/run':>6s}"
    )
    lines = [head, "-" * len(head)]
    for r in summary:
        lines.append(
            f"{r['setting']:16s} {r['method']:14s} "
            f"{r['code_mcc']:6.3f}±{r['code_mcc_std']:5.3f} "
            f"{r['dict_mcc']:6.3f}±{r['dict_mcc_std']:5.3f} {r['fvu']:9.3g} {r['l0']:6.2f} "
            f"{_fmt_flops(r['train_flops']):>11s} {_fmt_flops(r['infer_flops']):>11s} "
            f"{r['seconds']:6.1f}"
        )
    return "\n".join(lines)


def _fmt_flops(v: float) -> str:
    if v <= 0:
        return "0"
    exp = math.floor(math.log10(v))
    return f"{v / 10**exp:.1f}e{exp}"


def write_outputs(report: dict[str, Any], out: str | Path, *, plots: bool = True) -> list[str]:
    """Write ``results.json`` (and per-setting PNGs) under ``out``; returns the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    if plots:
        from sparsecodes.experiments.plots import plot_mcc_vs_flops, plot_mcc_vs_steps

        for setting in report["config"]["settings"]:
            rows = [r for r in report["results"] if r["setting"] == setting]
            if not rows:
                continue
            files.append(str(plot_mcc_vs_flops(rows, out / f"{setting}_mcc_vs_flops.png", setting)))
            files.append(str(plot_mcc_vs_steps(rows, out / f"{setting}_mcc_vs_steps.png", setting)))
    path = out / "results.json"
    files.insert(0, str(path))
    report["files"] = files
    write_json(path, report, default=str)
    return files
