"""Our on-disk layout of a coder (``SparseCoder`` or ``Transcoder``): one reader, one writer.

A coder directory holds ``sparsecodes.json`` (the architecture, training config and a
``format`` tag) and ``model.safetensors`` (the module's ``state_dict``), each written atomically,
the config last (a directory with a config has its weights). :func:`read_coder_files` checks both
files and names the one that is missing or corrupt; :func:`load_state_checked` refuses weights
that do not match the architecture the config describes.

Other layouts (SAELens's) are written through a per-class registry of save formats
(:class:`SaveFormats`), filled by the format modules so that the coder modules do not import them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from sparsecodes.files import atomic_write, write_json

CONFIG_NAME = "sparsecodes.json"
WEIGHTS_NAME = "model.safetensors"


class SaveFormats:
    """Writers of other layouts for one coder class: name -> ``writer(coder, path, **kw)``."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.writers: dict[str, Callable[..., Path]] = {}

    def register(self, name: str, writer: Callable[..., Path]) -> None:
        self.writers[name] = writer

    def writer(self, name: str) -> Callable[..., Path]:
        """The writer of ``name``; ``ValueError`` listing the known formats otherwise."""
        if name not in self.writers:
            known = ", ".join(repr(f) for f in ("sparsecodes", *sorted(self.writers)))
            raise ValueError(f"unknown format {name!r}; {self.what}.save writes {known}")
        return self.writers[name]


def write_coder_files(path: str | os.PathLike[str], module: nn.Module, config: dict) -> Path:
    """Write ``module``'s weights and ``config`` into directory ``path`` (created); returns it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_write(path / WEIGHTS_NAME, write_path=lambda t: save_file(tensors, t))
    write_json(path / CONFIG_NAME, config, default=str)
    return path


def read_coder_files(
    path: str | os.PathLike[str], *, format: str, what: str
) -> tuple[dict[str, Any], dict[str, Tensor], Path, Path]:
    """``(config, state, config_path, weights_path)`` of the coder directory ``path`` whose config
    says ``format``; ``FileNotFoundError``/``ValueError`` naming the missing or corrupt file."""
    path = Path(path)
    cfg_path, w_path = path / CONFIG_NAME, path / WEIGHTS_NAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} not found: {path} is not a {what} directory (it needs {CONFIG_NAME} and "
                f"{WEIGHTS_NAME}, as written by {what}.save)"
            )
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path} is not valid JSON (corrupt file?): {e}") from e
    if not isinstance(cfg, dict) or cfg.get("format") != format:
        found = cfg.get("format") if isinstance(cfg, dict) else None
        raise ValueError(
            f"{cfg_path} is not a {what} config (format={found!r}); open coder directories of "
            "any kind with sparsecodes.load"
        )
    try:
        state = load_file(str(w_path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{w_path} could not be read (corrupt or truncated?): {e}") from e
    return cfg, state, cfg_path, w_path


def load_state_checked(
    module: nn.Module, state: dict[str, Tensor], w_path: Path, cfg_path: Path
) -> None:
    """``module.load_state_dict(state)`` after checking names and shapes (``ValueError`` naming
    the tensors that differ from what ``cfg_path`` describes)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    bad = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or extra or bad:
        raise ValueError(
            f"{w_path} does not match {cfg_path}: missing {missing}, unexpected {extra}, "
            f"wrong shapes {bad}"
        )
    module.load_state_dict(state)
