"""The generated feature browser in a real headless Chromium (Playwright, system chromium).

Needs ``bash scripts/install_browser.sh`` (Debian's chromium + the ``playwright`` package; no
Playwright browser download). Skipped with the reason when either is missing. Screenshots go to
``$SPARSECODES_ARTIFACTS`` when set (CI uploads it), else to pytest's ``tmp_path``; their paths
are printed.
"""

from __future__ import annotations

import json
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


def test_steer_box_on_latent_page_through_serve(built, browser):
    from sparsecodes.interp.serve import AnnotateServer, start_in_thread
    from sparsecodes.uses.steering import compare

    site, _, coder, lm = built
    page, errors = _page(browser)
    page.goto((site / "latents" / "5.html").as_uri())  # from file:// it says what to do
    assert "sparsecodes serve" in page.text_content("#steer")
    server = AnnotateServer(site, coder, lm, HOOK, port=0)
    thread = start_in_thread(server)
    try:
        page.goto(server.url + "latents/5.html")
        page.fill("#steer-prompt", "return alpha")
        page.fill("#steer-alpha", "40")
        page.fill("#steer-n", "6")
        page.click("#steer-go")
        page.wait_for_function("document.querySelectorAll('#steer-out .steer-text').length === 2")
        want = compare(lm, coder, "return alpha", HOOK, add={5: 40.0}, max_new_tokens=6)
        shown = page.locator("#steer-out .steer-text").all_text_contents()
        show = [
            t.replace("\n", "\u21b5\n").replace("\t", "\u2192")
            for t in (want.unsteered, want.steered)
        ]
        assert shown == show and show[0] != show[1]
        assert not errors, errors
        page.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# ---------------------------------------------------------------- escaping: tricky tokens
# single tokens of the test tokenizer (added to the byte-level one), and text whose characters a
# byte-level tokenizer splits over several tokens
TRICKY_TOKENS = ["'s", "<script>alert(1)</script>", "&amp;", "<img src=x onerror=alert(2)>"]
TRICKY_TEXTS = [
    f"Bob's \"{w}\" it's <script>alert(1)</script> &amp; x'y <img src=x onerror=alert(2)> "
    f"“curly” café 日本語 🙂 {i}"
    for i, w in enumerate(["a", "b", "c", "d", "e", "f"] * 6)
]
TRICKY_EXPL = '<img src=x onerror="window.__pwned=1"> it\'s "quoted" &amp;'
# what the pages must show literally, each as one token's text
MUST_SHOW = ["'s", "'", '"', "<script>alert(1)</script>", "&amp;", "“", "é", "日", "本", "語", "🙂"]


@pytest.fixture(scope="module")
def tricky(tmp_path_factory):
    """A site for a random coder on a tiny llama whose tokenizer has the tricky tokens."""
    from sparsecodes.interp import collect
    from sparsecodes.interp.site import write_site
    from sparsecodes.models.adapter import ModelAdapter
    from sparsecodes.models.embedded import byte_tokenizer, tiny_llama
    from sparsecodes.sparse_coder import SparseCoder

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    tok = byte_tokenizer()
    tok.add_tokens(TRICKY_TOKENS)
    model, _ = tiny_llama(vocab_size=len(tok))
    lm = ModelAdapter(model, tok, name="tiny-llama")
    coder = SparseCoder(lm.d_model, N_LAT, "relu", seed=2).eval()
    with torch.no_grad():
        coder.encoder.b_enc.fill_(-0.3)
    stats = collect(
        coder, lm, TRICKY_TEXTS, HOOK, 600, context_size=48, batch_size=4, top_k=8, n_samples=8
    )
    out = tmp_path_factory.mktemp("tricky")
    write_site(stats, tok, out, explanations={3: {"explanation": TRICKY_EXPL, "score": 0.5}})
    torch.set_num_threads(before)
    return out, coder, lm


def _guarded_page(browser):
    """A page that records errors and dialogs (``alert``) and has no ``__pwned`` set."""
    page, errors = _page(browser)
    dialogs: list[str] = []

    def on_dialog(d):
        dialogs.append(d.message)
        d.dismiss()

    page.on("dialog", on_dialog)
    return page, errors, dialogs


# per context: [expected display strings from the page's data, span texts, span titles]
_CONTEXTS_JS = """() => {
  const L = window.SC_LATENT, show = s => s.replace(/\\n/g, "\\u21b5").replace(/\\t/g, "\\u2192");
  const exs = L.top.concat(...L.samples.map(b => b[1]));
  const ctxs = [...document.querySelectorAll("#top .ctx, #samples .ctx")];
  return exs.map((ex, k) => {
    const spans = [...ctxs[k].querySelectorAll(".tok")];
    const want = [];
    ex[0].forEach((j, i) => { if (j >= 0) want.push([L.strings[j], ex[1][i]]); });
    return [want.map(w => show(w[0])), spans.map(s => s.textContent),
            want.map(w => JSON.stringify(w[0]) + " " + Number(w[1]).toPrecision(3)),
            spans.map(s => s.getAttribute("title"))];
  });
}"""


def _pages_covering(site: Path, wanted: list[str]) -> list[int]:
    """A few latent pages whose data hold all of ``wanted`` among their token strings (greedy)."""
    strings = {}
    for lat in range(N_LAT):
        html = (site / "latents" / f"{lat}.html").read_text()
        line = next(x for x in html.splitlines() if x.startswith("<script>window.SC_LATENT = "))
        data = line.removeprefix("<script>window.SC_LATENT = ").removesuffix(";</script>")
        strings[lat] = set(json.loads(data)["strings"])
    left, pages = set(wanted), []
    while left:
        best = max(strings, key=lambda lat: len(strings[lat] & left))
        if not strings[best] & left:
            break  # the DOM check below names what is missing
        pages.append(best)
        left -= strings[best]
    return pages


def test_pages_show_tricky_tokens_literally_and_run_no_script(tricky, browser, tmp_path):
    site, _, _ = tricky
    page, errors, dialogs = _guarded_page(browser)
    seen: set[str] = set()
    for lat in _pages_covering(site, MUST_SHOW):
        page.goto((site / "latents" / f"{lat}.html").as_uri())
        contexts = page.evaluate(_CONTEXTS_JS)
        for want_text, text, want_title, title in contexts:
            # each token span holds exactly its string as text and as title: nothing was parsed
            assert text == want_text, (lat, text, want_text)
            assert title == want_title, (lat, title, want_title)
            seen.update(text)
            assert not any("\ufffd" in t for t in text), (lat, text)
        assert page.locator("#top img, #samples img, #top script, #samples script").count() == 0
        assert page.evaluate("window.__pwned") is None
    missing = [s for s in MUST_SHOW if s not in seen]
    assert not missing, f"never shown as a token: {missing}"
    assert "" in seen  # the first bytes of a split character show as an empty token

    # the index: the explanation and the top tokens are text, not markup
    page.goto((site / "index.html").as_uri())
    row = page.locator("#latents tbody tr[data-id='3']")
    assert row.locator("td").nth(3).evaluate("e => e.firstChild.textContent") == TRICKY_EXPL
    assert page.locator("#latents img").count() == 0
    page.fill("#search", "<script>alert(1)</script>")
    assert page.locator("#latents tbody tr").count() >= 1
    page.goto((site / "latents" / "3.html").as_uri())
    assert page.text_content("#expl b") == TRICKY_EXPL
    shot = _artifact_dir(tmp_path) / "browser_tricky.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert dialogs == [] and not errors, (dialogs, errors)
    page.close()


def test_live_page_shows_tricky_text_literally(tricky, browser):
    from sparsecodes.interp.serve import AnnotateServer, start_in_thread

    site, coder, lm = tricky
    text = TRICKY_TEXTS[0] + ' <img src=x onerror="window.__pwned=1">'
    server = AnnotateServer(site, coder, lm, HOOK, port=0)
    thread = start_in_thread(server)
    try:
        page, errors, dialogs = _guarded_page(browser)
        page.goto(server.url + "live.html")
        page.fill("#text", text)
        page.click("#go")
        n = len(lm.encode([text])[0][0])
        page.wait_for_function(f"document.querySelectorAll('#live-out .tok').length === {n}")
        # the tokens' texts put together are the text itself (after BOS), characters whole
        assert page.text_content("#live-out") == "<s>" + text
        page.locator("#live-out .tok").nth(4).hover()  # "'s"
        assert page.text_content("#live-detail b") == '"\'s"'
        assert page.locator("#live-out img, #live-out script").count() == 0
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert dialogs == [] and not errors, (dialogs, errors)
        page.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def attn_built(tmp_path_factory):
    """A site for a random topk coder on the tiny llama's block-1 attention heads (4 heads)."""
    from sparsecodes.interp import collect
    from sparsecodes.interp.site import write_site
    from sparsecodes.models import load_model
    from sparsecodes.sparse_coder import SparseCoder

    lm = load_model("tiny-llama", device="cpu")
    coder = SparseCoder(64, 12, "topk", seed=2, k=3).eval()
    with torch.no_grad():  # latent 0 lives on head 2's block (d_head 16): share 1.0 there
        coder.dictionary.W_dec[0, :32] = 0
        coder.dictionary.W_dec[0, 48:] = 0
    texts = [f"def f{i}(x): return x * {i} + alpha" for i in range(20)]
    stats = collect(coder, lm, texts, "blocks.1.attn.heads", 300, context_size=32, batch_size=4)
    out = tmp_path_factory.mktemp("attn_site")
    write_site(stats, lm.tokenizer, out)
    return out, stats


def test_attention_latent_page_draws_head_bars_and_sources(attn_built, browser, tmp_path):
    site, stats = attn_built
    page, errors = _page(browser)
    page.goto((site / "latents" / "0.html").as_uri())
    bars = page.locator("#heads .head-row")
    assert bars.count() == 4
    widths = [
        bars.nth(h).locator(".head-fill").evaluate("e => e.getBoundingClientRect().width")
        for h in range(4)
    ]
    full = bars.nth(2).locator(".head-bar").evaluate("e => e.getBoundingClientRect().width")
    assert widths[2] == pytest.approx(full, abs=1) and max(widths[:2] + widths[3:]) == 0
    assert bars.nth(2).locator(".head-val").text_content() == "1.00"
    n_top = int(stats.top.valid()[0].sum())
    assert n_top > 0 and page.locator("#heads .sources").count() == n_top
    first = page.locator("#heads .sources").first.locator(".src")
    assert first.count() == int((stats.top.src_pos[0, 0] >= 0).sum())
    shot = _artifact_dir(tmp_path) / "browser_attention_latent.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert not errors, errors
    page.close()
