"""Synthetic worlds (``sparsecodes.worlds``): determinism, the structure each part promises,
streaming to the Trainer, and bounded memory on a 16k-feature world."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sparsecodes.worlds import (
    CorrelationSpec,
    FiringSpec,
    HierarchySpec,
    MagnitudeSpec,
    World,
    WorldConfig,
    WorldSource,
    available_worlds,
    world_config,
)

SMALL = WorldConfig(
    n_features=64,
    n_dims=16,
    firing=FiringSpec(l0=4.0, zipf_exponent=1.0, max_prob=0.6),
    magnitude=MagnitudeSpec(mean=1.0, std=0.3, mean_spread=0.5),
    correlation=CorrelationSpec(rank=4, scale=0.3),
    hierarchy=HierarchySpec(n_roots=2, branching=3, depth=2),
    noise=0.01,
    bias_norm=0.5,
    seed=5,
    block_rows=256,
)


def _dense(world: World, n: int, start: int = 0, stream: str = "train"):
    b = world.rows(start, n, stream)
    return b.x, b.dense_codes()


def test_same_seed_same_world_and_streams_different_seed_differs():
    a, b = World(SMALL), World(SMALL)
    assert torch.equal(a.dictionary, b.dictionary) and torch.equal(a.bias, b.bias)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)
    assert a.parent_children() == b.parent_children()
    for stream in ("train", "test"):
        xa, ca = _dense(a, 700, stream=stream)
        xb, cb = _dense(b, 700, stream=stream)
        assert torch.equal(xa, xb) and torch.equal(ca, cb)
    c = World(SMALL.replace(seed=6))
    assert not torch.equal(a.dictionary, c.dictionary)
    assert not torch.equal(_dense(a, 100)[1], _dense(c, 100)[1])
    assert not torch.equal(_dense(a, 100, stream="test")[1], _dense(a, 100)[1])


def test_stream_is_the_same_rows_however_it_is_chunked():
    w = World(SMALL)
    x, codes = _dense(w, 1000)
    it = w.batches(137)
    parts = [next(it) for _ in range(8)]  # 1096 rows across 5 blocks of 256
    xs = torch.cat([p.x for p in parts])[:1000]
    cs = torch.cat([p.dense_codes() for p in parts])[:1000]
    assert torch.equal(xs, x) and torch.equal(cs, codes)
    x2, c2 = _dense(w, 300, start=600)  # random access
    assert torch.equal(x2, x[600:900]) and torch.equal(c2, codes[600:900])


def test_observations_are_codes_times_atoms_plus_bias_plus_noise():
    w = World(SMALL)
    x, codes = _dense(w, 2000)
    resid = x - (codes @ w.dictionary + w.bias)
    assert resid.std().item() == pytest.approx(0.01, rel=0.05)  # noise std 0.01
    quiet = World(SMALL.replace(noise=0.0))
    xq, cq = _dense(quiet, 500)
    torch.testing.assert_close(xq, cq @ quiet.dictionary + quiet.bias, atol=1e-5, rtol=0)
    assert torch.allclose(w.dictionary.norm(dim=1), torch.ones(64))
    assert w.bias.norm().item() == pytest.approx(0.5, rel=1e-6)


def test_zipf_firing_rates_match_their_probabilities():
    cfg = WorldConfig(
        n_features=64,
        n_dims=16,
        firing=FiringSpec(l0=5.0, zipf_exponent=1.0, max_prob=0.9),
        block_rows=1000,
    )
    w = World(cfg)
    assert w.probabilities.sum().item() == pytest.approx(5.0, rel=1e-9)
    p = w.probabilities
    assert p[0] == pytest.approx(0.9) and p[1] / p[2] == pytest.approx(3 / 2, rel=1e-9)
    n = 40_000
    rate = (_dense(w, n)[1] != 0).double().mean(0)
    sd = (p * (1 - p) / n).sqrt()
    assert ((rate - p).abs() / sd).max() < 5  # binomial: within 5 standard deviations
    l0 = (_dense(w, n)[1] != 0).sum(1).double().mean().item()
    assert l0 == pytest.approx(5.0, abs=5 * math.sqrt(5.0 / n) * 2)


def test_extreme_zipf_with_zero_probabilities_never_fires_those_features():
    cfg = WorldConfig(
        n_features=50, n_dims=8, firing=FiringSpec(l0=1.5, zipf_exponent=200.0), block_rows=500
    )
    w = World(cfg)
    assert (w.probabilities[45:] == 0).all()  # (j+1)^-200 underflows to 0 for j >= 40
    fire = _dense(w, 4000)[1] != 0
    assert fire[:, 0].all() and not fire[:, 2:].any()
    assert fire[:, 1].double().mean().item() == pytest.approx(0.5, abs=0.04)


def test_correlation_keeps_rates_and_makes_aligned_features_cofire():
    base = WorldConfig(
        n_features=40,
        n_dims=16,
        firing=FiringSpec(l0=8.0),
        block_rows=2000,
        correlation=CorrelationSpec(rank=2, scale=0.6),
    )
    w = World(base)
    n = 20_000
    fire = (_dense(w, n)[1] != 0).double()
    p = w.probabilities
    assert ((fire.mean(0) - p).abs() / (p * (1 - p) / n).sqrt()).max() < 5
    assert w.factor is not None
    implied = w.factor @ w.factor.T  # latent Gaussian correlation of each pair
    corr = torch.corrcoef(fire.T)
    iu = torch.triu_indices(40, 40, 1)
    imp, emp = implied[iu[0], iu[1]], corr[iu[0], iu[1]]
    assert torch.corrcoef(torch.stack([imp.double(), emp]))[0, 1] > 0.8
    indep = World(base.replace(correlation=None))
    ci = torch.corrcoef(((_dense(indep, n)[1] != 0).double()).T)[iu[0], iu[1]]
    assert ci.abs().max() < 5 / math.sqrt(n) * 1.5 < emp.abs().max()


def test_hierarchy_children_exclusive_and_parents_fire_with_children():
    w = World(SMALL)
    codes = _dense(w, 4000)[1]
    pc = w.parent_children()
    assert len(pc) == 2 + 6  # two roots, six mid-level parents (depth 2, branching 3)
    n_child_fire = 0
    for parent, children in pc.items():
        act = codes[:, children] != 0
        assert (act.sum(1) <= 1).all()  # mutually exclusive siblings
        assert (codes[act.any(1), parent] != 0).all()  # a child firing switches its parent on
        n_child_fire += int(act.any(1).sum())
    assert n_child_fire > 500
    leaves = [c for cs in pc.values() for c in cs if c not in pc]
    root_of = {c: p for p, cs in pc.items() for c in cs}
    leaf = next(lf for lf in leaves if (codes[:, lf] != 0).any())
    rows = codes[:, leaf] != 0
    grand = root_of[root_of[leaf]]
    assert (codes[rows, grand] != 0).all()  # resolved bottom-up, up to the root


def test_paper_world_fires_exactly_k_with_folded_normal_values():
    w = World(world_config("paper"))
    codes = _dense(w, 20_000)[1]
    assert ((codes != 0).sum(1) == 3).all()
    vals = codes[codes != 0]
    assert (vals > 0).all()
    # |N(0, 1)| has mean sqrt(2/pi); standard error 0.6/sqrt(60000)
    assert vals.mean().item() == pytest.approx(math.sqrt(2 / math.pi), abs=0.01)
    rate = (codes != 0).double().mean(0)
    assert (rate - 3 / 16).abs().max() < 0.015  # uniform support


def test_magnitudes_follow_each_features_mean():
    cfg = WorldConfig(
        n_features=32,
        n_dims=8,
        firing=FiringSpec(l0=8.0),
        magnitude=MagnitudeSpec(mean=2.0, std=0.1, mean_spread=0.5),
        block_rows=1000,
    )
    w = World(cfg)
    codes = _dense(w, 10_000)[1]
    emp = codes.sum(0) / (codes != 0).sum(0)
    torch.testing.assert_close(emp, w.mean, atol=0.01, rtol=0)  # std 0.1, ~2500 draws each


def test_presets_have_their_stated_shape_and_l0():
    assert set(available_worlds()) >= {"paper", "hierarchy", "zipf-correlated", "synthsaebench-16k"}
    big = world_config("synthsaebench-16k")
    assert (big.n_features, big.n_dims) == (16384, 768)
    w = World(world_config("synthsaebench-16k", block_rows=512))
    l0 = (w.rows(0, 1024).codes.values != 0).sum(1).double().mean().item()
    assert 30 <= l0 <= 38  # "about 34"
    assert World(world_config("hierarchy")).parent_children()


def test_config_round_trips_and_bad_configs_say_what_to_change():
    assert WorldConfig.from_dict(json.loads(json.dumps(SMALL.to_dict()))) == SMALL
    assert WorldConfig(n_features=300, features_per_dim=3.0).n_dims == 100
    with pytest.raises(ValueError, match="lower l0 or raise max_prob"):
        WorldConfig(n_features=10, n_dims=4, firing=FiringSpec(l0=5.0, max_prob=0.2))
    with pytest.raises(ValueError, match="hierarchy needs 21 features"):
        WorldConfig(
            n_features=20, n_dims=4, hierarchy=HierarchySpec(n_roots=1, branching=4, depth=2)
        )
    with pytest.raises(ValueError, match="give n_dims, or features_per_dim"):
        WorldConfig(n_features=20)
    with pytest.raises(ValueError, match="unknown world 'nope'; available: "):
        world_config("nope")


def test_world_source_resumes_at_the_same_row():
    w = World(SMALL)
    src = WorldSource(w, with_codes=True)
    it = src.batches(100)
    for _ in range(3):
        next(it)
    state = src.state_dict()
    assert state["pos"] == 300
    x4, c4 = next(it)
    again = WorldSource(World(SMALL), with_codes=True)
    again.load_state_dict(state)
    y4, d4 = next(again.batches(100))
    assert torch.equal(x4, y4) and torch.equal(c4, d4)
    other = WorldSource(World(SMALL.replace(seed=9)))
    with pytest.raises(ValueError, match="resume with the same world"):
        other.load_state_dict(state)


def test_trainer_learns_a_streamed_world():
    from sparsecodes import SparseCoder
    from sparsecodes.metrics import dictionary_mcc
    from sparsecodes.training.trainer import TrainConfig, Trainer

    w = World(WorldConfig(n_features=24, n_dims=12, firing=FiringSpec(l0=2.0), seed=1))
    coder = SparseCoder(12, 24, "topk", k=2, seed=0)
    before = dictionary_mcc(w.dictionary, coder)
    cfg = TrainConfig(steps=800, lr=3e-3, batch_size=256, b_dec_init="zeros", log_every=800)
    Trainer(coder, cfg).fit(WorldSource(w))
    after = dictionary_mcc(w.dictionary, coder)
    assert before < 0.6 and after > 0.9


def test_streaming_a_16k_world_stays_in_bounded_memory(tmp_path: Path):
    """Peak RSS of a subprocess drawing 60k rows of a 16,384 x 768 world, in 4096-row batches,
    against the 3.9 GB that dense codes for those rows would take."""
    n, batch = 60_000, 4096
    script = textwrap.dedent(
        f"""
        import json, torch
        from sparsecodes.worlds import World, world_config

        def status(key):  # kB in /proc/self/status (per process; ru_maxrss survives exec)
            for line in open("/proc/self/status"):
                if line.startswith(key + ":"):
                    return int(line.split()[1])

        torch.set_num_threads(1)
        w = World(world_config("synthsaebench-16k", correlation=None))
        with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM: imports do not count
            f.write("5")
        base = status("VmRSS")
        nnz = rows = 0
        for b in w.batches({batch}):
            nnz += int((b.codes.values != 0).sum()); rows += b.x.shape[0]
            if rows >= {n}:
                break
        peak = status("VmHWM")
        print(json.dumps({{"base_kb": base, "peak_kb": peak, "rows": rows, "nnz": nnz}}))
        """
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        env={"PYTHONPATH": src, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    dense_bytes = r["rows"] * 16384 * 4
    peak_bytes = r["peak_kb"] * 1024
    assert r["rows"] >= n and r["nnz"] / r["rows"] > 25  # it really drew ~34 actives per row
    growth = peak_bytes - r["base_kb"] * 1024  # above the interpreter and torch
    assert growth < dense_bytes / 10, (peak_bytes, growth, dense_bytes)
