"""Attribution graphs on the tiny random llama: replacement model, exactness, pruning, scores, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from conftest import TranscoderMLP, require_model
from sparsecodes.graphs import (
    ReplacementModel,
    attribute,
    fit_transcoder,
    graph_scores,
    influence,
    prune,
    save_transcoder,
)
from sparsecodes.graphs.prune import normalise_rows, threshold_for
from sparsecodes.models import load_model

PROMPTS = [
    "When John and Mary went to the store, John gave a drink to",
    "def f(x): return x * 2 + alpha; the quick brown fox jumps over the lazy dog",
    "In 1732 the war lasted from the year 1732 to the year 17",
]
LAYERS = (0, 1, 3)  # layer 2 has no transcoder: all of its MLP output is error


@pytest.fixture(scope="module")
def lm():
    return load_model("tiny-llama", device="cpu")


def fitted(lm, layers=LAYERS, n=48, k=4):
    """Transcoders fitted by least squares on three prompts; skip paths on even layers."""
    rm = ReplacementModel(lm, [])
    runs = [rm.run(lm.encode(p)[0][0]) for p in PROMPTS]
    x = torch.cat([r.mlp_in for r in runs], 1)
    y = torch.cat([r.mlp_out for r in runs], 1)
    return [fitted_one(x[i], y[i], i, n, k) for i in layers]


def fitted_one(x, y, layer, n, k):
    return fit_transcoder(x, y, layer, n, k=k, skip=layer % 2 == 0, seed=layer)


@pytest.fixture(scope="module")
def setup(lm):
    tcs = fitted(lm)
    rm = ReplacementModel(lm, tcs)
    ids = lm.encode(PROMPTS[0])[0][0]
    run = rm.run(ids)
    tid, cid = (lm.tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in "MJ")
    graph = attribute(rm, run, tid, cid, batch_size=16)
    return rm, run, graph, ids


def test_replacement_model_with_error_terms_reproduces_the_logits(lm, setup):
    rm, run, _, ids = setup
    ref = lm.logits(ids[None])[0]
    out = rm.forward(run)
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()
    # the error terms carry what the transcoders miss: without them the logits move a lot
    no_err = rm.forward(run, error=torch.zeros_like(run.error))
    assert (no_err - ref).abs().max() > 1e-2 * ref.abs().max()
    # the MLP inputs and outputs it replaces are the model's own (adapter hook, module input)
    seen = {}
    handles = [
        b.mlp.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0][0]))
        for i, b in enumerate(lm.blocks)
    ]
    try:
        outs = lm.run(ids[None], hooks=[f"blocks.{i}.mlp_out" for i in range(lm.n_layers)])
    finally:
        for h in handles:
            h.remove()
    for i in range(lm.n_layers):
        assert torch.allclose(run.mlp_out[i], outs[f"blocks.{i}.mlp_out"][0], atol=1e-5)
        assert torch.allclose(run.mlp_in[i], seen[i], atol=1e-5)


def test_every_node_input_is_rebuilt_by_its_edges(setup):
    """Each feature's pre-activation and the target's logit difference equal the sum of their
    incoming edges plus their bias, to 1e-4 of the sum of the terms' sizes (float32)."""
    _, run, graph, _ = setup
    m = ~graph.node_input.isnan()
    assert int(m.sum()) == graph.n_features + 1 > 100
    scale = graph.adjacency.abs().sum(1) + graph.bias.abs()
    err = (graph.reconstruction() - graph.node_input).abs()
    assert (err[m] / scale[m]).max() <= 1e-4
    # and to 1e-4 of the input itself wherever the input is not a near-cancellation (>= 0.05)
    big = m & (graph.node_input.abs() >= 0.05)
    assert int(big.sum()) > 0.8 * int(m.sum())
    assert (err[big] / graph.node_input[big].abs()).max() <= 1e-4
    # the target's input is the model's own logit difference
    tid, cid = graph.target_id, graph.contrast_id
    assert graph.node_input[-1] == pytest.approx(
        float(run.logits[-1, tid] - run.logits[-1, cid]), abs=1e-5
    )
    # sources never act on nodes at or below their own layer
    feats = graph.features
    later = feats[:, 0][:, None] <= feats[:, 0][None, :]
    assert graph.adjacency[: graph.n_features, : graph.n_features][later].abs().max() == 0


def test_an_edge_into_the_target_is_the_effect_of_removing_its_source(setup):
    """Zeroing one feature's activation in the frozen linear model (other features held) moves
    the target by exactly the edge from that feature, and zeroing one error node likewise."""
    rm, run, graph, _ = setup
    tid, cid = graph.target_id, graph.contrast_id
    base = rm.forward(run)
    j = int(graph.adjacency[-1, : graph.n_features].abs().argmax())
    layer, pos, lat = (int(v) for v in graph.features[j])
    codes = run.codes[layer].clone()
    codes[pos, lat] = 0
    out = rm.forward(run, codes={layer: codes})
    moved = (base[-1, tid] - base[-1, cid]) - (out[-1, tid] - out[-1, cid])
    assert float(moved) == pytest.approx(float(graph.adjacency[-1, j]), rel=1e-3, abs=1e-5)
    assert abs(float(graph.adjacency[-1, j])) > 1e-3
    err = run.error.clone()
    err[2, 5] = 0  # layer 2 (no transcoder), position 5
    out = rm.forward(run, error=err)
    moved = (base[-1, tid] - base[-1, cid]) - (out[-1, tid] - out[-1, cid])
    e_col = graph.n_features + 2 * graph.n_pos + 5
    assert float(moved) == pytest.approx(float(graph.adjacency[-1, e_col]), rel=1e-3, abs=1e-5)


def test_influence_is_the_sum_of_all_path_products(setup):
    _, _, graph, _ = setup
    a = normalise_rows(graph.adjacency).double()
    w = torch.zeros(graph.n_nodes, dtype=torch.float64)
    w[-1] = 1
    dense = w @ (torch.linalg.inv(torch.eye(len(a), dtype=a.dtype) - a) - torch.eye(len(a)))
    got = influence(normalise_rows(graph.adjacency), w.float())
    assert torch.allclose(got.double(), dense, atol=1e-5)


def test_pruning_keeps_the_stated_fraction_of_influence(setup):
    _, _, graph, _ = setup
    pr = prune(graph, 0.8, 0.98)
    infl = pr.influence
    chosen = infl >= threshold_for(infl, 0.8)
    total = float(infl.sum())
    kept = float(infl[chosen].sum())
    assert kept >= 0.8 * total and pr.kept_influence_fraction == pytest.approx(kept / total)
    # the fewest: without its weakest node the set falls below the fraction
    assert kept - float(infl[chosen].min()) < 0.8 * total
    assert 0 < int(chosen[: graph.n_features].sum()) < graph.n_features
    # every kept feature has a kept edge in and out; embeddings and the target are always kept
    nf = graph.n_features
    kept_f = pr.node_mask[:nf]
    assert pr.edge_mask[:nf][kept_f].any(1).all() and pr.edge_mask[:, :nf][:, kept_f].any(0).all()
    assert pr.node_mask[graph.embed_slice].all() and pr.node_mask[-1]
    # the kept edges carry at least the edge fraction of the edge scores
    p2 = prune(graph, 1.0, 0.5)
    assert int(p2.edge_mask.sum()) < int(pr.edge_mask.sum())


def test_scores_are_one_when_transcoders_are_exact_and_below_otherwise(lm, setup):
    _, _, graph, ids = setup
    s = graph_scores(graph)
    assert 0 < s.replacement < 0.99 and 0 < s.completeness < 0.99
    # a model whose MLPs are its transcoders: every error is (float32 rounding of) zero
    tiny = load_model("tiny-llama", device="cpu")
    tcs = fitted(tiny, layers=range(tiny.n_layers))
    for block, tc in zip(tiny.blocks, tcs, strict=True):
        block.mlp = TranscoderMLP(tc)
    rm = ReplacementModel(tiny, tcs)
    run = rm.run(ids)
    assert run.error[:, 1:].abs().max() < 1e-5
    # position 0 (the BOS sink) has no features: its MLP outputs are error, carried as biases
    assert all(not c[0].any() for c in run.codes.values())
    assert run.error[:, 0].abs().max() > 1e-2
    g = attribute(rm, run, graph.target_id, graph.contrast_id)
    exact = graph_scores(g)
    assert exact.replacement == pytest.approx(1.0, abs=1e-5)
    assert exact.completeness == pytest.approx(1.0, abs=1e-5)


def test_graph_cli_writes_the_documented_json_and_page(lm, tmp_path):
    from sparsecodes.cli import main

    tcs = fitted(lm)
    save_transcoder(tcs[0], tmp_path / "one")  # a single directory ...
    for tc in tcs[1:]:  # ... and a directory of them
        save_transcoder(tc, tmp_path / "many" / f"l{tc.layer}", model="tiny-llama")
    dirs = ["--transcoders", str(tmp_path / "one"), "--transcoders", str(tmp_path / "many")]
    out = tmp_path / "g"
    args = ["graph", "--model", "tiny-llama", *dirs, "--prompt", PROMPTS[0]]
    res = CliRunner().invoke(main, [*args, "--target", "M", "--contrast", "J", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "graph.json").read_text())
    assert data["schema"] == "sparsecodes.attribution_graph/1"
    ids = lm.encode(PROMPTS[0])[0]
    logits = lm.logits(ids)[0, -1]
    tid, cid = data["target"]["id"], data["target"]["contrast_id"]
    assert data["target"]["value"] == pytest.approx(float(logits[tid] - logits[cid]), abs=1e-4)
    assert len(data["tokens"]) == len(data["token_ids"]) == ids.shape[1]
    n = len(data["nodes"])
    assert n == data["size"]["n_nodes_kept"] and len(data["edges"]) == data["size"]["n_edges_kept"]
    assert all(0 <= s < n and 0 <= t < n for s, t, _ in data["edges"])
    assert sum(x["kind"] == "embedding" for x in data["nodes"]) == ids.shape[1]
    assert [x["kind"] for x in data["nodes"]].count("target") == 1
    assert "replacement score" in res.output and (out / "graph.html").is_file()
    assert [t["layer"] for t in data["transcoders"]] == list(LAYERS)
    assert data["size"]["n_features_visited"] == data["size"]["n_features"]
    # capped: the same nodes, incoming edges for 20 features only
    capped = tmp_path / "capped"
    cap = ["--max-feature-nodes", "20", "--out", str(capped)]
    res = CliRunner().invoke(main, [*args, "--target", "M", "--contrast", "J", *cap])
    assert res.exit_code == 0, res.output
    small = json.loads((capped / "graph.json").read_text())
    assert small["size"]["n_features_visited"] == 20 < data["size"]["n_features"]
    assert small["size"]["n_nodes"] == data["size"]["n_nodes"]
    assert small["size"]["n_edges"] < data["size"]["n_edges"]
    assert "(20 with incoming edges)" in res.output
    # a multi-token target is refused with the fix
    res = CliRunner().invoke(main, [*args, "--target", " Mary", "--out", str(out)])
    assert res.exit_code != 0 and "single token" in res.output


def test_graph_json_head_scores_are_the_graphs_normalised_head_scores(lm, setup):
    from sparsecodes.graphs import build_graph, head_scores, target_head_scores

    rm, run, graph, _ = setup
    data = build_graph(lm, rm.transcoders.values(), PROMPTS[0], "M", "J")
    want = head_scores(rm, run, graph, prune(graph))
    got = torch.tensor(data["heads"]["scores"])
    assert got.shape == (lm.n_layers, lm.n_heads)
    assert torch.allclose(got, want / want.sum(), rtol=1e-4, atol=1e-7)
    own = target_head_scores(rm, run, graph)
    # rounded to 5 significant digits in the JSON
    assert torch.allclose(torch.tensor(data["heads"]["target_only"]), own / own.sum(), rtol=1e-4)
    assert "heads" not in build_graph(lm, rm.transcoders.values(), PROMPTS[0], "M", heads=False)


def test_graph_pages_are_listed_once_each_in_the_sites_index(tmp_path):
    from sparsecodes.graphs.viewer import register_graph

    site = tmp_path / "site"
    with pytest.raises(FileNotFoundError, match="sparsecodes browse"):
        register_graph(site, tmp_path / "g" / "graph.html", "t")
    (site / "data").mkdir(parents=True)
    (site / "data" / "index.js").write_text("window.SC_INDEX = {};\n")
    register_graph(site, tmp_path / "g" / "graph.html", "first </script>")
    register_graph(site, site / "ioi.html", "second")
    path = register_graph(site, tmp_path / "g" / "graph.html", "first again")  # updated, not added
    text = path.read_text()
    assert "</script>" not in text
    entries = json.loads(text.removeprefix("window.SC_GRAPHS = ").rstrip().rstrip(";"))
    assert entries == [
        {"href": "ioi.html", "title": "second"},
        {"href": "../g/graph.html", "title": "first again"},
    ]


@pytest.mark.slow
def test_replacement_model_reproduces_smollm2_logits():
    require_model("smollm2-135m")
    lm = load_model("smollm2-135m", device="cpu")
    ids = lm.encode(PROMPTS[0])[0]
    rm = ReplacementModel(lm, [])
    run = rm.run(ids[0])
    ref = lm.logits(ids)[0]
    assert (rm.forward(run) - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_trained_transcoders_are_read_through_sparsecodes_load(lm, tmp_path):
    """A ``Transcoder`` (what ``sparsecodes train --transcoder`` writes), saved in our format and
    in SAELens's, is found and read by the graph tools and gives an exact graph."""
    from sparsecodes.graphs import load_transcoder
    from sparsecodes.graphs.io import find_transcoders
    from sparsecodes.transcoder import Transcoder

    d = lm.d_model
    tcs = []
    for layer in (0, 2):
        tc = Transcoder(
            d, 32, "jumprelu", d_out=d, skip=layer == 2, seed=layer,
            in_hooks=f"blocks.{layer}.mlp_in", out_hooks=f"blocks.{layer}.mlp_out",
        )  # fmt: skip
        with torch.no_grad():  # thresholds low enough that some latents fire
            tc.encoder.log_threshold.fill_(-6.0)
        tc.mark_fitted()
        tcs.append(tc)
    tcs[0].save(tmp_path / "runs" / "l0" / "final")
    tcs[1].save(tmp_path / "runs" / "l2", format="saelens")
    found = find_transcoders(tmp_path / "runs")
    assert [p.name for p in found] == ["l0", "l2"]
    loaded = [load_transcoder(p) for p in found]
    ids = lm.encode(PROMPTS[0])[0][0]
    x = torch.randn(5, d)
    for a, b in zip(tcs, loaded, strict=True):
        assert torch.allclose(a.forward_out(x), b.forward_out(x), atol=1e-5)
    rm = ReplacementModel(lm, loaded)
    run = rm.run(ids)
    ref = lm.logits(ids[None])[0]
    assert (rm.forward(run) - ref).abs().max() <= 1e-4 * ref.abs().max()
    tid, cid = (lm.tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in "MJ")
    graph = attribute(rm, run, tid, cid, batch_size=16)
    assert graph.n_features > 0
    m = ~graph.node_input.isnan()
    scale = graph.adjacency.abs().sum(1) + graph.bias.abs()
    err = (graph.reconstruction() - graph.node_input).abs()
    assert (err[m] / scale[m]).max() <= 1e-4
    with pytest.raises(ValueError, match="not a transcoder"):
        from sparsecodes import SparseCoder

        SparseCoder(d, 16, "relu").save(tmp_path / "sae")
        load_transcoder(tmp_path / "sae")


# ---------------------------------------------------------------- capped graphs


def test_a_cap_at_or_above_the_feature_count_gives_the_full_graph(setup):
    rm, run, graph, _ = setup
    capped = attribute(
        rm, run, graph.target_id, graph.contrast_id, batch_size=16, max_feature_nodes=10**6
    )
    assert capped.visited is None and graph.visited is None
    assert torch.equal(capped.adjacency, graph.adjacency)
    assert torch.equal(capped.bias, graph.bias)
    assert torch.equal(capped.node_input.nan_to_num(7.0), graph.node_input.nan_to_num(7.0))


def test_a_capped_graphs_visited_rows_are_the_full_graphs_rows(setup):
    rm, run, graph, _ = setup
    cap = 40
    capped = attribute(
        rm, run, graph.target_id, graph.contrast_id, batch_size=8, max_feature_nodes=cap
    )
    assert graph.n_features > 3 * cap
    vis = capped.visited
    assert int(vis.sum()) == cap
    rows = torch.cat([vis.nonzero().squeeze(1), torch.tensor([graph.target_index])])
    # the same backward passes in other batches: equal up to float32 rounding of the sums
    scale = graph.adjacency[rows].abs().max()
    assert (capped.adjacency[rows] - graph.adjacency[rows]).abs().max() <= 1e-5 * scale
    assert torch.allclose(capped.bias[rows], graph.bias[rows], atol=1e-5)
    # they reconstruct their inputs as in the full graph; unvisited rows are empty
    err = (capped.reconstruction() - capped.node_input)[rows].abs()
    assert (err / (capped.adjacency[rows].abs().sum(1) + capped.bias[rows].abs())).max() <= 1e-4
    unvisited = (~vis).nonzero().squeeze(1)
    assert capped.adjacency[unvisited].abs().max() == 0
    # every node stays a source: the columns of unvisited features are filled in visited rows
    assert capped.adjacency[rows][:, unvisited].abs().sum() > 0
    assert torch.equal(capped.node_input[unvisited], graph.node_input[unvisited])


def test_a_capped_graph_visits_features_greedily_by_partial_influence(setup):
    """Visiting one feature per round, the i-th visited feature is the unvisited one of largest
    influence on the target in the full graph restricted to the rows visited before it (target
    row included): a reference computed here with ``influence`` on the full graph's rows."""
    rm, run, graph, _ = setup
    cap, nf = 9, graph.n_features  # 9: the greedy set differs from the top by direct effect
    order = []
    capped = attribute(
        rm,
        run,
        graph.target_id,
        graph.contrast_id,
        batch_size=1,
        update_interval=1,
        max_feature_nodes=cap,
        progress=lambda done, total: None,
    )
    w = torch.zeros(graph.n_nodes)
    w[-1] = 1
    known = [graph.target_index]
    for _ in range(cap):
        part = torch.zeros_like(graph.adjacency)
        part[known] = graph.adjacency[known]
        est = influence(normalise_rows(part), w)[:nf]
        est[order] = -1
        j = int(est.argmax())
        order.append(j)
        known.append(j)
    assert set(capped.visited.nonzero().squeeze(1).tolist()) == set(order)
    # not simply the top features by direct effect on the target
    direct = graph.adjacency[-1, :nf].abs().topk(cap).indices.tolist()
    assert set(direct) != set(order)
    # and with one round, exactly the top features by direct effect
    one = attribute(
        rm, run, graph.target_id, graph.contrast_id, batch_size=cap, max_feature_nodes=cap
    )
    assert set(one.visited.nonzero().squeeze(1).tolist()) == set(direct)
