"""Sparse codes: the two forms an encoder may return.

A code for a batch is either a dense tensor ``[batch, n_latents]`` or a :class:`SparseCodes`
holding only the active entries (``indices`` and ``values``, both ``[batch, k]``). TopK-style
encoders return the sparse form so that decoding and the backward pass cost ``O(k * d_in)``
rather than ``O(n_latents * d_in)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class SparseCodes:
    """Active entries of a batch of codes.

    Attributes:
        indices: ``[batch, k]`` int64 latent indices.
        values: ``[batch, k]`` activations of those latents (zeros are allowed and mean inactive).
        n_latents: width of the dense code.
    """

    indices: Tensor
    values: Tensor
    n_latents: int

    def __post_init__(self) -> None:
        if self.indices.shape != self.values.shape or self.indices.dim() != 2:
            raise ValueError(
                f"SparseCodes needs indices and values of equal shape [batch, k], got "
                f"{tuple(self.indices.shape)} and {tuple(self.values.shape)}"
            )

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the dense equivalent, ``(batch, n_latents)``."""
        return (self.indices.shape[0], self.n_latents)

    def to_dense(self) -> Tensor:
        """``[batch, n_latents]`` dense codes (scatter of ``values`` at ``indices``)."""
        out = self.values.new_zeros(self.shape)
        return out.scatter_add_(1, self.indices, self.values)

    def detach(self) -> SparseCodes:
        return SparseCodes(self.indices, self.values.detach(), self.n_latents)


Codes = Tensor | SparseCodes


def to_dense(codes: Codes) -> Tensor:
    """Dense ``[batch, n_latents]`` view of either form."""
    return codes.to_dense() if isinstance(codes, SparseCodes) else codes


def active_mask(codes: Codes) -> Tensor:
    """``[batch, n_latents]`` bool mask of nonzero latents."""
    return to_dense(codes) != 0


def to_sparse(codes: Tensor, k: int | None = None) -> SparseCodes:
    """Sparse form of dense codes, keeping the ``k`` largest-magnitude entries per row.

    With ``k=None`` it keeps as many as the densest row has nonzeros.
    """
    if k is None:
        k = int((codes != 0).sum(dim=1).max().item()) if codes.numel() else 0
        k = max(k, 1)
    _vals, idx = codes.abs().topk(k, dim=1, sorted=False)
    return SparseCodes(idx, codes.gather(1, idx), codes.shape[1])
