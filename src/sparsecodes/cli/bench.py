"""``sparsecodes bench``: the evaluation suite over several SAEs in one resumable run."""

from __future__ import annotations

import os
from pathlib import Path

import click

from sparsecodes.cli.options import device_option, out_option, seed_option
from sparsecodes.evaluation.suite import BenchConfig

#: the library's defaults, shown by --help
D = BenchConfig(sae_dirs=())

EPILOG = """
\b
Examples:
  sparsecodes bench runs/topk runs/relu runs/batchtopk --out bench
  sparsecodes bench runs/topk --metrics core,probing --probing-per-class 20
  sparsecodes bench runs/topk --metrics autointerp --autointerp-scorer embedding
  sparsecodes bench runs/topk --metrics autointerp --autointerp-scorer detection \\
      --endpoint http://127.0.0.1:8000/v1 --model Qwen2.5-7B-Instruct

\b
Metrics: core (FVU, L0, dead latents, CE/KL splice scores), gap (amortisation gap at matched
L0), absorption, probing, scr, tpp, ravel [default: all of these], and autointerp (only when
named: explanations from --endpoint's model, else the local --local-model, named in the JSON).
Each model and hook is the one the SAE's files record; SAEs of one model share it. Each (SAE,
metric) result is written to OUT/<sae>/<metric>.json as soon as it is done; a rerun with the same
options skips those. Then OUT/bench.json (SAEBench key names), bench.md and bench.html (table),
bench.png (each metric against L0). See docs/benchmarks-suite.md.
"""


@click.command("bench", epilog=EPILOG)
@click.argument("sae_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option(
    "--metrics",
    default="core,gap,absorption,probing,scr,tpp,ravel",
    show_default=True,
    help="Comma-separated metrics (add autointerp to run it).",
)
@click.option(
    "--core-tokens",
    type=click.IntRange(min=1),
    default=D.core_tokens,
    show_default=True,
    help="core: held-out tokens for FVU, L0, dead latents.",
)
@click.option(
    "--ce-tokens",
    type=click.IntRange(min=0),
    default=D.ce_tokens,
    show_default=True,
    help="core: held-out tokens for the CE/KL scores (4 forward passes; 0 skips).",
)
@click.option(
    "--gap-methods",
    default=",".join(D.gap_methods),
    show_default=True,
    help="gap: iterative methods matched to the SAE's L0.",
)
@click.option("--gap-tokens", type=click.IntRange(min=1), default=D.gap_tokens, show_default=True)
@click.option(
    "--calib-tokens", type=click.IntRange(min=1), default=D.calib_tokens, show_default=True
)
@click.option(
    "--absorption-words",
    type=click.IntRange(min=20),
    default=D.absorption_words,
    show_default=True,
    help="absorption: vocabulary words (80/20 split).",
)
@click.option(
    "--absorption-icl",
    type=click.IntRange(min=0),
    default=D.absorption_icl,
    show_default=True,
    help="absorption: in-context lines per prompt.",
)
@click.option(
    "--probing-per-class",
    type=click.IntRange(min=4),
    default=D.probing_per_class,
    show_default=True,
    help="probing: texts per class (languages; biographies get half per "
    "profession x gender; cities 6x in all).",
)
@click.option(
    "--scr-per-cell",
    type=click.IntRange(min=4),
    default=D.scr_per_cell,
    show_default=True,
    help="SCR/TPP: biographies per profession x gender cell (5 x 2 cells).",
)
@click.option(
    "--ravel-entities",
    type=click.IntRange(min=10),
    default=D.ravel_entities,
    show_default=True,
    help="RAVEL: world cities.",
)
@click.option(
    "--ravel-pairs",
    type=click.IntRange(min=1),
    default=D.ravel_pairs,
    show_default=True,
    help="RAVEL: pairs per attribute.",
)
@click.option(
    "--ravel-k",
    type=click.IntRange(min=1),
    default=D.ravel_k,
    show_default=True,
    help="RAVEL: latents per attribute.",
)
@click.option(
    "--autointerp-scorer",
    "autointerp_scorers",
    multiple=True,
    help="autointerp scorer(s): embedding (no LLM), detection, fuzz, intruder, "
    "simulation [default: embedding].",
)
@click.option(
    "--autointerp-latents",
    type=click.IntRange(min=1),
    default=D.autointerp_latents,
    show_default=True,
    help="autointerp: the first N latents.",
)
@click.option(
    "--autointerp-windows",
    type=click.IntRange(min=1),
    default=D.autointerp_windows,
    show_default=True,
)
@click.option("--endpoint", default=None, help="OpenAI-compatible endpoint for autointerp.")
@click.option("--model", "llm", default=None, help="Model name to request from --endpoint.")
@click.option(
    "--api-key-env",
    default=None,
    metavar="VAR",
    help="Environment variable holding the endpoint's API key.",
)
@click.option(
    "--local-model",
    default="smollm2-135m",
    show_default=True,
    help="Local explainer for autointerp when no --endpoint is given.",
)
@out_option("bench", "Output directory (one folder per SAE, bench.json/.md/.html/.png).")
@device_option
@seed_option()
def bench(
    sae_dirs: tuple[str, ...],
    metrics: str,
    gap_methods: str,
    autointerp_scorers: tuple[str, ...],
    api_key_env: str | None,
    out: Path,
    **kw: object,
) -> None:
    """Compare SAEs: core, gap, absorption, probing, SCR/TPP, RAVEL (and autointerp)."""
    from sparsecodes.evaluation.suite import BenchConfig, parse_metrics, run_bench

    try:
        chosen = parse_metrics(metrics)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--metrics") from e
    if kw["endpoint"] and not kw["llm"]:
        raise click.UsageError("--endpoint needs --model NAME (the model the server serves)")
    if kw["llm"] and not kw["endpoint"]:
        raise click.UsageError("--model names the model at --endpoint; give --endpoint too")
    if autointerp_scorers and "autointerp" not in chosen:
        raise click.UsageError("--autointerp-scorer: add autointerp to --metrics")
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise click.UsageError(f"--api-key-env {api_key_env}: that variable is not set")
    if "autointerp" in chosen and not kw["endpoint"]:
        click.echo(
            f"note: autointerp without --endpoint: explanations from the local "
            f"{kw['local_model']} (weak), recorded as the explainer in the JSON"
        )
    cfg = BenchConfig(
        sae_dirs=sae_dirs,
        metrics=chosen,
        out=str(out),
        gap_methods=tuple(m.strip() for m in gap_methods.split(",") if m.strip()),
        autointerp_scorers=tuple(autointerp_scorers) or ("embedding",),
        api_key=api_key,
        **kw,  # type: ignore[arg-type]
    )
    combined = run_bench(cfg, echo=click.echo)
    from sparsecodes.evaluation.suite import markdown_table

    click.echo(markdown_table(combined["headline"]))
    click.echo(
        f"{out}: bench.json, bench.md, bench.html"
        + (", bench.png" if (out / "bench.png").exists() else "")
    )
