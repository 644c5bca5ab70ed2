"""Input normalisation stored with the model.

``expected_norm`` scales activations by one scalar so that the mean token norm becomes
``sqrt(d_in)`` (the convention of SAELens's ``expected_average_only_in``); ``none`` leaves them.
Codes and dictionaries live in the normalised space; :meth:`Normaliser.invert` maps
reconstructions back.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

NormaliseKind = Literal["none", "expected_norm"]


class Normaliser(nn.Module):
    """Scalar input scaling; ``scale`` is a buffer saved with the model."""

    def __init__(self, kind: NormaliseKind = "none") -> None:
        super().__init__()
        if kind not in ("none", "expected_norm"):
            raise ValueError(f"normalize must be 'none' or 'expected_norm', got {kind!r}")
        self.kind = kind
        self.register_buffer("scale", torch.ones(()))

    @torch.no_grad()
    def fit(self, x: Tensor) -> Normaliser:
        """Estimate the scale from ``x`` ``[n, d_in]`` (no-op for ``none``)."""
        if self.kind == "expected_norm":
            mean_norm = x.float().norm(dim=1).mean().item()
            self.scale.fill_(math.sqrt(x.shape[1]) / max(mean_norm, 1e-12))
        return self

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale.to(x.dtype) if self.kind != "none" else x

    def invert(self, x: Tensor) -> Tensor:
        return x / self.scale.to(x.dtype) if self.kind != "none" else x
