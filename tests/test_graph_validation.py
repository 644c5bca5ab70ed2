"""Graph validation on the tiny random llama: the graph's linear prediction of an ablation equals
the frozen replacement model's change; the real model's change is measured beside it."""

from __future__ import annotations

import pytest
import torch

from conftest import TranscoderMLP
from sparsecodes.graphs import (
    ReplacementModel,
    ablation_check,
    attribute,
    first_order_change,
    fit_transcoder,
    frozen_change,
    partly_frozen_change,
    predicted_change,
    real_change,
    replacement_change,
    top_features,
)
from sparsecodes.models import load_model
from sparsecodes.uses.steering import LatentEdit, intervening

PROMPTS = [
    "When John and Mary went to the store, John gave a drink to",
    "def f(x): return x * 2 + alpha; the quick brown fox jumps over the lazy dog",
    "In 1732 the war lasted from the year 1732 to the year 17",
]
HELD_OUT = "When Tom and Anna went to the park, Tom gave a ball to"


@pytest.fixture(scope="module")
def lm():
    return load_model("tiny-llama", device="cpu")


@pytest.fixture(scope="module")
def setup(lm):
    rm0 = ReplacementModel(lm, [])
    runs = [rm0.run(lm.encode(p)[0][0]) for p in PROMPTS]
    x = torch.cat([r.mlp_in for r in runs], 1)
    y = torch.cat([r.mlp_out for r in runs], 1)
    tcs = [fit_transcoder(x[i], y[i], i, 48, k=4, skip=i % 2 == 0, seed=i) for i in (0, 1, 3)]
    rm = ReplacementModel(lm, tcs)
    ids = lm.encode(HELD_OUT)[0][0]
    run = rm.run(ids)
    tid, cid = (lm.tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in "AT")
    graph = attribute(rm, run, tid, cid, batch_size=16)
    return tcs, rm, run, graph, ids, tid, cid


def test_graph_prediction_equals_the_frozen_replacement_models_change(setup):
    _, rm, run, graph, _, tid, cid = setup
    # float32 rounding (~16 ulp) of the frozen model's logits, relative to what reaches the target
    tol = 2e-6 * float(graph.adjacency[graph.target_index].abs().sum() + graph.bias.abs()[-1])
    for i, nodes in enumerate((top_features(graph, 6), torch.arange(0, graph.n_features, 7)[:6])):
        pred, direct = predicted_change(graph, nodes)
        frozen = frozen_change(rm, run, graph.features[nodes], tid, cid)
        assert abs(pred - frozen) <= tol
        if i == 0:  # the indirect part (through later features) is there: direct alone is off
            assert abs(pred - direct) > 20 * tol
    # one feature of the last transcoder layer: no later features, so the change is its edge
    last = int((graph.features[:, 0] == graph.features[:, 0].max()).nonzero()[0])
    pred, direct = predicted_change(graph, [last])
    assert pred == pytest.approx(direct, abs=1e-9)
    assert direct == pytest.approx(-float(graph.adjacency[graph.target_index, last]), abs=1e-9)


def test_real_change_of_a_last_layer_feature_is_the_predicted_change(lm, setup):
    """After the last transcoder layer the model is linear up to the final norm and attention
    of later layers, so for a small ablation the real change is close to the prediction."""
    tcs, _, _, graph, ids, tid, cid = setup
    last = (graph.features[:, 0] == 3).nonzero().squeeze(1)
    at_end = last[graph.features[last, 1] == graph.n_pos - 1]  # at the target position
    edge = graph.adjacency[graph.target_index, at_end].abs()
    nodes = at_end[edge.argmax()].view(1)  # the strongest: its change dwarfs second-order terms
    pred, _ = predicted_change(graph, nodes)
    real = real_change(lm, tcs, ids, graph.features[nodes], tid, cid)
    # layer 3 is the last block: only the final RMSNorm's scale (frozen in the graph) differs;
    # removing one atom changes the norm by a few percent (measured: within 1%)
    assert abs(pred) > 0.1
    assert real == pytest.approx(pred, rel=0.05)


def test_ablation_check_reports_top_and_random_sets(lm, setup):
    tcs, _, _, graph, _, _, _ = setup
    chk = ablation_check(lm, tcs, HELD_OUT, "A", "T", k=4, n_random=3, seed=1, graph=graph)
    again = ablation_check(lm, tcs, HELD_OUT, "A", "T", k=4, n_random=3, seed=1, graph=graph)
    assert chk.to_json() == again.to_json()  # seeded
    assert [r.features for r in chk.random] != [
        r.features
        for r in ablation_check(
            lm, tcs, HELD_OUT, "A", "T", k=4, n_random=3, seed=2, graph=graph
        ).random
    ]
    top = top_features(graph, 4)
    assert chk.top.features == graph.features[top].tolist()
    for r in [chk.top, *chk.random]:
        assert len(r.features) == 4
        assert r.frozen == pytest.approx(r.predicted, abs=1e-4 * (abs(r.predicted) + 1))
    assert abs(chk.top.predicted) >= max(abs(r.predicted) for r in chk.random) * 0.5


def test_head_outputs_sum_to_attention_and_target_split_is_exact_at_the_last_layer(lm, setup):
    from sparsecodes.graphs.heads import head_outputs, head_scores, node_head_contributions
    from sparsecodes.graphs.prune import prune

    _, rm, run, graph, ids, _, _ = setup
    outs = head_outputs(rm, run)  # [L, H, T, d]
    attn = lm.run(ids[None], hooks=[f"blocks.{i}.attn_out" for i in range(lm.n_layers)])
    for i in range(lm.n_layers):
        ref = attn[f"blocks.{i}.attn_out"][0]
        assert (outs[i].sum(0) - ref).abs().max() <= 1e-5 * (ref.abs().max() + 1)
    t = torch.tensor([graph.target_index])
    c = node_head_contributions(rm, run, graph, t)[0]  # [L, H]
    u = rm.W_U[graph.target_id] - rm.W_U[graph.contrast_id]
    direct = outs[-1, :, -1] @ (rm.g_final * run.final_scale[-1] * u)  # last layer: direct only
    assert (c[-1] - direct).abs().max() <= 1e-5 * (direct.abs().max() + 1)
    assert direct.abs().max() > 1e-3
    # a feature's input splits by head too: the sum over heads of its layer's attention equals
    # the gradient at the residual after attention times the attention output
    f = int((graph.features[:, 0] == 3).nonzero()[0])
    cf = node_head_contributions(rm, run, graph, torch.tensor([f]))[0]
    assert cf[:3].abs().sum() > 0
    scores = head_scores(rm, run, graph, prune(graph))
    assert scores.shape == (lm.n_layers, lm.n_heads) and bool((scores >= 0).all())
    assert float(scores.sum()) > 0


def test_partly_frozen_change_with_nothing_frozen_is_the_real_change(lm, setup):
    tcs, rm, run, graph, ids, tid, cid = setup
    feats = graph.features[top_features(graph, 5)]
    real = real_change(lm, tcs, ids, feats, tid, cid)
    none = partly_frozen_change(rm, run, feats, tid, cid, freeze_patterns=False, freeze_norms=False)
    # the same arithmetic as the model's forward; float32 rounding of logits of size ~1
    assert abs(real) > 1e-3
    assert none == pytest.approx(real, abs=1e-5)
    # with nothing ablated and everything frozen the pass reproduces the model's logits
    held = rm.real_logits(run, freeze_patterns=True, freeze_norms=True)
    assert torch.allclose(held, run.logits, atol=1e-5)
    # freezing changes the answer (attention and norms respond to the ablation)
    both = partly_frozen_change(rm, run, feats, tid, cid)
    assert abs(both - real) > 1e-4


def test_partly_frozen_change_of_a_last_layer_feature_with_norms_frozen_is_the_prediction(
    lm, setup
):
    """A feature of the last block at the target position reaches the logits only through the
    final norm: with norm scales held the real change is exactly its edge (no MLP after it)."""
    _, rm, run, graph, _, tid, cid = setup
    last = (graph.features[:, 0] == 3).nonzero().squeeze(1)
    at_end = last[graph.features[last, 1] == graph.n_pos - 1]
    nodes = at_end[graph.adjacency[graph.target_index, at_end].abs().argmax()].view(1)
    pred, _ = predicted_change(graph, nodes)
    held = partly_frozen_change(rm, run, graph.features[nodes], tid, cid, freeze_patterns=False)
    assert abs(pred) > 0.1
    assert held == pytest.approx(pred, abs=1e-5 * (1 + abs(pred)))


def test_real_logits_with_only_norms_or_only_patterns_frozen_and_no_edit_are_the_clean_logits(
    setup,
):
    """Holding the clean norm scales (or patterns) without any edit changes no arithmetic: the
    logits are the model's to float32 rounding."""
    _, rm, run, _, _, _, _ = setup
    for kw in ({"freeze_norms": True}, {"freeze_patterns": True}):
        out = rm.real_logits(run, **kw)
        assert bool(out.isfinite().all())
        assert (out - run.logits).abs().max() <= 1e-5 * (run.logits.abs().max() + 1)


def test_a_diverged_partly_frozen_pass_is_reported_as_none_and_listed(lm, setup, monkeypatch):
    """Held norm scales can make the real MLPs overflow (module doc of graphs.validate): such a
    column is None, named in ``diverged``, and the JSON stays valid (no NaN)."""
    import json

    import sparsecodes.graphs.validate as validate

    tcs, _, _, graph, _, _, _ = setup

    def fake(rm, run, feats, tid, cid, *, freeze_patterns=True, freeze_norms=True):
        return float("nan") if freeze_norms else 0.25

    monkeypatch.setattr(validate, "partly_frozen_change", fake)
    chk = ablation_check(
        lm, tcs, HELD_OUT, "A", "T", k=3, n_random=1, graph=graph, partly_frozen=True
    )
    for r in (chk.top, *chk.random):
        assert r.real_frozen_norms is None and r.real_frozen_attention is None
        assert r.real_frozen_patterns == 0.25
        assert r.diverged == ["real_frozen_attention", "real_frozen_norms"]
    json.dumps(chk.to_json(), allow_nan=False)


def test_replacement_model_run_for_real_reproduces_the_logits_without_an_edit(setup):
    _, rm, run, _, _, _, _ = setup
    out = rm.replacement_logits(run)
    assert (out - run.logits).abs().max() <= 1e-5 * (run.logits.abs().max() + 1)


@pytest.fixture(scope="module")
def exact(lm, setup):
    """A model whose every MLP *is* its transcoder (zero error terms), with its replacement
    model, the held-out prompt's run and its graph."""
    _, _, _, _, ids, tid, cid = setup
    rm0 = ReplacementModel(lm, [])
    runs = [rm0.run(lm.encode(p)[0][0]) for p in PROMPTS]
    x = torch.cat([r.mlp_in for r in runs], 1)
    y = torch.cat([r.mlp_out for r in runs], 1)
    tcs = [fit_transcoder(x[i], y[i], i, 48, k=4, seed=i) for i in range(lm.n_layers)]
    lm2 = load_model("tiny-llama", device="cpu")
    for block, tc in zip(lm2.blocks, tcs, strict=True):
        block.mlp = TranscoderMLP(tc)
    rm2 = ReplacementModel(lm2, tcs)
    run2 = rm2.run(ids)
    return rm2, run2, attribute(rm2, run2, tid, cid, batch_size=32)


def test_replacement_change_is_the_real_change_when_the_mlps_are_their_transcoders(
    lm, setup, exact
):
    """A model whose every MLP *is* a transcoder has zero error terms, so the replacement model
    run for real (features recomputed with their nonlinearity, attention and norms recomputed)
    must equal the real model's change for any ablation, and differ from the linear prediction;
    with the fitted (inexact) transcoders of ``setup`` it differs from the real change."""
    tcs, rm, run, graph, ids, tid, cid = setup
    rm2, run2, g2 = exact
    # zero error but at the BOS sink (no features there: its MLP outputs are constants)
    assert run2.error[:, 1:].abs().max() <= 1e-5 * run2.mlp_out.abs().max()
    for nodes in (top_features(g2, 6), torch.arange(0, g2.n_features, 11)[:6]):
        feats = g2.features[nodes]
        rep = replacement_change(rm2, run2, feats, tid, cid)
        real = partly_frozen_change(
            rm2, run2, feats, tid, cid, freeze_patterns=False, freeze_norms=False
        )
        pred, _ = predicted_change(g2, nodes)
        assert rep == pytest.approx(real, abs=1e-5 * (1 + abs(real)))
        assert abs(rep - pred) > 1e-3
    # the fitted transcoders are not their MLPs: replacement and real changes part
    feats = graph.features[top_features(graph, 6)]
    rep = replacement_change(rm, run, feats, tid, cid)
    assert abs(rep - real_change(lm, tcs, ids, feats, tid, cid)) > 1e-3


def test_a_capped_graphs_prediction_is_the_frozen_change_with_unvisited_features_held(lm, setup):
    tcs, rm, run, graph, _, tid, cid = setup
    capped = attribute(rm, run, tid, cid, batch_size=8, max_feature_nodes=24)
    held = capped.features[~capped.visited]
    tol = 2e-6 * float(capped.adjacency[capped.target_index].abs().sum() + capped.bias.abs()[-1])
    nodes = top_features(capped, 6)
    assert bool(capped.visited[nodes].all())
    pred, _ = predicted_change(capped, nodes)
    assert abs(pred - frozen_change(rm, run, capped.features[nodes], tid, cid, held=held)) <= tol
    # letting the unvisited features follow their inputs is what the full graph predicts
    full, _ = predicted_change(graph, nodes)
    free = frozen_change(rm, run, capped.features[nodes], tid, cid)
    assert abs(full - free) <= tol
    assert abs(full - pred) > 20 * tol
    # random sets come from all active features; ablating unvisited ones is predicted exactly too
    chk = ablation_check(lm, tcs, HELD_OUT, "A", "T", k=4, n_random=2, graph=capped)
    visited = {tuple(f) for f in capped.features[capped.visited].tolist()}
    assert {tuple(f) for f in chk.top.features} <= visited
    assert any(tuple(f) not in visited for r in chk.random for f in r.features)
    for r in (chk.top, *chk.random):
        assert r.frozen == pytest.approx(r.predicted, abs=tol)


def test_first_order_change_with_attention_and_norms_held_is_the_graph_prediction_when_the_mlps_are_their_transcoders(
    setup, exact
):
    """With zero error terms, attention patterns and norm scales held, the real model's
    derivative along an ablation runs through the transcoders' active sets exactly as the graph's
    edges do: the first-order change is the graph's prediction (float32 rounding of the logits).
    Recomputing attention and norms changes it."""
    *_, tid, cid = setup
    rm2, run2, g2 = exact
    tol = 2e-6 * float(g2.adjacency[g2.target_index].abs().sum() + g2.bias.abs()[-1])
    for i, nodes in enumerate((top_features(g2, 6), torch.arange(0, g2.n_features, 11)[:6])):
        feats = g2.features[nodes]
        pred, _ = predicted_change(g2, nodes)
        held = first_order_change(
            rm2, run2, feats, tid, cid, freeze_patterns=True, freeze_norms=True
        )
        assert abs(pred) > 1e-2
        assert held == pytest.approx(pred, abs=tol)
        if i == 0:  # the top features' changes reach the target through attention
            assert abs(first_order_change(rm2, run2, feats, tid, cid) - pred) > 1e-3


def test_first_order_change_is_the_slope_of_the_real_change_at_no_ablation(lm, setup):
    """For one feature (nothing ablated upstream of it, so scaling it by ``1 - t`` is the same
    path as ``first_order_change``'s), ``first_order_change`` is d(target)/dt of the real model:
    against a central difference of real interventions (``LatentEdit`` scales) at ``t = +-eps``.
    With eps = 1e-2 the difference's float32 rounding is a few ulps of the logits over 2 eps,
    and its truncation error (eps^2 times the third derivative) is smaller here."""
    tcs, rm, run, graph, ids, tid, cid = setup
    feats = graph.features[top_features(graph, 1)]
    by_layer = {int(tc.in_hook.split(".")[1]): tc for tc in tcs}

    def target(scale: float) -> float:
        at: dict[tuple[int, int], list[int]] = {}
        for layer, pos, lat in feats.tolist():
            at.setdefault((layer, pos), []).append(lat)
        edits = []
        for (layer, pos), lats in at.items():
            mask = torch.zeros(len(ids), dtype=torch.bool)
            mask[pos] = True
            edits.append(
                LatentEdit(by_layer[layer], scale=dict.fromkeys(lats, scale), positions=mask)
            )
        with intervening(lm, edits):
            out = lm.logits(ids.view(1, -1))[0]
        return float(out[-1, tid] - out[-1, cid])

    eps = 1e-2
    slope = (target(1 - eps) - target(1 + eps)) / (2 * eps)
    first = first_order_change(rm, run, feats, tid, cid)
    rounding = 8 * torch.finfo(torch.float32).eps * float(run.logits.abs().max()) / (2 * eps)
    assert abs(first) > 0.05
    assert first == pytest.approx(slope, abs=rounding)
    # the whole ablation is not linear: its change is off the first-order prediction
    assert abs(real_change(lm, tcs, ids, feats, tid, cid) - first) > 10 * rounding


def test_ablation_check_records_first_order_columns_only_when_asked(lm, setup):
    tcs, rm, run, graph, _, tid, cid = setup
    kw = {"k": 3, "n_random": 1, "graph": graph}
    plain = ablation_check(lm, tcs, HELD_OUT, "A", "T", **kw)
    assert plain.top.real_first_order is None and plain.top.real_first_order_frozen is None
    chk = ablation_check(lm, tcs, HELD_OUT, "A", "T", first_order=True, **kw)
    feats = torch.tensor(chk.top.features)
    assert chk.top.real_first_order == first_order_change(rm, run, feats, tid, cid)
    frozen = first_order_change(rm, run, feats, tid, cid, freeze_patterns=True, freeze_norms=True)
    assert chk.top.real_first_order_frozen == frozen
    assert chk.top.real_first_order != chk.top.real_first_order_frozen
