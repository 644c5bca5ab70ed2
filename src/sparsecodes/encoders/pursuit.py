"""Greedy pursuit on a fixed dictionary: matching pursuit (MP) and orthogonal matching pursuit (OMP).

Per row, with ``r = x - b_dec`` and atoms ``d_j`` = rows of ``W_dec`` ``[n_latents, d_in]``:

- **mp** runs ``k`` steps. Each picks the atom with the largest normalised correlation
  ``<res, d_j> / ||d_j||`` with the residual (largest *positive* one when ``nonneg=True``, else
  largest in magnitude), adds ``<res, d_j> / ||d_j||^2`` to its coefficient and subtracts that
  multiple of ``d_j`` from the residual. An atom may be picked again.
- **omp** picks atoms the same way (never one already in the support) and after each pick refits
  all coefficients on the support by least squares, ``min_c ||r - c D_S||^2``. Signed OMP from a
  cold start adds slot ``t`` at step ``t``, so each row's inverse Cholesky factor is extended by
  one row per step (:class:`~sparsecodes.encoders.support_lstsq.GrowingSupport`, ``O(k^2)`` per
  row and step); otherwise the ``[s, s]`` Gram systems of every row are solved afresh with a
  batched Cholesky factorisation (:func:`~sparsecodes.encoders.support_lstsq.solve_on_support`,
  shared with ISTA/FISTA's debiasing refit; a pseudo-inverse for the rare rows whose Gram is
  singular, which the growing factor hands to it). With ``nonneg=True`` atoms whose refitted
  coefficient is negative are dropped from the support and the rest refitted (repeated until none
  is negative).

Both give at most ``k`` nonzeros per row, exact zeros elsewhere, returned as
:class:`~sparsecodes.codes.SparseCodes` ``[batch, k]`` (unused slots hold value 0). A row stops
early when its squared residual falls to ``tol * ||r||^2`` or below, when its residual norm falls
to ``residual_threshold`` or below (an absolute norm in normalised input units, SAELens's
matching-pursuit rule), with MP's ``stop_on_repeat`` once a step re-picks an atom already in
its support (that step is applied; SAELens's ``stop_on_duplicate_support``), when it is numerically zero
(``(64 eps)^2 ||r||^2``, so exact fits do not pick noise atoms), with ``nonneg`` when no atom
correlates positively, and in signed OMP when the best atom is already in the support (the
residual is then numerically orthogonal to every atom, as in scikit-learn's OMP). All rows run together: one ``[batch, d] x [d, n]`` product per step.

Differentiable MP (:func:`mp_step`, used by the ``mp_sae`` encoder): the selection (argmax) runs
without gradient, while each step's coefficient ``<res, d_j> / ||d_j||^2`` and the residual
update ``res - c d_j`` are differentiable w.r.t. the atoms and ``b_dec`` (``r = x - b_dec``).
With unit-norm atoms (``| ||d_j|| - 1 | < 1e-4``) the division is skipped, so the gradient leaves
out the component along each atom, which only changes its norm (the trainer removes that
component anyway, see :meth:`~sparsecodes.dictionary.Dictionary.remove_parallel_grad_`).

Warm start: ``init`` (dense ``[batch, n_latents]`` or SparseCodes) gives each row's starting
support and values: its ``k`` largest-magnitude nonzeros (negative ones dropped when
``nonneg``). MP continues from those values (residual ``r - init D``); OMP refits them by least
squares and continues selecting. The starting atoms count toward ``k``; once a row's MP support
holds ``k`` atoms its further steps only re-pick atoms already in the support.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sparsecodes import flops
from sparsecodes.codes import Codes, SparseCodes, to_sparse
from sparsecodes.dictionary import Dictionary
from sparsecodes.encoders.base import EncoderConfig, IterativeEncoder
from sparsecodes.encoders.registry import register
from sparsecodes.encoders.support_lstsq import GrowingSupport, solve_on_support
from sparsecodes.kernels.gemm import matmul
from sparsecodes.kernels.selection import rows_csr
from sparsecodes.validation import check_k, check_positive


@dataclass
class PursuitConfig(EncoderConfig):
    """``k``: steps (and the most nonzeros per row); ``tol``: stop a row once its residual
    ``||res||^2 <= tol * ||x - b_dec||^2`` (0: run all ``k`` steps); ``nonneg``: codes ``>= 0``;
    ``residual_threshold``: stop a row once ``||res|| <= residual_threshold`` (absolute, in
    normalised input units; 0: off)."""

    k: int = 8
    tol: float = 0.0
    nonneg: bool = False
    residual_threshold: float = 0.0

    def validate(self, d_in: int, n_latents: int) -> None:
        check_k(self.k, n_latents, "k")
        check_positive("tol", self.tol, allow_zero=True)
        check_positive("residual_threshold", self.residual_threshold, allow_zero=True)


@dataclass
class MPConfig(PursuitConfig):
    """:class:`PursuitConfig` plus ``stop_on_repeat``: a row stops after a step that re-picks
    an atom already in its support (SAELens's ``stop_on_duplicate_support``)."""

    stop_on_repeat: bool = False

    def validate(self, d_in: int, n_latents: int) -> None:
        super().validate(d_in, n_latents)
        if not isinstance(self.stop_on_repeat, bool):
            raise ValueError(f"stop_on_repeat must be True or False, got {self.stop_on_repeat!r}")


def _zero_floor(dtype: torch.dtype) -> float:
    return (64.0 * torch.finfo(dtype).eps) ** 2


#: OMP precomputes the full ``[n, n]`` atom Gram when it has at most this many entries
_FULL_GRAM_MAX = 2**26


class _Problem(NamedTuple):
    """One call's inputs: atoms ``W`` ``[n, d]`` and ``Wt`` ``[d, n]``, residual start ``r``
    ``[B, d]``, atom norms ``[n]`` (``inv_norms`` None when all are 1), stop threshold ``[B]``."""

    W: Tensor
    Wt: Tensor
    r: Tensor
    norms: Tensor
    inv_norms: Tensor | None
    stop: Tensor


class _Pursuit(IterativeEncoder):
    """Shared setup of MP and OMP."""

    config_cls = PursuitConfig

    def _prepare(
        self, x: Tensor, dictionary: Dictionary, *, differentiable: bool = False
    ) -> _Problem:
        """The problem for ``x`` ``[B, d]``; with ``differentiable`` ``W``, ``r``, ``norms`` and
        ``inv_norms`` keep their graph to ``W_dec`` and ``b_dec`` (``Wt`` and ``stop`` never do)."""
        W = dictionary.W_dec if differentiable else dictionary.W_dec.detach()
        b = dictionary.b_dec if differentiable else dictionary.b_dec.detach()
        r = x.detach().to(W.dtype) - b
        norms = W.norm(dim=1).clamp_min(1e-30)
        unit = bool(((norms.detach() - 1.0).abs() < 1e-4).all())
        cfg = self.config
        r2 = r.detach().pow(2).sum(dim=1)
        stop = r2 * max(cfg.tol, _zero_floor(W.dtype))  # type: ignore[attr-defined]
        thr = float(cfg.residual_threshold)  # type: ignore[attr-defined]
        if thr > 0:
            stop = stop.clamp_min(thr * thr)
        Wt = W.detach().T.contiguous()
        return _Problem(W, Wt, r, norms, None if unit else 1.0 / norms, stop)

    @torch.no_grad()
    def encode(
        self, x: Tensor, dictionary: Dictionary, *, init: Codes | None = None
    ) -> SparseCodes:
        """SparseCodes ``[batch, k]`` for ``x`` ``[batch, d_in]``; no gradient flows through."""
        return self._pursue(self._prepare(x, dictionary), init)

    def _pursue(self, p: _Problem, init: Codes | None) -> SparseCodes:
        """The pursuit proper on the prepared problem ``p``: SparseCodes ``[batch, k]``."""
        raise NotImplementedError

    def _init_support(self, init: Codes, r: Tensor) -> tuple[Tensor, Tensor]:
        """``(indices, values)`` ``[B, k]`` of init's k largest-magnitude entries (0 = unused)."""
        k = self.config.k  # type: ignore[attr-defined]
        z = self._dense_init(init, r, nonneg=self.config.nonneg)  # type: ignore[attr-defined]
        sp = to_sparse(z, k)
        return sp.indices, sp.values

    @torch.no_grad()
    def _pick(
        self, p: _Problem, res: Tensor, exclude: Tensor | None, corr: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Best atom per row: ``(index [B], usable [B] bool)``, never differentiated.

        The score is ``<res, d_j> / ||d_j||`` (division skipped for unit-norm atoms); excluded
        atoms score 0 and a row with no nonzero (positive, if ``nonneg``) score is not usable.
        ``corr`` ``[B, n]``: the correlations ``<res, d_j>`` when the caller has them (OMP's Gram
        update; overwritten), else ``res @ W^T``.
        """
        if corr is None:
            corr = res.detach() @ p.Wt  # [B, n]
        score = corr if p.inv_norms is None else corr * p.inv_norms.detach()
        if exclude is not None:
            score = score.masked_fill_(exclude, 0.0)  # picked atoms are never excluded ones
        if not self.config.nonneg:  # type: ignore[attr-defined]
            score = score.abs_()  # score is ours to overwrite; one pass less than max and min
        best, j = score.max(dim=1)
        return j, best > 0

    # ------------------------------------------------------------------ FLOPs
    def train_step_flops(self, batch: int = 1) -> int:
        """Inference (no grad) + sparse decode ``2 B k d + B d``, its backward w.r.t. the
        dictionary (``backward_of``), and Adam over ``W_dec`` and ``b_dec`` (``N d + d``)."""
        b, d, n, k = batch, self.d_in, self.n_latents, self.config.k  # type: ignore[attr-defined]
        dec = flops.sparse_decode(b, k, d)
        return self.inference_flops(b) + dec + flops.backward_of(dec) + flops.adam(n * d + d)


def mp_step(p: _Problem, res: Tensor, j: Tensor, live: Tensor) -> tuple[Tensor, Tensor]:
    """One matching-pursuit update for the picked atoms ``j`` ``[B]`` of rows ``live`` ``[B]``.

    Returns ``(delta [B], new residual [B, d])``: ``delta = <res, d_j> / ||d_j||^2`` (0 where not
    live; no division for unit-norm atoms) and ``res - delta d_j``. Differentiable w.r.t. ``res``
    and the atoms when ``p`` was prepared with ``differentiable=True``; ``j`` carries no gradient.
    """
    w = p.W[j]  # [B, d]
    c = (res * w).sum(dim=1)
    step = c if p.inv_norms is None else c * p.inv_norms[j].pow(2)
    delta = torch.where(live, step, torch.zeros_like(step))
    return delta, res - delta[:, None] * w


@register
class MatchingPursuitEncoder(_Pursuit):
    """Matching pursuit, ``k`` greedy steps (see the module docstring)."""

    name: ClassVar[str] = "mp"
    config_cls = MPConfig

    def _pursue(self, p: _Problem, init: Codes | None) -> SparseCodes:
        """``k`` MP steps from zero or from ``init``'s support; SparseCodes ``[batch, k]``.

        Differentiable through :func:`mp_step` when ``p`` is (the selection never is)."""
        k = self.config.k  # type: ignore[attr-defined]
        on_repeat = bool(getattr(self.config, "stop_on_repeat", False))
        B = p.r.shape[0]
        z = p.r.new_zeros(B, self.n_latents)
        if init is not None:
            idx0, val0 = self._init_support(init, p.r.detach())
            z.scatter_(1, idx0, val0)
            res = p.r - z @ p.W
        else:
            res = p.r
        rows = torch.arange(B, device=p.r.device)
        done = torch.zeros(B, dtype=torch.bool, device=p.r.device)
        for _ in range(k):
            with torch.no_grad():
                exclude = None
                if init is not None:  # cold rows cannot fill k atoms within k steps
                    full = (z != 0).sum(dim=1, keepdim=True) >= k
                    exclude = full & (z == 0)  # a full row may only re-pick its own atoms
                j, usable = self._pick(p, res, exclude)
                live = usable & ~done & (res.detach().pow(2).sum(dim=1) > p.stop)
                if not bool(live.any()):
                    break
                if on_repeat:
                    done |= live & (z.detach()[rows, j] != 0)
            delta, res = mp_step(p, res, j, live)
            z = z.index_put((rows, j), delta, accumulate=True)
        return to_sparse(z, k)

    def inference_flops(self, batch: int = 1) -> int:
        """``k * (2 B N d + 6 B N + 5 B d) + B d``: per step the correlations ``res W^T``, score,
        masks and argmax (``~6 B N``), the picked atom's coefficient ``<res, d_j>`` (``2 B d``),
        residual norm and update (``3 B d``); linear in ``k``."""
        b, d, n, k = batch, self.d_in, self.n_latents, self.config.k  # type: ignore[attr-defined]
        return k * (flops.matmul(b, d, n) + 6 * b * n + 5 * b * d) + b * d


def _gram_corr(r_corr: Tensor, idx: Tensor, coef: Tensor, gram: Tensor, *, out: Tensor) -> Tensor:
    """``out = r_corr - coef @ gram[idx]`` per row: ``[B, n]`` correlations of the residual
    ``r - coef D[idx]`` with every atom, from ``r_corr = r D^T`` ``[B, n]``, ``idx``/``coef``
    ``[B, s]`` and the full atom Gram ``[n, n]``; one sparse (CSR) times dense product, ``B s n``."""
    if idx.shape[1] == 0:
        return out.copy_(r_corr)
    m = rows_csr(idx, coef.reshape(-1).to(gram.dtype), gram.shape[0])
    return torch.addmm(r_corr, m, gram, beta=1.0, alpha=-1.0, out=out)


@register
class OMPEncoder(_Pursuit):
    """Orthogonal matching pursuit with batched least-squares refits (see the module docstring)."""

    name: ClassVar[str] = "omp"

    @staticmethod
    def _decode(p: _Problem, idx: Tensor, coef: Tensor) -> Tensor:
        """``[B, d]`` ``sum_s coef[:, s] * W[idx[:, s]]`` without materialising ``W[idx]``."""
        return F.embedding_bag(idx, p.W, per_sample_weights=coef, mode="sum")

    def _pursue(self, p: _Problem, init: Codes | None) -> SparseCodes:
        """Up to ``k`` OMP selections, each followed by a refit; SparseCodes ``[batch, k]``."""
        k = self.config.k  # type: ignore[attr-defined]
        nonneg = self.config.nonneg  # type: ignore[attr-defined]
        W, r = p.W, p.r
        B, n = r.shape[0], self.n_latents
        rows = torch.arange(B, device=r.device)
        # Gram entries <d_a, d_b>: from the full [n, n] Gram when small, else from the atoms
        full_gram = matmul(W, p.Wt) if n * n <= _FULL_GRAM_MAX else None
        # with the full Gram, each step's correlations <res, d_j> = <r, d_j> - coef G[idx, j]
        # cost B k n (a sparse times dense product) instead of the B d n of res @ W^T
        r_corr = matmul(r, p.Wt) if full_gram is not None and k < r.shape[1] else None
        corr = r.new_empty(B, n)  # each step's correlations, one buffer (no page faults)

        def gram(a: Tensor, b: Tensor) -> Tensor:  # a [B, s], b [B, t] atom ids -> [B, s, t]
            if full_gram is not None:
                return full_gram[a[:, :, None], b[:, None, :]]
            return W[a] @ W[b].transpose(1, 2)

        idx = torch.zeros(B, k, dtype=torch.long, device=r.device)
        valid = torch.zeros(B, k, dtype=torch.bool, device=r.device)
        G = r.new_zeros(B, k, k)
        rhs = r.new_zeros(B, k)
        coef = r.new_zeros(B, k)
        res = r
        if init is not None:
            idx0, val0 = self._init_support(init, r)
            idx, valid = idx0.clone(), val0 != 0
            G = gram(idx, idx)
            rhs = (W[idx] @ r[:, :, None]).squeeze(2)
            if bool(valid.any()):
                coef, valid = solve_on_support(G, rhs, valid, nonneg=nonneg)
            res = r - self._decode(p, idx, coef)
        in_support = torch.zeros(B, n, dtype=torch.bool, device=r.device)
        in_support[rows[:, None].expand(B, k)[valid], idx[valid]] = True
        # signed OMP from a cold start fills slot t at step t: its refits extend one factorisation
        growing = GrowingSupport(B, k, r.dtype, r.device) if init is None and not nonneg else None
        for step in range(k):
            free = ~valid
            # the residual is orthogonal to the support, so signed OMP needs no mask: if its best
            # atom is already selected, the row is numerically done. Nonneg refits can leave a
            # dropped atom correlated, so there the support is masked out.
            if r_corr is not None and full_gram is not None:
                used = int(valid.any(dim=0).nonzero().max()) + 1 if bool(valid.any()) else 0
                _gram_corr(r_corr, idx[:, :used], coef[:, :used], full_gram, out=corr)
            else:
                matmul(res, p.Wt, out=corr)
            j, usable = self._pick(p, res, in_support if nonneg else None, corr)
            live = free.any(dim=1) & usable & (res.pow(2).sum(dim=1) > p.stop)
            if not nonneg:
                live &= ~in_support[rows, j]
            if not bool(live.any()):
                break
            # first free slot per row (nonneg refits may free earlier ones); rows not live
            # rewrite their current slot contents, a no-op
            slot = free.to(torch.int8).argmax(dim=1)
            if growing is not None and bool((slot[live] != step).any()):
                growing = None  # not filling in step order (cannot happen cold and signed)
            idx[rows, slot] = torch.where(live, j, idx[rows, slot])
            valid[rows, slot] |= live
            in_support[rows, j] |= live
            g = gram(idx, j[:, None]).squeeze(2)  # [B, k]: new atom against every slot
            g = torch.where(live[:, None], g, G[rows, slot, :])
            G[rows, slot, :] = g
            G[rows, :, slot] = g
            rj = r_corr[rows, j] if r_corr is not None else (W[j] * r).sum(dim=1)
            rhs[rows, slot] = torch.where(live, rj, rhs[rows, slot])
            if growing is not None:
                coef = growing.add(G, rhs, valid, live)
            else:
                coef, valid = solve_on_support(G, rhs, valid, nonneg=nonneg)
            res = r - self._decode(p, idx, coef)
        return SparseCodes(idx, coef, n)

    def inference_flops(self, batch: int = 1) -> int:
        """``k * (C + 4 B N + 2 B k d + 4 B d + R [+ 2 B k d]) + B d [+ 2 N^2 d + 2 B N d]``,
        ``C = 2 B k N`` with the full Gram and ``k < d``, else ``2 B N d``; ``R = 6 B k^2``
        (signed) or ``B k^3 / 3 + 7 B k^2`` (``nonneg``).

        Per step: the correlations with the residual, ``C``: with the full ``[N, N]`` Gram (computed
        once, ``2 N^2 d``, when ``N^2 <= 2^26``) and ``k < d`` they are ``r W^T`` (once,
        ``2 B N d``) minus ``coef G[idx]`` (at most ``2 B k N``), else ``res W^T`` (``2 B N d``);
        the pick over them (``~4 B N``), the right-hand side entry (``2 B d``), the refit ``R``, the
        residual ``r - coef W[idx]`` (``2 B k d + B d``) and its norm (``B d``). Signed OMP from a
        cold start extends each row's inverse Cholesky factor by one row per step
        (:class:`~sparsecodes.encoders.support_lstsq.GrowingSupport`: three batched products of at
        most ``k x k``, ``6 B k^2``); ``nonneg`` refits factorise afresh each step (a batched
        Cholesky, ``B k^3 / 3``, with its solve and masking, ``~7 B k^2``). Without the full Gram
        the new Gram entries come from the atoms at ``2 B k d`` per step. Linear in ``k`` apart
        from the small ``k^2``/``k^3`` terms; a warm start's refits (full factorisations, as
        ``nonneg``) and nonneg re-solves are not counted.
        """
        b, d, n, k = batch, self.d_in, self.n_latents, self.config.k  # type: ignore[attr-defined]
        full = n * n <= _FULL_GRAM_MAX
        gram_corr = full and k < d
        per = (
            (2 * b * k * n if gram_corr else flops.matmul(b, d, n))
            + 4 * b * n
            + 2 * b * k * d
            + 4 * b * d
            + (b * k**3 // 3 + 7 * b * k * k if self.config.nonneg else 6 * b * k * k)  # type: ignore[attr-defined]
            + (0 if full else 2 * b * k * d)
        )
        once = (flops.matmul(n, d, n) if full else 0) + (flops.matmul(b, d, n) if gram_corr else 0)
        return k * per + b * d + once
