"""Imports every built-in encoder module so that each registers itself."""

from sparsecodes.encoders import (  # noqa: F401
    gated,
    gba,
    ista,
    jumprelu,
    lista,
    matryoshka,
    mlp,
    mp_sae,
    pursuit,
    relu,
    threshold,
    topk,
)
