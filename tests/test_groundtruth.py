"""Ground-truth circuits: planted circuit found, shuffled labels near chance, ablation, tracr."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsecodes.circuits import roc_auc, score_heads
from sparsecodes.circuits.groundtruth import (
    InductionConfig,
    accuracy,
    exhaustive_ablation,
    handbuilt_task,
    induction_task,
    label_separation,
    task_activations,
)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_handbuilt_model_solves_positives_and_ablation_confirms_planted_heads():
    for circuit in ("duplicate", "previous"):
        t = handbuilt_task(32, circuit=circuit, rotate=True, seed=1)
        pos = t.labels
        assert accuracy(t.model, t.ids[pos], t.answers[pos]) == 1.0
        r = exhaustive_ablation(
            t.model, t.ids[pos], t.answers[pos], reference_ids=t.ids, chance=1 / 16, pairs=False
        )
        assert r.circuit == t.circuit


def test_planted_circuit_found_across_seeds():
    aucs = []
    for seed in range(3):
        t = handbuilt_task(16, circuit="duplicate", rotate=True, seed=seed)
        pos, neg = task_activations(t)
        s = score_heads(pos, neg, seed=seed, edges=False, steps=200)
        aucs.append(roc_auc(s.node, t.circuit))
    assert min(aucs) >= 0.95, aucs


def test_planted_edge_ranks_first():
    # the only edge of the planted circuit is L0H0 (duplicate-token) -> L1H0 (induction)
    for seed in range(2):
        t = handbuilt_task(16, circuit="duplicate", rotate=True, seed=seed)
        pos, neg = task_activations(t)
        s = score_heads(pos, neg, seed=seed, steps=200)
        ranked = sorted(s.edge.items(), key=lambda kv: -kv[1])
        assert ranked[0][0] == ((0, 0), (1, 0)) and ranked[0][1] > ranked[1][1], ranked[:3]


def test_shuffled_labels_give_chance_auc_with_calibrated_scores():
    # raw counts are biased towards heads with many distinct codes (see docs/groundtruth.md);
    # the calibrated score (raw minus its exact chance level) removes that bias
    true_aucs, shuffled = [], []
    for seed in range(6):
        t = handbuilt_task(16, circuit="duplicate", rotate=True, seed=seed)
        pos, neg = task_activations(t)
        if seed < 2:
            s = score_heads(pos, neg, seed=seed, steps=200, edges=False)
            true_aucs.append(roc_auc(s.node_variants["calibrated"], t.circuit))
        g = torch.Generator().manual_seed(100 + seed)
        t.labels = t.labels[torch.randperm(len(t.labels), generator=g)]
        pos, neg = task_activations(t)
        s = score_heads(pos, neg, seed=seed, steps=200, edges=False)
        shuffled.append(roc_auc(s.node_variants["calibrated"], t.circuit))
    assert min(true_aucs) >= 0.95, true_aucs
    assert abs(float(np.mean(shuffled)) - 0.5) < 0.2, shuffled


def test_induction_model_learns_and_ablation_finds_heads():
    cfg = InductionConfig(steps=300, n_heads=2, head_l1=0.01, seed=0)
    t, ab = induction_task(8, cfg=cfg, n_ablation=128)
    assert t.extra["train"]["acc"] > 0.9
    assert ab.circuit, "some head (or pair) must be necessary"
    worst = min([*ab.single.values(), *ab.pairs.values()])
    assert worst < ab.threshold
    for h in t.heads:  # heads outside the circuit never destroy the behaviour alone
        if h not in ab.circuit:
            assert ab.single[h] >= ab.threshold


@pytest.mark.slow
@pytest.mark.requires("tracr", "jax", "haiku")
def test_tracr_conversion_reproduces_tracr():
    from sparsecodes.circuits.groundtruth import tracr_models as tm

    c = tm.compile_program("hist", {"a", "b", "c"}, 5)
    model, meta = tm.stack_programs([c])
    rows = [["BOS", "a", "b", "a", "c", "a"], ["BOS", "c", "c", "b", "a", "b"]]
    out = model.run(tm.encode(rows, meta["encoding"]))
    for i, row in enumerate(rows):
        resid, decoded = tm.tracr_reference(c.assembled, row)
        np.testing.assert_allclose(out.resid[i].detach().numpy(), resid, atol=1e-4)
        mine = [meta["decoding"][int(j)] for j in out.logits[i].argmax(-1)]
        assert mine[1:] == decoded[1:]


def test_previous_token_head_is_identical_within_matched_pairs():
    # why no contrast of activations can flag the classic previous-token head (docs/groundtruth.md):
    # its output is the same on a positive and its matched negative at every position
    t = handbuilt_task(8, circuit="previous", rotate=True, seed=0)
    z = [layer.float() for layer in t.model.run(t.ids).heads]  # [B, T, H, dh] per layer
    pos = torch.nonzero(t.labels).flatten().tolist()
    neg = torch.nonzero(~t.labels).flatten().tolist()
    for i in pos:
        j = next(j for j in neg if torch.equal(t.ids[i, :-1], t.ids[j, :-1]))
        assert torch.equal(z[0][i, :, 1], z[0][j, :, 1])  # L0H1, previous-token head
        assert not torch.equal(z[1][i, -1, 0], z[1][j, -1, 0])  # L1H0, induction head
    sep = label_separation(*task_activations(t))
    assert sep[(0, 1)] < 1e-6 < sep[(1, 0)]
