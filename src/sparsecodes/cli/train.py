"""``sparsecodes train``: sparse coders on cached (store) or streamed (live model) activations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from sparsecodes.cli.options import NameValue, device_option, out_option, params_dict, seed_option

#: train_coders' parameter -> the option that sets it (for usage errors)
_FLAGS = {
    "stores": "--store/--model",
    "hooks": "--hook",
    "encoder_params": "--param",
    "tensorboard_dir": "--tensorboard",
}


@click.command(
    help=(
        "Train sparse coders on activations from STORE directories (written by `sparsecodes "
        "cache`) or streamed from --model at --hook points (one forward pass feeds every coder). "
        "One coder per (hook or store) x encoder; each gets a resumable run directory under --out."
    )
)
@click.option(
    "--store",
    "stores",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Activation store directory (repeatable).",
)
@click.option(
    "--model", default=None, help="Stream from this model instead (see `sparsecodes models`)."
)
@click.option(
    "--hook",
    "hooks",
    multiple=True,
    help="Hook point to stream (repeatable), e.g. blocks.12.resid_post.",
)
@click.option(
    "--corpus",
    default=None,
    help="Corpus for streaming: 'embedded' (default), a file or a datasets name.",
)
@click.option("--context-size", default=128, show_default=True)
@click.option(
    "--encoder",
    "encoders",
    multiple=True,
    default=("topk",),
    show_default=True,
    help="Encoder name (repeatable; see `sparsecodes encoders`).",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    type=NameValue(),
    help="Encoder parameter NAME=VALUE (repeatable), e.g. k=32.",
)
@click.option("--n-latents", type=int, default=None, help="Dictionary size (default: 8 x d_in).")
@click.option("--steps", type=int, default=1000, show_default=True)
@click.option("--batch-size", type=int, default=4096, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--warmup-steps", type=int, default=0, show_default=True)
@click.option("--decay-fraction", type=float, default=0.2, show_default=True)
@click.option(
    "--normalize",
    type=click.Choice(["expected_norm", "none"]),
    default="expected_norm",
    show_default=True,
)
@click.option(
    "--resample-every",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="N",
    help=(
        "Dead-latent resampling: every N steps, re-initialise latents that have not fired in the "
        "last --resample-window steps toward the batch's highest-error inputs (their Adam state "
        "reset). 0 = off. Works with any amortised encoder that supports it (topk, batchtopk, "
        "relu, jumprelu, ...) and combines with TopK's AuxK; metrics.csv gets a 'resampled' "
        "column (how many) when a logged step resamples."
    ),
)
@click.option(
    "--resample-window",
    type=click.IntRange(min=1),
    default=None,
    metavar="W",
    help="A latent is dead for resampling after W steps without firing (default: N).",
)
@click.option(
    "--resample-scale",
    type=click.FloatRange(min=0, min_open=True),
    default=0.2,
    show_default=True,
    help="A resampled latent's encoder norm, relative to the mean of the other latents'.",
)
@seed_option()
@click.option("--checkpoint-every", type=int, default=100, show_default=True)
@click.option("--no-resume", is_flag=True, help="Start over even if a checkpoint exists.")
@device_option
@click.option(
    "--saelens/--no-saelens",
    default=True,
    show_default=True,
    help="Also write the final model in SAELens's layout (final_saelens/).",
)
@click.option("--wandb", "wandb_project", default=None, help="Also log to this wandb project.")
@click.option(
    "--tensorboard",
    "tensorboard_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help=(
        "Also log to TensorBoard event files in DIR (scalars train/<metric>; several coders: one "
        "subdirectory per run, <hook>-<encoder>). View: tensorboard --logdir DIR. "
        "Needs pip install tensorboard."
    ),
)
@out_option("runs/train", "Run directory (with several coders: OUT/<hook>/<encoder>).")
def train(params: tuple[tuple[str, Any], ...], **kw: Any) -> None:
    from sparsecodes.training.jobs import JobSpecError, train_coders

    try:
        runs = train_coders(encoder_params=params_dict(params), **kw)
    except JobSpecError as e:
        raise click.UsageError(f"{_FLAGS.get(e.param, e.param)}: {e}") from e
    for run in runs:
        if run.saelens_error is not None:
            click.echo(f"note: no SAELens export for {run.run_dir}: {run.saelens_error}", err=True)
        row = ", ".join(
            f"{k}={v:.4g}"
            for k, v in run.last_row.items()
            if k in ("step", "mse", "l0", "dead_frac")
        )
        click.echo(f"{run.run_dir}: final/ written; last row: {row}")
