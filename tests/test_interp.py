"""Feature statistics, the static site writer, ``serve`` over real HTTP and ``inspect``.

Everything runs on the random tiny llama with a small random-weight coder; the statistics are
checked against a brute-force computation over every token of the same windows.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request

import pytest
import torch
from click.testing import CliRunner

from conftest import WORDS
from sparsecodes.data import batch_windows, token_windows
from sparsecodes.interp import annotate, collect, logit_lens, read_explanations
from sparsecodes.interp.serve import AnnotateServer, start_in_thread
from sparsecodes.interp.site import hist_svg, write_site
from sparsecodes.interp.stats import FeatureStats, TopKBuffer, hist_edges, unembedding
from sparsecodes.models import load_model
from sparsecodes.sparse_coder import SparseCoder

HOOK = "blocks.1.resid_post"
N_LAT = 48
CTX = 32


def _texts() -> list[str]:
    words = WORDS
    g = torch.Generator().manual_seed(1)
    docs = []
    for _ in range(30):
        idx = torch.randint(
            len(words), (int(torch.randint(5, 25, (1,), generator=g)),), generator=g
        )
        docs.append(" ".join(words[i] for i in idx.tolist()) + ".")
    return docs


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors: one thread is fastest and immune to a busy machine's oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lm():
    return load_model("tiny-llama", device="cpu")


@pytest.fixture(scope="module")
def coder(lm):
    c = SparseCoder(lm.d_model, N_LAT, "relu", normalize="expected_norm", seed=3)
    with torch.no_grad():  # make it sparse-ish and give the normaliser a non-trivial scale
        c.encoder.b_enc.fill_(-0.3)
        c.normaliser.scale.fill_(0.5)
    c.train_config = {"source": {"model_name": "tiny-llama", "hook_name": HOOK}}
    return c.eval()


def _brute(lm, coder, texts, n_tokens, batch_size):
    """Codes [N, L] of every kept token of the windows collect reads, with (window, pos, ids)."""
    codes, win, pos, all_ids = [], [], [], []
    seen = w0 = 0
    for ids, keep in batch_windows(token_windows(texts, lm.tokenizer, CTX), batch_size):
        acts = lm.run(ids, None, [HOOK])[HOOK]
        b, t = keep.nonzero(as_tuple=True)
        codes.append(coder.encode(acts[b, t]))
        win.append(b + w0)
        pos.append(t)
        all_ids.append(ids)
        seen += len(b)
        w0 += ids.shape[0]
        if seen >= n_tokens:
            break
    return torch.cat(codes), torch.cat(win), torch.cat(pos), torch.cat(all_ids)


@pytest.fixture(scope="module")
def stats_and_brute(lm, coder):
    texts = _texts()
    st = collect(
        coder,
        lm,
        texts,
        HOOK,
        400,
        context_size=CTX,
        batch_size=3,
        top_k=5,
        n_samples=6,
        ctx_left=4,
        ctx_right=2,
        n_bins=20,
        logit_k=7,
    )
    return st, _brute(lm, coder, texts, 400, 3)


def test_top_contexts_equal_brute_force(stats_and_brute):
    st, (codes, win, pos, ids) = stats_and_brute
    assert st.n_tokens == codes.shape[0]  # whole batches, special positions excluded
    assert (pos > 0).all()  # BOS at position 0 is never encoded
    k = st.top.k
    for lat in range(N_LAT):
        col = codes[:, lat]
        firing = int((col > 0).sum())
        order = col.argsort(descending=True)[: min(k, firing)]
        valid = st.top.valid()[lat]
        assert int(valid.sum()) == min(k, firing)
        torch.testing.assert_close(st.top.acts[lat][valid], col[order])
        # each kept (window, pos) really has the stored activation (ties may pick either token)
        got = list(
            zip(st.top.window[lat][valid].tolist(), st.top.pos[lat][valid].tolist(), strict=True)
        )
        assert len(set(got)) == len(got)
        for (w, p), a in zip(got, st.top.acts[lat][valid].tolist(), strict=True):
            row = int(((win == w) & (pos == p)).nonzero()[0, 0])
            assert float(col[row]) == pytest.approx(a, abs=1e-6)
    # context tokens and their activations around one top example, from the raw windows
    lat = int(st.fire_count.argmax())
    w, p = int(st.top.window[lat, 0]), int(st.top.pos[lat, 0])
    for c, off in enumerate(range(-st.ctx_left, st.ctx_right + 1)):
        t = p + off
        if 0 <= t < CTX:
            assert int(st.top.ctx_ids[lat, 0, c]) == int(ids[w, t])
            row = ((win == w) & (pos == t)).nonzero()
            want = float(codes[row[0, 0], lat]) if len(row) else 0.0
            assert float(st.top.ctx_acts[lat, 0, c]) == pytest.approx(want, abs=1e-5)
        else:
            assert int(st.top.ctx_ids[lat, 0, c]) == -1


def test_density_max_and_histogram(stats_and_brute):
    st, (codes, *_rest) = stats_and_brute
    assert torch.equal(st.fire_count, (codes > 0).sum(0))
    torch.testing.assert_close(st.max_act, codes.max(0).values.clamp(min=0))
    assert torch.equal(st.hist.sum(1), torch.full((N_LAT,), codes.shape[0]))
    assert torch.equal(st.hist[:, 0], (codes <= 0).sum(0))
    # interior bins agree with numpy's histogram on the same log-spaced edges
    import numpy as np

    edges = st.hist_edges.numpy()
    lat = int(st.fire_count.argmax())
    v = codes[:, lat][codes[:, lat] > 0].double().numpy()
    v = np.clip(v, edges[0], np.nextafter(edges[-1], 0))
    want, _ = np.histogram(v, bins=edges)
    assert st.hist[lat, 1:].tolist() == want.tolist()
    assert 0 < float(st.density.mean()) < 1


def test_samples_are_distinct_firing_tokens(stats_and_brute):
    st, (codes, win, pos, _ids) = stats_and_brute
    key = {(w, p): i for i, (w, p) in enumerate(zip(win.tolist(), pos.tolist(), strict=True))}
    for lat in range(N_LAT):
        valid = st.samples.valid()[lat]
        assert int(valid.sum()) == min(st.samples.k, int(st.fire_count[lat]))
        pairs = list(
            zip(
                st.samples.window[lat][valid].tolist(),
                st.samples.pos[lat][valid].tolist(),
                strict=True,
            )
        )
        assert len(set(pairs)) == len(pairs)
        for (w, p), a in zip(pairs, st.samples.acts[lat][valid].tolist(), strict=True):
            assert a > 0 and a == pytest.approx(float(codes[key[(w, p)], lat]), abs=1e-6)


def test_buffers_stay_bounded_and_merge_exactly():
    g = torch.Generator().manual_seed(0)
    n_lat, k, ctx = 7, 4, 3
    buf = TopKBuffer(n_lat, k, ctx)
    size = buf.nbytes()
    all_scores = []

    class FakeBatch:  # the payload interface TopKBuffer.update needs
        def __init__(self, codes, w0):
            self.codes = codes
            self.window = torch.arange(codes.shape[0]) + w0
            self.pos = torch.zeros(codes.shape[0], dtype=torch.long)

        def context(self, rows, latents):
            return self.window[rows][:, None].repeat(1, ctx), self.codes[rows, latents][:, None]

    w0 = 0
    for n in (1, 9, 3, 20, 2):  # batches smaller and larger than k
        s = torch.randn(n, n_lat, generator=g)
        buf.update(s, FakeBatch(s, w0))
        all_scores.append(s)
        w0 += n
        assert buf.nbytes() == size and buf.scores.shape == (n_lat, k)
        assert buf.ctx_ids.shape == (n_lat, k, ctx)
    every = torch.cat(all_scores)
    want = every.topk(k, dim=0).values.T
    torch.testing.assert_close(buf.scores, want)
    torch.testing.assert_close(buf.acts, want)
    rows = every.topk(k, dim=0).indices.T
    assert torch.equal(buf.window, rows)
    assert torch.equal(buf.ctx_ids[..., 0], rows)


def test_batch_size_does_not_change_the_top_contexts(lm, coder, stats_and_brute):
    st, _ = stats_and_brute
    st1 = collect(
        coder,
        lm,
        _texts(),
        HOOK,
        st.n_tokens,
        context_size=CTX,
        batch_size=1,
        top_k=5,
        n_samples=6,
        ctx_left=4,
        ctx_right=2,
        n_bins=20,
        logit_k=0,
    )
    assert st1.n_tokens == st.n_tokens
    torch.testing.assert_close(st1.top.acts, st.top.acts)
    # contexts agree wherever the top activations have no ties (tied tokens may swap)
    distinct = torch.tensor([len(set(r.tolist())) == len(r) for r in st.top.acts])
    assert distinct.sum() > N_LAT // 2
    assert torch.equal(st1.top.ctx_ids[distinct], st.top.ctx_ids[distinct])
    assert torch.equal(st1.hist, st.hist)
    assert st1.logit_pos_ids is None


def test_logit_lens_matches_direct_matmul(lm, coder, stats_and_brute):
    st, _ = stats_and_brute
    w_u = lm.model.lm_head.weight.detach().float()  # [V, d]
    gamma = lm.model.model.norm.weight.detach().float()
    scale = float(coder.normaliser.scale)
    assert scale != 1.0
    direct = (coder.W_dec.detach() / scale) @ (w_u * gamma).T  # [L, V]
    torch.testing.assert_close(unembedding(lm), (w_u * gamma).T)
    pv, pi = direct.topk(7, dim=1)
    nv, ni = direct.topk(7, dim=1, largest=False)
    torch.testing.assert_close(st.logit_pos_vals, pv)
    torch.testing.assert_close(st.logit_neg_vals, nv)
    assert torch.equal(st.logit_pos_ids, pi) and torch.equal(st.logit_neg_ids, ni)
    chunked = logit_lens(coder, lm, 7, chunk=5)
    torch.testing.assert_close(chunked[1], pv)


def test_encoder_models_have_no_logit_lens(coder):
    class Enc:
        is_causal = False
        name = "an-encoder"

    with pytest.raises(ValueError, match="causal LM"):
        unembedding(Enc())


def test_collect_rejects_bad_arguments(lm, coder):
    with pytest.raises(ValueError, match="n_tokens"):
        collect(coder, lm, _texts(), HOOK, 0)
    wrong = SparseCoder(lm.d_model + 1, 8, "relu")
    with pytest.raises(ValueError, match="--hook"):
        collect(wrong, lm, _texts(), HOOK, 10)
    with pytest.raises(ValueError, match="skip_windows"):
        collect(coder, lm, _texts(), HOOK, 10, skip_windows=10_000, context_size=CTX)
    with pytest.raises(ValueError, match="n_bins"):
        hist_edges(0)


def test_stats_save_load_roundtrip(stats_and_brute, tmp_path):
    st, _ = stats_and_brute
    st.save(tmp_path)
    back = FeatureStats.load(tmp_path)
    assert back.n_tokens == st.n_tokens and back.meta["hook_name"] == HOOK
    assert torch.equal(back.hist, st.hist) and torch.equal(back.top.ctx_ids, st.top.ctx_ids)
    torch.testing.assert_close(back.samples.acts, st.samples.acts)
    torch.testing.assert_close(back.logit_neg_vals, st.logit_neg_vals)


def test_site_pages_and_index(stats_and_brute, lm, tmp_path):
    st, _ = stats_and_brute
    expl = {2: {"explanation": "</script><b>tricky</b>", "score": 0.5}}
    rep = write_site(st, lm.tokenizer, tmp_path, explanations=expl)
    assert rep.n_latents == N_LAT
    pages = sorted((tmp_path / "latents").glob("*.html"))
    assert len(pages) == N_LAT and rep.latent_page_max_bytes == max(p.stat().st_size for p in pages)
    idx = (tmp_path / "data" / "index.js").read_text()
    data = json.loads(idx.removeprefix("window.SC_INDEX = ").rstrip().rstrip(";"))
    assert [r[0] for r in data["rows"]] == list(range(N_LAT))
    assert data["rows"][2][3] == "</script><b>tricky</b>"
    page2 = (tmp_path / "latents" / "2.html").read_text()
    # the explanation cannot close the data script: one </script> per <script> tag
    assert (
        page2.count("</script>") == page2.count("<script") == 5
    )  # data, common, latent, heads, steer
    html = (tmp_path / "index.html").read_text() + page2
    assert "http://" not in html and "https://" not in html  # no CDN
    assert "<svg" in page2 or "never active" in page2


def test_hist_svg_draws_one_bar_per_active_bin():
    edges = hist_edges(10).tolist()
    svg = hist_svg([5, 0, 3, 0, 1, 0, 0, 0, 0, 0, 0], edges)
    assert svg.count("<rect") == 2
    assert "never active" in hist_svg([9] + [0] * 10, edges)


def test_annotate_matches_direct_encoding(lm, coder):
    text = "def alpha(): return beta"
    ann = annotate(coder, lm, HOOK, text, top_n=3)
    ids, mask = lm.encode([text])
    assert ann.token_ids == ids[0].tolist() and ann.special[0] and ann.latents[0] == []
    codes = coder.encode(lm.run(ids, mask, [HOOK])[HOOK][0, 1:])
    for i, row in enumerate(ann.latents[1:]):
        vals, idx = codes[i].topk(3)
        want = [(j, v) for v, j in zip(vals.tolist(), idx.tolist(), strict=True) if v > 0]
        assert [j for j, _ in row] == [j for j, _ in want]
        assert [a for _, a in row] == pytest.approx([v for _, v in want])
    with pytest.raises(ValueError, match="top_n"):
        annotate(coder, lm, HOOK, text, top_n=0)


def test_read_explanations(tmp_path):
    p = tmp_path / "explanations.json"
    p.write_text(json.dumps({"3": {"explanation": "x", "score": 0.25}, "7": "plain"}))
    assert read_explanations(p) == {
        3: {"explanation": "x", "score": 0.25},
        7: {"explanation": "plain", "score": None},
    }
    p.write_text(json.dumps({"abc": "x"}))
    with pytest.raises(ValueError, match="not a latent id"):
        read_explanations(p)


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_serve_over_http(lm, coder, stats_and_brute, tmp_path):
    st, _ = stats_and_brute
    write_site(st, lm.tokenizer, tmp_path)
    server = AnnotateServer(tmp_path, coder, lm, HOOK, port=0)
    assert server.server_address[0] == "127.0.0.1"
    thread = start_in_thread(server)
    try:
        url = server.url
        status, got = _post(
            url + "api/annotate", json.dumps({"text": "alpha beta", "top_n": 2}).encode()
        )
        assert status == 200
        want = annotate(coder, lm, HOOK, "alpha beta", top_n=2).to_json()
        assert got["tokens"] == want["tokens"] and got["latents"] == want["latents"]
        with urllib.request.urlopen(url + "api/annotate?text=gamma", timeout=30) as r:
            assert len(json.loads(r.read())["tokens"]) == len(lm.encode(["gamma"])[0][0])
        with urllib.request.urlopen(url + "api/info", timeout=30) as r:
            assert json.loads(r.read())["n_latents"] == N_LAT
        with urllib.request.urlopen(url + "latents/0.html", timeout=30) as r:
            assert r.status == 200 and b"SC_LATENT" in r.read()
        assert _post(url + "api/annotate", b"not json")[0] == 400
        assert _post(url + "api/annotate", json.dumps({"text": 5}).encode())[0] == 400
        assert _post(url + "api/annotate", json.dumps({"text": "a", "top_n": 0}).encode())[0] == 400
        assert _post(url + "api/nothing", b"{}")[0] == 404
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_cli_browse_and_inspect(coder, tmp_path):
    from sparsecodes.cli import main

    sae_dir = tmp_path / "sae"
    coder.save(sae_dir)
    (sae_dir / "explanations.json").write_text(
        json.dumps({"1": {"explanation": "greek letters", "score": None}})
    )
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(_texts()))
    runner = CliRunner()
    res = runner.invoke(
        main,
        [
            "browse",
            str(sae_dir),
            "-o",
            str(tmp_path / "site"),
            "--n-tokens",
            "200",
            "--corpus",
            str(corpus),
            "--context-size",
            str(CTX),
            "--stats",
            str(tmp_path / "st"),
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "site" / "latents" / f"{N_LAT - 1}.html").is_file()
    assert "greek letters" in (tmp_path / "site" / "data" / "index.js").read_text()
    res = runner.invoke(  # rebuild from the saved statistics, without recollecting
        main,
        ["browse", str(sae_dir), "-o", str(tmp_path / "site2"), "--stats", str(tmp_path / "st")],
    )
    assert res.exit_code == 0 and "reusing" in res.output, res.output
    res = runner.invoke(main, ["inspect", str(sae_dir), "alpha beta", "--top-n", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["tokens"][1:] == [
        "a",
        "l",
        "p",
        "h",
        "a",
        " ",
        "b",
        "e",
        "t",
        "a",
    ]
    res = runner.invoke(main, ["inspect", str(sae_dir), "alpha", "--color"])
    assert res.exit_code == 0 and "strongest latents" in res.output and "\x1b[48;5;" in res.output
    res = runner.invoke(main, ["inspect", str(tmp_path / "nowhere"), "x"])
    assert res.exit_code != 0


def test_histogram_edges_are_log_spaced():
    e = hist_edges(6, 1e-2, 1e4)
    ratios = (e[1:] / e[:-1]).tolist()
    assert ratios == pytest.approx([10.0] * 6) and math.isclose(float(e[0]), 1e-2)
