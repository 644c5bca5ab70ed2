"""Input checks that fail early with a message naming the parameter and the fix."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor


def as_activations(x: Any, name: str = "x", d_in: int | None = None) -> Tensor:
    """``x`` as a float32 ``[n, d_in]`` tensor, or a ``ValueError`` saying what is wrong."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except Exception as e:
            raise TypeError(
                f"{name} must be an array or tensor of shape [n_samples, d_in]: {e}"
            ) from e
    if x.dim() != 2:
        raise ValueError(
            f"{name} must have shape [n_samples, d_in], got shape {tuple(x.shape)}; "
            "reshape to 2-D (e.g. x.reshape(-1, x.shape[-1]))"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 samples); pass at least one row")
    if d_in is not None and x.shape[1] != d_in:
        raise ValueError(
            f"{name} has {x.shape[1]} features per row but the model expects d_in={d_in}"
        )
    if not x.is_floating_point():
        x = x.float()
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(dim=1).sum())
        raise ValueError(
            f"{name} contains NaN or inf in {bad} row(s); clean or drop those rows first"
        )
    return x


def check_positive(name: str, value: float | int, *, allow_zero: bool = False) -> None:
    if value is None or (value < 0 if allow_zero else value <= 0) or value != value:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def check_k(k: int, n_latents: int, name: str = "k") -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"{name} must be a positive integer, got {k!r}")
    if k > n_latents:
        raise ValueError(
            f"{name}={k} is larger than n_latents={n_latents}; choose {name} <= n_latents"
        )
