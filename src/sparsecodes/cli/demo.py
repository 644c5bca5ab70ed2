"""``sparsecodes demo``: the main job end to end on an embedded default.

Default: the real-model demo (``sparsecodes.experiments.demo``): cache SmolLM2-135M's layer-12
residual stream over the embedded corpus, train a TopK SAE, re-infer codes with OMP and FISTA on
its dictionary, print a table. ``--synthetic``: a quick version of the synthetic study instead.
"""

from __future__ import annotations

from pathlib import Path

import click

from sparsecodes.cli.options import device_option, out_option

SYNTH_METHODS = ("sae", "fista", "omp", "sae+fista")


def _synthetic(out_dir: Path, seeds: int, steps: int) -> None:
    from sparsecodes.experiments import synth as study

    methods = [m for m in SYNTH_METHODS if study.method_available(m)[0]]
    click.echo(f"sparsecodes demo --synthetic: methods {', '.join(methods)}, {seeds} seed(s)")
    report = study.run(study.SETTINGS, methods, seeds, steps=steps, curve_points=10, out=out_dir)
    click.echo("")
    click.echo(study.format_table(report["summary"]))
    click.echo(f"\nresults and figures in {out_dir}/ :")
    for f in report["files"]:
        click.echo(f"  {f}")


@click.command(
    help="""The main job on an embedded default, offline: cache the layer-12 residual stream of
the embedded SmolLM2-135M over the embedded corpus (Python's own docs), train a TopK SAE (4608
latents, k=32), re-infer codes on its dictionary with OMP and warm-started FISTA, and print FVU,
L0, dead %, FLOPs and speed on held-out tokens. About 5 minutes on two cores; re-running reuses
the cache and checkpoints in --out. --synthetic runs a quick synthetic study instead."""
)
@out_option("sparsecodes_demo", "Output directory.", dest="out_dir")
@click.option("--train-tokens", default=200_000, show_default=True, type=click.IntRange(min=1024))
@click.option("--steps", default=1200, show_default=True, type=click.IntRange(min=1))
@device_option
@click.option("--synthetic", is_flag=True, help="Run the quick synthetic study instead.")
@click.option(
    "--seeds",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="Seeds for --synthetic.",
)
def demo(
    out_dir: Path, train_tokens: int, steps: int, device: str, synthetic: bool, seeds: int
) -> None:
    if synthetic:
        _synthetic(out_dir, seeds, min(steps, 300))
        return
    from sparsecodes.experiments.demo import DemoConfig, format_table, run_demo

    cfg = DemoConfig(train_tokens=train_tokens, steps=steps, out=str(out_dir), device=device)
    result = run_demo(cfg, echo=click.echo)
    click.echo("")
    click.echo(format_table(result))
    click.echo("\nfiles:")
    for k, v in result["files"].items():
        click.echo(f"  {k:<12} {v}")
    click.echo(f"  {'results':<12} {out_dir / 'demo.json'}")
