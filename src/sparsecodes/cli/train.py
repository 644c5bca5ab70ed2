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
    "transcoders": "--transcoder",
    "skip": "--skip",
    "encoders": "--encoder",
    "parallel": "--parallel",
    "eval_every": "--eval-every",
    "autocast": "--autocast",
    "latent_ranks": "--latent-ranks",
}


def parse_layers(text: str) -> list[int]:
    """``"0-3"`` -> [0, 1, 2, 3]; ``"0,2,5-6"`` -> [0, 2, 5, 6]."""
    out: list[int] = []
    try:
        for part in text.split(","):
            a, _, b = part.strip().partition("-")
            lo, hi = int(a), int(b) if b else int(a)
            if lo < 0 or hi < lo:
                raise ValueError
            out.extend(range(lo, hi + 1))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a layer list; use e.g. 0-3 or 0,2,5-6", param_hint="--layers"
        ) from None
    return list(dict.fromkeys(out))


def transcoder_pairs(
    specs: tuple[str, ...], layers: str | None, crosscoder: bool
) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]:
    """``--transcoder IN:OUT`` specs (``{i}`` expanded over ``--layers``) as (in, out) hook
    groups: one pair per spec and layer, or with ``crosscoder`` one group over all of them."""
    pairs: list[tuple[str, str]] = []
    for spec in specs:
        ins, sep, outs = spec.partition(":")
        if not sep or not ins or not outs:
            raise click.BadParameter(
                f"{spec!r} is not IN:OUT, e.g. blocks.{{i}}.mlp_in:blocks.{{i}}.mlp_out",
                param_hint="--transcoder",
            )
        if "{i}" in spec:
            if layers is None:
                raise click.UsageError("--transcoder with {i} needs --layers (e.g. --layers 0-3)")
            pairs += [(ins.format(i=i), outs.format(i=i)) for i in parse_layers(layers)]
        else:
            pairs.append((ins, outs))
    if crosscoder:
        if not pairs:
            raise click.UsageError("--crosscoder needs --transcoder IN:OUT specs")
        ins_all = tuple(dict.fromkeys(i for i, _ in pairs))
        outs_all = tuple(dict.fromkeys(o for _, o in pairs))
        return ((ins_all, outs_all),)
    return tuple(((i,), (o,)) for i, o in pairs)


@click.command(
    help=(
        "Train sparse coders on activations from STORE directories (written by `sparsecodes "
        "cache`) or streamed from --model at --hook points (one forward pass feeds every coder). "
        "One coder per (hook or store) x encoder; each gets a resumable run directory under --out. "
        "Under torchrun (torchrun --nproc-per-node N -m sparsecodes train ...) training is "
        "data-parallel by default (--batch-size is the global batch, rank 0 writes; --parallel "
        "latent, data,latent or modules for the other splits, docs/distributed.md). "
        "Transcoders: --transcoder 'blocks.{i}.mlp_in:blocks.{i}.mlp_out' --layers 0-3 trains one "
        "transcoder per layer from the same forward passes (--skip adds a linear skip path; "
        "--crosscoder makes one dictionary reading every IN hook and writing every OUT hook)."
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
    "--transcoder",
    "transcoder_specs",
    multiple=True,
    metavar="IN:OUT",
    help=(
        "Train a transcoder reading hook IN and reconstructing hook OUT (repeatable); {i} is "
        "replaced by each of --layers, e.g. blocks.{i}.mlp_in:blocks.{i}.mlp_out."
    ),
)
@click.option("--layers", default=None, metavar="LIST", help="Layers for {i}: 0-3 or 0,2,5-6.")
@click.option("--skip", is_flag=True, help="Transcoders get a trained linear skip path W_skip.")
@click.option(
    "--crosscoder",
    is_flag=True,
    help="One crosscoder over all --transcoder pairs: reads every IN hook, writes every OUT hook.",
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
@click.option(
    "--parallel",
    type=click.Choice(["data", "latent", "modules", "data,latent"]),
    default="data",
    show_default=True,
    help=(
        "Under torchrun: 'data' splits each batch between the ranks; 'latent' gives each rank "
        "1/N of every coder's latents (for dictionaries too wide for one device; topk and "
        "batchtopk), every rank reading the same rows; 'data,latent' does both: groups of "
        "--latent-ranks consecutive ranks share one coder's latents, each group reads its own "
        "rows; 'modules' deals the stores/hooks to the ranks in turn, each rank training its "
        "coders on every forward pass. Without torchrun all are one process."
    ),
)
@click.option(
    "--latent-ranks",
    type=click.IntRange(min=1),
    default=None,
    metavar="R",
    help=(
        "With --parallel data,latent: ranks per latent group (the processes must be a multiple "
        "of R; at most the processes per node, so each step's traffic stays inside a node)."
    ),
)
@click.option(
    "--autocast",
    type=click.Choice(["auto", "bf16", "off"]),
    default="auto",
    show_default=True,
    help=(
        "Precision of each training step's forward: 'bf16' runs it under torch.autocast in "
        "bfloat16 (parameters, gradients and Adam state stay fp32); 'off' runs it in fp32; "
        "'auto' is bf16 on CUDA devices with bf16 support, fp32 elsewhere (CPU). Applies to "
        "SAEs and --transcoder runs alike."
    ),
)
@click.option(
    "--eval-every",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help=(
        "Every N steps (and after the last), log the CE-loss and KL scores of each SAE spliced "
        "into its model (the live --model, or the model a --store records) on held-out text: "
        "columns ce_loss_score, kl_score. Transcoders are skipped. 0: never."
    ),
)
@click.option(
    "--eval-tokens",
    type=click.IntRange(min=1),
    default=2048,
    show_default=True,
    help="Held-out tokens for --eval-every (each evaluation: one clean and one spliced pass).",
)
@click.option(
    "--eval-corpus",
    default=None,
    help="Held-out text for --eval-every [default: the embedded corpus's held-out split, "
    "every 20th document].",
)
@out_option("runs/train", "Run directory (with several coders: OUT/<hook>/<encoder>).")
def train(
    params: tuple[tuple[str, Any], ...],
    transcoder_specs: tuple[str, ...],
    layers: str | None,
    crosscoder: bool,
    **kw: Any,
) -> None:
    from sparsecodes import distributed
    from sparsecodes.training.jobs import JobSpecError, train_coders

    if layers is not None and not transcoder_specs:
        raise click.UsageError("--layers expands {i} in --transcoder; add --transcoder IN:OUT")
    pairs = transcoder_pairs(transcoder_specs, layers, crosscoder)
    if distributed.launched():  # started by torchrun: join its process group
        from sparsecodes.devices import resolve_device

        device = resolve_device(kw["device"])
        distributed.init_from_env(str(device))
        kw["device"] = distributed.local_device(str(device))
    main = distributed.world().main
    try:
        runs = train_coders(encoder_params=params_dict(params), transcoders=pairs, **kw)
    except JobSpecError as e:
        raise click.UsageError(f"{_FLAGS.get(e.param, e.param)}: {e}") from e
    finally:
        distributed.shutdown()
    if not main:  # rank 0 reports
        return
    for run in runs:
        if run.saelens_error is not None:
            click.echo(f"note: no SAELens export for {run.run_dir}: {run.saelens_error}", err=True)
        row = ", ".join(
            f"{k}={v:.4g}"
            for k, v in run.last_row.items()
            if k in ("step", "mse", "l0", "dead_frac")
        )
        click.echo(f"{run.run_dir}: final/ written; last row: {row}")
