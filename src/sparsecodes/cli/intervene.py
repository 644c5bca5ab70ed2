"""``sparsecodes intervene``: zero or scale transcoder features in the real model."""

from __future__ import annotations

import json
import re

import click

from sparsecodes.cli.options import device_option, transcoders_option

EPILOG = """
\b
Examples:
  sparsecodes intervene --transcoders tc/ --prompt "When John and Mary went to the store, John
      gave a drink to" --target " Mary" --contrast " John" --zero 3:120,5:7
  sparsecodes intervene --transcoders tc/l4 --prompt "The weather today" --scale 4:31=8 \\
      --max-new-tokens 30

\b
Each DIR is one layer's transcoder (reads blocks.{i}.mlp_in, writes blocks.{i}.mlp_out; the
layouts are in docs/graphs.md) or a directory of them. --zero L:I sets feature I of layer L's
transcoder to 0 at every position, --scale L:I=S multiplies it by S; the MLP still runs, so its
output changes by exactly (new - old) * W_dec_out[I] and keeps the transcoder's error. Prints the
next-token logit of --target (minus --contrast's) before and after, the logits that moved most,
and greedy continuations without and with the edit (the edit acts at every generated step).
"""

_ZERO = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
_SCALE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*=\s*([^\s]+)\s*$")


def _items(specs: tuple[str, ...]) -> list[str]:
    return [s for spec in specs for s in spec.split(",") if s.strip()]


def _parse(zero: tuple[str, ...], scale: tuple[str, ...]) -> dict[int, dict[int, float]]:
    """``{layer: {latent: factor}}`` from ``--zero L:I,...`` and ``--scale L:I=S,...``."""
    out: dict[int, dict[int, float]] = {}
    for item in _items(zero):
        m = _ZERO.match(item)
        if m is None:
            raise click.UsageError(f"--zero {item!r}: give LAYER:FEATURE, e.g. 3:120")
        out.setdefault(int(m.group(1)), {})[int(m.group(2))] = 0.0
    for item in _items(scale):
        m = _SCALE.match(item)
        try:
            factor = float(m.group(3)) if m else None
        except ValueError:
            factor = None
        if m is None or factor is None:
            raise click.UsageError(f"--scale {item!r}: give LAYER:FEATURE=FACTOR, e.g. 3:120=4")
        layer, lat = int(m.group(1)), int(m.group(2))
        if lat in out.get(layer, {}):
            raise click.UsageError(f"feature {layer}:{lat} is named twice; name it once")
        out.setdefault(layer, {})[lat] = factor
    if not out:
        raise click.UsageError("name at least one feature with --zero L:I or --scale L:I=S")
    return out


def _line(s: str) -> str:
    return s.replace("\n", "\u21b5").replace("\t", "\u2192")


@click.command("intervene", epilog=EPILOG)
@transcoders_option
@click.option("--prompt", required=True, help="Text to run (and continue).")
@click.option("--zero", multiple=True, metavar="L:I,...", help="Features to zero. Repeatable.")
@click.option(
    "--scale", multiple=True, metavar="L:I=S,...", help="Features to multiply by S. Repeatable."
)
@click.option("--target", default=None, help="Target token (one token, e.g. ' Mary').")
@click.option("--contrast", default=None, help="Contrast token: report target minus this.")
@click.option("--model", default=None, help="Model [default: the one the transcoders record].")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--top-n", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@device_option
def intervene(
    transcoder_dirs: tuple[str, ...],
    prompt: str,
    zero: tuple[str, ...],
    scale: tuple[str, ...],
    target: str | None,
    contrast: str | None,
    model: str | None,
    max_new_tokens: int,
    top_n: int,
    as_json: bool,
    device: str,
) -> None:
    """Zero or scale transcoder features in the model; the target logit and generations."""
    from sparsecodes.devices import resolve_device
    from sparsecodes.graphs import single_token
    from sparsecodes.graphs.io import open_transcoders
    from sparsecodes.graphs.transcoder import hook_layer
    from sparsecodes.models import load_model
    from sparsecodes.uses.steering import LatentEdit, compare_edits

    edits_by_layer = _parse(zero, scale)
    if contrast is not None and target is None:
        raise click.UsageError("--contrast needs --target")
    dev = resolve_device(device)
    try:
        model, tcs = open_transcoders(transcoder_dirs, model=model, device=dev)
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    by_layer = {hook_layer(tc.in_hook, "mlp_in"): tc for tc in tcs}
    missing = sorted(set(edits_by_layer) - set(by_layer))
    if missing:
        raise click.UsageError(
            f"no transcoder for layer {', '.join(map(str, missing))} among --transcoders "
            f"(layers {sorted(by_layer)})"
        )
    adapter = load_model(model, device=dev)
    try:
        tid = single_token(adapter, target) if target is not None else None
        cid = single_token(adapter, contrast) if contrast is not None else None
        edits = [
            LatentEdit(by_layer[layer], scale=f) for layer, f in sorted(edits_by_layer.items())
        ]
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    res = compare_edits(
        adapter,
        edits,
        prompt,
        max_new_tokens=max_new_tokens,
        top_n=top_n,
        target_id=tid,
        contrast_id=cid,
    )
    if as_json:
        click.echo(json.dumps(res.to_json(), ensure_ascii=False))
        return
    named = ", ".join(
        f"{layer}:{i}{'=0' if f == 0 else f'*{f:g}'}"
        for layer, fs in sorted(edits_by_layer.items())
        for i, f in fs.items()
    )
    click.echo(f"edit: {named} ({res.hook})")
    if res.target is not None:
        what = repr(target) + (f" - {contrast!r}" if contrast is not None else "")
        b, a = res.target
        click.echo(f"logit {what}: before {b:+.4f}, after {a:+.4f} (change {a - b:+.4f})")
    click.echo("rose most: " + ", ".join(f"{json.dumps(t)} {c:+.3f}" for t, c, *_ in res.top_up))
    click.echo("fell most: " + ", ".join(f"{json.dumps(t)} {c:+.3f}" for t, c, *_ in res.top_down))
    click.echo(f"unedited: {_line(res.unsteered)}")
    click.echo(f"edited:   {_line(res.steered)}")
