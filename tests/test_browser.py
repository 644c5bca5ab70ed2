"""The generated feature browser in a real headless Chromium (Playwright, system chromium).

Needs ``bash scripts/install_browser.sh`` (Debian's chromium + the ``playwright`` package; no
Playwright browser download). Skipped with the reason when either is missing. Screenshots go to
``$SPARSECODES_ARTIFACTS`` when set (CI uploads it), else to pytest's ``tmp_path``; their paths
are printed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import missing, require

CHROMIUM = os.environ.get("SPARSECODES_CHROMIUM", "/usr/bin/chromium")
# without the background-networking flags chromium hangs on a closed network
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HOOK = "blocks.1.resid_post"
N_LAT = 40

sync_api = require(
    "playwright.sync_api", reason="playwright is not installed: bash scripts/install_browser.sh"
)
if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
    missing(
        f"no chromium at {CHROMIUM}: bash scripts/install_browser.sh (or set SPARSECODES_CHROMIUM)"
    )


def _artifact_dir(tmp_path: Path) -> Path:
    d = Path(os.environ.get("SPARSECODES_ARTIFACTS", tmp_path))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A site for a tiny random coder on the tiny llama; latent 5 has an explanation."""
    from sparsecodes.interp import collect
    from sparsecodes.interp.site import write_site
    from sparsecodes.models import load_model
    from sparsecodes.sparse_coder import SparseCoder

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    lm = load_model("tiny-llama", device="cpu")
    coder = SparseCoder(lm.d_model, N_LAT, "relu", seed=1).eval()
    with torch.no_grad():
        coder.encoder.b_enc.fill_(-0.3)
    texts = [f"def f{i}(x): return x * {i} + alpha" for i in range(40)]
    stats = collect(coder, lm, texts, HOOK, 600, context_size=48, batch_size=4, top_k=6)
    out = tmp_path_factory.mktemp("site")
    expl = {5: {"explanation": "zebra crossings", "score": 0.9}}
    write_site(stats, lm.tokenizer, out, explanations=expl)
    torch.set_num_threads(before)
    return out, stats, coder, lm


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def _page(browser):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page, errors


def test_index_lists_filters_and_sorts(built, browser, tmp_path):
    site, stats, _, _ = built
    page, errors = _page(browser)
    page.goto((site / "index.html").as_uri())
    rows = page.locator("#latents tbody tr")
    assert rows.count() == N_LAT
    page.fill("#search", "zebra")
    assert rows.count() == 1 and rows.first.get_attribute("data-id") == "5"
    page.fill("#search", "#17")
    assert rows.first.get_attribute("data-id") == "17"
    page.fill("#search", "")
    assert rows.count() == N_LAT
    page.click("th[data-key=density]")  # densest first
    ids = [int(rows.nth(i).get_attribute("data-id")) for i in range(5)]
    dens = stats.density.tolist()
    assert [dens[i] for i in ids] == sorted(dens, reverse=True)[:5]
    page.click("th[data-key=density]")  # and back: sparsest first
    first = int(rows.first.get_attribute("data-id"))
    assert dens[first] == min(dens)
    shot = _artifact_dir(tmp_path) / "browser_index.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 1000 and not errors, errors
    page.close()


def test_latent_page_highlights_tokens(built, browser, tmp_path):
    site, stats, _, _ = built
    lat = int(stats.fire_count.argmax())
    page, errors = _page(browser)
    page.goto((site / "index.html").as_uri())
    page.click(f"#latents tbody tr[data-id='{lat}'] a")
    page.wait_for_url(f"**/latents/{lat}.html")
    n_top = int(stats.top.valid()[lat].sum())
    assert page.locator("#top .ctx").count() == n_top
    highlighted = page.locator("#top .tok[style*='background']")
    assert highlighted.count() >= n_top  # at least each example's own token is shaded
    centre = page.locator("#top .ctx").first.locator(".tok.center")
    assert "234, 88, 12" in centre.evaluate("e => getComputedStyle(e).backgroundColor")
    assert page.locator("svg.hist rect").count() > 0
    assert page.locator("#logits .logit").count() > 1
    assert page.locator("#samples .band").count() >= 1
    shot = _artifact_dir(tmp_path) / "browser_latent.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert not errors, errors
    page.close()


def test_live_page_through_serve(built, browser, tmp_path):
    from sparsecodes.interp.serve import AnnotateServer, start_in_thread

    site, _, coder, lm = built
    server = AnnotateServer(site, coder, lm, HOOK, port=0)
    thread = start_in_thread(server)
    try:
        page, errors = _page(browser)
        page.goto(server.url + "live.html")
        page.fill("#text", "return alpha")
        page.click("#go")
        page.wait_for_function("document.querySelectorAll('#live-out .tok').length === 13")
        page.locator("#live-out .tok").nth(3).hover()
        assert "#" in page.text_content("#live-detail")
        shot = _artifact_dir(tmp_path) / "browser_live.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
        assert not errors, errors
        page.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
