"""``sparsecodes eval``: the whole evaluation of one SAE, from a directory to ``eval.json`` + PNGs.

Steps (timed separately, recorded under ``timings``):

1. load the SAE (:func:`sparsecodes.load`), check it fits ``--model``/``--hook``,
   load the model, check the hook's width;
2. with ``--inference``: collect calibration activations (embedded training split) and choose
   each iterative method's sparsity parameter (:mod:`~sparsecodes.evaluation.gap`);
3. reconstruction pass over all held-out windows, each forward stopped right after the hook
   (:mod:`~sparsecodes.evaluation.core`);
4. downstream pass over the first ``ce_tokens`` held-out tokens: clean, SAE spliced, SAE + error
   term, zero ablation, and each iterative method (:mod:`~sparsecodes.evaluation.splice`);
5. the report (:mod:`~sparsecodes.evaluation.report`).

:func:`evaluate` is the same without files: an SAE, a model adapter, a hook and windows in,
the result dict out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparsecodes.data import Window
from sparsecodes.evaluation import gap as gap_mod
from sparsecodes.evaluation.core import reconstruction_pass
from sparsecodes.evaluation.report import density_histogram
from sparsecodes.evaluation.splice import Variant, downstream_scores, zero_ablation

DEFAULT_CE_TOKENS = 4096
DEFAULT_GAP_TOKENS = 4096
DEFAULT_CALIB_TOKENS = 1024

logger = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """Options of :func:`run_eval` (the CLI's flags)."""

    sae_dir: str
    model: str | None = None
    hook: str | None = None
    corpus: str | None = None
    text_field: str = "text"
    context_size: int | None = None
    max_tokens: int | None = None
    ce_tokens: int = DEFAULT_CE_TOKENS
    batch_size: int = 16
    ce_batch_size: int = 4
    dense_threshold: float = 0.1
    inference: tuple[str, ...] = ()
    gap_tokens: int = DEFAULT_GAP_TOKENS
    calib_tokens: int = DEFAULT_CALIB_TOKENS
    calib_corpus: str | None = None
    fista_iters: int = 50
    l0_tolerance: float = 0.05
    out: str | None = None
    device: str = "auto"
    seed: int = 0
    progress: bool = False


@dataclass
class GapSetup:
    """Matched methods for the amortisation gap, chosen on calibration tokens."""

    target_l0: float
    calibrations: list[gap_mod.Calibration] = field(default_factory=list)
    calib_tokens: int = 0


def _ce_windows(windows: Sequence[Window], ce_tokens: int) -> list[Window]:
    out, kept = [], 0
    for w in windows:
        if kept >= ce_tokens:
            break
        out.append(w)
        kept += int(w.keep.sum())
    return out


def evaluate(
    coder: Any,
    adapter: Any,
    hook: str,
    windows: Sequence[Window],
    *,
    ce_tokens: int = DEFAULT_CE_TOKENS,
    batch_size: int = 16,
    ce_batch_size: int = 4,
    dense_threshold: float = 0.1,
    gap: GapSetup | None = None,
    gap_tokens: int = DEFAULT_GAP_TOKENS,
    l0_tolerance: float = 0.05,
    echo: Callable[[str], None] = lambda s: None,
    progress: bool = False,
    cache: MutableMapping[Any, Any] | None = None,
) -> dict[str, Any]:
    """Core metrics (and the amortisation-gap table when ``gap`` is given) of ``coder`` at ``hook``.

    ``ce_tokens``: kept tokens for the CE/KL pass (0 skips it). ``cache``: a dict kept across
    coders of one model and hook; the model's activations at ``hook`` and the clean and
    zero-ablation passes of the CE/KL scores are made once
    (:func:`~sparsecodes.evaluation.core.reconstruction_pass`,
    :func:`~sparsecodes.evaluation.splice.downstream_scores`). Returns the result dict
    that :func:`run_eval` writes as ``eval.json`` (without the config/SAE/timing sections).
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with _bar(progress, len(windows), "reconstruction (windows)") as bar:
        rec = reconstruction_pass(
            coder,
            adapter,
            hook,
            windows,
            batch_size=batch_size,
            keep_rows=gap_tokens if gap is not None else 0,
            dense_threshold=dense_threshold,
            progress=bar,
            cache=cache,
        )
    timings["reconstruction_s"] = time.perf_counter() - t0
    timings["reconstruction_model_s"] = rec.seconds_model
    timings["reconstruction_sae_s"] = rec.seconds_sae
    m = rec.metrics
    echo(
        f"reconstruction: {m['n_tokens']:,} tokens in {timings['reconstruction_s']:.1f}s: "
        f"FVU {m['fvu']:.4f}, L0 {m['l0']:.1f}, dead {m['n_dead']}"
    )

    methods: list[gap_mod.Method] = []
    if gap is not None:
        methods = [gap_mod.Method("sae")] + [c.method for c in gap.calibrations]
    ds = None
    if ce_tokens > 0:
        variants = {
            "sae": Variant(gap_mod.reconstructor(coder, gap_mod.Method("sae"))),
            "sae_error_term": Variant(
                gap_mod.reconstructor(coder, gap_mod.Method("sae")), error_term=True
            ),
            "zero": Variant(zero_ablation, coder_free=True),
        }
        for meth in methods[1:]:
            variants[meth.label] = Variant(gap_mod.reconstructor(coder, meth))
        ce_w = _ce_windows(windows, ce_tokens)
        t0 = time.perf_counter()
        with _bar(progress, len(ce_w), f"CE/KL, {len(variants) + 1} passes (windows)") as bar:
            ds = downstream_scores(
                adapter, hook, ce_w, variants, batch_size=ce_batch_size, progress=bar, cache=cache
            )
        timings["downstream_s"] = time.perf_counter() - t0
        timings.update({f"downstream_{k}_s": v for k, v in ds.seconds.items()})
        echo(
            f"downstream: {ds.n_positions:,} positions, {len(variants) + 1} passes in "
            f"{timings['downstream_s']:.1f}s: CE clean {ds.ce_clean:.4f}, spliced "
            f"{ds.ce['sae']:.4f}, zero {ds.ce['zero']:.4f}"
        )

    result: dict[str, Any] = {
        "eval_result_metrics": core_metrics(m, ds),
        "feature_density": density_histogram(m["density"]),
        "timings": timings,
    }
    if gap is not None:
        t0 = time.perf_counter()
        x = rec.rows
        cal_l0 = {c.method.label: c.l0 for c in gap.calibrations}
        rows = []
        for meth in methods:
            row = gap_mod.measure(
                coder,
                meth,
                x,
                cal_l0.get(meth.label, gap.target_l0 if meth.name == "sae" else None),
            )
            if ds is not None:
                row.ce_loss_score = ds.ce_loss_score(meth.label)
                row.kl_div_score = ds.kl_score(meth.label)
                row.ce_loss_with_method = ds.ce[meth.label]
            rows.append(row)
            echo(
                f"  {row.method:14s} FVU {row.fvu:.4f}  L0 {row.l0:6.2f}  "
                f"{row.flops_per_token / 1e6:8.2f} MFLOP/tok  "
                f"{1e6 * row.seconds_per_token:8.1f} us/tok"
                + (f"  CE score {row.ce_loss_score:.4f}" if row.ce_loss_score is not None else "")
            )
        timings["gap_measure_s"] = time.perf_counter() - t0
        result["amortisation_gap"] = {
            "target_l0": gap.target_l0,
            "calibration_tokens": gap.calib_tokens,
            "eval_tokens": int(x.shape[0]),
            "ce_positions": ds.n_positions if ds is not None else 0,
            "l0_tolerance": l0_tolerance,
            "rows": [asdict(r) for r in rows],
            "verdict": gap_mod.verdict(rows, l0_tolerance),
        }
    return result


@contextmanager
def _bar(show: bool, total: int, desc: str) -> Iterator[Callable[[int], None] | None]:
    """A tqdm progress callback ``done -> None`` (on stderr), or None when ``show`` is false."""
    if not show:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="win", dynamic_ncols=True, leave=False)

    def update(done: int) -> None:
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()


def core_metrics(m: dict[str, Any], ds: Any) -> dict[str, Any]:
    """SAEBench-style ``eval_result_metrics`` from reconstruction metrics and downstream scores."""
    out: dict[str, Any] = {}
    if ds is not None:
        out["model_behavior_preservation"] = {
            "kl_div_score": ds.kl_score("sae"),
            "kl_div_with_ablation": ds.kl["zero"],
            "kl_div_with_sae": ds.kl["sae"],
            "kl_div_with_sae_and_error_term": ds.kl["sae_error_term"],
            "kl_div_score_with_error_term": ds.kl_score("sae_error_term"),
        }
        out["model_performance_preservation"] = {
            "ce_loss_score": ds.ce_loss_score("sae"),
            "ce_loss_with_ablation": ds.ce["zero"],
            "ce_loss_with_sae": ds.ce["sae"],
            "ce_loss_without_sae": ds.ce_clean,
            "ce_loss_with_sae_and_error_term": ds.ce["sae_error_term"],
            "ce_loss_score_with_error_term": ds.ce_loss_score("sae_error_term"),
        }
    out["reconstruction_quality"] = {
        "explained_variance": m["explained_variance"],
        "fvu": m["fvu"],
        "mse": m["mse"],
        "cossim": m["cossim"],
    }
    out["shrinkage"] = {k: m[k] for k in ("l2_norm_in", "l2_norm_out", "l2_ratio")}
    out["sparsity"] = {"l0": m["l0"], "l1": m["l1"]}
    out["misc"] = {
        k: m[k]
        for k in (
            "frac_alive",
            "n_dead",
            "n_dense",
            "dense_threshold",
            "freq_over_1_percent",
            "freq_over_10_percent",
        )
    }
    out["token_stats"] = {
        "total_tokens_eval_reconstruction": ds.n_positions if ds is not None else 0,
        "total_tokens_eval_sparsity_variance": m["n_tokens"],
    }
    return out


def default_out(sae_path: Path) -> Path:
    """``RUN_DIR/eval`` for a run's ``final``/``final_saelens`` directory, else ``SAE_DIR/eval``."""
    if sae_path.name in ("final", "final_saelens"):
        return sae_path.parent / "eval"
    return sae_path / "eval"


def run_eval(cfg: EvalConfig, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Evaluate the SAE in ``cfg.sae_dir``; writes ``eval.json`` and PNGs to ``cfg.out``.

    ``echo(message)`` receives progress lines (default: this module's logger, INFO level).
    """
    echo = echo or logger.info
    from sparsecodes.evaluation.core import collect_rows
    from sparsecodes.evaluation.corpus import calibration_texts, eval_windows, heldout_texts
    from sparsecodes.evaluation.report import json_safe, plot_density, plot_gap
    from sparsecodes.files import write_json
    from sparsecodes.loading import check_width, load, resolve_target, source_of
    from sparsecodes.models import load_model

    for name in ("ce_tokens", "gap_tokens", "calib_tokens"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    names = gap_mod.parse_methods(cfg.inference) if cfg.inference else []
    if names and (cfg.gap_tokens < 1 or cfg.calib_tokens < 1):
        raise ValueError("--inference needs --gap-tokens and --calib-tokens of at least 1")
    torch.manual_seed(cfg.seed)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    coder = load(cfg.sae_dir, device=cfg.device)
    sae = source_of(coder)
    model_name, hook = resolve_target(coder, cfg.model, cfg.hook)
    context = cfg.context_size or sae.context_size or 128
    out = Path(cfg.out) if cfg.out else default_out(sae.path)

    texts = heldout_texts(cfg.corpus, text_field=cfg.text_field)
    t0 = time.perf_counter()
    echo(f"loading {model_name} ...")
    adapter = load_model(model_name, device=cfg.device)
    timings["load_model_s"] = time.perf_counter() - t0
    check_width(coder, adapter, hook)
    coder.to(adapter.device)

    what = "the held-out split of the embedded corpus" if cfg.corpus is None else cfg.corpus
    windows = eval_windows(texts, adapter.tokenizer, context, cfg.max_tokens, what=what)
    echo(
        f"evaluating {sae.path} ({coder.encoder.name}, {coder.n_latents} latents) at "
        f"{model_name} {hook} on {len(windows)} windows of {context} tokens from {what}"
    )

    setup = None
    if names:
        t0 = time.perf_counter()
        calib_what = cfg.calib_corpus or "the calibration text (embedded training split)"
        calib_w = eval_windows(
            calibration_texts(cfg.calib_corpus, text_field=cfg.text_field),
            adapter.tokenizer,
            context,
            cfg.calib_tokens,
            what=calib_what,
        )
        x_cal = collect_rows(adapter, hook, calib_w, cfg.calib_tokens, batch_size=cfg.batch_size)
        echo(f"matching L0 on {x_cal.shape[0]} calibration tokens (not the evaluation tokens):")
        target, cals = gap_mod.calibrate_methods(
            coder,
            names,
            x_cal,
            iters=cfg.fista_iters,
            l0_tolerance=cfg.l0_tolerance,
            echo=echo,
        )
        setup = GapSetup(target, cals, int(x_cal.shape[0]))
        timings["calibration_s"] = time.perf_counter() - t0

    result = evaluate(
        coder,
        adapter,
        hook,
        windows,
        ce_tokens=cfg.ce_tokens if adapter.is_causal else 0,
        batch_size=cfg.batch_size,
        ce_batch_size=cfg.ce_batch_size,
        dense_threshold=cfg.dense_threshold,
        gap=setup,
        gap_tokens=cfg.gap_tokens,
        l0_tolerance=cfg.l0_tolerance,
        echo=echo,
        progress=cfg.progress,
    )
    timings.update(result.pop("timings"))
    timings["total_s"] = time.perf_counter() - t_all
    n_tok = result["eval_result_metrics"]["token_stats"]["total_tokens_eval_sparsity_variance"]
    payload = {
        "eval_type_id": "core",
        "eval_config": {
            **{k: v for k, v in asdict(cfg).items() if k != "inference"},
            "inference": list(names),
            "model": model_name,
            "hook": hook,
            "context_size": context,
            "corpus": cfg.corpus or "embedded[heldout]: every 20th document",
            "n_windows": len(windows),
            "torch_threads": torch.get_num_threads(),
        },
        "sae": {
            "path": str(sae.path),
            "format": sae.format,
            "encoder": coder.encoder.name,
            "d_in": coder.d_in,
            "n_latents": coder.n_latents,
            "recorded_model_name": sae.model_name,
            "recorded_hook_name": sae.hook_name,
            "recorded_hook_name_raw": sae.recorded_hook_name,
        },
        **result,
        "timings": timings,
    }
    out.mkdir(parents=True, exist_ok=True)
    files = [write_json(out / "eval.json", json_safe(payload), allow_nan=False)]
    title = f"{sae.path} at {model_name} {hook} ({n_tok:,} held-out tokens)"
    files.append(plot_density(payload["feature_density"], out / "feature_density.png", title))
    if "amortisation_gap" in payload:
        files.append(
            plot_gap(
                payload["amortisation_gap"]["rows"],
                out / "amortisation_gap.png",
                f"amortisation gap: {sae.path} at {model_name} {hook} "
                f"({payload['amortisation_gap']['eval_tokens']:,} held-out tokens)",
            )
        )
        echo(payload["amortisation_gap"]["verdict"]["summary"])
    payload["files"] = [str(f) for f in files]
    echo(f"wrote {', '.join(payload['files'])} ({timings['total_s']:.1f}s)")
    return payload
