"""The attribution-graph page in a real headless Chromium (Playwright, system chromium).

Needs ``bash scripts/install_browser.sh``; skipped with the reason when it is missing (fails
under ``CI=true``). A graph of a real prompt through the tiny llama, written next to a feature
browser site for the coder of one layer: the graph renders, clicking one of that layer's feature
nodes opens its latent page, clicking an error node shows its details, the head scores are
listed strongest first, and the site's index links to the graph page.
"""

from __future__ import annotations

from conftest import require
from test_browser import CHROMIUM, CHROMIUM_ARGS

sync_api = require(
    "playwright.sync_api", reason="playwright is not installed: bash scripts/install_browser.sh"
)

PROMPT = "When John and Mary went to the store, John gave a drink to"
LAYER = 1


def test_graph_page_renders_and_nodes_open_their_feature(tmp_path):
    from sparsecodes.graphs import (
        ReplacementModel,
        build_graph,
        fit_transcoder,
        write_graph_page,
    )
    from sparsecodes.interp import collect
    from sparsecodes.interp.site import write_site
    from sparsecodes.models import load_model
    from sparsecodes.sparse_coder import SparseCoder

    lm = load_model("tiny-llama", device="cpu")
    rm = ReplacementModel(lm, [])
    run = rm.run(lm.encode(PROMPT + " the quick brown fox jumps over a lazy dog")[0][0])
    tcs = [fit_transcoder(run.mlp_in[i], run.mlp_out[i], i, 24, k=3) for i in range(4)]
    # a feature browser for a coder of LAYER's width (its pages are what the nodes open)
    coder = SparseCoder(lm.d_model, 24, "relu", seed=1).eval()
    texts = [f"def f{i}(x): return x * {i}" for i in range(8)]
    stats = collect(coder, lm, texts, f"blocks.{LAYER}.mlp_out", 200, context_size=24)
    write_site(stats, lm.tokenizer, tmp_path)
    data = build_graph(
        lm, tcs, PROMPT, "M", "J", node_threshold=0.95, feature_pages={LAYER: "latents/"}
    )
    page_path = write_graph_page(data, tmp_path)
    linked = [n for n in data["nodes"] if n.get("href")]
    assert linked, "no kept feature of the browsed layer; the test needs one"
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = b.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_path.as_uri())
        assert page.locator("svg.graph .node").count() == len(data["nodes"])
        assert page.locator("svg.graph .edge").count() == len(data["edges"])
        labels = page.locator("svg.graph text.toklabel")
        assert labels.count() == len(data["tokens"])
        # an error node has no page: its details are shown
        err = next(n for n in data["nodes"] if n["kind"] == "error")
        page.locator(f".node[data-id='{err['id']}']").click()
        assert page.locator(f"#details dl[data-node='{err['id']}']").count() == 1
        assert str(err["pos"]) in page.locator("#details").inner_text()
        # head scores: the ten strongest heads, listed in order, and one grid cell per head
        heads = data["heads"]
        flat = sorted(
            (
                (v, f"{layer}.{h}")
                for layer, row in enumerate(heads["scores"])
                for h, v in enumerate(row)
            ),
            reverse=True,
        )
        rows = page.locator("#heads table.head-top tr[data-head]")
        assert rows.count() == 10
        assert rows.first.get_attribute("data-head") == flat[0][1]
        assert page.locator("#heads table.head-grid td").count() == lm.n_layers * lm.n_heads
        page.screenshot(path=str(tmp_path / "graph.png"), full_page=True)
        # a feature of the browsed layer opens its latent page
        node = linked[0]
        page.locator(f".node[data-id='{node['id']}']").click()
        page.wait_for_url(f"**/latents/{node['feature']}.html")
        assert page.locator("h1").inner_text() == f"latent #{node['feature']}"
        # the site's index links to the graph page, which it opens
        page.goto((tmp_path / "index.html").as_uri())
        link = page.locator("#graph-links a.graph-link")
        assert link.count() == 1
        assert link.get_attribute("href") == "graph.html"
        link.click()
        page.wait_for_url("**/graph.html")
        assert page.locator("svg.graph .node").count() == len(data["nodes"])
        assert not errors, errors
        b.close()
