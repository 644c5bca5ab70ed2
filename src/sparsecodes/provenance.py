"""Where a loaded coder came from: :class:`CoderSource`, set by :func:`sparsecodes.load`.

A leaf module (standard library only) so that :class:`~sparsecodes.SparseCoder` can name the type
of its ``source`` attribute without importing the loader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

CoderFormat = Literal["sparsecodes", "saelens", "sparsify"]


@dataclass(frozen=True)
class CoderSource:
    """What a coder's files record about it; ``None`` where a field was not recorded.

    Attributes:
        path: the directory the weights were read from (a run's ``final/``, a sparsify
            hookpoint's directory, ...).
        format: ``"sparsecodes"``, ``"saelens"`` or ``"sparsify"``.
        model_name: the model whose activations it was trained on.
        hook_name: the hook point, in our scheme (``blocks.8.resid_pre``; see
            :func:`sparsecodes.models.hooks.translate_hook_name`).
        recorded_hook_name: the hook name exactly as the file wrote it
            (``blocks.8.hook_resid_pre``, sparsify's ``layers.8``, ...).
        context_size: the training window length in tokens.
        corpus: the training corpus as recorded (``"embedded"``, a path, ``hf:NAME``).
        normalize: the input normalisation of the loaded coder (``"none"`` or
            ``"expected_norm"``) and ``scale`` its factor (inputs are multiplied by it).
    """

    path: Path
    format: CoderFormat
    model_name: str | None = None
    hook_name: str | None = None
    recorded_hook_name: str | None = None
    context_size: int | None = None
    corpus: str | None = None
    normalize: str = "none"
    scale: float = 1.0
