"""Imports every built-in encoder module so that each registers itself."""

from sparsecodes.encoders import (  # noqa: F401
    gated,
    gba,
    ista,
    jumprelu,
    lista,
    mlp,
    pursuit,
    relu,
    topk,
)
