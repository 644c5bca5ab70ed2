"""The dictionary: decoder atoms and bias, the part shared by every encoder.

``W_dec`` is ``[n_latents, d_in]``: each row is one atom, kept at unit L2 norm (the orientation of
scikit-learn's ``components_`` and SAELens's ``W_dec``). ``x_hat = codes @ W_dec + b_dec``.

The norm constraint is kept *outside* the forward pass: after each optimiser step call
:meth:`Dictionary.project_`, and before it :meth:`Dictionary.remove_parallel_grad_`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsecodes.codes import Codes, SparseCodes
from sparsecodes.kernels import native


class Dictionary(nn.Module):
    """Unit-norm atoms ``W_dec`` ``[n_latents, d_in]`` and a bias ``b_dec`` ``[d_in]``."""

    def __init__(
        self,
        d_in: int,
        n_latents: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if d_in < 1 or n_latents < 1:
            raise ValueError(
                f"d_in and n_latents must be >= 1, got d_in={d_in}, n_latents={n_latents}"
            )
        self.d_in = d_in
        self.n_latents = n_latents
        w = torch.randn(n_latents, d_in, generator=generator, dtype=dtype)
        self.W_dec = nn.Parameter(F.normalize(w, dim=1).to(device))
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=dtype, device=device))

    @classmethod
    def from_atoms(
        cls, atoms: Tensor, bias: Tensor | None = None, *, normalize: bool = True
    ) -> Dictionary:
        """Dictionary from given atoms ``[n_latents, d_in]`` (rows are normalised by default)."""
        atoms = torch.as_tensor(atoms)
        if atoms.dim() != 2:
            raise ValueError(
                f"dictionary atoms must be [n_latents, d_in], got shape {tuple(atoms.shape)}"
            )
        if not torch.isfinite(atoms).all():
            raise ValueError("dictionary atoms contain NaN or inf")
        atoms = atoms.float()
        d = cls(atoms.shape[1], atoms.shape[0])
        with torch.no_grad():
            d.W_dec.copy_(F.normalize(atoms, dim=1) if normalize else atoms)
            if bias is not None:
                d.b_dec.copy_(torch.as_tensor(bias, dtype=atoms.dtype))
        return d

    @property
    def input_bias(self) -> Tensor:
        """The bias amortised encoders subtract from their input ``x`` before encoding: ``b_dec``
        ``[d_in]`` here (input and reconstruction share a space); a transcoder's dictionary, whose
        atoms live in another space than its input, returns zeros ``[d_in of the input]``."""
        return self.b_dec

    def decode(self, codes: Codes) -> Tensor:
        """``[batch, d_in]`` reconstruction from dense ``[batch, n_latents]`` or sparse codes."""
        if isinstance(codes, SparseCodes):
            # embedding_bag gathers only the k selected rows: O(batch * k * d_in), sparse backward.
            out = F.embedding_bag(
                codes.indices,
                self.W_dec,
                per_sample_weights=codes.values.to(self.W_dec.dtype),
                mode="sum",
            )
            return out + self.b_dec
        return codes.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, codes: Codes) -> Tensor:
        return self.decode(codes)

    @torch.no_grad()
    def project_(self) -> None:
        """Renormalise every atom to unit L2 norm (in place)."""
        if native.usable(self.W_dec):
            native.unit_rows_(self.W_dec.data)
            return
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Drop the gradient component parallel to each atom (it only changes the atom's norm)."""
        g = self.W_dec.grad
        if g is None:
            return
        w = self.W_dec
        if g.is_sparse:
            g = g.to_dense()
            self.W_dec.grad = g
        # g -= (<g_i, w_i> / |w_i|^2) w_i, one pass per row where the compiled kernel runs
        if native.usable(g, w):
            native.remove_parallel_(g, w.data)
            return
        scale = torch.linalg.vecdot(g, w).div_(torch.linalg.vecdot(w, w).clamp_min_(1e-12))
        g.addcmul_(w, scale.neg_().unsqueeze(1))

    def extra_repr(self) -> str:
        return f"n_latents={self.n_latents}, d_in={self.d_in}"
