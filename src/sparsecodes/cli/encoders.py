"""``sparsecodes encoders``: the registry, with each encoder's kind and parameters."""

from __future__ import annotations

import dataclasses

import click


@click.command(help="List the registered encoders, their kind and their parameters.")
def encoders() -> None:
    from sparsecodes.encoders import available_encoders, get_encoder_class

    for name in available_encoders():
        cls = get_encoder_class(name)
        params = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls.config_cls))
        click.echo(f"{name:<10} {cls.kind:<10} {params}")
