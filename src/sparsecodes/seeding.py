"""Seed derivation: one user seed fixes every random draw, each purpose gets its own stream."""

from __future__ import annotations

import hashlib

import torch

__all__ = ["derive_seed", "generator"]


def derive_seed(seed: int, purpose: str) -> int:
    """A stable 63-bit seed for ``purpose`` derived from the user's ``seed``.

    Fits ``torch.Generator.manual_seed`` and ``numpy.random.default_rng``; different purposes
    give independent-looking streams, and the same (seed, purpose) always gives the same value.
    """
    digest = hashlib.sha256(f"sparsecodes:{purpose}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(seed: int, purpose: str, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` seeded with :func:`derive_seed` ``(seed, purpose)``."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, purpose))
