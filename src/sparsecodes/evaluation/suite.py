"""``sparsecodes bench``: the evaluation suite over several SAEs in one run, resumable.

>>> from sparsecodes.evaluation.suite import BenchConfig, run_bench
>>> combined = run_bench(BenchConfig(("runs/topk", "runs/relu"), out="bench"))  # doctest: +SKIP

Each SAE directory is opened with :func:`sparsecodes.load`; its model and hook are the ones its
files record (:func:`~sparsecodes.loading.resolve_target`); SAEs of one model share one loaded
adapter. For every (SAE, metric) the metric's SAEBench-style dict is written atomically to
``OUT/<label>/<metric>.json`` as soon as it is done, together with the options that fix its cost
(``bench_options``); a rerun with the same options skips it. Then:

- ``OUT/bench.json``: ``{"saes": {label: {"sae": ..., "eval_result_metrics": {metric: ...}}},
  "headline": ...}`` (each metric's ``eval_result_metrics`` under SAEBench's key names);
- ``OUT/bench.png``: each headline metric against L0, one point per SAE;
- ``OUT/bench.md`` and ``OUT/bench.html``: the headline table (static HTML, escaped).

Metrics (:data:`METRICS`): ``core`` (FVU, L0, dead latents, CE/KL splice scores), ``gap``
(amortisation gap at matched L0), ``absorption``, ``probing``, ``scr``, ``tpp``, ``ravel`` and,
only when asked, ``autointerp`` (explanations from ``endpoint``'s chat model, else from the local
model, which the result's ``explainer`` names; scored by ``autointerp_scorers``).
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparsecodes.evaluation.memo import memoized
from sparsecodes.files import write_figure, write_json, write_text

logger = logging.getLogger(__name__)

TOP_TOKENS_EXPLAINER = "top tokens of the top contexts (no model)"
EXPLAINERS = ("local", "top-tokens")
DEFAULT_METRICS = ("core", "gap", "absorption", "probing", "scr", "tpp", "ravel")
ALL_METRICS = (*DEFAULT_METRICS, "autointerp")


@dataclass
class BenchConfig:
    """Options of :func:`run_bench` (the CLI's flags). The ``*_tokens``, word, text and entity
    counts set each metric's cost; the defaults keep three SmolLM2 SAEs of 4608 latents within
    about half an hour on two CPU cores (docs/benchmarks-suite.md)."""

    sae_dirs: tuple[str, ...]
    metrics: tuple[str, ...] = DEFAULT_METRICS
    out: str = "bench"
    device: str = "auto"
    seed: int = 0
    #: core: held-out tokens for FVU/L0/dead latents, and for the CE/KL scores (4 passes each)
    core_tokens: int = 2048
    ce_tokens: int = 512
    #: gap: iterative methods, held-out tokens, calibration tokens
    gap_methods: tuple[str, ...] = ("omp",)
    gap_tokens: int = 512
    calib_tokens: int = 256
    #: absorption: vocabulary words and in-context lines per prompt
    absorption_words: int = 400
    absorption_icl: int = 4
    #: probing: texts per class of each labelled set (biographies: per profession x gender)
    probing_per_class: int = 20
    #: SCR/TPP: biographies per profession x gender cell
    scr_per_cell: int = 20
    #: RAVEL: cities, pairs per attribute, latents per attribute
    ravel_entities: int = 100
    ravel_pairs: int = 50
    ravel_k: int = 8
    #: autointerp (only when in ``metrics``)
    autointerp_scorers: tuple[str, ...] = ("embedding",)
    autointerp_latents: int = 20
    autointerp_windows: int = 256
    #: explanations without an endpoint: "local" (the local chat model) or "top-tokens" (no
    #: model: the most frequent activating tokens of the top contexts)
    autointerp_explainer: str = "local"
    endpoint: str | None = None
    llm: str | None = None
    api_key: str | None = None
    local_model: str = "smollm2-135m"


@dataclass
class Target:
    """One SAE of the run: its label (the output folder's name), coder, model and hook."""

    label: str
    path: str
    coder: Any
    model: str
    hook: str

    def describe(self) -> dict[str, Any]:
        src = getattr(self.coder, "source", None)
        return {
            "path": self.path,
            "format": getattr(src, "format", None),
            "encoder": self.coder.encoder.name,
            "d_in": self.coder.d_in,
            "n_latents": self.coder.n_latents,
            "model": self.model,
            "hook": self.hook,
        }


@dataclass
class Context:
    """What a metric function gets: the SAE, its adapter, the config and a cache shared by
    every SAE of the run (e.g. model activations that do not depend on the SAE)."""

    target: Target
    adapter: Any
    cfg: BenchConfig
    shared: dict[Any, Any] = field(default_factory=dict)


MetricFn = Callable[[Context], dict[str, Any]]


def _eval_windows(ctx: Context, tokens: int, *, calibration: bool = False) -> list[Any]:
    from sparsecodes.evaluation.corpus import calibration_texts, eval_windows, heldout_texts

    src = getattr(ctx.target.coder, "source", None)
    size = int(getattr(src, "context_size", None) or 128)
    texts = calibration_texts() if calibration else heldout_texts()
    return eval_windows(texts, ctx.adapter.tokenizer, size, tokens)


def _core(ctx: Context) -> dict[str, Any]:
    from sparsecodes.evaluation.run import evaluate

    t = ctx.target
    windows = _eval_windows(ctx, ctx.cfg.core_tokens)
    ce = ctx.cfg.ce_tokens if getattr(ctx.adapter, "is_causal", True) else 0
    res = evaluate(t.coder, ctx.adapter, t.hook, windows, ce_tokens=ce, cache=ctx.shared)
    return {
        "eval_type_id": "core",
        "eval_config": {
            "model": t.model,
            "hook": t.hook,
            "core_tokens": ctx.cfg.core_tokens,
            "ce_tokens": ce,
            "corpus": "embedded[heldout]: every 20th document",
        },
        "eval_result_metrics": res["eval_result_metrics"],
        "eval_result_details": [],
        "eval_result_unstructured": {
            "feature_density": res["feature_density"],
            "timings": res["timings"],
        },
    }


def _gap(ctx: Context) -> dict[str, Any]:
    from sparsecodes.evaluation import gap as gap_mod
    from sparsecodes.evaluation.core import collect_rows
    from sparsecodes.evaluation.run import GapSetup, evaluate

    t, cfg = ctx.target, ctx.cfg
    names = gap_mod.parse_methods(cfg.gap_methods)
    key = ("calibration", t.model, t.hook, cfg.calib_tokens)
    x_cal = memoized(  # the model's activations: the same for every SAE at this hook
        ctx.shared,
        key,
        lambda: collect_rows(
            ctx.adapter,
            t.hook,
            _eval_windows(ctx, cfg.calib_tokens, calibration=True),
            cfg.calib_tokens,
        ),
    )
    target, cals = gap_mod.calibrate_methods(t.coder, names, x_cal)
    setup = GapSetup(target, cals, int(x_cal.shape[0]))
    windows = _eval_windows(ctx, cfg.gap_tokens)
    res = evaluate(
        t.coder,
        ctx.adapter,
        t.hook,
        windows,
        ce_tokens=0,
        gap=setup,
        gap_tokens=cfg.gap_tokens,
        cache=ctx.shared,
    )
    gap = res["amortisation_gap"]
    sae = next(r for r in gap["rows"] if r["method"] == "sae")
    verdict = gap["verdict"]
    best = verdict.get("best_fvu")
    return {
        "eval_type_id": "amortisation_gap",
        "eval_config": {
            "model": t.model,
            "hook": t.hook,
            "methods": list(names),
            "gap_tokens": cfg.gap_tokens,
            "calib_tokens": cfg.calib_tokens,
        },
        "eval_result_metrics": {
            "amortisation_gap": {
                "sae_fvu": sae["fvu"],
                "sae_l0": sae["l0"],
                "best_iterative_method": verdict.get("best_method"),
                "best_iterative_fvu": best,
                "fvu_gap": (sae["fvu"] - best) if best is not None else None,
                "iterative_beats_encoder": verdict.get("iterative_beats_encoder"),
            }
        },
        "eval_result_details": gap["rows"],
        "eval_result_unstructured": {"verdict": verdict},
    }


def _absorption(ctx: Context) -> dict[str, Any]:
    from sparsecodes.evaluation.absorption import absorption_scores, first_letter_activations

    t, cfg = ctx.target, ctx.cfg
    key = ("absorption", t.model, t.hook, cfg.absorption_words, cfg.absorption_icl, cfg.seed)
    acts, words = memoized(  # the model's activations: the same for every SAE at this hook
        ctx.shared,
        key,
        lambda: first_letter_activations(
            ctx.adapter,
            t.hook,
            max_words=cfg.absorption_words,
            n_icl=cfg.absorption_icl,
            seed=cfg.seed,
        ),
    )
    out = absorption_scores(acts, words, t.coder, seed=cfg.seed)
    out["eval_config"].update(
        {"max_words": cfg.absorption_words, "n_icl": cfg.absorption_icl, "hook": t.hook}
    )
    return out


def _probing(ctx: Context) -> dict[str, Any]:
    from sparsecodes.evaluation.datasets import city_continent, language_id, profession_gender
    from sparsecodes.evaluation.probing import sparse_probing

    n = ctx.cfg.probing_per_class
    sets = [
        profession_gender(max(1, n // 2), seed=ctx.cfg.seed + 1),
        language_id(n, seed=ctx.cfg.seed),
        city_continent(6 * n, seed=ctx.cfg.seed),
    ]
    return sparse_probing(
        ctx.target.coder, ctx.adapter, ctx.target.hook, sets, seed=ctx.cfg.seed, cache=ctx.shared
    )


def _bios(ctx: Context) -> Any:
    from sparsecodes.evaluation.datasets import profession_gender

    key = ("bios", ctx.cfg.scr_per_cell, ctx.cfg.seed)
    return memoized(
        ctx.shared, key, lambda: profession_gender(ctx.cfg.scr_per_cell, seed=ctx.cfg.seed)
    )


def _scr(ctx: Context) -> dict[str, Any]:
    from sparsecodes.evaluation.scr_tpp import scr

    t = ctx.target
    return scr(t.coder, ctx.adapter, t.hook, _bios(ctx), seed=ctx.cfg.seed, cache=ctx.shared)


def _tpp(ctx: Context) -> dict[str, Any]:
    from sparsecodes.evaluation.scr_tpp import tpp

    t = ctx.target
    return tpp(t.coder, ctx.adapter, t.hook, _bios(ctx), seed=ctx.cfg.seed, cache=ctx.shared)


def _ravel(ctx: Context) -> dict[str, Any]:
    from sparsecodes.evaluation.ravel import city_entities, ravel

    cfg = ctx.cfg
    return ravel(
        ctx.target.coder,
        ctx.adapter,
        ctx.target.hook,
        city_entities(cfg.ravel_entities, seed=cfg.seed),
        k=cfg.ravel_k,
        n_pairs=cfg.ravel_pairs,
        seed=cfg.seed,
        cache=ctx.shared,
    )


def _autointerp(ctx: Context) -> dict[str, Any]:
    from sparsecodes.autointerp import (
        AutointerpConfig,
        LocalChatBackend,
        OpenAIChatClient,
        collect_examples,
        run_autointerp,
        top_tokens_explanation,
        window_model_activations,
    )
    from sparsecodes.autointerp.pipeline import build_scorers
    from sparsecodes.data import load_texts

    t, cfg = ctx.target, ctx.cfg
    latents = list(range(min(cfg.autointerp_latents, t.coder.n_latents)))
    key = ("autointerp_windows", t.model, t.hook, cfg.autointerp_windows)
    model_acts = memoized(  # the model's activations: the same for every SAE at this hook
        ctx.shared,
        key,
        lambda: window_model_activations(
            ctx.adapter, t.hook, load_texts(None), n_windows=cfg.autointerp_windows
        ),
    )
    examples = collect_examples(
        t.coder,
        ctx.adapter,
        t.hook,
        (),
        latents,
        n_windows=cfg.autointerp_windows,
        seed=cfg.seed,
        model_acts=model_acts,
    )
    offline = not cfg.endpoint and cfg.autointerp_explainer == "top-tokens"
    needs_chat = not offline or any(n != "embedding" for n in cfg.autointerp_scorers)
    given = (
        {ex.latent: top_tokens_explanation(ex.top) for ex in examples if ex.top} if offline else {}
    )
    if cfg.endpoint:
        backend: Any = OpenAIChatClient(cfg.endpoint, cfg.llm or "", api_key=cfg.api_key)
    elif not needs_chat:
        backend = None
    elif cfg.local_model == getattr(ctx.adapter, "name", None):
        backend = LocalChatBackend.from_adapter(ctx.adapter, seed=cfg.seed)
    else:
        backend = LocalChatBackend(cfg.local_model, device=cfg.device, seed=cfg.seed)
    acfg = AutointerpConfig(seed=cfg.seed, detect_format="list" if cfg.endpoint else "yesno")
    scorers = build_scorers(
        cfg.autointerp_scorers,
        backend,
        acfg,
        endpoint=cfg.endpoint,
        model=cfg.llm,
        api_key=cfg.api_key,
        device=cfg.device,
    )
    report = run_autointerp(
        [ex for ex in examples if ex.top] if offline else examples,
        None if offline else backend,
        config=acfg,
        scorers=scorers,
        explanations=given,
        explanations_from=TOP_TOKENS_EXPLAINER,
    )
    summary = report.summary()
    return {
        "eval_type_id": "autointerp",
        "eval_config": {
            "explainer": report.config["explainer"],
            "scorers": report.config["scorers"],
            "latents": latents,
            "n_windows": cfg.autointerp_windows,
            "model": t.model,
            "hook": t.hook,
        },
        "eval_result_metrics": {
            "autointerp": {
                "autointerp_score": summary["mean_score"],
                "explainer": report.config["explainer"],
                "scorer": cfg.autointerp_scorers[0],
                **{
                    f"{name}_{k}": v
                    for name, s in summary["scorers"].items()
                    for k, v in s.items()
                    if k in ("mean", "mean_low", "mean_high", "n_ok", "n_failed")
                },
            }
        },
        "eval_result_details": [],
        "eval_result_unstructured": report.to_json(),
    }


#: metric name -> function of a :class:`Context` returning its SAEBench-style dict
METRICS: dict[str, MetricFn] = {
    "core": _core,
    "gap": _gap,
    "absorption": _absorption,
    "probing": _probing,
    "scr": _scr,
    "tpp": _tpp,
    "ravel": _ravel,
    "autointerp": _autointerp,
}

#: the config fields that fix each metric's result (a finished file with others is redone)
OPTIONS: dict[str, tuple[str, ...]] = {
    "core": ("core_tokens", "ce_tokens"),
    "gap": ("gap_methods", "gap_tokens", "calib_tokens"),
    "absorption": ("absorption_words", "absorption_icl"),
    "probing": ("probing_per_class",),
    "scr": ("scr_per_cell",),
    "tpp": ("scr_per_cell",),
    "ravel": ("ravel_entities", "ravel_pairs", "ravel_k"),
    "autointerp": (
        "autointerp_scorers",
        "autointerp_latents",
        "autointerp_windows",
        "autointerp_explainer",
        "endpoint",
        "llm",
        "local_model",
    ),
}

#: (column, metric, path in eval_result_metrics, higher is better) of the table and plots
HEADLINE: tuple[tuple[str, str, tuple[str, ...], bool], ...] = (
    ("L0", "core", ("sparsity", "l0"), False),
    ("FVU", "core", ("reconstruction_quality", "fvu"), False),
    ("CE-loss score", "core", ("model_performance_preservation", "ce_loss_score"), True),
    ("KL score", "core", ("model_behavior_preservation", "kl_div_score"), True),
    ("dead", "core", ("misc", "n_dead"), False),
    ("FVU gap (enc - best iter.)", "gap", ("amortisation_gap", "fvu_gap"), False),
    ("absorption", "absorption", ("mean", "mean_absorption_fraction_score"), False),
    ("full absorption", "absorption", ("mean", "mean_full_absorption_score"), False),
    ("probing top-1", "probing", ("sae", "sae_top_1_test_accuracy"), True),
    ("probing top-5", "probing", ("sae", "sae_top_5_test_accuracy"), True),
    ("SCR n=20", "scr", ("scr_metrics", "scr_metric_threshold_20"), True),
    ("TPP n=20", "tpp", ("tpp_metrics", "tpp_threshold_20_total_metric"), True),
    ("RAVEL disentangle", "ravel", ("ravel", "disentanglement_score"), True),
    ("autointerp", "autointerp", ("autointerp", "autointerp_score"), True),
)


def parse_metrics(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"core,probing"`` -> ``("core", "probing")``; ``ValueError`` naming unknown ones."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    bad = [n for n in names if n not in METRICS]
    if bad or not names:
        raise ValueError(f"unknown metric(s) {bad or text!r}; choose from {', '.join(ALL_METRICS)}")
    return tuple(dict.fromkeys(names))


def sae_labels(paths: Sequence[str]) -> list[str]:
    """A folder name per SAE directory: its name (a run's ``final``/``final_saelens``: the run's
    name), made filesystem-safe and unique (``-2``, ``-3``, ... on repeats)."""
    out: list[str] = []
    for p in paths:
        path = Path(p).resolve()
        name = path.parent.name if path.name in ("final", "final_saelens") else path.name
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "sae"
        label, i = base, 2
        while label in out:
            label, i = f"{base}-{i}", i + 1
        out.append(label)
    return out


def _options(cfg: BenchConfig, metric: str) -> dict[str, Any]:
    d = asdict(cfg)
    return {"seed": cfg.seed, **{k: d[k] for k in OPTIONS[metric]}}


def _finished(path: Path, options: dict[str, Any]) -> dict[str, Any] | None:
    """The stored result at ``path`` when it was made with ``options``, else None."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    stored = data.get("bench_options")
    if stored != json.loads(json.dumps(options)):
        logger.info("%s was made with other options (%s); recomputing", path, stored)
        return None
    return data


def run_bench(
    cfg: BenchConfig,
    *,
    echo: Callable[[str], None] | None = None,
    on_result: Callable[[str, str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run ``cfg.metrics`` on every SAE of ``cfg.sae_dirs``; write the files listed in the module
    docstring under ``cfg.out`` and return the combined dict (``bench.json``'s content).

    ``on_result(label, metric, result)`` runs after each (SAE, metric) result is on disk.
    A metric that raises ``ValueError`` (e.g. too few entities the model answers correctly) is
    recorded as ``{"error": ...}`` and not retried on a rerun with the same options.
    """
    from sparsecodes.evaluation.report import json_safe
    from sparsecodes.loading import check_width, load, resolve_target
    from sparsecodes.models import load_model
    from sparsecodes.transcoder import Transcoder

    echo = echo or logger.info
    metrics = parse_metrics(cfg.metrics)
    if cfg.autointerp_explainer not in EXPLAINERS:
        choices = ", ".join(EXPLAINERS)
        raise ValueError(
            f"autointerp_explainer {cfg.autointerp_explainer!r}: choose from {choices}"
        )
    if "autointerp" in metrics and cfg.endpoint and not cfg.llm:
        raise ValueError("--endpoint needs --model NAME (the model the server serves)")
    if not cfg.sae_dirs:
        raise ValueError("give at least one SAE directory")
    out = Path(cfg.out)
    targets = []
    for path, label in zip(cfg.sae_dirs, sae_labels(cfg.sae_dirs), strict=True):
        coder = load(path)
        if isinstance(coder, Transcoder):
            raise ValueError(
                f"{path} holds a transcoder; bench evaluates SAEs (use sparsecodes graph)"
            )
        model, hook = resolve_target(coder, None, None)
        targets.append(Target(label, str(path), coder, model, hook))
    adapters: dict[str, Any] = {}
    shared: dict[Any, Any] = {}
    results: dict[str, dict[str, Any]] = {t.label: {} for t in targets}
    for t in targets:
        ctx: Context | None = None  # the model is loaded when a metric of it must run
        for metric in metrics:
            file = out / t.label / f"{metric}.json"
            options = _options(cfg, metric)
            done = _finished(file, options)
            if done is not None:
                echo(f"{t.label} {metric}: done before ({file})")
                results[t.label][metric] = done
                continue
            if ctx is None:
                if t.model not in adapters:
                    echo(f"loading {t.model} ...")
                    adapters[t.model] = load_model(t.model, device=cfg.device)
                check_width(t.coder, adapters[t.model], t.hook)
                t.coder.to(adapters[t.model].device)
                ctx = Context(t, adapters[t.model], cfg, shared)
            echo(f"{t.label} {metric} ...")
            torch.manual_seed(cfg.seed)
            t0 = time.perf_counter()
            try:
                res = METRICS[metric](ctx)
            except ValueError as e:
                res = {"eval_type_id": metric, "error": str(e)}
                echo(f"{t.label} {metric}: {e}")
            res = {
                **res,
                "sae": t.describe(),
                "bench_options": options,
                "seconds": round(time.perf_counter() - t0, 2),
                # the seconds are wall time: the load average says how shared the machine was
                "loadavg": [round(v, 2) for v in os.getloadavg()]
                if hasattr(os, "getloadavg")
                else None,
            }
            write_json(file, json_safe(res), allow_nan=False)
            results[t.label][metric] = res
            echo(f"{t.label} {metric}: {res['seconds']:.1f} s -> {file}")
            if on_result is not None:
                on_result(t.label, metric, res)
    combined = {
        "eval_type_id": "sparsecodes_bench",
        "eval_config": {**asdict(cfg), "api_key": None, "metrics": list(metrics)},
        "saes": {
            t.label: {
                "sae": t.describe(),
                "eval_result_metrics": {
                    m: r.get("eval_result_metrics", {"error": r.get("error")})
                    for m, r in results[t.label].items()
                },
                "seconds": {m: r.get("seconds") for m, r in results[t.label].items()},
                "loadavg": {m: r.get("loadavg") for m, r in results[t.label].items()},
            }
            for t in targets
        },
    }
    combined["headline"] = headline_table(combined)
    write_json(out / "bench.json", json_safe(combined), allow_nan=False)
    write_text(out / "bench.md", markdown_table(combined["headline"]))
    write_text(out / "bench.html", bench_html(combined))
    if len(combined["headline"]["columns"]) > 1:
        plot_vs_l0(combined["headline"], out / "bench.png")
    return combined


def bench_label(bench_dir: str | Path, sae_dir: str | Path) -> str:
    """The label under which the bench run in ``bench_dir`` (its ``bench.json``) holds the SAE in
    ``sae_dir`` (a run directory matches its ``final``/``final_saelens`` and back).
    ``ValueError`` naming the fix when it holds no such SAE or is not a bench directory."""
    bench_json = Path(bench_dir) / "bench.json"
    if not bench_json.is_file() or not (Path(bench_dir) / "bench.html").is_file():
        raise ValueError(
            f"{bench_dir} holds no bench.json and bench.html; give the --out directory of "
            "`sparsecodes bench`"
        )

    def names(p: str | Path) -> set[Path]:
        path = Path(p).resolve()
        if path.name in ("final", "final_saelens"):
            return {path, path.parent}
        return {path, path / "final", path / "final_saelens"}

    want = names(sae_dir)
    saes = json.loads(bench_json.read_text(encoding="utf-8")).get("saes", {})
    for label, entry in saes.items():
        if names(entry.get("sae", {}).get("path", "")) & want:
            return str(label)
    held = ", ".join(saes) or "none"
    raise ValueError(
        f"the bench in {bench_dir} did not evaluate {sae_dir} (it holds {held}); "
        f"run `sparsecodes bench {sae_dir} ... --out {bench_dir}`"
    )


def _get(d: Mapping[str, Any], path: Sequence[str]) -> Any:
    for k in path:
        if not isinstance(d, Mapping) or k not in d:
            return None
        d = d[k]
    return d


def headline_table(combined: Mapping[str, Any]) -> dict[str, Any]:
    """``{"columns": [...], "higher_is_better": [...], "rows": {label: [value or None]}}``:
    the :data:`HEADLINE` columns whose metric was run, one row per SAE."""
    ran = {m for s in combined["saes"].values() for m in s["eval_result_metrics"]}
    cols = [h for h in HEADLINE if h[1] in ran]
    rows = {}
    for label, s in combined["saes"].items():
        vals = []
        for _, metric, path, _ in cols:
            v = _get(s["eval_result_metrics"].get(metric, {}), path)
            vals.append(v if isinstance(v, int | float) and not isinstance(v, bool) else None)
        rows[label] = vals
    return {
        "columns": [c[0] for c in cols],
        "metrics": [c[1] for c in cols],
        "higher_is_better": [c[3] for c in cols],
        "rows": rows,
    }


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, int):
        return str(v)
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.3f}"


def markdown_table(table: Mapping[str, Any]) -> str:
    """The headline table as Markdown (one row per SAE)."""
    head = ["SAE", *table["columns"]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, vals in table["rows"].items():
        lines.append("| " + " | ".join([label, *map(_fmt, vals)]) + " |")
    return "\n".join(lines) + "\n"


def bench_html(combined: Mapping[str, Any]) -> str:
    """A static page (no script) with the headline table, the SAEs' descriptions and the plot;
    every value from the files is HTML-escaped."""
    table = combined["headline"]
    e = html.escape
    arrows = ["&uarr;" if hb else "&darr;" for hb in table["higher_is_better"]]
    head = "".join(f"<th>{e(c)} {a}</th>" for c, a in zip(table["columns"], arrows, strict=True))
    body = []
    for label, vals in table["rows"].items():
        sae = combined["saes"][label]["sae"]
        tip = f"{sae['path']}: {sae['encoder']}, {sae['n_latents']} latents, {sae['model']} {sae['hook']}"
        cells = "".join(f"<td>{e(_fmt(v))}</td>" for v in vals)
        body.append(f'<tr><th title="{e(tip)}">{e(label)}</th>{cells}</tr>')
    saes = "".join(
        f"<li><b>{e(label)}</b>: {e(str(s['sae']['path']))} ({e(str(s['sae']['encoder']))}, "
        f"{e(str(s['sae']['n_latents']))} latents) at {e(str(s['sae']['model']))} "
        f"{e(str(s['sae']['hook']))}</li>"
        for label, s in combined["saes"].items()
    )
    plot = (
        '<p><img src="bench.png" alt="each metric against L0"></p>'
        if len(table["columns"]) > 1
        else ""
    )
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8"><title>sparsecodes bench</title>'
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "tr>th:first-child{text-align:left}</style></head><body>"
        "<h1>SAE comparison</h1>"
        f"<table><thead><tr><th>SAE</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        "<p>&uarr; higher is better, &darr; lower is better; - not run or failed. "
        'Full results: <a href="bench.json">bench.json</a>, one file per SAE and metric in '
        "the SAE's folder.</p>"
        f"<ul>{saes}</ul>{plot}</body></html>\n"
    )


def plot_vs_l0(table: Mapping[str, Any], path: Path) -> Path | None:
    """One panel per headline metric (besides L0): its value against L0, a point per SAE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = table["columns"]
    if "L0" not in cols:
        logger.info("no L0 (the core metric was not run): no plot against L0")
        return None
    i0 = cols.index("L0")
    panels = [
        i
        for i, c in enumerate(cols)
        if i != i0 and any(v[i] is not None for v in table["rows"].values())
    ]
    if not panels:
        return None
    n = len(panels)
    ncol = min(4, n)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.0 * nrow), squeeze=False)
    for ax, i in zip(axes.flat, panels, strict=False):
        for label, vals in table["rows"].items():
            if vals[i0] is None or vals[i] is None:
                continue
            ax.scatter([vals[i0]], [vals[i]], label=label)
            ax.annotate(
                label, (vals[i0], vals[i]), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        arrow = "higher is better" if table["higher_is_better"][i] else "lower is better"
        ax.set_title(f"{cols[i]} ({arrow})", fontsize=9)
        ax.set_xlabel("L0")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    try:
        return write_figure(path, fig)
    finally:
        plt.close(fig)
