"""``sparsecodes train``: sparse coders on cached (store) or streamed (live model) activations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


def parse_params(items: tuple[str, ...]) -> dict[str, Any]:
    """``("k=32", "l1=1e-3")`` -> ``{"k": 32, "l1": 0.001}`` (ints, floats, bools, strings)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--param")
        key, raw = item.split("=", 1)
        value: Any = raw
        for conv in (int, float):
            try:
                value = conv(raw)
                break
            except ValueError:
                continue
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        if raw.lower() == "none":
            value = None
        out[key.strip()] = value
    return out


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
    "--param", "params", multiple=True, help="Encoder parameter NAME=VALUE (repeatable), e.g. k=32."
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
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--checkpoint-every", type=int, default=100, show_default=True)
@click.option("--no-resume", is_flag=True, help="Start over even if a checkpoint exists.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:i]")
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
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("runs/train"), show_default=True
)
def train(**kw: Any) -> None:
    from sparsecodes.training.cli_jobs import build_and_train

    build_and_train(encoder_params=parse_params(kw.pop("params")), **kw)
