"""Metrics on known features (``sparsecodes.metrics.features``): known answers, and agreement
with ``sae_lens.synthetic``'s own evaluation on the same SAE and the same samples.

Where the definitions differ (stated in docs/synthetic.md, "Worlds and feature metrics"):
SAELens's classification metrics pair *every* latent with its best-``|cosine|`` feature
(our ``rule="best"``; our default ``"hungarian"`` pairs one-to-one); its ``shrinkage`` is the
norm ratio ``|x_hat| / |x|`` (our :func:`norm_shrinkage`; :func:`code_shrinkage` is per matched
pair); SAELens has no recovery rate or absorption, so those are tested on known answers only.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import require
from sparsecodes.metrics import (
    AbsorptionCounter,
    FiringCounter,
    absorption,
    code_shrinkage,
    dictionary_mcc,
    firing_scores,
    l0,
    match_latents,
    norm_shrinkage,
    recovery_rate,
    uniqueness,
)
from sparsecodes.worlds import HierarchySpec, World, world_config


@pytest.fixture(scope="module")
def hier_world() -> World:
    return World(world_config("hierarchy", seed=3, block_rows=1024))


@pytest.fixture(scope="module")
def hier_data(hier_world):
    return hier_world.sample(3000, stream="test")


def _permuted(world: World, codes: torch.Tensor, seed: int = 0):
    perm = torch.randperm(world.n_features, generator=torch.Generator().manual_seed(seed))
    return perm, world.dictionary[perm], codes[:, perm]


def test_perfect_codes_score_one_everywhere(hier_world, hier_data):
    perm, atoms, codes = _permuted(hier_world, hier_data.codes)
    feats, lats = match_latents(hier_world.dictionary, atoms)
    assert np.array_equal(perm[lats].numpy(), feats)  # the matching undoes the permutation
    assert firing_scores(hier_data.codes, codes, hier_world.dictionary, atoms).means() == {
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
        "accuracy": 1.0,
    }
    ratio = code_shrinkage(hier_data.codes, codes, hier_world.dictionary, atoms)[2]
    np.testing.assert_allclose(ratio, 1.0, rtol=1e-6)  # float32 magnitudes summed in float64
    u = uniqueness(hier_world.dictionary, atoms)
    assert u.uniqueness == 1.0 and (u.latents_per_feature == 1).all()
    assert (u.features_per_latent == 1).all()
    assert recovery_rate(hier_world.dictionary, atoms) == 1.0
    a = absorption(
        hier_data.codes,
        codes,
        hier_world.parent_children(),
        true_atoms=hier_world.dictionary,
        atoms=atoms,
    )
    assert len(a.parents) == 32 and a.mean == 0.0


def test_planted_absorbing_latent_gives_absorption_one_for_its_parent(hier_world, hier_data):
    pc = hier_world.parent_children()
    parent = sorted(pc)[0]
    codes = hier_data.codes.clone()
    child_fires = (codes[:, pc[parent]] != 0).any(1)
    codes[child_fires, parent] = 0.0  # the parent's latent goes silent whenever a child fires
    a = absorption(hier_data.codes, codes, pc, {p: p for p in pc})
    rates = dict(zip(a.parents.tolist(), a.rate.tolist(), strict=True))
    assert rates[parent] == 1.0
    assert all(r == 0.0 for p, r in rates.items() if p != parent)
    assert a.n_child_firing[a.parents.tolist().index(parent)] == int(child_fires.sum()) > 50
    assert math.isclose(a.mean, 1 / len(pc))


def test_streamed_counters_equal_the_one_shot_metrics(hier_world, hier_data):
    pc = hier_world.parent_children()
    codes = hier_data.codes.clone()
    g = torch.Generator().manual_seed(0)
    n = codes.shape[0]
    codes[:, sorted(pc)[:5]] *= (torch.rand(n, 1, generator=g) > 0.3).float()  # some silences
    codes[:, 7] += (torch.rand(n, generator=g) > 0.9).float()  # some false positives
    eye = hier_world.dictionary
    one = firing_scores(hier_data.codes, codes, eye, eye)
    abs_one = absorption(hier_data.codes, codes, pc, {p: p for p in pc})
    fc = FiringCounter(one.features, one.latents)
    ac = AbsorptionCounter(pc, {p: p for p in pc})
    for lo in range(0, 3000, 700):
        fc.add_batch(hier_data.codes[lo : lo + 700], codes[lo : lo + 700])
        ac.add_batch(hier_data.codes[lo : lo + 700], codes[lo : lo + 700])
    streamed, abs_streamed = fc.result(), ac.result()
    for name in ("tp", "fp", "fn", "tn"):
        assert np.array_equal(getattr(streamed, name), getattr(one, name)), name
    assert one.fp[7] > 100 and one.means()["precision"] < 1.0
    assert np.array_equal(abs_streamed.rate, abs_one.rate)
    silenced = np.isin(abs_one.parents, sorted(pc)[:5])
    sd = np.sqrt(0.3 * 0.7 / abs_one.n_child_firing[silenced])  # binomial, 30% silenced
    assert (np.abs(abs_one.rate[silenced] - 0.3) < 4 * sd).all()
    assert (abs_one.rate[~silenced] == 0).all()


def test_halved_codes_show_shrinkage_one_half_and_norm_shrinkage_half(hier_world, hier_data):
    codes = hier_data.codes * 0.5
    ratio = code_shrinkage(hier_data.codes, codes, hier_world.dictionary, hier_world.dictionary)[2]
    np.testing.assert_allclose(ratio, 0.5, rtol=1e-6)
    assert norm_shrinkage(hier_data.x, 0.5 * hier_data.x) == pytest.approx(0.5, rel=1e-6)


def test_duplicated_latents_lower_uniqueness_and_count_per_feature():
    g = torch.Generator().manual_seed(0)
    true = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=1)
    atoms = torch.cat([true[:6], true[:2]])  # features 0, 1 twice; 6, 7 uncovered
    u = uniqueness(true, atoms)
    assert u.uniqueness == 6 / 8
    assert u.latents_per_feature.tolist() == [2, 2, 1, 1, 1, 1, 0, 0]
    assert recovery_rate(true, atoms) == pytest.approx(6 / 8 + 0.0, abs=0.25)
    assert recovery_rate(true, atoms) >= 6 / 8


def test_firing_scores_count_false_positives_and_misses():
    true = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    codes = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    eye = torch.eye(2)
    s = firing_scores(true, codes, eye, eye)
    # latent 0: TP 1, FP 1, FN 1 -> P = R = 1/2; latent 1: TP 1, FP 1 -> P 1/2, R 1
    np.testing.assert_allclose(s.precision, [0.5, 0.5])
    np.testing.assert_allclose(s.recall, [0.5, 1.0])
    np.testing.assert_allclose(s.f1, [0.5, 2 / 3])


# ------------------------------------------------------------------ agreement with SAELens
@pytest.fixture(scope="module")
def saelens_setup(tmp_path_factory):
    sl = require("sae_lens", reason="sae-lens is not installed (peers extra)")
    syn = require("sae_lens.synthetic")
    torch.manual_seed(0)
    model = syn.SyntheticModel(
        syn.SyntheticModelConfig(
            num_features=96,
            hidden_dim=32,
            firing_probability=syn.ZipfianFiringProbabilityConfig(
                exponent=0.7, max_prob=0.25, min_prob=0.02
            ),
            hierarchy=syn.HierarchyConfig(
                total_root_nodes=4, branching_factor=3, max_depth=1, mutually_exclusive_portion=1.0
            ),
            correlation=syn.LowRankCorrelationConfig(rank=4, correlation_scale=0.1),
            std_firing_magnitudes=0.2,
            mean_firing_magnitudes=1.0,
            seed=7,
        )
    )
    sae = sl.TopKTrainingSAE(sl.TopKTrainingSAEConfig(d_in=32, d_sae=80, k=6))
    syn.train_toy_sae(
        sae,
        model.feature_dict,
        model.activation_generator,
        training_samples=40_000,
        batch_size=500,
        lr=3e-3,
    )
    path = tmp_path_factory.mktemp("toy_sae")
    sae.save_inference_model(str(path))
    inference = sl.SAE.load_from_disk(str(path))
    torch.manual_seed(123)
    result = syn.eval_sae_on_synthetic_data(
        inference, model.feature_dict, model.activation_generator, num_samples=5000
    )
    torch.manual_seed(123)  # the same draw eval_sae_on_synthetic_data made
    feats = model.activation_generator.sample(5000)
    hidden = model.feature_dict(feats)
    return model, inference, result, feats, hidden, path


def test_metrics_agree_with_saelens_synthetic_evaluation(saelens_setup):
    from sparsecodes.formats.saelens import load_saelens

    model, inference, res, feats, hidden, path = saelens_setup
    coder = load_saelens(path)  # the SAE as our SparseCoder
    gt = model.feature_dict.feature_vectors.detach()
    codes = coder.encode(hidden)
    x_hat = coder.decode(codes)
    # the conversion is exact: the same latents fire as in SAELens's own encode
    assert torch.equal(codes != 0, inference.encode(hidden) != 0)
    assert res.mcc > 0.3  # a trained SAE, not a trivial one

    # decoder-only metrics: float32 cosines, one matching -> agree to float32 rounding
    assert dictionary_mcc(gt, coder) == pytest.approx(res.mcc, abs=1e-6)
    assert uniqueness(gt, coder).uniqueness == pytest.approx(res.uniqueness, abs=1e-12)
    # firing classification under SAELens's rule: integer counts, float32 vs float64 means
    ours = firing_scores(feats, codes, gt, coder, rule="best").means()
    cls = res.classification
    for name, theirs in (
        ("precision", cls.precision),
        ("recall", cls.recall),
        ("f1", cls.f1_score),
        ("accuracy", cls.accuracy),
    ):
        assert ours[name] == pytest.approx(theirs, abs=1e-6), name
    # shrinkage |x_hat|/|x|: float32 norms, per-sample ratios averaged
    assert norm_shrinkage(hidden, x_hat) == pytest.approx(res.shrinkage, abs=1e-5)
    assert l0(codes) == pytest.approx(res.sae_l0, abs=1e-9)
    assert l0(feats) == pytest.approx(res.true_l0, abs=1e-9)


def test_hungarian_rule_differs_from_saelens_rule_only_in_pairing(saelens_setup):
    from sparsecodes.formats.saelens import load_saelens

    model, _, _res, feats, hidden, path = saelens_setup
    coder = load_saelens(path)
    gt = model.feature_dict.feature_vectors.detach()
    f, _lat = match_latents(gt, coder, "hungarian")
    assert len(f) == min(gt.shape[0], coder.n_latents) == 80
    assert len(set(f.tolist())) == 80  # one-to-one, unlike SAELens's best-match rule
    h = firing_scores(feats, coder.encode(hidden), gt, coder).means()
    assert 0.0 < h["f1"] <= 1.0


def test_absorption_on_a_saelens_hierarchy(saelens_setup):
    """Our absorption reads SAELens's trees: planting silence in one parent's latent gives 1."""
    model, *_ = saelens_setup
    pc = {}
    for root in model.hierarchy.roots:
        pc[root.feature_index] = [c.feature_index for c in root.children]
    feats = model.activation_generator.sample(3000)
    parent = next(iter(pc))
    codes = feats.clone()
    codes[(codes[:, pc[parent]] != 0).any(1), parent] = 0.0
    a = absorption(feats, codes, pc, {p: p for p in pc})
    assert dict(zip(a.parents.tolist(), a.rate.tolist(), strict=True))[parent] == 1.0
    assert a.mean == pytest.approx(1 / len(pc))


def test_hierarchy_spec_counts_its_nodes():
    assert HierarchySpec(n_roots=2, branching=3, depth=2).n_nodes == 2 * (1 + 3 + 9)


def test_recovery_rate_is_per_true_feature_over_any_atom_order_sign_scale_and_extras():
    """FRR on the GBA paper's geometry (128 features as rows in 42 dimensions): the truth,
    permuted, sign-flipped, rescaled and padded with 128 random atoms, recovers every feature;
    atoms at cosine exactly 0.85 from their feature count at 0.8 and not at 0.9; a random
    dictionary of 256 atoms recovers none at 0.8 (the max is taken per *feature*, over atoms)."""
    g = torch.Generator().manual_seed(0)
    true = torch.nn.functional.normalize(torch.randn(128, 42, generator=g), dim=1)
    perm = torch.randperm(128, generator=g)
    signs = torch.where(torch.rand(128, 1, generator=g) < 0.5, -1.0, 1.0)
    scales = torch.rand(128, 1, generator=g) * 3 + 0.1
    atoms = torch.cat([(true * signs * scales)[perm], torch.randn(128, 42, generator=g)])
    assert recovery_rate(true, atoms, threshold=0.99) == 1.0
    # each feature's own atom at cosine 0.85: c v + sqrt(1 - c^2) u with u a unit vector _|_ v
    u = torch.randn(128, 42, generator=g)
    u = torch.nn.functional.normalize(u - (u * true).sum(1, keepdim=True) * true, dim=1)
    tilted = 0.85 * true + math.sqrt(1 - 0.85**2) * u
    assert recovery_rate(true, tilted, threshold=0.8) == 1.0
    assert recovery_rate(true, tilted, threshold=0.9) == 0.0
    assert recovery_rate(true, torch.randn(256, 42, generator=g), threshold=0.8) == 0.0
    # half the features covered: 0.5 exactly
    assert recovery_rate(true, true[:64], threshold=0.99) == 0.5
