"""``sparsecodes synth``: the compute-optimal inference paper's synthetic settings.

Thin wrapper around :func:`sparsecodes.experiments.synth.run`: parse, run, print the table, say
where the JSON and PNGs went.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from sparsecodes.cli.options import NameValue, out_option, params_dict

SETTINGS = ("known_dictionary", "known_codes", "unknown")


def _split_list(value: str, name: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise click.BadParameter(f"{name} needs at least one comma-separated name")
    return items


@click.command(
    help="""Run the compute-optimal inference paper's synthetic study and write results.

Data: codes with exactly K of N latents active (|N(0,1)| values), N unit-norm Gaussian atoms in
R^M, x = codes @ D; train and test rows share the dictionary; every metric is measured on the
test rows.

\b
Settings:
  known_dictionary  dictionary fixed to the truth; encoders learn, FISTA/OMP just infer
  known_codes       encoder fitted to the true codes (supervised), dictionary to x given them
  unknown           dictionary and encoder both learned (sparse coding for fista/omp)

\b
Methods: sae, mlp, topk, lista, fista (= sparse_coding), ista, omp, mp, sae+fista
(SAE, then FISTA on its dictionary warm-started from its codes). Methods whose encoder is not
registered are skipped with a note.

Hyperparameters are fixed defaults, never selected on test MCC; override with --param.
Writes DIR/results.json (every run with its config, the curves, a summary) and per setting
DIR/<setting>_mcc_vs_flops.png and DIR/<setting>_mcc_vs_steps.png.

\b
Example (the paper's defaults, N=16, M=8, K=3, 5 seeds):
  sparsecodes synth --out synth_results

With --world NAME: every amortised encoder (or --methods) on that world at each target L0
(--l0), its sparsity parameter matched on training rows; trained on the world's train stream,
scored on its test stream (MCC, absorption, firing F1, shrinkage, recovery). Writes
DIR/results.json (resumable: cells already there are skipped), DIR/mcc_vs_l0.png and
DIR/absorption_vs_l0.png.

\b
  sparsecodes synth --world hierarchy --l0 4,8,16 --steps 2000 --out synth_hierarchy
"""
)
@click.option(
    "--setting",
    "settings",
    default=",".join(SETTINGS),
    show_default=True,
    help="Comma-separated settings to run.",
)
@click.option(
    "--methods",
    default=None,
    help="Comma-separated methods [default: sae,mlp,topk,lista,fista,omp,sae+fista].",
)
@click.option(
    "--seeds",
    default=5,
    show_default=True,
    type=click.IntRange(min=1),
    help="Number of seeds (0..n-1); each draws new data and a new initialisation.",
)
@click.option(
    "--n-latents",
    "-N",
    default=16,
    show_default=True,
    type=click.IntRange(min=1),
    help="N, true latents (and learned atoms).",
)
@click.option(
    "--n-dims",
    "-M",
    default=8,
    show_default=True,
    type=click.IntRange(min=1),
    help="M, data dimension.",
)
@click.option(
    "--k",
    "-K",
    default=3,
    show_default=True,
    type=click.IntRange(min=1),
    help="K, active latents per sample.",
)
@click.option("--n-train", default=1024, show_default=True, type=click.IntRange(min=1))
@click.option("--n-test", default=1024, show_default=True, type=click.IntRange(min=2))
@click.option(
    "--steps",
    default=None,
    type=click.IntRange(min=1),
    help="Training steps per run [default: the study's default].",
)
@click.option("--lr", default=None, type=float, help="Adam learning rate [default: study's].")
@click.option(
    "--batch-size",
    default=None,
    type=click.IntRange(min=1),
    help="Training batch size [default: the study's].",
)
@click.option(
    "--noise",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Std of Gaussian noise added to x.",
)
@click.option(
    "--zipf",
    "zipf_exponent",
    default=None,
    type=click.FloatRange(min=0),
    help="Zipf exponent of latent frequencies (default: uniform).",
)
@click.option("--signed", is_flag=True, help="Signed N(0,1) code values instead of |N(0,1)|.")
@click.option(
    "--correlation",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0, max=1, max_open=True),
    help="Co-activation strength of latents in [0, 1).",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    type=NameValue(dotted=True, name="ENCODER.FIELD=VALUE"),
    help="Override an encoder hyperparameter, e.g. --param relu.l1=0.05 (repeatable).",
)
@click.option(
    "--curve-points",
    default=20,
    show_default=True,
    type=click.IntRange(min=0),
    help="Test-MCC evaluations during training per run (0: no curves).",
)
@click.option(
    "--threads",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="torch CPU threads (1 is fastest for small N).",
)
@click.option(
    "--world",
    default=None,
    metavar="NAME",
    help="Run every amortised encoder on this world (sparsecodes.worlds preset: paper, "
    "hierarchy, zipf-correlated, synthsaebench-16k) at matched L0 instead of the paper's study.",
)
@click.option(
    "--l0",
    "l0_targets",
    default=None,
    help="With --world: comma-separated target L0s [default: the world's L0 x 0.5, 1, 2].",
)
@click.option(
    "--world-seed",
    default=None,
    type=int,
    help="With --world: the world's seed (dictionary, trees, streams) [default: the preset's].",
)
@click.option(
    "--eval-rows",
    default=4096,
    show_default=True,
    type=click.IntRange(min=2),
    help="With --world: held-out test-stream rows scored.",
)
@click.option(
    "--calib-trials",
    default=6,
    show_default=True,
    type=click.IntRange(min=1),
    help="With --world: most training runs of the penalty search per (encoder, L0).",
)
@click.option(
    "--calib-steps",
    default=None,
    type=click.IntRange(min=1),
    help="With --world: steps of each search trial [default: --steps, and the kept trial is "
    "the final model].",
)
@out_option("synth_results", "Output directory.", dest="out_dir")
@click.option("--no-plots", is_flag=True, help="Write results.json only.")
@click.option("--quiet", "-q", is_flag=True, help="No per-run lines, only the table.")
def synth(
    settings: str,
    methods: str | None,
    seeds: int,
    n_latents: int,
    n_dims: int,
    k: int,
    n_train: int,
    n_test: int,
    steps: int | None,
    lr: float | None,
    batch_size: int | None,
    noise: float,
    zipf_exponent: float | None,
    signed: bool,
    correlation: float,
    params: tuple[tuple[tuple[str, str], Any], ...],
    curve_points: int,
    threads: int,
    world: str | None,
    l0_targets: str | None,
    world_seed: int | None,
    eval_rows: int,
    calib_trials: int,
    calib_steps: int | None,
    out_dir: Path,
    no_plots: bool,
    quiet: bool,
) -> None:
    ctx = click.get_current_context()
    explicit = {
        name
        for name in ctx.params
        if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    }
    if world is not None:
        _synth_world(ctx, explicit, world, l0_targets, world_seed, methods, seeds, n_latents,
                     steps, lr, batch_size, params, eval_rows, calib_trials, calib_steps,
                     threads, out_dir, no_plots, quiet)  # fmt: skip
        return
    world_only = sorted(
        explicit & {"l0_targets", "world_seed", "eval_rows", "calib_trials", "calib_steps"}
    )
    if world_only:
        flags = ", ".join("--" + n.replace("_targets", "").replace("_", "-") for n in world_only)
        raise click.UsageError(f"{flags} only apply with --world NAME")
    from sparsecodes.experiments import synth as study

    setting_list = _split_list(settings, "--setting")
    bad = [s for s in setting_list if s not in study.SETTINGS]
    if bad:
        raise click.BadParameter(
            f"unknown setting(s) {', '.join(bad)}; choose from {', '.join(study.SETTINGS)}",
            param_hint="--setting",
        )
    method_list = _split_list(methods, "--methods") if methods else list(study.DEFAULT_METHODS)
    bad = [m for m in method_list if m not in study.METHODS]
    if bad:
        raise click.BadParameter(
            f"unknown method(s) {', '.join(bad)}; choose from {', '.join(study.METHODS)}",
            param_hint="--methods",
        )
    if k > n_latents:
        raise click.BadParameter(
            f"--k {k} is larger than --n-latents {n_latents}", param_hint="--k"
        )
    train_kwargs = {
        name: value
        for name, value in (("steps", steps), ("lr", lr), ("batch_size", batch_size))
        if value is not None
    }
    data_kwargs = {
        "noise": noise,
        "zipf_exponent": zipf_exponent,
        "signed": signed,
        "correlation": correlation,
    }
    try:
        report = study.run(
            setting_list,
            method_list,
            seeds,
            n_latents=n_latents,
            n_dims=n_dims,
            k=k,
            n_train=n_train,
            n_test=n_test,
            params=params_dict(params),
            curve_points=curve_points,
            data_kwargs=data_kwargs,
            out=out_dir,
            plots=not no_plots,
            threads=threads,
            log=None if quiet else click.echo,
            **train_kwargs,
        )
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    _echo_report(
        study.format_table(report["summary"]),
        [f"skipped {s['method']}: {s['reason']}" for s in report["skipped"]],
        report["files"],
        f"\n{len(report['results'])} runs in {report['environment']['total_seconds']:.1f}s",
    )


def _echo_report(table: str, skipped: list[str], files: list[Any], footer: str = "") -> None:
    """Print a study's table, what it skipped, an optional footer and the files it wrote."""
    click.echo("")
    click.echo(table)
    for line in skipped:
        click.echo(line)
    if footer:
        click.echo(footer)
    for f in files:
        click.echo(f"wrote {f}")


#: options of the paper's study that have no meaning on a world (the world fixes them)
_STUDY_ONLY = {
    "settings": "--setting",
    "n_dims": "--n-dims",
    "k": "--k",
    "n_train": "--n-train",
    "n_test": "--n-test",
    "noise": "--noise",
    "zipf_exponent": "--zipf",
    "signed": "--signed",
    "correlation": "--correlation",
    "curve_points": "--curve-points",
}


def _synth_world(
    ctx: click.Context,
    explicit: set[str],
    world: str,
    l0_targets: str | None,
    world_seed: int | None,
    methods: str | None,
    seeds: int,
    n_latents: int,
    steps: int | None,
    lr: float | None,
    batch_size: int | None,
    params: tuple[tuple[tuple[str, str], Any], ...],
    eval_rows: int,
    calib_trials: int,
    calib_steps: int | None,
    threads: int,
    out_dir: Path,
    no_plots: bool,
    quiet: bool,
) -> None:
    """``synth --world NAME``: parse, run :func:`sparsecodes.experiments.worlds.run_world`."""
    from sparsecodes.experiments import worlds as study
    from sparsecodes.worlds import available_worlds

    bad = sorted(flag for name, flag in _STUDY_ONLY.items() if name in explicit)
    if bad:
        raise click.UsageError(
            f"{', '.join(bad)} do not apply with --world (the world sets its own data); "
            "drop them, or run without --world for the paper's study"
        )
    if world not in available_worlds():
        raise click.BadParameter(
            f"unknown world {world!r}; choose from {', '.join(available_worlds())}",
            param_hint="--world",
        )
    targets = None
    if l0_targets:
        try:
            targets = [float(v) for v in _split_list(l0_targets, "--l0")]
        except ValueError as e:
            raise click.BadParameter(f"target L0s must be numbers: {e}", param_hint="--l0") from e
    encoders = _split_list(methods, "--methods") if methods else None
    train = {
        name: value
        for name, value in (("steps", steps), ("lr", lr), ("batch_size", batch_size))
        if value is not None
    }
    try:
        report = study.run_world(
            world,
            encoders=encoders,
            targets=targets,
            seeds=list(range(seeds)),
            world_overrides={"seed": world_seed} if world_seed is not None else None,
            n_latents=n_latents if "n_latents" in explicit else None,
            eval_rows=eval_rows,
            calibration=study.Calibration(max_trials=calib_trials, steps=calib_steps),
            params=params_dict(params),
            out=out_dir,
            plots=not no_plots,
            threads=threads,
            log=None if quiet else click.echo,
            **train,
        )
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    _echo_report(
        study.format_table(report),
        [f"skipped {s['encoder']}: {s['reason']}" for s in report["skipped"]],
        report["files"],
    )
