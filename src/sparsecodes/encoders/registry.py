"""One registry of encoders: name -> (class, config dataclass)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from sparsecodes.encoders.base import Encoder, EncoderConfig

_REGISTRY: dict[str, type[Encoder]] = {}


def register(cls: type[Encoder]) -> type[Encoder]:
    """Class decorator: add an encoder to the registry under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"an encoder named {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def available_encoders(kind: str | None = None) -> list[str]:
    """Registered encoder names, optionally only ``"amortised"`` or ``"iterative"`` ones."""
    return sorted(n for n, c in _REGISTRY.items() if kind is None or c.kind == kind)


def get_encoder_class(name: str) -> type[Encoder]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown encoder {name!r}; available: {', '.join(available_encoders())}"
        ) from None


def make_config(name: str, **params: Any) -> EncoderConfig:
    """The config dataclass of encoder ``name`` from keyword parameters (unknown ones refused)."""
    cls = get_encoder_class(name)
    fields = {f.name for f in dataclasses.fields(cls.config_cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ValueError(
            f"encoder {name!r} has no parameter(s) {', '.join(unknown)}; "
            f"its parameters are: {', '.join(sorted(fields)) or '(none)'}"
        )
    return cls.config_cls(**params)


def make_encoder(
    name: str,
    d_in: int,
    n_latents: int,
    *,
    generator: torch.Generator | None = None,
    **params: Any,
) -> Encoder:
    """Build encoder ``name`` for ``d_in`` inputs and ``n_latents`` latents."""
    cls = get_encoder_class(name)
    return cls(make_config(name, **params), d_in, n_latents, generator=generator)
