"""Open a trained coder from any directory layout we know, with the model and hook it reads.

``SAE_DIR`` may be a ``sparsecodes train`` run directory (its ``final/`` is used), our own
format (``sparsecodes.json``), a SAELens directory (``cfg.json`` + ``sae_weights.safetensors``) or
an EleutherAI sparsify directory (``cfg.json`` + ``sae.safetensors``). The model and hook names
come from the saved metadata; explicit arguments override them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsecodes.sparse_coder import CONFIG_NAME, SparseCoder


@dataclass
class LoadedSAE:
    """A coder plus provenance: ``model_name`` and ``hook_name`` may be None when unrecorded."""

    coder: SparseCoder
    path: Path
    model_name: str | None
    hook_name: str | None

    def require_source(self) -> tuple[str, str]:
        """``(model_name, hook_name)``, or a ValueError naming the options to pass."""
        missing = [
            opt
            for opt, v in (("--model", self.model_name), ("--hook", self.hook_name))
            if v is None
        ]
        if missing:
            raise ValueError(
                f"{self.path} does not record which model/hook its activations came from; "
                f"pass {' and '.join(missing)} (e.g. --model smollm2-135m --hook blocks.12.resid_post)"
            )
        return self.model_name, self.hook_name  # type: ignore[return-value]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON (corrupt file?): {e}") from e


def find_coder_dir(path: str | os.PathLike[str]) -> Path:
    """The directory that holds the weights: ``path`` itself or its ``final/``/``final_saelens/``."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"SAE directory {p} does not exist")
    for cand in (p, p / "final", p / "final_saelens"):
        if (cand / CONFIG_NAME).is_file() or (cand / "cfg.json").is_file():
            return cand
    raise FileNotFoundError(
        f"{p} holds no coder: expected {CONFIG_NAME} (sparsecodes), cfg.json (SAELens or "
        "sparsify) or a run directory with final/"
    )


def load_sae_dir(
    path: str | os.PathLike[str],
    *,
    model_name: str | None = None,
    hook_name: str | None = None,
    device: str | None = None,
) -> LoadedSAE:
    """Load the coder in ``path`` (see the module docstring) and its recorded model/hook."""
    d = find_coder_dir(path)
    meta: dict[str, Any] = {}
    if (d / CONFIG_NAME).is_file():
        coder = SparseCoder.load(d, device=device)
        meta = dict((coder.train_config or {}).get("source") or {})
    elif (d / "sae.safetensors").is_file():
        from sparsecodes.formats import load_sparsify

        coder = load_sparsify(d, device=device)
        cfg = _read_json(d / "cfg.json")
        meta = {"hook_name": cfg.get("hookpoint")}
    else:
        from sparsecodes.formats import load_saelens

        coder = load_saelens(d, device=device)
        cfg = _read_json(d / "cfg.json")
        meta = dict(cfg.get("metadata") or {})
        for key in ("model_name", "hook_name"):  # pre-v6 configs keep them at the top level
            meta.setdefault(key, cfg.get(key))
        src = (coder.train_config or {}).get("source") or {}
        for key in ("model_name", "hook_name"):
            if meta.get(key) is None:
                meta[key] = src.get(key)
    coder.eval()
    return LoadedSAE(
        coder=coder,
        path=d,
        model_name=model_name or meta.get("model_name"),
        hook_name=hook_name or _our_hook_name(meta.get("hook_name")),
    )


def _our_hook_name(name: str | None) -> str | None:
    """TransformerLens-style ``blocks.8.hook_resid_pre`` -> ``blocks.8.resid_pre``; else as is."""
    if name is None:
        return None
    m = re.fullmatch(r"blocks\.(\d+)\.hook_(resid_pre|resid_post|attn_out|mlp_out)", name)
    return f"blocks.{m.group(1)}.{m.group(2)}" if m else name


def find_explanations(path: str | os.PathLike[str]) -> Path | None:
    """``explanations.json`` next to the coder or in the run directory above it, if any."""
    p = Path(path)
    for cand in (p / "explanations.json", find_coder_dir(p) / "explanations.json"):
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
    raw = _read_json(p)
    if not isinstance(raw, dict):
        raise ValueError(f"{p} must hold an object {{latent_id: {{explanation, score}}}}")
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
