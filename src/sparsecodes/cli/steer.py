"""``sparsecodes steer``: generate with and without a latent added, clamped or ablated."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sparsecodes.cli.options import (
    LatentRange,
    coder_hook_option,
    coder_model_option,
    device_option,
    seed_option,
)


def _fmt_token(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _one_line(s: str) -> str:
    """Generated text on one line: newlines and tabs made visible (as in the browser)."""
    return s.replace("\n", "\u21b5").replace("\t", "\u2192")


@click.command(
    help=(
        "Generate from --prompt with the model the coder in --sae reads, once as is and once "
        "steered: latent --latent's decoder atom added with weight --alpha (in the model's own "
        "units), or clamped to --clamp; --ablate zeroes latents (the reconstruction error is "
        "kept, so nothing else changes). Prints both continuations (greedy unless "
        "--temperature) and the next-token logits that rose and fell most."
    )
)
@click.option(
    "--sae",
    "sae_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Coder directory (ours, a training run, SAELens or sparsify).",
)
@click.option("--prompt", required=True, help="Text to continue.")
@click.option("--latent", type=int, default=None, help="Latent to steer (with --alpha/--clamp).")
@click.option(
    "--alpha",
    type=float,
    default=None,
    help="Add alpha * the latent's decoder atom at every position [default: 8 unless --clamp].",
)
@click.option("--clamp", type=float, default=None, help="Clamp --latent's code to this value.")
@click.option(
    "--ablate", type=LatentRange(), default=None, help="Latents to ablate, e.g. 1,2,3 or 0-9."
)
@click.option("--max-new-tokens", type=int, default=20, show_default=True)
@click.option(
    "--temperature", type=float, default=0.0, show_default=True, help="0 = greedy decoding."
)
@click.option("--top-n", type=int, default=8, show_default=True, help="Logit changes shown.")
@coder_model_option()
@coder_hook_option
@device_option
@seed_option("Seed of sampled decoding (the same for both runs).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def steer(
    sae_dir: Path,
    prompt: str,
    latent: int | None,
    alpha: float | None,
    clamp: float | None,
    ablate: list[int] | None,
    max_new_tokens: int,
    temperature: float,
    top_n: int,
    model: str | None,
    hook: str | None,
    device: str,
    seed: int,
    as_json: bool,
) -> None:
    from sparsecodes.loading import load_with_model
    from sparsecodes.uses.steering import compare

    if latent is None and (alpha is not None or clamp is not None):
        raise click.UsageError("--alpha and --clamp need --latent")
    if latent is None and not ablate:
        raise click.UsageError("give --latent (with --alpha or --clamp) and/or --ablate")
    add: dict[int, float] = {}
    clamps: dict[int, float] = {}
    if latent is not None:
        if clamp is not None:
            clamps[latent] = clamp
            if alpha is not None:
                add[latent] = alpha
        else:
            add[latent] = 8.0 if alpha is None else alpha
    coder, adapter, hook_name = load_with_model(sae_dir, model=model, hook=hook, device=device)
    res = compare(
        adapter,
        coder,
        prompt,
        hook_name,
        add=add,
        clamp=clamps,
        ablate=ablate or (),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        top_n=top_n,
    )
    if as_json:
        click.echo(json.dumps(res.to_json(), ensure_ascii=False))
        return
    click.echo(f"{adapter.name} · {hook_name} · {coder.n_latents} latents · {res.edit}")
    click.echo(f"prompt:    {prompt}")
    click.echo(f"unsteered: {_one_line(res.unsteered)}")
    click.echo(f"steered:   {_one_line(res.steered)}")
    click.echo("\nnext token, top probabilities (unsteered | steered):")
    for (a, pa), (b, pb) in zip(res.top_before, res.top_after, strict=True):
        click.echo(f"  {_fmt_token(a):>16} {pa:6.3f}   | {_fmt_token(b):>16} {pb:6.3f}")
    click.echo("\nnext-token logits that rose most (change, unsteered -> steered):")
    for tok, d, lo, hi in res.top_up:
        click.echo(f"  {_fmt_token(tok):>16} {d:+8.3f}   {lo:8.3f} -> {hi:8.3f}")
    click.echo("next-token logits that fell most:")
    for tok, d, lo, hi in res.top_down:
        click.echo(f"  {_fmt_token(tok):>16} {d:+8.3f}   {lo:8.3f} -> {hi:8.3f}")
