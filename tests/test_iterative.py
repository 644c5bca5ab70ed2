"""Iterative inference: ISTA/FISTA (lasso by proximal gradient), matching pursuit and OMP."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from conftest import require, sparse_problem
from sparsecodes.codes import SparseCodes, to_dense
from sparsecodes.dictionary import Dictionary
from sparsecodes.encoders import available_encoders, make_encoder
from sparsecodes.encoders import ista as ista_module
from sparsecodes.encoders.base import TrainStepInput
from sparsecodes.encoders.ista import lipschitz_constant


def bounded_problem(n: int, m: int, k: int, s: int, seed: int):
    """Like ``sparse_problem`` but code values in [0.5, 1.5] (no near-zero true entries)."""
    g = torch.Generator().manual_seed(seed)
    atoms = F.normalize(torch.randn(n, m, generator=g), dim=1)
    idx = torch.rand(s, n, generator=g).argsort(dim=1)[:, :k]
    vals = 0.5 + torch.rand(s, k, generator=g)
    codes = torch.zeros(s, n).scatter_(1, idx, vals)
    return codes @ atoms, codes, atoms


def objectives_by_iteration(name: str, x, D, T: int, **kw) -> torch.Tensor:
    """``[T, batch]`` objective after 1..T iterations (tol=0, so exactly t iterations run)."""
    rows = []
    for t in range(1, T + 1):
        enc = make_encoder(name, D.d_in, D.n_latents, iters=t, tol=0.0, **kw)
        rows.append(enc.objective(x, enc.encode(x, D), D))
    return torch.stack(rows)


@pytest.fixture(autouse=True)
def _one_thread():
    """These problems are tiny; a second thread only adds contention on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def problem():
    x, codes, atoms = sparse_problem(16, 8, 3, 64, seed=0)
    return x, codes, Dictionary.from_atoms(atoms)


def test_registered_as_iterative():
    assert {"ista", "fista", "mp", "omp"} <= set(available_encoders("iterative"))


def test_lipschitz_is_largest_singular_value_squared():
    W = torch.randn(20, 7, generator=torch.Generator().manual_seed(3))
    expected = torch.linalg.svdvals(W.double())[0].item() ** 2
    assert lipschitz_constant(W) == pytest.approx(expected, rel=1e-6)


def test_ista_objective_never_increases(problem):
    x, _, D = problem
    Fs = objectives_by_iteration("ista", x, D, 30, l1=0.05)
    rise = Fs[1:] - Fs[:-1]
    assert (rise <= 1e-6 * Fs[:-1].abs().clamp_min(1.0)).all()  # float32 roundoff only
    assert (Fs[-1] < 0.5 * Fs[0]).float().mean() > 0.5  # and it actually descends


def test_fista_restart_is_monotone_and_beats_ista(problem):
    x, _, D = problem
    T = 30
    fista = objectives_by_iteration("fista", x, D, T, l1=0.05)
    # our restart discards a step that would raise a row's objective: exactly monotone
    assert (fista[1:] <= fista[:-1]).all()
    ista = objectives_by_iteration("ista", x, D, T, l1=0.05)
    # empirical (not a theorem per row): momentum reaches a lower total objective
    assert fista[-1].sum() < ista[-1].sum()
    # without restart, plain FISTA does rise on this problem: the restart logic is what prevents it
    plain = objectives_by_iteration("fista", x, D, T, l1=0.05, restart=False)
    assert ((plain[1:] - plain[:-1]) > 1e-5).any()


def _fista_reference(x, D, l1, iters, nonneg, momentum, restart):
    """Plain out-of-place (F)ISTA with per-row function-value restart, written from the maths."""
    W = D.W_dec.detach()
    r = x - D.b_dec.detach()
    inv_L = 1.0 / torch.linalg.matrix_norm(W, ord=2).item() ** 2

    def prox(v):
        t = l1 * inv_L
        return (v - t).clamp_min(0) if nonneg else torch.sign(v) * (v.abs() - t).clamp_min(0)

    def obj(z):
        return 0.5 * (r - z @ W).pow(2).sum(1) + l1 * z.abs().sum(1)

    z = torch.zeros(x.shape[0], W.shape[0])
    y, t = z, torch.ones(x.shape[0], 1)
    for _ in range(iters):
        z_new = prox(y - inv_L * (y @ W - r) @ W.T)
        if not momentum:
            z = y = z_new
            continue
        t_new = 0.5 * (1 + torch.sqrt(1 + 4 * t * t))
        beta = (t - 1) / t_new
        if restart:
            bad = (obj(z_new) > obj(z))[:, None]
            z_new = torch.where(bad, z, z_new)
            beta, t_new = torch.where(bad, 0.0, beta), torch.where(bad, 1.0, t_new)
        y = z_new + beta * (z_new - z)
        z, t = z_new, t_new
    return z


@pytest.mark.parametrize(
    ("name", "nonneg", "restart"),
    [
        ("ista", True, False),
        ("ista", False, False),
        ("fista", True, True),
        ("fista", False, True),
        ("fista", False, False),
    ],
)
def test_ista_fista_buffered_iterations_equal_plain_reference(problem, name, nonneg, restart):
    x, D = problem[0], problem[2]
    kw = {"restart": restart} if name == "fista" else {}
    enc = make_encoder(
        name, x.shape[1], D.n_latents, l1=0.05, iters=25, tol=0.0, nonneg=nonneg, **kw
    )
    z = enc.encode(x, D)
    ref = _fista_reference(x, D, 0.05, 25, nonneg, name == "fista", restart)
    assert enc.last_n_iter == 25 and (ref != 0).any() and (ref == 0).any()
    if restart:  # an accept/reject on a near-tie of objectives may flip with rounding
        torch.testing.assert_close(
            enc.objective(x, z, D), enc.objective(x, ref, D), rtol=1e-5, atol=1e-6
        )
    else:
        torch.testing.assert_close(z, ref, rtol=1e-4, atol=1e-5)


def test_signed_ista_matches_nonneg_on_nonneg_data(problem):
    x, _, D = problem
    a = make_encoder("fista", 8, 16, l1=0.05, iters=300, tol=0.0, nonneg=False)
    b = make_encoder("fista", 8, 16, l1=0.05, iters=300, tol=0.0, nonneg=True)
    za, zb = a.encode(x, D), b.encode(x, D)
    assert (zb >= 0).all()
    # both are lasso minimisers; the signed one can only be lower
    assert (a.objective(x, za, D) <= b.objective(x, zb, D) + 1e-5).all()


def test_fista_recovers_true_codes_in_easy_regime():
    n, m, k = 16, 12, 2
    x, codes, atoms = bounded_problem(n, m, k, 256, seed=1)
    D = Dictionary.from_atoms(atoms)
    enc = make_encoder("fista", m, n, l1=1e-3, iters=1000, tol=1e-7)
    z = enc.encode(x, D)
    # rows whose support meets Tropp's exact recovery condition with a margin (a property of the
    # dictionary and the true support only): max_{j not in S} ||(D_S D_S^T)^-1 D_S d_j||_1 < 0.9
    idx = (codes != 0).float().topk(k, dim=1).indices  # [s, k]
    DS = atoms[idx]  # [s, k, m]
    coef = torch.linalg.solve(DS @ DS.transpose(1, 2), DS @ atoms.T)  # [s, k, n]
    erc = coef.abs().sum(dim=1).masked_fill(codes != 0, 0).amax(dim=1) < 0.9
    assert erc.sum() >= 50  # the check below covers many rows
    assert torch.equal(z[erc] != 0, codes[erc] != 0)  # support exact; exact zeros elsewhere
    assert torch.allclose(z[erc], codes[erc], atol=2e-2)
    assert (z[codes == 0] == 0).float().mean() > 0.95  # off-support entries are exact zeros


@pytest.mark.parametrize("name", ["ista", "fista"])
def test_proximal_warm_start_is_used(name, problem):
    x, _, D = problem
    best = make_encoder(name, 8, 16, l1=0.05, iters=2000, tol=0.0).encode(x, D)
    one = make_encoder(name, 8, 16, l1=0.05, iters=1, tol=0.0)
    warm, cold = one.encode(x, D, init=best), one.encode(x, D)
    assert (warm - best).abs().max() < 1e-4
    assert (cold - best).abs().max() > 1e-1
    # sparse init works too, and with tol the warm start stops almost at once
    stopper = make_encoder(name, 8, 16, l1=0.05, iters=500, tol=1e-4)
    stopper.encode(x, D, init=SparseCodes(*_topk(best, 16), n_latents=16))
    assert stopper.last_n_iter <= 3


class _PhaseSpy:
    """Counts the working-set phases of ISTA/FISTA calls and how many ended with rows that need
    a new working set (an atom off theirs would have entered)."""

    def __init__(self, monkeypatch):
        self.phases = self.handbacks = 0
        inner = ista_module.ISTAEncoder._working_set_phase

        def spy(enc, *args):
            out = inner(enc, *args)
            self.phases += 1
            self.handbacks += not bool(out[1].all())
            return out

        monkeypatch.setattr(ista_module.ISTAEncoder, "_working_set_phase", spy)


def _wide_problem():
    """512 atoms in R^64, 4 active per row: the iterates get sparse, so working sets are used."""
    x, _, atoms = sparse_problem(512, 64, 4, 128, seed=0)
    return x, Dictionary.from_atoms(atoms)


def _plain_fista(monkeypatch, x, D, **kw):
    """Plain full FISTA iterations (no working sets), 500 of them without early stopping
    (several times what the calls under test run): the lasso solution to compare with."""
    with monkeypatch.context() as m:
        m.setattr(ista_module, "_WS_MIN_LATENTS", 10**9)
        enc = make_encoder("fista", D.d_in, D.n_latents, **kw, iters=500, tol=0.0)
        return enc.encode(x, D)


def _rel_gap(enc, x, z, ref, D) -> torch.Tensor:
    """Per-row ``(F(z) - F(ref)) / F(ref)`` in float64 (rows with ``F(ref) > 0``)."""
    D64 = Dictionary.from_atoms(D.W_dec.detach().double())
    f = enc.objective(x.double(), z.double(), D64)
    f_ref = enc.objective(x.double(), ref.double(), D64)
    keep = f_ref > 0
    return (f[keep] - f_ref[keep]) / f_ref[keep]


@pytest.mark.parametrize(("name", "nonneg"), [("fista", True), ("fista", False), ("ista", True)])
def test_working_set_iterations_reach_the_plain_fista_solution(monkeypatch, name, nonneg):
    x, D = _wide_problem()
    x[:3] = 0.0  # rows without any candidate atom come back too (as zeros)
    kw = {"l1": 0.05, "iters": 500, "tol": 1e-5, "nonneg": nonneg}
    spy = _PhaseSpy(monkeypatch)
    enc = make_encoder(name, 64, 512, **kw)
    z = enc.encode(x, D)
    assert spy.phases >= 1  # the working set was used
    ref = _plain_fista(monkeypatch, x, D, l1=0.05, nonneg=nonneg)
    assert (ref != 0).sum(1).float().mean() < 8  # sparse solutions
    # the same lasso solution: same supports, objectives equal up to float32 rounding and the
    # stopping rule (relative change 1e-5 of the iterate: a missed or spurious atom costs
    # orders of magnitude more, see the next test). Plain ISTA with the same budget stops far
    # from it (1e-4 above on this problem), the working set's own steps get there
    assert torch.equal(z != 0, ref != 0) and not z[:3].any()
    assert _rel_gap(enc, x, z, ref, D).abs().max() < 1e-5
    if nonneg:
        assert (z >= 0).all()


def test_working_set_check_adds_atoms_that_would_enter(monkeypatch):
    """First working sets of 2 atoms (top correlations, no margin) miss atoms of the solution: the
    full-gradient check must find them and extend the sets; without it the answer is wrong."""
    x, D = _wide_problem()
    monkeypatch.setattr(ista_module, "_WS_MARGIN", 1.0)
    monkeypatch.setattr(ista_module, "_WS_MIN_WIDTH", 2)
    kw = {"l1": 0.05, "iters": 500, "tol": 1e-5}
    ref = _plain_fista(monkeypatch, x, D, l1=0.05, nonneg=True)
    spy = _PhaseSpy(monkeypatch)
    enc = make_encoder("fista", 64, 512, **kw)
    z = enc.encode(x, D)
    assert spy.handbacks >= 1
    assert torch.equal(z != 0, ref != 0)
    assert _rel_gap(enc, x, z, ref, D).abs().max() < 1e-5
    # the same run with a check that never reports an entering atom stops on the first sets
    step = ista_module.ISTAEncoder._full_step

    def blind(enc, p, S, u):
        v, zD, hit = step(enc, p, S, u)
        return v, zD, torch.zeros_like(hit)

    monkeypatch.setattr(ista_module.ISTAEncoder, "_full_step", blind)
    wrong = make_encoder("fista", 64, 512, **kw).encode(x, D)
    assert (wrong != ref).ne(0).any(1).sum() > 10  # many rows on a wrong support...
    assert _rel_gap(enc, x, wrong, ref, D).max() > 1e-2  # ...far above the optimum


def test_working_set_path_is_deterministic(monkeypatch):
    x, D = _wide_problem()
    spy = _PhaseSpy(monkeypatch)
    a = make_encoder("fista", 64, 512, l1=0.05, tol=1e-5).encode(x, D)
    b = make_encoder("fista", 64, 512, l1=0.05, tol=1e-5).encode(x, D)
    assert spy.phases >= 2 and spy.handbacks >= 1  # several rounds of working sets
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["ista", "fista"])
def test_empty_batch_gives_empty_codes(name):
    x, D = _wide_problem()
    z = make_encoder(name, 64, 512).encode(x[:0], D)
    assert z.shape == (0, 512)


def test_fista_reaches_sklearn_lasso_optimum_on_the_benchmark_problem(monkeypatch):
    """The benchmark's problem (1024 unit-norm atoms in R^256, 16 active per row, l1 0.1,
    non-negative, 200 iterations, tol 1e-4), 256 rows: the default (working-set) path returns
    scikit-learn's lasso_cd solution: same supports, objectives equal to float32 rounding, and
    no atom off the support with a gradient past l1 (the lasso's optimality condition)."""
    decomposition = require("sklearn.decomposition")
    g = torch.Generator().manual_seed(0)
    atoms = F.normalize(torch.randn(1024, 256, generator=g), dim=1)
    idx = torch.rand(256, 1024, generator=g).argsort(dim=1)[:, :16]
    codes = torch.zeros(256, 1024).scatter_(1, idx, torch.randn(256, 16, generator=g).abs())
    x, D = codes @ atoms, Dictionary.from_atoms(atoms)
    spy = _PhaseSpy(monkeypatch)
    enc = make_encoder("fista", 256, 1024, l1=0.1, iters=200, tol=1e-4)
    z = enc.encode(x, D)
    assert spy.phases >= 1
    coder = decomposition.SparseCoder(
        dictionary=atoms.numpy(),
        transform_algorithm="lasso_cd",
        transform_alpha=0.1,
        positive_code=True,
        transform_max_iter=1000,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lasso_cd's float32 duality-gap ConvergenceWarning
        ref = torch.from_numpy(coder.transform(x.numpy()))
    assert torch.equal(z != 0, ref != 0)
    assert _rel_gap(enc, x, z, ref, D).abs().max() < 1e-5
    neg_grad = (x.double() - z.double() @ atoms.double()) @ atoms.double().T
    assert (neg_grad[z == 0] - 0.1).max() < 1e-3  # (0.1 + 1e-3: an atom would enter)


def test_working_set_restart_keeps_the_objective_monotone(monkeypatch):
    x, D = _wide_problem()
    spy = _PhaseSpy(monkeypatch)
    Fs = objectives_by_iteration("fista", x, D, 30, l1=0.05)
    assert spy.phases >= 1
    # the working set compares exact objective differences; recomputed from residuals in float32
    # the objective may show rounding-level rises only
    rise = Fs[1:] - Fs[:-1]
    assert (rise <= 1e-6 * Fs[:-1]).all()
    assert (Fs[-1] < 0.5 * Fs[0]).float().mean() > 0.5  # and it actually descends


def _topk(z: torch.Tensor, k: int):
    idx = z.abs().topk(k, dim=1).indices
    return idx, z.gather(1, idx)


@pytest.mark.parametrize("name", ["mp", "omp"])
@pytest.mark.parametrize("nonneg", [False, True])
def test_pursuit_at_most_k_nonzeros(name, nonneg):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 10, generator=g)
    D = Dictionary(10, 40, generator=g)
    out = make_encoder(name, 10, 40, k=5, nonneg=nonneg).encode(x, D)
    assert isinstance(out, SparseCodes) and out.indices.shape == (50, 5)
    z = to_dense(out)
    assert ((z != 0).sum(dim=1) <= 5).all()
    assert ((z != 0).sum(dim=1) >= 1).all()
    if nonneg:
        assert (z >= 0).all()


def test_omp_recovers_codes_exactly():
    n, m, k = 32, 24, 3
    x, codes, atoms = sparse_problem(n, m, k, 512, seed=1)
    D = Dictionary.from_atoms(atoms)
    z = to_dense(make_encoder("omp", m, n, k=k).encode(x, D))
    res = (x - D.decode(z)).pow(2).sum(dim=1) / x.pow(2).sum(dim=1)
    fit = res < 1e-10
    # a K-sparse exact fit on a dictionary whose every 2K atoms are independent is unique,
    # so wherever OMP's residual vanishes it must have found the true codes
    assert fit.float().mean() > 0.9
    assert torch.equal(z[fit] != 0, codes[fit] != 0)
    assert torch.allclose(z[fit], codes[fit], atol=1e-5)
    assert ((z != 0).sum(dim=1) <= k).all()


@pytest.mark.parametrize("nonneg", [False, True])
def test_omp_gram_correlations_pick_the_same_atoms_as_residual_products(monkeypatch, nonneg):
    from sparsecodes.encoders import pursuit

    x, _, atoms = sparse_problem(64, 24, 4, 256, seed=4)
    x = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    D = Dictionary.from_atoms(atoms)
    enc = make_encoder("omp", 24, 64, k=6, nonneg=nonneg)
    z_gram = to_dense(enc.encode(x, D))  # 64^2 <= _FULL_GRAM_MAX: Gram correlations
    monkeypatch.setattr(pursuit, "_FULL_GRAM_MAX", 0)  # res @ W^T every step
    z_res = to_dense(enc.encode(x, D))
    assert ((z_gram != 0).sum(dim=1) == 6).float().mean() > 0.9  # noise: full supports
    assert torch.equal(z_gram != 0, z_res != 0)
    torch.testing.assert_close(z_gram, z_res, rtol=1e-4, atol=1e-5)


def _growing_systems(seed: int, batch: int = 256, slots: int = 12, d: int = 20, n: int = 80):
    """Random OMP-like systems: each row's atom ids ``[batch, slots]``, Gram ``[batch, s, s]``
    and right-hand sides ``[batch, s]`` of a random target, and per step the rows that add a
    slot (a row that stops never resumes, as in OMP)."""
    g = torch.Generator().manual_seed(seed)
    W = F.normalize(torch.randn(n, d, generator=g), dim=1)
    r = torch.randn(batch, d, generator=g)
    idx = torch.rand(batch, n, generator=g).argsort(dim=1)[:, :slots]
    A = W[idx]
    stop = torch.randint(1, slots + 1, (batch,), generator=g)  # row i adds slots 0..stop-1
    return W, r, idx, A @ A.transpose(1, 2), (A @ r[:, :, None]).squeeze(2), stop


def _grow(G_all, rhs_all, live_at, slots):
    from sparsecodes.encoders.support_lstsq import GrowingSupport, solve_on_support

    B = G_all.shape[0]
    grow = GrowingSupport(B, slots, torch.float32, torch.device("cpu"))
    valid = torch.zeros(B, slots, dtype=torch.bool)
    for t in range(slots):
        live = live_at(t)
        valid[:, t] = live
        pair = valid[:, :, None] & valid[:, None, :]
        G, rhs = torch.where(pair, G_all, 0.0), torch.where(valid, rhs_all, 0.0)
        yield grow.add(G, rhs, valid, live), solve_on_support(G, rhs, valid, nonneg=False)[0], grow


def test_growing_support_matches_a_fresh_factorisation_at_every_step():
    _, _, _, G_all, rhs_all, stop = _growing_systems(seed=0)
    steps = list(_grow(G_all, rhs_all, lambda t: t < stop, 12))
    for t, (grown, fresh, _) in enumerate(steps):
        # float32 Cholesky of unit-norm atoms' Grams (condition ~1e2): 1e-4 of the largest coef
        torch.testing.assert_close(grown, fresh, rtol=0, atol=1e-4 * float(fresh.abs().max()))
        # rows that stopped keep their coefficients (identity rows, zero right-hand side)
        assert (grown[:, t + 1 :] == 0).all()
    # every row's last solution satisfies its normal equations on its support
    grown = steps[-1][0]
    residual_corr = rhs_all - (G_all @ grown[:, :, None]).squeeze(2)
    on_support = torch.arange(12)[None, :] < stop[:, None]
    assert residual_corr[on_support].abs().max() < 1e-4 * rhs_all.abs().max()
    assert not steps[-1][2].singular.any()


def test_growing_support_hands_a_collinear_atom_to_the_minimum_norm_solve():
    _, _, _, G_all, rhs_all, _ = _growing_systems(seed=1, batch=8, slots=4)
    # row 0's slot 2 repeats its slot 0: the bordered Gram is singular
    G_all[0, 2, :] = G_all[0, 0, :]
    G_all[0, :, 2] = G_all[0, :, 0]
    G_all[0, 2, 2] = G_all[0, 0, 0]
    rhs_all[0, 2] = rhs_all[0, 0]
    steps = list(_grow(G_all, rhs_all, lambda t: torch.ones(8, dtype=torch.bool), 4))
    grown, fresh, grow = steps[-1]
    assert grow.singular.tolist() == [True] + [False] * 7
    torch.testing.assert_close(grown, fresh, rtol=0, atol=1e-4 * float(fresh.abs().max()))
    # the singular row still solves its normal equations
    fit = (G_all[0] @ grown[0]) - rhs_all[0]
    assert fit.abs().max() < 1e-3 * rhs_all[0].abs().max()


def test_signed_omp_coefficients_are_least_squares_on_their_support():
    x, _, atoms = sparse_problem(64, 24, 4, 256, seed=7)
    x = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    D = Dictionary.from_atoms(atoms)
    codes = make_encoder("omp", 24, 64, k=8).encode(x, D)
    A = atoms[codes.indices]  # [B, 8, 24]
    res = x - (codes.values[:, None, :] @ A).squeeze(1)
    on = codes.values != 0
    assert on.sum(dim=1).float().mean() > 7.5  # noise: rows use their 8 atoms
    # the residual is orthogonal to every atom of its support (normal equations)
    assert (A @ res[:, :, None]).squeeze(2)[on].abs().max() < 1e-4 * x.norm(dim=1).max()


@pytest.mark.parametrize("n,d,k,dup", [(64, 24, 6, False), (40, 16, 8, True), (200, 8, 12, False)])
def test_omp_growing_refits_equal_fresh_factorisations(monkeypatch, n, d, k, dup):
    """Cold signed OMP's refits extend a factor (GrowingSupport); with that disabled, every step
    factorises afresh. Same supports and coefficients; with more atoms than dimensions (k > d,
    rows fit exactly after d atoms, later picks are round-off) the same residuals."""
    from sparsecodes.encoders import pursuit

    g = torch.Generator().manual_seed(0)
    atoms = F.normalize(torch.randn(n, d, generator=g), dim=1)
    if dup:  # repeated and opposite atoms: collinear candidates
        atoms[1], atoms[3] = atoms[0], -atoms[2]
    x = torch.randn(128, d, generator=g)
    D = Dictionary.from_atoms(atoms)
    grown = to_dense(make_encoder("omp", d, n, k=k).encode(x, D))
    monkeypatch.setattr(pursuit, "GrowingSupport", lambda *a, **kw: None)
    fresh = to_dense(make_encoder("omp", d, n, k=k).encode(x, D))
    err = [(x - D.decode(z)).pow(2).sum(dim=1) for z in (grown, fresh)]
    torch.testing.assert_close(err[0], err[1], rtol=0, atol=1e-5 * float(x.pow(2).sum(1).max()))
    if k <= d:
        assert torch.equal(grown != 0, fresh != 0)
        torch.testing.assert_close(grown, fresh, rtol=0, atol=1e-4)


def test_omp_stops_on_exact_fit_and_tol():
    x, _, atoms = sparse_problem(32, 24, 3, 256, seed=2)
    D = Dictionary.from_atoms(atoms)
    z = to_dense(make_encoder("omp", 24, 32, k=8).encode(x, D))
    # k=8 allowed, but rows already fitted exactly do not pick noise atoms
    assert (z != 0).sum(dim=1).float().mean() < 3.5
    loose = to_dense(make_encoder("omp", 24, 32, k=8, tol=0.5).encode(x, D))
    assert (loose != 0).sum(dim=1).float().mean() < (z != 0).sum(dim=1).float().mean()


def test_mp_reduces_residual_and_omp_is_tighter():
    x, _, atoms = sparse_problem(32, 24, 3, 256, seed=3)
    D = Dictionary.from_atoms(atoms)
    errs = {}
    for name in ["mp", "omp"]:
        z = make_encoder(name, 24, 32, k=3).encode(x, D)
        errs[name] = (x - D.decode(z)).pow(2).sum(dim=1)
    assert (errs["mp"] < x.pow(2).sum(dim=1)).all()
    assert (errs["omp"] <= errs["mp"] + 1e-5).all()  # OMP's refit is optimal on its support...


@pytest.mark.parametrize("name", ["mp", "omp"])
def test_pursuit_warm_start_is_used(name):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(20, 10, generator=g)
    D = Dictionary(10, 30, generator=g)
    r = x @ D.W_dec.detach().T
    best = r.abs().argmax(dim=1)
    j = (best + 1) % 30  # an atom the greedy choice would not take first
    init = torch.zeros(20, 30)
    init[torch.arange(20), j] = 0.25
    z = to_dense(make_encoder(name, 10, 30, k=1).encode(x, D, init=init))
    assert torch.equal((z != 0).nonzero()[:, 1], j)
    corr = r.gather(1, j[:, None]).squeeze(1)
    # OMP refits (<x, d_j>); MP adds <x - 0.25 d_j, d_j> to 0.25: the same for unit atoms
    assert torch.allclose(z[torch.arange(20), j], corr, atol=1e-5)
    cold = to_dense(make_encoder(name, 10, 30, k=1).encode(x, D))
    assert torch.equal((cold != 0).nonzero()[:, 1], best)


def test_omp_warm_start_from_true_codes():
    x, codes, atoms = sparse_problem(32, 24, 3, 128, seed=5)
    D = Dictionary.from_atoms(atoms)
    z = to_dense(make_encoder("omp", 24, 32, k=3).encode(x, D, init=codes))
    assert torch.allclose(z, codes, atol=1e-5)
    assert torch.equal(z != 0, codes != 0)


def test_bias_is_subtracted():
    x, _, atoms = sparse_problem(16, 8, 3, 32, seed=6)
    D0 = Dictionary.from_atoms(atoms)
    b = torch.randn(8, generator=torch.Generator().manual_seed(0))
    Db = Dictionary.from_atoms(atoms, bias=b)
    for name, kw in [("fista", {"iters": 50}), ("omp", {"k": 3}), ("mp", {"k": 3})]:
        enc = make_encoder(name, 8, 16, **kw)
        assert torch.allclose(
            to_dense(enc.encode(x, D0)), to_dense(enc.encode(x + b, Db)), atol=1e-3
        )


def test_validation_errors():
    with pytest.raises(ValueError, match="k"):
        make_encoder("omp", 8, 16, k=17)
    with pytest.raises(ValueError, match="k"):
        make_encoder("mp", 8, 16, k=0)
    with pytest.raises(ValueError, match="iters"):
        make_encoder("fista", 8, 16, iters=0)
    with pytest.raises(ValueError, match="l1"):
        make_encoder("ista", 8, 16, l1=-1.0)
    with pytest.raises(ValueError, match="tol"):
        make_encoder("omp", 8, 16, tol=-0.1)
    D = Dictionary(8, 16)
    with pytest.raises(ValueError, match="init"):
        make_encoder("fista", 8, 16).encode(torch.randn(4, 8), D, init=torch.zeros(4, 15))
    with pytest.raises(ValueError, match="init"):
        make_encoder("omp", 8, 16).encode(torch.randn(4, 8), D, init=torch.zeros(3, 16))


@pytest.mark.parametrize(
    ("name", "field"), [("ista", "iters"), ("fista", "iters"), ("mp", "k"), ("omp", "k")]
)
def test_flops_grow_linearly_with_work(name, field):
    f = [make_encoder(name, 64, 256, **{field: v}).inference_flops(32) for v in (4, 8, 12)]
    assert 0 < f[0] < f[1] < f[2]
    step1, step2 = f[1] - f[0], f[2] - f[1]
    if name == "omp":  # the [k, k] refits add k^2, k^3 terms: at least linear
        assert step2 >= step1
    else:
        assert step2 == step1
    enc = make_encoder(name, 64, 256)
    assert enc.train_step_flops(32) > enc.inference_flops(32)


@pytest.mark.parametrize("name", ["fista", "omp"])
def test_train_step_trains_dictionary(name):
    x, _, _ = sparse_problem(16, 8, 3, 64, seed=7)
    D = Dictionary(8, 16, generator=torch.Generator().manual_seed(0))
    enc = make_encoder(name, 8, 16)
    out = enc.train_step(TrainStepInput(x=x, dictionary=D))
    out.loss.backward()
    assert D.W_dec.grad is not None and D.W_dec.grad.abs().sum() > 0
    assert torch.isfinite(out.loss)


def test_sparse_coder_runs_iterative_inference_with_warm_start():
    from sparsecodes.sparse_coder import SparseCoder

    x, _, atoms = sparse_problem(16, 8, 3, 64, seed=8)
    coder = SparseCoder(8, 16, "relu", seed=0)
    coder.set_dictionary(atoms)
    plain = coder.encode(x, inference="fista", iters=1, tol=0.0)
    warm = coder.encode(x, inference="fista", warm_start=True, iters=1, tol=0.0)
    init = coder.encoder.encode(x, coder.dictionary)
    one = make_encoder("fista", 8, 16, iters=1, tol=0.0)
    assert torch.equal(warm, one.encode(x, coder.dictionary, init=init))
    assert not torch.equal(warm, plain)
    omp = coder.encode(x, inference="omp", k=3, sparse=True)
    assert isinstance(omp, SparseCodes) and omp.indices.shape == (64, 3)


# ---------------------------------------------------------------- debiasing refit (ISTA/FISTA)


def _sq_err(x, z, D):
    """``[batch]`` float64 squared error of the codes ``z`` (the bias is subtracted)."""
    r = x.double() - D.b_dec.detach().double()
    return (r - z.double() @ D.W_dec.detach().double()).pow(2).sum(dim=1)


@pytest.mark.parametrize("name", ["ista", "fista"])
@pytest.mark.parametrize("nonneg", [True, False])
def test_debias_keeps_support_and_never_raises_error(name, nonneg):
    x, _, atoms = sparse_problem(48, 16, 4, 256, seed=11)
    x = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))  # noisy
    D = Dictionary.from_atoms(atoms)
    with torch.no_grad():
        D.b_dec.copy_(0.3 * torch.randn(16, generator=torch.Generator().manual_seed(2)))
    x = x + D.b_dec.detach()
    kw = dict(l1=0.1, iters=60, nonneg=nonneg)
    z = make_encoder(name, 16, 48, **kw).encode(x, D)
    enc = make_encoder(name, 16, 48, debias=True, **kw)
    zd = enc.encode(x, D)
    on, on_d = z != 0, zd != 0
    assert not (on_d & ~on).any()  # no atom is added: the refit lives on the lasso's support
    if nonneg:
        assert (zd >= 0).all()
    else:  # signed: the support is kept, bar coefficients that are exactly 0 by round-off
        assert (on_d == on).all(dim=1).float().mean() > 0.95
    assert enc.last_refit_support == int(on.sum(dim=1).max())
    e, e_d = _sq_err(x, z, D), _sq_err(x, zd, D)
    assert (e_d <= e + 1e-5 * e.clamp_min(1e-3)).all()  # every row, up to float32 round-off
    assert e_d.sum() < 0.5 * e.sum()  # and the shrinkage bias is actually removed
    # rows refitted without drops (not: unconverged rows with more atoms than dimensions, or the
    # rare row whose refit was not better; those keep their lasso values) have a residual
    # orthogonal to their support's atoms (the normal equations): a wrong refit would not
    refitted = (on_d == on).all(dim=1) & (zd != z).any(dim=1)
    assert refitted.float().mean() > 0.5
    res = (x - D.b_dec.detach()).double() - zd.double() @ atoms.double()
    corr = (res @ atoms.double().T).abs() * on_d
    assert corr[refitted].max() < 1e-4
    if not nonneg:  # signed lasso: every kept coefficient's correlation is l1 before the refit
        res0 = (x - D.b_dec.detach()).double() - z.double() @ atoms.double()
        assert (res0 @ atoms.double().T).abs()[on].mean() > 0.05


@pytest.mark.parametrize("nonneg", [True, False])
def test_debias_recovers_true_codes_better_than_shrunk_lasso(nonneg):
    x, codes, atoms = sparse_problem(16, 8, 3, 512, seed=0)  # noiseless, known dictionary
    D = Dictionary.from_atoms(atoms)
    kw = dict(l1=0.05, iters=300, nonneg=nonneg)
    z = make_encoder("fista", 8, 16, **kw).encode(x, D)
    zd = make_encoder("fista", 8, 16, debias=True, **kw).encode(x, D)
    mae, mae_d = (z - codes).abs().mean(), (zd - codes).abs().mean()
    # L1 shrinks every kept value by about l1: plain FISTA's error cannot go below that bias
    assert mae_d < mae
    if nonneg:
        assert mae_d < 0.5 * mae
    # rows whose lasso support contains the true one and is small enough are recovered exactly
    sup_ok = ((codes != 0) <= (z != 0)).all(dim=1) & ((z != 0).sum(dim=1) <= 8)
    assert sup_ok.float().mean() > 0.5
    exact = (zd[sup_ok] - codes[sup_ok]).abs().amax(dim=1) < 1e-4
    assert exact.float().mean() > (0.9 if nonneg else 0.3)


@pytest.mark.parametrize("name", ["ista", "fista"])
def test_debias_off_is_bit_identical_to_default(name):
    x, codes, atoms = sparse_problem(32, 12, 4, 128, seed=5)
    D = Dictionary.from_atoms(atoms)
    for kw in (dict(l1=0.05, iters=40), dict(l1=0.02, iters=25, nonneg=False, tol=0.0)):
        ref = make_encoder(name, 12, 32, **kw)
        off = make_encoder(name, 12, 32, debias=False, **kw)
        assert torch.equal(ref.encode(x, D), off.encode(x, D))
        assert torch.equal(ref.encode(x, D, init=codes), off.encode(x, D, init=codes))
        assert off.last_refit_support == 0
        assert ref.inference_flops(64) == off.inference_flops(64)
        assert ref.train_step_flops(64) == off.train_step_flops(64)
        assert off.refit_flops(64, 5) == 0
    on = make_encoder(name, 12, 32, l1=0.05, iters=40, debias=True)
    assert not torch.equal(on.encode(x, D), ref.encode(x, D))


def test_debias_flops_count_the_refit():
    b, d, n, s = 32, 64, 256, 10
    off = make_encoder("fista", d, n, iters=20)
    on = make_encoder("fista", d, n, iters=20, debias=True)
    refit = (
        2 * b * s * s * d + 4 * b * s * d + b * s**3 // 3 + 7 * b * s * s + 6 * b * d + 2 * b * n
    )
    assert on.refit_flops(b, s) == refit
    assert on.inference_flops(b, support=s) == off.inference_flops(b) + refit
    assert on.inference_flops(b) == off.inference_flops(b) + on.refit_flops(b, min(n, d))
    assert on.inference_flops(b, support=2 * s) > on.inference_flops(b, support=s)
    assert on.train_step_flops(b) > off.train_step_flops(b)


def test_debias_through_sparse_coder_and_batches():
    from sparsecodes.sparse_coder import SparseCoder

    x, codes, atoms = sparse_problem(16, 8, 3, 300, seed=9)
    coder = SparseCoder(8, 16, "relu", seed=0)
    coder.set_dictionary(atoms)
    plain = coder.encode(x, inference="fista", l1=0.05, iters=200)
    deb = coder.encode(x, inference="fista", l1=0.05, iters=200, debias=True)
    warm = coder.encode(x, inference="fista", l1=0.05, iters=200, debias=True, warm_start=True)
    assert (deb - codes).abs().mean() < (plain - codes).abs().mean()
    assert (warm - codes).abs().mean() < (plain - codes).abs().mean()
    # Batching (padded supports per batch, chunked gathers) changes nothing beyond round-off.
    # Checked in float64 with a fixed number of iterations (tol=0: the early stop is decided per
    # batch, so with tol > 0 batches may stop at different iterations). In float32 the check
    # cannot be tight: matmuls of different shapes round differently (BLAS kernels, e.g. AMX),
    # lasso coefficients within round-off of the prox threshold (~eps32 * |v|) land on either
    # side of it, and the refit on a support with or without that atom differs by far more than
    # eps32 (dozens of such rows here, 1.5e-5 apart on an AMX CPU). In float64 round-off is
    # ~1e-16 * 200 iterations, so no coefficient lands within it of the threshold and the two
    # batchings must agree to 1e-10 (one batch-dependent step would be off by >= 1e-3).
    c64 = coder.double()
    kw = {"inference": "fista", "l1": 0.05, "iters": 200, "debias": True, "tol": 0.0}
    whole = c64.encode(x.double(), **kw)
    small = c64.encode(x.double(), batch_size=37, **kw)
    assert whole.dtype == small.dtype == torch.float64
    assert ((whole != 0) == (small != 0)).all()
    torch.testing.assert_close(small, whole, atol=1e-10, rtol=0)
