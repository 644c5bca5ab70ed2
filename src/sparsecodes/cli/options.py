"""Options and parameter types shared by the commands, each defined once.

Options are decorators (``@device_option``); factories take what differs between commands
(``out_option(default=..., help=...)``). Parameter types turn text into values and report bad
input as click's usage error naming the option.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

# ------------------------------------------------------------------------------ parameter types


def parse_value(text: str) -> Any:
    """A parameter value from text: int, float, ``true``/``false``, ``none``, else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


class NameValue(click.ParamType):
    """``NAME=VALUE`` -> ``(NAME, value)`` with the value typed by :func:`parse_value`.

    ``dotted=True`` requires ``GROUP.NAME=VALUE`` (e.g. ``relu.l1=0.05``) and gives
    ``((GROUP, NAME), value)``. ``name`` is the form shown in help and errors (e.g.
    ``"ENCODER.FIELD=VALUE"``). Use with ``multiple=True`` and :func:`params_dict`.
    """

    def __init__(self, dotted: bool = False, name: str | None = None) -> None:
        self.dotted = dotted
        self.name = name or ("GROUP.NAME=VALUE" if dotted else "NAME=VALUE")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):  # already converted (a default)
            return value
        key, sep, raw = str(value).partition("=")
        key = key.strip()
        example = "relu.l1=0.05" if self.dotted else "k=32"
        if not sep or not key:
            self.fail(f"{value!r} is not {self.name} (e.g. {example})", param, ctx)
        if self.dotted:
            group, dot, name = key.partition(".")
            if not dot or not group.strip() or not name.strip():
                self.fail(f"{value!r} is not {self.name} (e.g. {example})", param, ctx)
            return (group.strip(), name.strip()), parse_value(raw.strip())
        return key, parse_value(raw.strip())


def params_dict(pairs: tuple[tuple[Any, Any], ...]) -> dict[str, Any]:
    """``NameValue`` results as a dict: ``{name: value}``, or ``{group: {name: value}}`` when
    dotted. A later repeat of a name wins."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if isinstance(key, tuple):
            out.setdefault(key[0], {})[key[1]] = value
        else:
            out[key] = value
    return out


class LatentRange(click.ParamType):
    """Latent ids as ``"0-3,7"`` -> ``[0, 1, 2, 3, 7]`` (ranges inclusive, order kept, no
    duplicates, at least one)."""

    name = "LATENTS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, list):
            return value
        out: list[int] = []
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                if "-" in part[1:]:
                    a, b = (int(s) for s in part.split("-", 1))
                    if b < a or a < 0:
                        raise ValueError
                    out.extend(range(a, b + 1))
                else:
                    i = int(part)
                    if i < 0:
                        raise ValueError
                    out.append(i)
            except ValueError:
                self.fail(
                    f"{part!r} is not a latent id (>= 0) or an inclusive range like 0-19",
                    param,
                    ctx,
                )
        if not out:
            self.fail(
                f"no latents in {value!r}; give ids or ranges, e.g. 0-19 or 3,5,8-9", param, ctx
            )
        return list(dict.fromkeys(out))


# ------------------------------------------------------------------------------------ options

device_option = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (CUDA when present, else CPU) | cpu | cuda[:i] | mps.",
)


forward_workers_option = click.option(
    "--forward-workers",
    type=click.IntRange(min=1),
    default=None,
    help="Threads each forward pass's batch is split over, each running one torch thread "
    "(CPU caching forward). [default: the torch thread count on a CPU, 1 on a GPU]",
)
"""``--forward-workers N`` (None = auto), for the commands that run the caching forward."""


def seed_option(help: str = "Random seed (fixes every random draw).") -> Callable[[F], F]:
    """``--seed`` (int, default 0)."""
    return click.option("--seed", type=int, default=0, show_default=True, help=help)


def out_option(
    default: str | None,
    help: str,
    *,
    dest: str = "out",
    file_okay: bool = False,
    dir_okay: bool = True,
) -> Callable[[F], F]:
    """``-o/--out`` as a ``Path``: a directory unless ``file_okay``; ``default=None`` means the
    command derives it (say how in ``help``)."""
    return click.option(
        "-o",
        "--out",
        dest,
        type=click.Path(file_okay=file_okay, dir_okay=dir_okay, path_type=Path),
        default=Path(default) if default is not None else None,
        show_default=default is not None,
        help=help,
    )


def coder_model_option(flag: str = "--model", dest: str = "model") -> Callable[[F], F]:
    """The model a saved coder is run on (default: the one its files record)."""
    return click.option(
        flag,
        dest,
        default=None,
        help="Model name or path [default: the one recorded with the coder].",
    )


coder_hook_option = click.option(
    "--hook",
    default=None,
    help="Hook point, ours or TransformerLens/sparsify-style (blocks.8.hook_resid_pre, "
    "layers.8) [default: the one recorded with the coder].",
)


transcoders_option = click.option(
    "--transcoders",
    "transcoder_dirs",
    multiple=True,
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="A transcoder directory, or a directory of them (one per layer). Repeatable.",
)
"""``--transcoders DIR`` (repeatable), for the commands that read per-layer transcoders."""


def count_option(
    flag: str, default: int, help: str | None = None, *, minimum: int = 1
) -> Callable[[F], F]:
    """An integer option of at least ``minimum`` (a size, count or number of tokens), with its
    default shown."""
    return click.option(
        flag, type=click.IntRange(min=minimum), default=default, show_default=True, help=help
    )


def endpoint_options(local_help: str) -> Callable[[F], F]:
    """``--endpoint URL``, ``--model NAME`` (dest ``llm``), ``--api-key-env VAR`` and
    ``--local-model`` (the offline fallback, described by ``local_help``); check them with
    :func:`endpoint_api_key`."""
    opts = (
        click.option(
            "--endpoint",
            default=None,
            help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1 (default: local).",
        ),
        click.option("--model", "llm", default=None, help="Model name to request from --endpoint."),
        click.option(
            "--api-key-env",
            default=None,
            metavar="VAR",
            help="Environment variable holding the endpoint's API key.",
        ),
        click.option("--local-model", default="smollm2-135m", show_default=True, help=local_help),
    )

    def apply(fn: F) -> F:
        for opt in reversed(opts):
            fn = opt(fn)
        return fn

    return apply


def endpoint_api_key(endpoint: str | None, llm: str | None, api_key_env: str | None) -> str | None:
    """Check ``--endpoint``/``--model`` come together; the API key read from ``--api-key-env``
    (None without one). Usage errors name the flag to fix."""
    import os

    if endpoint and not llm:
        raise click.UsageError("--endpoint needs --model NAME (the model the server serves)")
    if llm and not endpoint:
        raise click.UsageError("--model names the model at --endpoint; give --endpoint too")
    if not api_key_env:
        return None
    key = os.environ.get(api_key_env)
    if not key:
        raise click.UsageError(f"--api-key-env {api_key_env}: that variable is not set")
    return key
