"""``sparsecodes demo``: a quick end-to-end run on embedded defaults.

For now this is a small, fast version of the synthetic study (``sparsecodes synth``): two seeds,
all three settings, the SAE against iterative inference; it prints the table and where the JSON
and figures went. (A later version will run a real embedded model.)
"""

from __future__ import annotations

from pathlib import Path

import click

DEMO_METHODS = ("sae", "fista", "omp", "sae+fista")


@click.command(
    help="""Quick demo: a small synthetic study (N=16, M=8, K=3; 2 seeds, 300 steps) comparing
the ReLU SAE with FISTA/OMP inference in the known-dictionary, known-codes and unknown settings.
Prints a table of code MCC, dictionary MCC, FVU, L0 and FLOPs and writes results.json and
figures to --out. Takes well under a minute on two cores. For the full study use
`sparsecodes synth`."""
)
@click.option(
    "--out",
    "out_dir",
    default="sparsecodes_demo",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output directory.",
)
@click.option("--seeds", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--steps", default=300, show_default=True, type=click.IntRange(min=1))
def demo(out_dir: Path, seeds: int, steps: int) -> None:
    from sparsecodes.experiments import synth as study

    methods = [m for m in DEMO_METHODS if study.method_available(m)[0]]
    if not methods:
        raise click.ClickException("no demo method is available (no encoders registered?)")
    click.echo(
        f"sparsecodes demo: synthetic study, methods {', '.join(methods)}, "
        f"{seeds} seed(s), {steps} steps"
    )
    report = study.run(study.SETTINGS, methods, seeds, steps=steps, curve_points=10, out=out_dir)
    click.echo("")
    click.echo(study.format_table(report["summary"]))
    click.echo(f"\n{len(report['results'])} runs in {report['environment']['total_seconds']:.1f}s")
    click.echo(f"results and figures in {out_dir}/ :")
    for f in report["files"]:
        click.echo(f"  {f}")
