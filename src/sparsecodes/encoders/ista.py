"""ISTA and FISTA: proximal-gradient sparse inference on a fixed dictionary.

Per row of ``x`` ``[batch, d_in]``, with ``r = x - b_dec`` and ``D = W_dec`` ``[n_latents, d_in]``,
both solve the lasso

    F(z) = 0.5 * ||r - z D||_2^2 + l1 * ||z||_1        (subject to z >= 0 when nonneg=True)

(no ``1/d_in`` or ``1/batch`` scaling: scikit-learn's ``lasso_cd`` minimises ``F / d_in`` with
``alpha = transform_alpha / d_in``, so ``SparseCoder(transform_alpha=l1)`` solves the same problem).

One iteration is a gradient step of size ``1/L`` on the smooth part, with
``L = ||D||_2^2`` (largest singular value squared, computed once per call), followed by the
proximal map of the L1 term: soft-thresholding by ``l1/L`` (and clamping at 0 when non-negative),
which produces *exact* zeros. All rows are iterated together as two ``[batch, n] x [n, d]``
matrix products per iteration (through :func:`sparsecodes.kernels.gemm.matmul`).

Working sets (dictionaries of 256 to 4096 atoms): a lasso solution uses few atoms, and the
iterations need not touch the others. Each row starts on a *working set* ``S`` of its top atoms
by the first proximal step (``_WS_MIN_WIDTH``, 16) and solves the lasso restricted to ``S``: the
gradient on ``S`` is ``z_S G_SS - c_S`` with the atoms' Gram ``G = D D^T`` (once per call) and
``c = r D^T``, ``O(|S|^2)`` per row and iteration instead of ``O(n d)``, with the row's own step
``1/L_S`` (``L_S`` a Gershgorin bound on ``||G_SS||_2``, at most ``L``: a few atoms are much
better conditioned than all of them). Rows of similar width run together as ``[rows, s, s]``
batched products. Every 16 iterations, and once the group meets the stopping rule, one full
gradient checks the lasso's optimality condition off ``S``: whether the full proximal step
(step ``1/L``) from ``z`` would make any atom off ``S`` nonzero. A row that meets the rule and
passes is finished (it is then a fixed point of the full iteration, i.e. the lasso solution, to
the same tolerance); a row that fails gets a new working set: its support plus the atoms
nearest to entering (value above 3/4 of the threshold, the largest first), at most twice the
support's size (``_WS_GROWTH``) and ``min(64, n // 4)``; its momentum starts afresh. Rows whose
support exceeds half that cap continue with full iterations (which hand rows back to working
sets once most rows' candidates fit). Each group of rows stops on its own (the rule below,
applied to the group's last iteration), and ``last_n_iter`` is the largest count of a group.

- ``ista``: plain proximal gradient. With step ``1/L`` every row's objective is non-increasing.
- ``fista``: Nesterov momentum (Beck & Teboulle 2009) with per-row adaptive restart
  (O'Donoghue & Candès 2015, function-value scheme): when a step would raise a row's objective,
  that row's momentum is reset and the step is discarded (as in Beck & Teboulle's monotone FISTA),
  so every row's objective is non-increasing here too. ``restart=False`` gives plain FISTA.

Stopping: after ``iters`` iterations, or earlier once ``max_rows ||z' - z||_2 / ||z'||_2 < tol``
for the proposed step ``z -> z'`` (``tol=0`` disables early stopping). While some row's change is
above ``10 tol`` the rule is evaluated on every 4th full iteration only, so a call may run up to 3
iterations more (closer to the solution). ``last_n_iter`` records how many iterations the last
call ran. ``init`` (dense ``[batch, n_latents]`` or
:class:`~sparsecodes.codes.SparseCodes`) is the starting point (projected onto ``z >= 0`` when
non-negative); without it the start is ``z = 0``.

Debiasing (``debias=True``, off by default): the lasso's L1 term shrinks every kept coefficient
towards 0, so at a given support its reconstruction is worse than the support allows. After the
iterations each row's support ``S`` (its nonzeros) is kept and the coefficients are refitted by
least squares, ``z_S = argmin ||x - b_dec - z_S D_S||^2`` (the "relaxed lasso" with relaxation 1,
Meinshausen 2007; the standard debiasing step of sparse recovery): a batched Cholesky solve on the
padded supports shared with OMP
(:func:`~sparsecodes.encoders.support_lstsq.refit_support`). With ``nonneg`` the solve is
OMP's active-set heuristic, not clamping: coefficients that come out negative are dropped from the
support and the rest re-solved until none is negative, so the support can only shrink. Rows keep
their lasso values when their support has more atoms than ``d_in`` (unconverged; the coefficients
are not identified) or when the refit would not lower their squared error (possible only through
such drops, or round-off). The result no longer minimises ``F``; ``last_refit_support`` records the
padded support width ``s`` of the last call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsecodes import flops
from sparsecodes.codes import Codes, to_dense
from sparsecodes.dictionary import Dictionary
from sparsecodes.encoders.base import EncoderConfig, IterativeEncoder
from sparsecodes.encoders.registry import register
from sparsecodes.encoders.support_lstsq import refit_support
from sparsecodes.kernels.gemm import matmul, uses_openblas
from sparsecodes.validation import check_positive

#: dictionaries with min(n_latents, d_in) up to this get an exact spectral norm (SVD values)
_EXACT_NORM_MAX = 1024
#: power iterations otherwise (the estimate is then inflated by ``_POWER_SAFETY``)
_POWER_ITERS = 50
_WARM_POWER_ITERS = 8
_POWER_SAFETY = 1.02
#: the stopping rule is evaluated every _FAR_EVERY-th iteration while some row's relative change
#: is above _FAR_TOL * tol (so a call may stop up to _FAR_EVERY - 1 iterations later, closer)
_FAR_EVERY = 4
_FAR_TOL = 10.0
#: working-set iterations (see the module docstring) for dictionaries with at least this many
#: atoms whose Gram ``[n, n]`` has at most ``_WS_GRAM_MAX`` entries; working sets have at most
#: ``min(_WS_MAX_WIDTH, n // 4)`` atoms
_WS_MIN_LATENTS = 256
_WS_GRAM_MAX = 2**24
_WS_MAX_WIDTH = 64
#: full iterations (rows with large supports) hand over once this share of the rows fits
_WS_MIN_FRACTION = 0.75
#: at most this many entries in one group's ``[rows, s, s]`` Gram blocks
_WS_GRAM_BLOCK = 2**24
#: rows run in groups of working-set width up to these (and the cap)
_WS_BUCKETS = (16, 32, 48)
#: working sets: the support plus atoms whose pre-threshold value exceeds this share of the
#: threshold (the largest first), at most _WS_GROWTH times the support and at least
#: _WS_MIN_WIDTH atoms (the first working sets: _WS_MIN_WIDTH)
_WS_MARGIN = 0.75
_WS_GROWTH = 2
_WS_MIN_WIDTH = 16
#: a full gradient checks that no atom off the working set would enter this often (and at the end)
_WS_CHECK_EVERY = 16
_INF = float("inf")


@dataclass
class _Run:
    """One call's constants: residual start ``r`` ``[B, d]``, atoms ``W`` ``[n, d]`` and ``Wt``
    ``[d, n]``, step ``1/L``, threshold ``l1/L``, working-set width cap (0: never), and which
    rows of the call these are (None: all)."""

    r: Tensor
    W: Tensor
    Wt: Tensor
    inv_L: float
    thresh: float
    ws_width: int
    rows: Tensor | None
    c: Tensor | None = None  # c = r D^T [B, n] of the whole call (working sets only)

    def subset(self, rows: Tensor) -> _Run:
        """The same run for rows ``rows`` (indices into this run's rows)."""
        whole = rows if self.rows is None else self.rows[rows]
        r = self.r[rows]
        return _Run(r, self.W, self.Wt, self.inv_L, self.thresh, self.ws_width, whole, self.c)

    def c_on(self, S: Tensor) -> Tensor:
        """``c = r D^T`` of these rows on their atoms ``S`` ``[B, s]``."""
        assert self.c is not None
        if self.rows is None:
            return self.c.gather(1, S)
        return self.c[self.rows.unsqueeze(1), S]


@dataclass
class _Iterate:
    """The iteration state: ``z``, ``y`` ``[B, n]`` with ``z D``, ``y D`` ``[B, d]``, momentum
    ``t`` ``[B, 1]`` and ``F(z)`` ``[B]`` (None without restart)."""

    z: Tensor
    zD: Tensor
    y: Tensor
    yD: Tensor
    t: Tensor
    F: Tensor | None

    def subset(self, rows: Tensor) -> _Iterate:
        """The state of rows ``rows`` (copies)."""
        z = self.z[rows]
        y = z if self.y is self.z else self.y[rows]
        F_z = None if self.F is None else self.F[rows]
        return _Iterate(z, self.zD[rows], y, self.yD[rows], self.t[rows], F_z)


def _power(W: Tensor, v: Tensor, iters: int) -> tuple[float, Tensor]:
    """``iters`` power iterations on the smaller Gram side of ``W`` from ``v``: (estimate, v)."""
    n, d = W.shape
    est = torch.zeros((), dtype=W.dtype, device=W.device)
    for _ in range(iters):
        v = v / v.norm().clamp_min(1e-30)
        w = (W.T @ (W @ v)) if d <= n else (W @ (W.T @ v))
        est = (w * v).sum()
        v = w
    return float(est), v / v.norm().clamp_min(1e-30)


def _gram_blocks(G: Tensor, S: Tensor, rows: int = 256) -> Tensor:
    """``[B, s, s]`` blocks ``G[S_b][:, S_b]`` of the Gram ``G`` ``[n, n]`` for atom ids ``S``
    ``[B, s]``: an ``index_select`` on the flat Gram with int32 ids, ``rows`` rows at a time (the
    ids stay in cache; several times faster than ``take`` or advanced indexing on CPU)."""
    B, s = S.shape
    n = G.shape[0]
    out = G.new_empty(B, s, s)
    flat, ids = G.reshape(-1), S.to(torch.int32)
    for i in range(0, B, rows):
        part = ids[i : i + rows]
        flat_ids = (part.unsqueeze(2) * n + part.unsqueeze(1)).view(-1)
        torch.index_select(flat, 0, flat_ids, out=out[i : i + rows].view(-1))
    return out


def lipschitz_constant(W: Tensor, owner: nn.Module | None = None) -> float:
    """``L = ||W||_2^2``, the Lipschitz constant of ``z -> (z W - r) W^T`` for ``W`` ``[n, d]``.

    Exact (``torch.linalg.matrix_norm(ord=2)``) when ``min(n, d) <= 1024``; otherwise
    ``_POWER_ITERS`` power iterations on the smaller Gram side from a fixed seed, times 1.02.

    With ``owner`` (the :class:`Dictionary` holding ``W``) the value is cached on it and reused
    while ``W`` is unchanged (same version counter). While the owner is in training mode (sparse
    coding: the dictionary changes a little every step) a changed ``W`` gets ``_WARM_POWER_ITERS``
    power iterations warm-started from the previous top singular vector, times 1.02, instead of
    a full SVD. In eval mode the value never depends on earlier calls, so inference is
    reproducible. A proximal-gradient step ``1/L'`` with ``L' > L/2`` still decreases the
    objective, so a power estimate slightly below ``L`` is safe for descent.
    """
    W = W.detach()
    n, d = W.shape
    cache = getattr(owner, "_lipschitz_cache", None) if owner is not None else None
    if cache is not None and cache[0] == W._version and cache[1] == W.data_ptr():
        return cache[2]
    vec = None
    if owner is not None and owner.training and cache is not None and cache[3] is not None:
        est, vec = _power(W, cache[3], _WARM_POWER_ITERS)
        value = est * _POWER_SAFETY
    elif min(n, d) <= _EXACT_NORM_MAX:
        value = float(torch.linalg.matrix_norm(W.double() if W.device.type == "cpu" else W, ord=2))
        value = value**2
    else:
        g = torch.Generator(device="cpu").manual_seed(0)
        v0 = torch.randn(min(n, d), generator=g, dtype=W.dtype).to(W.device)
        est, vec = _power(W, v0, _POWER_ITERS)
        value = est * _POWER_SAFETY
    if owner is not None:
        if vec is None and owner.training:  # seed the warm start for the next training step
            g = torch.Generator(device="cpu").manual_seed(0)
            v0 = torch.randn(min(n, d), generator=g, dtype=W.dtype).to(W.device)
            _, vec = _power(W, v0, _POWER_ITERS)
        owner._lipschitz_cache = (W._version, W.data_ptr(), value, vec)
    return value


def lipschitz_flops(n: int, d: int) -> int:
    """FLOPs counted for :func:`lipschitz_constant`: ``4 n d min(n, d)`` (SVD values) when exact,
    else ``_POWER_ITERS * 4 n d`` (two matrix-vector products per power iteration)."""
    if min(n, d) <= _EXACT_NORM_MAX:
        return 4 * n * d * min(n, d)
    return _POWER_ITERS * 4 * n * d


def _check_iters(iters: int) -> None:
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 1:
        raise ValueError(f"iters must be a positive integer, got {iters!r}")


@dataclass
class ISTAConfig(EncoderConfig):
    """``l1``: L1 weight in ``F``; ``iters``: maximum iterations; ``tol``: relative-change stop
    (0 disables); ``nonneg``: constrain codes to ``z >= 0``; ``debias``: after the iterations,
    refit each row's nonzeros by least squares on its support (see the module docstring)."""

    l1: float = 0.1
    iters: int = 100
    tol: float = 1e-6
    nonneg: bool = True
    debias: bool = False

    def validate(self, d_in: int, n_latents: int) -> None:
        check_positive("l1", self.l1, allow_zero=True)
        _check_iters(self.iters)
        check_positive("tol", self.tol, allow_zero=True)


@dataclass
class FISTAConfig(ISTAConfig):
    """ISTA's fields plus ``restart``: per-row adaptive restart (keeps the objective monotone)."""

    restart: bool = True


@register
class ISTAEncoder(IterativeEncoder):
    """Iterative shrinkage-thresholding on the dictionary (see the module docstring)."""

    name: ClassVar[str] = "ista"
    config_cls = ISTAConfig
    momentum: ClassVar[bool] = False

    def __init__(self, config: EncoderConfig, d_in: int, n_latents: int, *, generator=None):
        super().__init__(config, d_in, n_latents, generator=generator)
        #: iterations run by the last :meth:`encode` call
        self.last_n_iter: int = 0
        #: padded support width ``s`` of the last call's debiasing refit (0 without one)
        self.last_refit_support: int = 0

    # ------------------------------------------------------------------ pieces
    def _prox(self, v: Tensor, thresh: float) -> Tensor:
        """Proximal map of ``thresh * ||.||_1`` (+ the ``z >= 0`` indicator): exact zeros."""
        if self.config.nonneg:  # type: ignore[attr-defined]
            return (v - thresh).clamp_min(0.0)
        return torch.sign(v) * (v.abs() - thresh).clamp_min(0.0)

    def _prox_(self, v: Tensor, thresh: float, tmp: Tensor) -> Tensor:
        """:meth:`_prox` in place on ``v`` (``tmp``: scratch of ``v``'s shape); returns ``v``."""
        if self.config.nonneg:  # type: ignore[attr-defined]
            return v.sub_(thresh).clamp_min_(0.0)
        # sign(v) (|v| - t)_+ = v - clamp(v, -t, t)
        return v.sub_(torch.clamp(v, -thresh, thresh, out=tmp))

    def _objective_from(self, r: Tensor, zD: Tensor, z: Tensor, *, signs: bool = True) -> Tensor:
        """``[batch]`` objective given ``zD = z @ W_dec`` already computed (``signs=False``:
        ``z >= 0`` is known, its L1 norm is its sum)."""
        l1 = torch.linalg.vector_norm(z, ord=1, dim=1) if signs else z.sum(dim=1)
        return 0.5 * (r - zD).pow(2).sum(dim=1) + self.config.l1 * l1  # type: ignore[attr-defined]

    @torch.no_grad()
    def objective(self, x: Tensor, z: Codes, dictionary: Dictionary) -> Tensor:
        """``[batch]`` values of ``F(z) = 0.5 ||x - b_dec - z W_dec||^2 + l1 ||z||_1``.

        The constraint ``z >= 0`` is not checked here; codes from :meth:`encode` satisfy it.
        """
        W = dictionary.W_dec.detach()
        r = x.to(W.dtype) - dictionary.b_dec.detach()
        zd = to_dense(z).to(W.dtype)
        # the L1 norm summed as the iterations sum it (same rounding: restart is then monotone)
        signs = not self.config.nonneg or bool((zd < 0).any())  # type: ignore[attr-defined]
        return self._objective_from(r, zd @ W, zd, signs=signs)

    def _start(self, init: Codes | None, r: Tensor) -> Tensor:
        if init is None:
            return r.new_zeros(r.shape[0], self.n_latents)
        return self._dense_init(init, r, nonneg=self.config.nonneg).clone()  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def encode(self, x: Tensor, dictionary: Dictionary, *, init: Codes | None = None) -> Tensor:
        """Dense codes ``[batch, n_latents]`` (exact zeros off the support) for ``x`` ``[batch, d_in]``.

        Codes carry no gradient (the dictionary is read, not differentiated through). With
        ``debias`` the codes are refitted on their support after the iterations.
        """
        cfg = self.config
        W = dictionary.W_dec.detach()  # [n, d]
        Wt = W.T.contiguous()  # [d, n]
        r = x.detach().to(W.dtype) - dictionary.b_dec.detach()  # [B, d]
        n = self.n_latents
        if r.shape[0] == 0:
            self.last_n_iter = self.last_refit_support = 0
            return r.new_zeros(0, n)
        inv_L = 1.0 / max(lipschitz_constant(W, dictionary), 1e-30)
        use_ws = n >= _WS_MIN_LATENTS and n * n <= _WS_GRAM_MAX
        width = min(_WS_MAX_WIDTH, n // 4) if use_ws else 0
        p = _Run(r, W, Wt, inv_L, cfg.l1 * inv_L, width, None)  # type: ignore[attr-defined]

        z = self._start(init, r)
        zD = r.new_zeros(r.shape) if init is None else matmul(z, W)
        F_z = self._objective_from(r, zD, z) if self._restart and not width else None
        it = _Iterate(z, zD, z, zD, r.new_ones(r.shape[0], 1), F_z)
        # groups of rows still iterating: full iterations (rows, state, iterations so far) and
        # working sets (rows, atom ids S [rows, s], z on S [rows, s], iterations so far)
        full: list[tuple[_Run, _Iterate, int]] = []
        ws: list[tuple[_Run, Tensor, Tensor, int]] = []
        if width:
            # the first working sets: each row's top atoms by the first proximal step from z
            p.c = matmul(r, Wt)  # c = r D^T, [B, n]
            if init is None:  # the step's values are c / L: rank c, threshold l1 (= L * l1 / L)
                score = p.c if cfg.nonneg else p.c.abs()  # type: ignore[attr-defined]
                no_support = r.new_zeros(r.shape[0], dtype=torch.int64)
                sel = self._select(score, no_support, cfg.l1)  # type: ignore[attr-defined]
            else:  # z - grad / L, the support first
                score = torch.add(z, p.c - matmul(zD, Wt), alpha=inv_L)
                score = score if cfg.nonneg else score.abs_()  # type: ignore[attr-defined]
                keep = z != 0
                sel = self._select(score.masked_fill_(keep, _INF), keep.sum(dim=1), p.thresh)
            self._split(p, 0, *sel, z, zD, it, full, ws)
        else:
            full.append((p, it, 0))
        G: Tensor | None = None
        n_iter = 0
        while full or ws:
            if full:
                q, state, k = full.pop()
                k, done, cand = self._dense_phase(q, state, k)
                if done or cand is None or k >= cfg.iters:  # type: ignore[attr-defined]
                    n_iter = max(n_iter, self._finish(it, q, state, k))
                    continue
                count = cand.sum(dim=1)
                idx = torch.topk(cand.to(r.dtype), q.ws_width, dim=1).indices  # candidates first
                sel = (idx, count, count > q.ws_width)
                self._split(q, k, *sel, state.z, state.zD, state, full, ws)
                continue
            if G is None:  # the atoms' Gram, once per call
                G = matmul(W, Wt)
            q, S, u, k = ws.pop()
            k, finished, v, S, u, uD = self._working_set_phase(q, S, u, G, k)
            n_iter = max(n_iter, k)
            done = finished.nonzero().squeeze(1)
            if done.numel():  # write the finished rows' codes into the output
                assert q.rows is not None
                rows = q.rows[done]
                it.z.index_fill_(0, rows, 0.0)
                it.z.index_put_((rows.unsqueeze(1), S[done]), u[done])
                it.zD.index_copy_(0, rows, uD[done])
            if done.numel() == finished.numel():
                continue
            # the other rows: an atom off their working set would enter (or they go on with
            # it): new working sets, the support plus the atoms nearest to entering
            assert v is not None
            rest = (~finished).nonzero().squeeze(1)
            q, S, u, uD = q.subset(rest), S[rest], u[rest], uD[rest]
            score = v[rest] if cfg.nonneg else v[rest].abs_()  # type: ignore[attr-defined]
            score.scatter_(1, S, score.gather(1, S).masked_fill_(u != 0, _INF))
            sel = self._select(score, torch.count_nonzero(u, dim=1), q.thresh)
            z = torch.zeros_like(score).scatter_(1, S, u)
            self._split(q, k, *sel, z, uD, None, full, ws)
        self.last_n_iter = n_iter
        self.last_refit_support = 0
        z = it.z
        if cfg.debias:  # type: ignore[attr-defined]
            nonneg = cfg.nonneg  # type: ignore[attr-defined]
            z, self.last_refit_support = refit_support(z, r, W, nonneg=nonneg, zW=it.zD)
        return z

    def _select(self, score: Tensor, supp: Tensor, thresh: float) -> tuple[Tensor, Tensor, Tensor]:
        """Working sets from ``score`` ``[B, n]``, the full proximal step's pre-threshold values
        (absolute values when signed) with each row's support set to infinity, and the support
        sizes ``supp`` ``[B]``: ``(idx [B, w], count [B], full [B] bool)``. Each row's atoms
        ``idx`` in order of preference (the support first, then by value); its first ``count``
        atoms are its working set: the support and the atoms nearest to entering (above
        ``_WS_MARGIN`` of the threshold ``thresh``), at most ``_WS_GROWTH`` times the support
        (but ``_WS_MIN_WIDTH``) and the width cap. Rows whose support takes more than half of the
        cap get ``full`` (they go on with full iterations)."""
        cap = min(_WS_MAX_WIDTH, score.shape[1] // 4)
        most = (supp * _WS_GROWTH).clamp_(min=_WS_MIN_WIDTH, max=cap)  # [B]
        top = torch.topk(score, int(most.max()), dim=1)  # sorted: candidates first
        count = torch.minimum((top.values > _WS_MARGIN * thresh).sum(dim=1), most)
        return top.indices, count, supp > cap // 2

    def _split(
        self,
        q: _Run,
        k: int,
        idx: Tensor,
        count: Tensor,
        to_full: Tensor,
        z: Tensor,
        zD: Tensor,
        state: _Iterate | None,
        full: list[tuple[_Run, _Iterate, int]],
        ws: list[tuple[_Run, Tensor, Tensor, int]],
    ) -> None:
        """Queue rows ``to_full`` ``[B]`` for full iterations (from ``state``, or from ``z``
        ``[B, n]`` and ``z D`` ``[B, d]`` with fresh momentum) and the others on their working
        sets (the first ``count`` atoms of ``idx`` ``[B, w]``, see :meth:`_select`), grouped by
        width (so narrow rows are not padded to the widest; a group's narrower rows are padded
        with their next atoms in ``idx``) and split so that one group's ``[rows, s, s]`` Gram
        blocks stay bounded."""
        if bool(to_full.any()):
            rows = to_full.nonzero().squeeze(1)
            if state is None:
                zr, zDr = z[rows], zD[rows]
                st = _Iterate(zr, zDr, zr, zDr, zr.new_ones(zr.shape[0], 1), None)
            else:
                st = state.subset(rows)
            if self._restart and st.F is None:
                st.F = self._objective_from(q.r[rows], st.zD, st.z)
            full.append((q.subset(rows), st, k))
        width = count.masked_fill(to_full, -2)
        zS = z.gather(1, idx)  # z on the atoms of idx
        lo = -1  # rows without candidates (all-zero ones) join the first group
        for hi in (*(b for b in _WS_BUCKETS if b < q.ws_width), q.ws_width):
            rows = ((width > lo) & (width <= hi)).nonzero().squeeze(1)
            for part in rows.split(max(1, _WS_GRAM_BLOCK // (hi * hi))):
                if part.numel():
                    s = max(1, int(width[part].max()))
                    ws.append((q.subset(part), idx[part, :s], zS[part, :s], k))
            lo = hi

    @staticmethod
    def _finish(out: _Iterate, q: _Run, state: _Iterate, k: int) -> int:
        """Write a finished group's ``z`` and ``z D`` into ``out`` (all rows); returns ``k``."""
        if q.rows is None:
            out.z, out.zD = state.z, state.zD
        else:
            out.z.index_copy_(0, q.rows, state.z)
            out.zD.index_copy_(0, q.rows, state.zD)
        return k

    @property
    def _restart(self) -> bool:
        return self.momentum and getattr(self.config, "restart", False)

    def _dense_phase(self, p: _Run, it: _Iterate, n_iter: int) -> tuple[int, bool, Tensor | None]:
        """Full iterations on ``it`` from iteration ``n_iter`` until the stopping rule holds, the
        iteration budget is spent or (when ``p.ws_width``) every row's candidate atoms fit in the
        working-set width: ``(n_iter, done, candidates [B, n] bool or None)``."""
        cfg = self.config
        tol = cfg.tol  # type: ignore[attr-defined]
        restart = self._restart
        r, W, Wt, inv_L, thresh = p.r, p.W, p.Wt, p.inv_L, p.thresh
        z, zD, y, yD, t, F_z = it.z, it.zD, it.y, it.yD, it.t, it.F
        # [B, n] iterates live in buffers allocated once and reused (ping-pong between z and
        # z_new; y gets its own once momentum starts): fresh [B, n] tensors every iteration cost
        # a page fault per 4 kB on CPU, more than the arithmetic on them
        z_new = torch.empty_like(z)
        y_buf: Tensor | None = None if y is z else y
        tmp = torch.empty_like(z)
        done, cand = False, None
        far, fit_share = True, 0.0
        while n_iter < cfg.iters:  # type: ignore[attr-defined]
            n_iter += 1
            # z_new = prox(y - grad / L), grad = (y D - r) D^T
            if uses_openblas(r, Wt):
                matmul((r - yD).mul_(inv_L), Wt, out=z_new).add_(y)
            else:
                torch.addmm(y, yD - r, Wt, alpha=-inv_L, out=z_new)
            # while few rows fit, look for the hand-over every other iteration only
            if p.ws_width and n_iter > 1 and (n_iter % 2 == 0 or fit_share > _WS_MIN_FRACTION / 2):
                cand = self._candidates(z_new, z, thresh)
                width = cand.sum(dim=1, dtype=torch.int32)
                fit_share = float((width <= p.ws_width).float().mean())
                if fit_share < _WS_MIN_FRACTION:
                    cand = None
            self._prox_(z_new, thresh, tmp)
            z_newD = matmul(z_new, W)
            # the stopping rule; while some row's change is above _FAR_TOL * tol, only every
            # _FAR_EVERY-th iteration (stopping up to _FAR_EVERY - 1 iterations late, closer)
            if tol > 0 and (not far or n_iter % _FAR_EVERY == 1 or _FAR_EVERY == 1):
                change = torch.linalg.vector_norm(torch.sub(z_new, z, out=tmp), dim=1)
                change /= torch.linalg.vector_norm(z_new, dim=1).clamp_min(1e-30)
                worst = float(change.max())
                done, far = worst < tol, worst >= _FAR_TOL * tol
            if not self.momentum:
                z, z_new, zD = z_new, z, z_newD
                y, yD = z, zD
            else:
                t_new = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
                beta = (t - 1.0) / t_new
                if restart:
                    assert F_z is not None
                    F_new = self._objective_from(r, z_newD, z_new, signs=not self.config.nonneg)  # type: ignore[attr-defined]
                    bad = (F_new > F_z).unsqueeze(1)  # [B, 1]: discard step, reset momentum
                    rejected = bad.squeeze(1).nonzero().squeeze(1)
                    if rejected.numel():  # z_new becomes the accepted iterate
                        z_new.index_copy_(0, rejected, z.index_select(0, rejected))
                    zD_acc = torch.where(bad, zD, z_newD)
                    F_z = torch.where(bad.squeeze(1), F_z, F_new)
                    beta = beta.masked_fill(bad, 0.0)
                    t_new = t_new.masked_fill(bad, 1.0)
                else:
                    zD_acc = z_newD
                # y = z_acc + beta (z_acc - z) = lerp(z_acc, z, -beta)
                if y_buf is None:
                    y_buf = torch.empty_like(z)
                y = torch.lerp(z_new, z, -beta, out=y_buf)
                yD = torch.lerp(zD_acc, zD, -beta)
                z, z_new, zD, t = z_new, z, zD_acc, t_new
            if done or cand is not None:
                break
        it.z, it.zD, it.y, it.yD, it.t, it.F = z, zD, y, yD, t, F_z
        return n_iter, done, None if done else cand

    def _candidates(self, v: Tensor, z: Tensor, thresh: float) -> Tensor:
        """``[B, n]`` bool: atoms in ``z``'s support or whose pre-threshold value ``v`` is within
        ``_WS_MARGIN`` of the threshold (a superset of the next iterate's and ``y``'s support)."""
        lim = _WS_MARGIN * thresh
        cand = v > lim if self.config.nonneg else v.abs() > lim  # type: ignore[attr-defined]
        return cand.logical_or_(z != 0)

    def _working_set_phase(
        self, p: _Run, S: Tensor, u: Tensor, G: Tensor, n_iter: int
    ) -> tuple[int, Tensor, Tensor | None, Tensor, Tensor, Tensor]:
        """Iterations on the lasso restricted to each row's working set ``S`` (``[B, s]`` atom
        ids, distinct in each row; ``u`` ``[B, s]`` the start's values on them), then a
        full-gradient check of which rows' solutions are the full problem's.

        Off ``S`` the iterates stay 0: the gradient on ``S`` is ``grad_S = y_S G_SS - c_S`` with
        the atoms' Gram ``G`` ``[n, n]`` and ``c = r D^T`` ``[B, n]``, ``O(B s^2)`` per iteration
        instead of ``O(B n d)``. The step is each row's own ``1 / L_S`` with ``L_S`` the smaller
        of ``L`` and the Gershgorin bound ``max_i sum_j |G_ij|`` of ``G_SS`` (an upper bound on
        its largest eigenvalue, so the step is safe; a few atoms are much better conditioned than
        all of them, so this converges in far fewer iterations). Momentum starts afresh (``t =
        1``, ``y = z``). Restart compares the exact objective difference ``F(z') - F(z) = (z' -
        z) . (0.5 (z + z') G - c) + l1 (|z'|_1 - |z|_1)`` (no cancellation of large terms).

        Every ``_WS_CHECK_EVERY`` iterations and once every row meets the stopping rule, one full
        gradient at ``z`` checks each row's KKT condition off ``S``: whether the full proximal
        step (step ``1/L``) would make an atom off ``S`` nonzero. Rows that meet the rule and
        pass are finished (``z`` is the lasso solution: optimal on ``S``, and no other atom
        enters); when some row fails, the phase stops and the unfinished rows get new working
        sets from the check's values. Returns ``(n_iter, finished [B] bool, v, S, u, z D)``
        with ``v`` ``[B, n]`` the full step's pre-threshold values at ``z`` (None when the
        iteration budget ended the phase: every row is then finished), ``S`` sorted, ``z``'s
        values ``u`` on it and ``z D`` ``[B, d]``.
        """
        cfg = self.config
        tol = cfg.tol  # type: ignore[attr-defined]
        l1 = cfg.l1  # type: ignore[attr-defined]
        nonneg = cfg.nonneg  # type: ignore[attr-defined]
        restart = self._restart
        B = S.shape[0]
        S, order = S.sort(dim=1)  # the Gram blocks' reads in memory order
        u = u.gather(1, order)
        GS = _gram_blocks(G, S)  # [B, s, s]
        cS = p.c_on(S)  # c_S, c = r D^T
        # per-row step 1 / L_S: Gershgorin bound on ||G_SS||_2, never above the global L
        L_S = GS.abs().sum(dim=2).amax(dim=1, keepdim=True).clamp_(1e-30, 1.0 / p.inv_L)
        inv_L = L_S.reciprocal_().clamp_(min=p.inv_L)  # [B, 1]
        thresh = inv_L * l1

        def gram(v: Tensor) -> Tensor:  # [B, s] -> v G_SS (row vector times G_SS: faster)
            return torch.bmm(v.unsqueeze(1), GS).squeeze(1)

        Gu = gram(u)
        uy, Gy = u, Gu
        t = u.new_ones(B, 1)
        inner = 0
        finished = torch.zeros(B, dtype=torch.bool, device=u.device)
        conv = finished
        v: Tensor | None = None
        zD: Tensor | None = None
        while n_iter < cfg.iters:  # type: ignore[attr-defined]
            n_iter += 1
            inner += 1
            u_new = self._prox(torch.addcmul(uy, Gy - cS, inv_L, value=-1.0), thresh)
            Gu_new = gram(u_new)
            if tol > 0:
                change = torch.linalg.vector_norm(u_new - u, dim=1)
                change /= torch.linalg.vector_norm(u_new, dim=1).clamp_min(1e-30)
                conv = change < tol
            if not self.momentum:
                u, Gu = u_new, Gu_new
                uy, Gy = u, Gu
            else:
                t_new = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
                beta = (t - 1.0) / t_new
                if restart:
                    delta = u_new - u
                    dF = (delta * (0.5 * (Gu + Gu_new) - cS)).sum(dim=1)
                    dF += l1 * (delta.sum(dim=1) if nonneg else (u_new.abs() - u.abs()).sum(dim=1))
                    bad = (dF > 0).unsqueeze(1)
                    u_new = torch.where(bad, u, u_new)
                    Gu_new = torch.where(bad, Gu, Gu_new)
                    beta = beta.masked_fill(bad, 0.0)
                    t_new = t_new.masked_fill(bad, 1.0)
                uy = torch.lerp(u_new, u, -beta)
                Gy = torch.lerp(Gu_new, Gu, -beta)
                u, Gu, t = u_new, Gu_new, t_new
            all_conv = tol > 0 and bool(conv.all())
            if all_conv or inner % _WS_CHECK_EVERY == 0:
                v, zD, hit = self._full_step(p, S, u)
                if all_conv or bool(hit.any()):
                    finished = conv & ~hit
                    break
                v = zD = None
        else:  # the iteration budget is spent: every row stops here
            finished = torch.ones_like(finished)
            v = None
        if zD is None:
            zD = F.embedding_bag(S, p.W, per_sample_weights=u, mode="sum")
        return n_iter, finished, v, S, u, zD

    def _full_step(self, p: _Run, S: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The full proximal step from ``z`` (values ``u`` ``[B, s]`` on ``S``, 0 elsewhere):
        ``(v, z D, hit)`` with ``v = z - grad / L`` ``[B, n]`` its pre-threshold values and
        ``hit`` ``[B]`` whether it makes an atom off ``S`` nonzero (one ``[B, d] x [d, n]``
        product)."""
        zD = F.embedding_bag(S, p.W, per_sample_weights=u, mode="sum")
        v = matmul((p.r - zD).mul_(p.inv_L), p.Wt)  # -grad / L, [B, n]; z is 0 off S
        # an atom off S enters when its value passes the threshold: the largest value off S
        # (S masked in place, then restored)
        vS = v.gather(1, S)
        if self.config.nonneg:  # type: ignore[attr-defined]
            hit = v.scatter_(1, S, -_INF).amax(dim=1) > p.thresh
        else:
            v.scatter_(1, S, 0.0)
            hit = (v.amax(dim=1) > p.thresh) | (v.amin(dim=1) < -p.thresh)
        return v.scatter_(1, S, vS.add_(u)), zD, hit

    # ------------------------------------------------------------------ FLOPs
    def _iter_flops(self, b: int) -> int:
        """One iteration: ``grad = (yD - r) W^T`` and ``z' W`` (``2 * 2 B N d``), the gradient step
        and prox (``~4 B N``), the ``yD - r`` subtraction (``B d``), the stopping norms (``4 B N``)."""
        d, n = self.d_in, self.n_latents
        return 2 * flops.matmul(b, n, d) + 4 * b * n + b * d + 4 * b * n

    def refit_flops(self, batch: int = 1, support: int | None = None) -> int:
        """The debiasing refit on a padded support of width ``s`` (``support``; default
        ``min(N, d)``, the most atoms a lasso solution in general position has):
        ``2 B s^2 d + 4 B s d + B s^3 / 3 + 7 B s^2 + 6 B d + 2 B N``.

        The Gram of the gathered atoms (``2 B s^2 d``), their correlations with ``r`` and the
        refitted reconstruction (``2 B s d`` each), a batched Cholesky (``B s^3 / 3``) with its
        solve and masking (``~7 B s^2``, as OMP), the two squared errors compared (``~6 B d``), and
        counting and selecting the nonzeros (``~2 B N``). Non-negative re-solves after dropping a
        negative coefficient are not counted (as for OMP). 0 when ``debias`` is off.
        """
        if not self.config.debias:  # type: ignore[attr-defined]
            return 0
        b, d, n = batch, self.d_in, self.n_latents
        s = min(n, d) if support is None else support
        return (
            2 * b * s * s * d
            + 4 * b * s * d
            + b * s**3 // 3
            + 7 * b * s * s
            + 6 * b * d
            + 2 * b * n
        )

    def inference_flops(self, batch: int = 1, *, support: int | None = None) -> int:
        """At most ``iters * (4 B N d + 8 B N + B d) + B d + lipschitz_flops(N, d)`` for ISTA;
        grows linearly with ``iters`` (early stopping can only lower it). With ``debias`` add
        :meth:`refit_flops` (``support``: the refit's padded support width, e.g. the
        ``last_refit_support`` of a call; default ``min(N, d)``)."""
        b, d, n = batch, self.d_in, self.n_latents
        per_iter = self._iter_flops(b)
        return (
            self.config.iters * per_iter  # type: ignore[attr-defined]
            + b * d
            + lipschitz_flops(n, d)
            + self.refit_flops(b, support)
        )

    def train_step_flops(self, batch: int = 1) -> int:
        """Inference (no grad) + dense decode ``2 B N d + B d``, its backward w.r.t. the dictionary
        (``backward_of``), and Adam over ``W_dec`` and ``b_dec`` (``N d + d`` parameters)."""
        b, d, n = batch, self.d_in, self.n_latents
        dec = flops.dense_decode(b, n, d)
        return self.inference_flops(b) + dec + flops.backward_of(dec) + flops.adam(n * d + d)


@register
class FISTAEncoder(ISTAEncoder):
    """ISTA with Nesterov momentum and per-row adaptive restart (see the module docstring)."""

    name: ClassVar[str] = "fista"
    config_cls = FISTAConfig
    momentum: ClassVar[bool] = True

    def _iter_flops(self, b: int) -> int:
        """ISTA's iteration plus momentum (``~6 B N + 2 B d``) and, with restart, the objective of
        the proposed step (``3 B d + 2 B N``) and the accept/reject selects (``2 B N + 2 B d``)."""
        d, n = self.d_in, self.n_latents
        extra = 6 * b * n + 2 * b * d
        if self.config.restart:  # type: ignore[attr-defined]
            extra += 3 * b * d + 2 * b * n + 2 * b * n + 2 * b * d
        return super()._iter_flops(b) + extra

    def inference_flops(self, batch: int = 1, *, support: int | None = None) -> int:
        """At most ``iters * (4 B N d + 18 B N + 8 B d) + B d + lipschitz_flops(N, d)`` with restart
        (``iters * (4 B N d + 14 B N + 3 B d) + ...`` without); linear in ``iters``. With
        ``debias`` add :meth:`refit_flops`."""
        return super().inference_flops(batch, support=support)
