"""``sparsecodes bench``: the evaluation suite over several SAEs in one resumable run."""

from __future__ import annotations

from pathlib import Path

import click

from sparsecodes.cli.options import (
    count_option,
    device_option,
    endpoint_api_key,
    endpoint_options,
    out_option,
    seed_option,
)
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
@count_option("--core-tokens", D.core_tokens, "core: held-out tokens for FVU, L0, dead latents.")
@count_option(
    "--ce-tokens",
    D.ce_tokens,
    "core: held-out tokens for the CE/KL scores (4 forward passes; 0 skips).",
    minimum=0,
)
@click.option(
    "--gap-methods",
    default=",".join(D.gap_methods),
    show_default=True,
    help="gap: iterative methods matched to the SAE's L0.",
)
@count_option("--gap-tokens", D.gap_tokens)
@count_option("--calib-tokens", D.calib_tokens)
@count_option(
    "--absorption-words", D.absorption_words, "absorption: vocabulary words (80/20 split).",
    minimum=20,
)  # fmt: skip
@count_option(
    "--absorption-icl", D.absorption_icl, "absorption: in-context lines per prompt.", minimum=0
)
@count_option(
    "--probing-per-class",
    D.probing_per_class,
    "probing: texts per class (languages; biographies get half per profession x gender; "
    "cities 6x in all).",
    minimum=4,
)
@count_option(
    "--scr-per-cell",
    D.scr_per_cell,
    "SCR/TPP: biographies per profession x gender cell (5 x 2 cells).",
    minimum=4,
)
@count_option("--ravel-entities", D.ravel_entities, "RAVEL: world cities.", minimum=10)
@count_option("--ravel-pairs", D.ravel_pairs, "RAVEL: pairs per attribute.")
@count_option("--ravel-k", D.ravel_k, "RAVEL: latents per attribute.")
@click.option(
    "--autointerp-scorer",
    "autointerp_scorers",
    multiple=True,
    help="autointerp scorer(s): embedding (no LLM), detection, fuzz, intruder, "
    "simulation [default: embedding].",
)
@count_option("--autointerp-latents", D.autointerp_latents, "autointerp: the first N latents.")
@count_option("--autointerp-windows", D.autointerp_windows)
@click.option(
    "--autointerp-explainer",
    type=click.Choice(["local", "top-tokens"]),
    default=D.autointerp_explainer,
    show_default=True,
    help="autointerp without --endpoint: explanations from the local model, or (no model) the "
    "most frequent activating tokens of each latent's top contexts.",
)
@endpoint_options("Local explainer for autointerp when no --endpoint is given.")
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
    api_key = endpoint_api_key(kw["endpoint"], kw["llm"], api_key_env)  # type: ignore[arg-type]
    if autointerp_scorers and "autointerp" not in chosen:
        raise click.UsageError("--autointerp-scorer: add autointerp to --metrics")
    if "autointerp" in chosen and not kw["endpoint"] and kw["autointerp_explainer"] == "local":
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
