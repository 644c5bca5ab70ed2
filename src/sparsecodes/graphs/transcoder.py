"""The transcoder interface the attribution graph is computed against, and a small concrete one.

A transcoder of layer ``i`` reads the MLP's input ``blocks.{i}.mlp_in`` (the residual stream after
the post-attention norm) and predicts the MLP's output ``blocks.{i}.mlp_out``, both in the model's
own scale (no input normalisation left to undo):

    pre   = encode_pre(x_in)                      # affine, [..., d_in] -> [..., n]
    codes = activate(pre)                         # dense, [..., n]
    out   = codes @ W_dec_out + b_dec_out (+ x_in @ W_skip)

Any object with these attributes satisfies :class:`Transcoder` (a ``typing.Protocol``).
:class:`DenseTranscoder` is a plain implementation with explicit weights (ReLU or TopK), and
:func:`fit_transcoder` fits one in seconds by least squares, for tests and quick measurements.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["DenseTranscoder", "Transcoder", "affine_weights", "fit_transcoder", "hook_layer"]

_MLP_HOOK = re.compile(r"^blocks\.(\d+)\.(mlp_in|mlp_out)$")


@runtime_checkable
class Transcoder(Protocol):
    """What the replacement model needs from one layer's transcoder (raw model scale)."""

    in_hook: str
    """``blocks.{i}.mlp_in``."""
    out_hook: str
    """``blocks.{i}.mlp_out``."""
    W_dec_out: Tensor
    """``[n, d_out]``."""
    b_dec_out: Tensor
    """``[d_out]``."""
    W_skip: Tensor | None
    """``[d_in, d_out]`` or None."""

    def encode_pre(self, x_in: Tensor) -> Tensor:
        """Affine pre-activations ``[..., d_in] -> [..., n]``."""
        ...

    def activate(self, pre: Tensor) -> Tensor:
        """Dense codes ``[..., n]`` from pre-activations ``[..., n]``."""
        ...


def hook_layer(hook: str, kind: str) -> int:
    """The layer index of ``blocks.{i}.{kind}`` (``kind`` is ``mlp_in`` or ``mlp_out``)."""
    m = _MLP_HOOK.match(hook) if isinstance(hook, str) else None
    if m is None or m.group(2) != kind:
        raise ValueError(
            f"transcoder hook {hook!r} is not of the form blocks.{{i}}.{kind}; a transcoder "
            "for the attribution graph reads blocks.{i}.mlp_in and writes blocks.{i}.mlp_out"
        )
    return int(m.group(1))


def affine_weights(tc: Transcoder, d_in: int) -> tuple[Tensor, Tensor]:
    """``(W [d_in, n], b [n])`` with ``tc.encode_pre(x) == x @ W + b`` (read off the function)."""
    ref = tc.W_dec_out
    with torch.no_grad():
        probe = torch.cat([torch.zeros(1, d_in), torch.eye(d_in)]).to(ref.device, ref.dtype)
        out = tc.encode_pre(probe)
    b = out[0]
    return out[1:] - b, b


@dataclass
class DenseTranscoder:
    """A transcoder with explicit weights: ``pre = x @ W_enc + b_enc``; ReLU, or TopK if ``k``."""

    in_hook: str
    out_hook: str
    W_enc: Tensor
    """``[d_in, n]``."""
    b_enc: Tensor
    """``[n]``."""
    W_dec_out: Tensor
    """``[n, d_out]``."""
    b_dec_out: Tensor
    """``[d_out]``."""
    W_skip: Tensor | None = None
    """``[d_in, d_out]`` or None."""
    k: int | None = None
    """Keep the ``k`` largest pre-activations (then ReLU); None: plain ReLU."""

    def __post_init__(self) -> None:
        li, lo = hook_layer(self.in_hook, "mlp_in"), hook_layer(self.out_hook, "mlp_out")
        if li != lo:
            raise ValueError(f"in_hook {self.in_hook!r} and out_hook {self.out_hook!r} differ")
        d_in, n = self.W_enc.shape
        if self.b_enc.shape != (n,) or self.W_dec_out.shape[0] != n:
            raise ValueError(
                f"shapes disagree: W_enc {tuple(self.W_enc.shape)}, b_enc "
                f"{tuple(self.b_enc.shape)}, W_dec_out {tuple(self.W_dec_out.shape)}"
            )
        if self.W_skip is not None and self.W_skip.shape != (d_in, self.W_dec_out.shape[1]):
            raise ValueError(f"W_skip must be [d_in, d_out], got {tuple(self.W_skip.shape)}")

    @property
    def layer(self) -> int:
        return hook_layer(self.in_hook, "mlp_in")

    @property
    def n_latents(self) -> int:
        return int(self.W_enc.shape[1])

    def encode_pre(self, x_in: Tensor) -> Tensor:
        return x_in @ self.W_enc + self.b_enc

    def activate(self, pre: Tensor) -> Tensor:
        codes = torch.relu(pre)
        if self.k is not None and self.k < pre.shape[-1]:
            top = codes.topk(self.k, dim=-1)
            codes = torch.zeros_like(codes).scatter_(-1, top.indices, top.values)
        return codes

    def forward(self, x_in: Tensor) -> Tensor:
        """The transcoder's prediction of the MLP output ``[..., d_out]``."""
        out = self.activate(self.encode_pre(x_in)) @ self.W_dec_out + self.b_dec_out
        return out if self.W_skip is None else out + x_in @ self.W_skip

    __call__ = forward

    def tensors(self) -> dict[str, Tensor]:
        """Its weights by name (what :func:`sparsecodes.graphs.io.save_transcoders` writes)."""
        out = {
            "W_enc": self.W_enc,
            "b_enc": self.b_enc,
            "W_dec_out": self.W_dec_out,
            "b_dec_out": self.b_dec_out,
        }
        if self.W_skip is not None:
            out["W_skip"] = self.W_skip
        return out


def _lstsq_affine(x: Tensor, y: Tensor, ridge: float) -> tuple[Tensor, Tensor]:
    """``(W, b)`` minimising ``|x @ W + b - y|^2 + ridge |W|^2`` (float64 normal equations)."""
    x64, y64 = x.double(), y.double()
    mx, my = x64.mean(0), y64.mean(0)
    xc, yc = x64 - mx, y64 - my
    gram = xc.T @ xc
    gram += ridge * gram.diagonal().mean().clamp(min=1e-12) * torch.eye(len(gram), dtype=gram.dtype)
    w = torch.linalg.solve(gram, xc.T @ yc)
    return w.to(x.dtype), (my - mx @ w).to(x.dtype)


def fit_transcoder(
    x_in: Tensor,
    y_out: Tensor,
    layer: int,
    n_latents: int,
    *,
    k: int = 8,
    skip: bool = True,
    seed: int = 0,
    ridge: float = 0.1,
) -> DenseTranscoder:
    """A quickly fitted TopK transcoder of ``y_out [N, d_out]`` from ``x_in [N, d_in]``.

    No gradient training: the skip path (if ``skip``) is the least-squares affine map, the
    encoder rows are ``n_latents`` unit-normalised inputs drawn with ``seed`` (so each feature
    fires on inputs like one seen), and the decoder is the least-squares fit of what the skip
    path leaves. Good enough to exercise attribution; not a well-trained transcoder.
    ``ridge`` scales the ridge penalty of both fits (relative to the mean variance of their
    inputs); 0.1 gave the lowest held-out FVU of 1e-3, 0.1 and 1 on three SmolLM2 layers.
    """
    if x_in.dim() != 2 or y_out.dim() != 2 or len(x_in) != len(y_out):
        raise ValueError(
            f"x_in and y_out must be [N, d] with the same N, got {tuple(x_in.shape)} and "
            f"{tuple(y_out.shape)}"
        )
    g = torch.Generator().manual_seed(seed)
    x, y = x_in.float().cpu(), y_out.float().cpu()
    if skip:
        w_skip, b_skip = _lstsq_affine(x, y, ridge)
        resid = y - x @ w_skip - b_skip
    else:
        w_skip, b_skip, resid = None, torch.zeros(y.shape[1]), y
    rows = torch.randperm(len(x), generator=g)[:n_latents]
    if len(rows) < n_latents:
        raise ValueError(f"need at least n_latents={n_latents} rows to fit, got {len(x)}")
    xc = x - x.mean(0)
    w_enc = torch.nn.functional.normalize(xc[rows], dim=1).T.contiguous()
    b_enc = -(x.mean(0) @ w_enc)
    tc = DenseTranscoder(
        f"blocks.{layer}.mlp_in",
        f"blocks.{layer}.mlp_out",
        w_enc,
        b_enc,
        torch.zeros(n_latents, y.shape[1]),
        b_skip,
        w_skip,
        k,
    )
    codes = tc.activate(tc.encode_pre(x))
    w_dec, b_dec = _lstsq_affine(codes, resid, ridge)
    tc.W_dec_out, tc.b_dec_out = w_dec, b_skip + b_dec
    return tc
