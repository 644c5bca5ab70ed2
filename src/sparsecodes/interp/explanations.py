"""Latent explanations next to a coder: ``explanations.json`` (written by ``sparsecodes autointerp``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sparsecodes.formats import read_json
from sparsecodes.loading import locate

EXPLANATIONS_NAME = "explanations.json"


def find_explanations(path: str | os.PathLike[str]) -> Path | None:
    """``explanations.json`` in ``path`` or next to the coder it holds (e.g. its ``final/``)."""
    p = Path(path)
    for cand in (p / EXPLANATIONS_NAME, locate(p)[0] / EXPLANATIONS_NAME):
        if cand.is_file():
            return cand
    return None


def read_explanations(path: str | os.PathLike[str] | None) -> dict[int, dict[str, Any]]:
    """``{latent: {"explanation": str, "score": float | None}}`` from an explanations file.

    Keys may be strings or ints; a bare string value is taken as the explanation. Entries that
    are not latent ids are rejected with the file named. The file written by
    ``sparsecodes autointerp`` (``{"summary", "config", "latents": {...}}``) is read through its
    ``latents`` entry.
    """
    if path is None:
        return {}
    p = Path(path)
    raw: dict[str, Any] = read_json(p)
    if isinstance(raw.get("latents"), dict):
        raw = raw["latents"]
    out: dict[int, dict[str, Any]] = {}
    for k, v in raw.items():
        try:
            i = int(k)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{p}: key {k!r} is not a latent id (an integer)") from e
        if isinstance(v, str):
            v = {"explanation": v, "score": None}
        if not isinstance(v, dict):
            raise ValueError(f"{p}: entry {k!r} must be an object with 'explanation'")
        score = v.get("score")
        out[i] = {
            "explanation": str(v.get("explanation") or ""),
            "score": None if score is None else float(score),
        }
    return out
