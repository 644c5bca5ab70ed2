"""File helpers shared by the format converters: reading with errors that name the file,
shape checks against the config, and assembling a :class:`SparseCoder` from given tensors.

Nothing here imports SAELens or sparsify: reading and writing their layouts needs only
``safetensors`` and ``json``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from sparsecodes.sparse_coder import SparseCoder, resolve_device


def require_files(path: Path, names: tuple[str, ...], layout: str) -> tuple[Path, ...]:
    """The files ``path/name`` for each name, or ``FileNotFoundError`` naming the first missing."""
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} is not a directory; a {layout} model is a directory "
            f"holding {' and '.join(names)}"
        )
    files = tuple(path / n for n in names)
    for f in files:
        if not f.is_file():
            hint = ""
            subdirs = sorted(p.name for p in path.iterdir() if (p / names[0]).is_file())
            if subdirs:
                hint = f"; it has sub-directories that are models, pass one of: {subdirs[:5]}"
            raise FileNotFoundError(
                f"{f} not found: {path} is not a {layout} model directory (it needs "
                f"{' and '.join(names)}){hint}"
            )
    return files


def read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON object from ``path``; a corrupt or non-object file is named in the error."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON (corrupt file?): {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """All tensors of a safetensors file (on CPU); a corrupt file is named in the error."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(
            f"{path} could not be read (corrupt or truncated safetensors?): {e}"
        ) from e


def require_int(cfg: Mapping[str, Any], key: str, cfg_path: Path) -> int:
    """``cfg[key]`` as a positive int, or ``ValueError`` naming the config file and key."""
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{cfg_path}: {key!r} must be a positive integer, got {v!r}")
    return v


def check_tensors(
    tensors: Mapping[str, Tensor],
    expected: Mapping[str, tuple[int, ...]],
    w_path: Path,
    cfg_path: Path,
    *,
    optional: tuple[str, ...] = (),
) -> None:
    """Every expected tensor present with its shape, nothing else (bar ``optional``)."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected) - set(optional))
    if missing or extra:
        raise ValueError(
            f"{w_path} does not hold the tensors {cfg_path} describes: missing {missing}, "
            f"unexpected {extra} (expected {sorted(expected)})"
        )
    bad = {
        k: (tuple(tensors[k].shape), shape)
        for k, shape in expected.items()
        if tuple(tensors[k].shape) != shape
    }
    if bad:
        detail = ", ".join(
            f"{k} has shape {got}, expected {want}" for k, (got, want) in bad.items()
        )
        raise ValueError(f"{w_path} does not match the sizes in {cfg_path}: {detail}")
    for k in expected:
        if not tensors[k].is_floating_point():
            raise ValueError(
                f"{w_path}: tensor {k!r} has dtype {tensors[k].dtype}, expected a float"
            )


def exact_float32_config(encoder: str) -> dict[str, Any]:
    """``{"matmul_dtype": "float32"}`` where encoder ``encoder`` has that option, else ``{}``.

    Loaded foreign models compute in float32 like their source (the default ``"auto"`` picks
    bf16 matmuls on hardware that has them); set ``model.encoder.config.matmul_dtype = "auto"``
    afterwards for speed.
    """
    from sparsecodes.encoders import get_encoder_class

    try:
        fields = {f.name for f in dataclasses.fields(get_encoder_class(encoder).config_cls)}
    except ValueError:  # not registered: build_coder reports it
        return {}
    return {"matmul_dtype": "float32"} if "matmul_dtype" in fields else {}


def build_coder(
    *,
    d_in: int,
    n_latents: int,
    encoder: str,
    encoder_config: Mapping[str, Any],
    params: Mapping[str, Tensor],
    normalize: str = "none",
    scale: float = 1.0,
    seed: int = 0,
    train_config: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    source: Path | None = None,
) -> SparseCoder:
    """A fitted :class:`SparseCoder` whose state is exactly ``params``.

    ``params`` maps this package's state-dict keys (``dictionary.W_dec``, ``encoder.W_enc``, ...)
    to tensors; every key of the model's state dict except ``normaliser.scale`` must be given.
    Tensors are cast to the model's dtypes (float32); ``scale`` fills ``normaliser.scale``.
    """
    from sparsecodes.encoders import available_encoders

    if encoder not in available_encoders():
        raise ValueError(
            f"{source}: needs the {encoder!r} encoder, which is not registered in this "
            f"installation (available: {', '.join(available_encoders())})"
        )
    try:
        model = SparseCoder(
            d_in, n_latents, encoder, normalize=normalize, seed=seed, **dict(encoder_config)
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: cannot build a {encoder!r} model from its config: {e}") from e
    state = model.state_dict()
    wanted = set(state) - {"normaliser.scale"}
    missing, extra = sorted(wanted - set(params)), sorted(set(params) - wanted)
    if missing or extra:  # a converter bug or an encoder whose parameters changed name
        raise ValueError(
            f"{source}: the {encoder!r} encoder's parameters {sorted(wanted)} do not match the "
            f"converted tensors (missing {missing}, unexpected {extra})"
        )
    new_state = {k: params[k].detach().to(state[k].dtype).contiguous() for k in wanted}
    new_state["normaliser.scale"] = torch.tensor(
        float(scale), dtype=state["normaliser.scale"].dtype
    )
    model.load_state_dict(new_state)
    model.train_config = dict(train_config or {})
    model.mark_fitted()
    model.eval()
    return model.to(resolve_device(device))
