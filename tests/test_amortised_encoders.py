"""Amortised encoders jumprelu, gated, mlp, lista: shapes, training, their defining mechanics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sparsecodes as sc
from sparsecodes.dictionary import Dictionary
from sparsecodes.encoders import TrainStepInput, make_encoder

ENCODERS = ["jumprelu", "gated", "mlp", "lista"]
# Per-encoder settings for the short fits: jumprelu gets a kernel wide enough for small batches.
FIT_PARAMS = {
    "jumprelu": {"bandwidth": 0.05},
    "gated": {},
    "mlp": {"hidden": 32},
    "lista": {"iters": 3},
}
D_IN, N = 8, 16


def make_problem(n: int = N, m: int = D_IN, k: int = 3, s: int = 1024, seed: int = 0):
    """Codes [s, n] with k active |N(0,1)| values, unit-norm Gaussian atoms [n, m], x = codes @ atoms."""
    g = torch.Generator().manual_seed(seed)
    atoms = F.normalize(torch.randn(n, m, generator=g), dim=1)
    idx = torch.rand(s, n, generator=g).argsort(dim=1)[:, :k]
    codes = torch.zeros(s, n).scatter_(1, idx, torch.randn(s, k, generator=g).abs())
    return codes @ atoms, codes, atoms


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These sizes are tiny; a second intra-op thread only spins when the cores are busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def problem():
    return make_problem(seed=123)  # not the models' seed: the true atoms differ from the init


def full_loss(model: sc.SparseCoder, x: torch.Tensor) -> float:
    """The encoder's training loss on all of ``x`` (no gradient)."""
    with torch.no_grad():
        return float(model.encoder.train_step(TrainStepInput(x, model.dictionary)).loss)


def l0(codes: torch.Tensor) -> float:
    return float((codes != 0).sum(dim=1).float().mean())


# ---------------------------------------------------------------------------- all four encoders
@pytest.mark.parametrize("name", ENCODERS)
def test_shape_and_non_negative(name):
    model = sc.SparseCoder(D_IN, N, name, seed=1, **FIT_PARAMS[name])
    x = torch.randn(37, D_IN, generator=torch.Generator().manual_seed(2)) * 3  # signed inputs
    z = model.encode(x)
    assert z.shape == (37, N)
    assert torch.isfinite(z).all()
    assert (z >= 0).all()
    assert (z > 0).any()


@pytest.mark.parametrize("name", ENCODERS)
def test_fit_unknown_dictionary_lowers_loss(name, problem):
    x, _, _ = problem
    model = sc.SparseCoder(D_IN, N, name, seed=0, **FIT_PARAMS[name])
    before = full_loss(model, x)
    model.fit(x, steps=100, lr=1e-2, batch_size=128)
    after = full_loss(model, x)
    assert after < 0.5 * before
    for key, t in model.state_dict().items():
        assert torch.isfinite(t).all(), key
    norms = model.dictionary.W_dec.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


@pytest.mark.parametrize("name", ENCODERS)
def test_fit_known_dictionary_keeps_it_fixed(name, problem):
    x, _, atoms = problem
    model = sc.SparseCoder(D_IN, N, name, seed=0, **FIT_PARAMS[name])
    model.set_dictionary(atoms)
    before = full_loss(model, x)
    enc_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    model.fit(x, dictionary=atoms, steps=60, lr=1e-2, batch_size=128)
    assert torch.equal(model.dictionary.W_dec.detach(), Dictionary.from_atoms(atoms).W_dec)
    assert torch.equal(model.dictionary.b_dec.detach(), torch.zeros(D_IN))
    assert full_loss(model, x) < before
    changed = [
        k for k, v in model.encoder.state_dict().items() if not torch.equal(v, enc_before[k])
    ]
    assert changed, "the encoder did not learn"


@pytest.mark.parametrize("name", ENCODERS)
def test_save_load_round_trip_bit_exact(name, problem, tmp_path):
    x, _, _ = problem
    model = sc.SparseCoder(D_IN, N, name, seed=0, **FIT_PARAMS[name])
    model.fit(x, steps=20, lr=1e-2, batch_size=64)
    model.save(tmp_path / name)
    loaded = sc.SparseCoder.load(tmp_path / name)
    assert loaded.encoder.config == model.encoder.config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert torch.equal(model.encode(x[:64]), loaded.encode(x[:64]))


@pytest.mark.parametrize("name", ENCODERS)
def test_flops_positive_and_linear_in_batch(name):
    enc = make_encoder(name, D_IN, N, **FIT_PARAMS[name])
    f1, f8 = enc.flops(1), enc.flops(8)
    assert 0 < f1["inference"] < f1["train_step"]
    assert f8["inference"] > f1["inference"]
    assert f8["train_step"] > f1["train_step"]


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("jumprelu", {"l0_coef": -1.0}, "l0_coef"),
        ("jumprelu", {"bandwidth": 0.0}, "bandwidth"),
        ("jumprelu", {"init_threshold": -0.1}, "init_threshold"),
        ("gated", {"l1": -1e-3}, "l1"),
        ("mlp", {"l1": -1e-3}, "l1"),
        ("mlp", {"depth": 0}, "depth"),
        ("mlp", {"hidden": 0}, "hidden"),
        ("lista", {"iters": 0}, "iters"),
        ("lista", {"iters": 2.5}, "iters"),
        ("lista", {"l1": -1.0}, "l1"),
    ],
)
def test_invalid_config_names_field(name, params, field):
    with pytest.raises(ValueError, match=field):
        sc.SparseCoder(D_IN, N, name, **params)


# ---------------------------------------------------------------------------- jumprelu
def test_jumprelu_threshold_gets_gradient_from_both_terms(problem):
    x, _, _ = problem
    enc = make_encoder("jumprelu", D_IN, N, bandwidth=0.05, init_threshold=0.3)
    d = Dictionary(D_IN, N, generator=torch.Generator().manual_seed(0))
    enc.init_from_dictionary(d)
    assert torch.allclose(enc.threshold, torch.full((N,), 0.3))
    out = enc.train_step(TrainStepInput(x, d))
    for part in ("mse", "l0"):
        (g,) = torch.autograd.grad(out.losses[part], enc.log_threshold, retain_graph=True)
        assert torch.isfinite(g).all()
        assert (g != 0).any(), f"no threshold gradient from the {part} term"

    # The L0 pseudo-derivative is exactly -(l0_coef/eps) * theta * mean_tokens(K(...)) in log space.
    pre = enc.pre_acts(x, d).detach()
    theta, eps = enc.threshold.detach(), 0.05
    kernel = ((pre - theta).abs() < eps / 2).float().mean(dim=0)
    expected = -(enc.config.l0_coef / eps) * kernel * theta
    (g,) = torch.autograd.grad(out.losses["l0"], enc.log_threshold)
    assert torch.allclose(g, expected, rtol=1e-5, atol=1e-9)
    assert (g <= 0).all()  # descending the L0 term raises thresholds


def test_jumprelu_codes_jump_at_threshold():
    enc = make_encoder("jumprelu", D_IN, N, init_threshold=0.5)
    d = Dictionary(D_IN, N, generator=torch.Generator().manual_seed(0))
    x = torch.randn(200, D_IN, generator=torch.Generator().manual_seed(1))
    pre = enc.pre_acts(x, d)
    z = enc.encode(x, d)
    assert torch.equal(z, torch.where(pre > 0.5, pre, torch.zeros_like(pre)))
    assert ((z == 0) | (z > 0.5)).all()  # nothing in (0, theta]


def test_jumprelu_l0_penalty_lowers_l0(problem):
    x, _, atoms = problem
    l0s = []
    for coef in (0.0, 0.3):
        model = sc.SparseCoder(
            D_IN, N, "jumprelu", seed=0, l0_coef=coef, bandwidth=0.05, init_threshold=0.1
        )
        model.fit(x, dictionary=atoms, steps=100, lr=1e-2, batch_size=128)
        l0s.append(l0(model.encode(x)))
    assert l0s[1] < 0.8 * l0s[0]


# ---------------------------------------------------------------------------- gated
def test_gated_codes_zero_where_gate_closed(problem):
    x, _, _ = problem
    model = sc.SparseCoder(D_IN, N, "gated", seed=0, l1=1e-2)
    model.fit(x, steps=30, lr=1e-2, batch_size=128)
    with torch.no_grad():
        model.encoder.b_mag.fill_(1.0)  # magnitudes positive even where the gate is closed
        pi_gate, pi_mag = model.encoder.pre_acts(x, model.dictionary)
    z = model.encode(x)
    closed = pi_gate <= 0
    assert (closed & (pi_mag > 0)).any(), "the test needs closed gates with positive magnitude"
    assert (z[closed] == 0).all()
    assert torch.equal(z[~closed], torch.relu(pi_mag)[~closed])


def test_gated_gate_learns_and_aux_does_not_move_decoder(problem):
    x, _, _ = problem
    model = sc.SparseCoder(D_IN, N, "gated", seed=0)
    enc, d = model.encoder, model.dictionary
    out = enc.train_step(TrainStepInput(x[:256], d))
    (g_gate,) = torch.autograd.grad(out.losses["l1"] + out.losses["aux"], enc.b_gate)
    assert (g_gate != 0).any()
    (g_dec,) = torch.autograd.grad(out.losses["aux"], d.W_dec, allow_unused=True)
    assert g_dec is None or (g_dec == 0).all()


# ---------------------------------------------------------------------------- mlp
def test_mlp_hidden_default_and_depth():
    enc = make_encoder("mlp", D_IN, N, depth=3)
    assert enc.hidden == 4 * D_IN
    assert len(enc.layers) == 4
    deeper = make_encoder("mlp", D_IN, N, depth=4).flops(2)["inference"]
    assert deeper > enc.flops(2)["inference"]


# ---------------------------------------------------------------------------- lista
def nonneg_ista(x, atoms, bias, l1, iters):
    """Non-negative ISTA on 0.5||x - b - zD||^2 + l1|z|_1 from z = 0, step 1/||D||_2^2."""
    lip = torch.linalg.svdvals(atoms.double())[0] ** 2
    x, atoms, bias = x.double(), atoms.double(), bias.double()
    z = torch.zeros(x.shape[0], atoms.shape[0], dtype=torch.float64)
    for _ in range(iters):
        grad = (z @ atoms + bias - x) @ atoms.T
        z = torch.relu(z - grad / lip - l1 / lip)
    return z


@pytest.mark.parametrize("iters", [1, 3, 7])
def test_lista_before_training_equals_ista(iters, problem):
    x, _, atoms = problem
    bias = torch.randn(D_IN, generator=torch.Generator().manual_seed(5)) * 0.1
    model = sc.SparseCoder(D_IN, N, "lista", seed=0, iters=iters, l1=0.05)
    model.set_dictionary(atoms * 2.0, bias)  # normalised back to unit atoms by set_dictionary
    z = model.encode(x[:128])
    ref = nonneg_ista(x[:128], atoms, bias, 0.05, iters)
    assert torch.allclose(z.double(), ref, atol=1e-5)
    # more steps really are different iterates (the comparison above is not vacuous)
    if iters > 1:
        assert not torch.allclose(z.double(), nonneg_ista(x[:128], atoms, bias, 0.05, 1), atol=1e-3)


def test_lista_flops_grow_with_iters():
    f = [make_encoder("lista", D_IN, N, iters=t).flops(4) for t in (1, 2, 5)]
    assert f[0]["inference"] < f[1]["inference"] < f[2]["inference"]
    assert f[0]["train_step"] < f[1]["train_step"] < f[2]["train_step"]


def test_lista_before_training_matches_ista_encoder(problem):
    """Same objective convention as the ``ista`` inference (0.5 ||r - zD||^2 + l1 |z|_1)."""
    x, _, atoms = problem
    model = sc.SparseCoder(D_IN, N, "lista", seed=0, iters=4, l1=0.05)
    model.set_dictionary(atoms)
    ista = model.encode(x[:128], inference="ista", l1=0.05, iters=4, tol=0.0, nonneg=True)
    assert torch.allclose(model.encode(x[:128]), ista, atol=1e-5)
