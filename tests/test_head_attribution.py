"""Attention-output coders: attention internals, head shares and direct feature attribution."""

from __future__ import annotations

import pytest
import torch

from sparsecodes.models import load_model
from sparsecodes.models.attention import attention_internals, check_recomposition
from sparsecodes.sparse_coder import SparseCoder
from sparsecodes.uses.head_attribution import (
    attention_layer,
    direct_feature_attribution,
    head_shares,
    linear_preactivation,
    top_sources,
)

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Sparse codes, again and again!"]


@pytest.fixture(scope="module")
def lm():
    return load_model("tiny-llama", device="cpu")


def _coder(d_in: int, n_lat: int, encoder: str, **params) -> SparseCoder:
    """A random coder with an input scale far from 1 and non-zero biases (every term matters)."""
    c = SparseCoder(d_in, n_lat, encoder, normalize="expected_norm", seed=1, **params)
    c.normaliser.scale.fill_(3.7)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        c.dictionary.b_dec.copy_(torch.randn(d_in, generator=g))
        c.encoder.b_enc.copy_(torch.randn(n_lat, generator=g) * 0.3)
    return c


def _check_dfa(coder, internals, mask, n_lat):
    rows, pos = mask.bool().nonzero(as_tuple=True)
    reps = n_lat  # every latent at every real position
    r, t = rows.repeat_interleave(reps), pos.repeat_interleave(reps)
    f = torch.arange(n_lat).repeat(len(rows))
    dfa = direct_feature_attribution(coder, internals, r, t, f)
    scale = float(dfa.pre.abs().max())
    err = float((dfa.total - dfa.pre).abs().max())
    # per-head split against the captured z: term sums of head h == z_h(t) . W[h-block, f]
    w, _ = linear_preactivation(coder)
    n_heads, d_head = internals.z.shape[2:]
    w_heads = w.T.reshape(-1, n_heads, d_head)
    per_head = torch.einsum("mhd,mhd->mh", internals.z[r, t].double(), w_heads[f])
    return dfa, err / scale, float((dfa.terms.sum(2) - per_head).abs().max()) / scale


def test_attention_internals_recompose_heads_and_restore_sdpa(lm):
    ids, mask = lm.encode(TEXTS)
    before = lm.model.config._attn_implementation
    it = attention_internals(lm, ids, mask, 2)
    assert lm.model.config._attn_implementation == before == "sdpa"
    b, t = ids.shape
    assert it.pattern.shape == (b, lm.n_heads, t, t) and it.values.shape == (b, t, 4, 16)
    assert check_recomposition(it) < 1e-6  # z == A @ v with GQA's repeated value heads
    # causal: nothing reads a later position; each row is a distribution
    assert float(it.pattern.triu(1).abs().max()) == 0.0
    torch.testing.assert_close(it.pattern.sum(-1), torch.ones(b, lm.n_heads, t))
    # query heads 0 and 1 share key/value head 0 (4 query heads, 2 key/value heads)
    assert torch.equal(it.values[:, :, 0], it.values[:, :, 1])
    assert not torch.equal(it.values[:, :, 1], it.values[:, :, 2])
    # the same z as an ordinary (sdpa) pass, to float rounding
    z = lm.run(ids, mask, ["blocks.2.attn.heads"])["blocks.2.attn.heads"]
    torch.testing.assert_close(it.z, z, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("encoder", ["relu", "topk", "jumprelu"])
def test_dfa_terms_sum_to_preactivation_tiny_llama(lm, encoder):
    ids, mask = lm.encode(TEXTS)
    it = attention_internals(lm, ids, mask, 1)
    params = {"k": 4} if encoder == "topk" else {}
    coder = _coder(64, 32, encoder, **params)
    dfa, rel, rel_heads = _check_dfa(coder, it, mask, 32)
    assert rel < 1e-5 and rel_heads < 1e-5
    # it is a real split: many sources and several heads carry weight, and the bias is not 0
    assert int(((dfa.terms.abs().sum(1) > 1e-3).sum(1) > 3).sum()) > len(dfa.pre) // 2
    assert float(dfa.bias.abs().min()) > 0


def test_top_sources_are_the_largest_readable_positions(lm):
    ids, mask = lm.encode(["abcdefgh"])
    it = attention_internals(lm, ids, mask, 0)
    coder = _coder(64, 8, "relu")
    dfa = direct_feature_attribution(coder, it, [0, 0], [2, 8], [3, 3])
    pos, val = top_sources(dfa, 5)
    # position 2 reads only positions 0..2: two slots stay empty
    assert pos[0, 3:].tolist() == [-1, -1] and sorted(pos[0, :3].tolist()) == [0, 1, 2]
    per_src = dfa.terms.sum(1)
    want = per_src[1, :9].topk(5).indices
    assert pos[1].tolist() == want.tolist()
    torch.testing.assert_close(val[1], per_src[1, want].float())


def test_head_shares_hand_computed_sum_to_one_and_single_head_atoms():
    c = SparseCoder(4, 3, "relu", seed=0)
    with torch.no_grad():
        c.dictionary.W_dec.copy_(
            torch.tensor([[3.0, 4.0, 0.0, 0.0], [3.0, 4.0, 6.0, 8.0], [0.0, 0.0, 0.0, 1.0]])
        )
    shares = head_shares(c, 2)
    torch.testing.assert_close(shares, torch.tensor([[1.0, 0.0], [1 / 3, 2 / 3], [0.0, 1.0]]))
    squared = head_shares(c, 2, squared=True)  # norms 5 and 10 -> 25 / 125, 100 / 125
    torch.testing.assert_close(squared[1], torch.tensor([0.2, 0.8]))
    rand = SparseCoder(64, 50, "topk", seed=3, k=4)
    torch.testing.assert_close(head_shares(rand, 4).sum(1), torch.ones(50))
    # a coder whose atoms live on head 2's block only (d_head 16)
    with torch.no_grad():
        rand.dictionary.W_dec[:, :32] = 0
        rand.dictionary.W_dec[:, 48:] = 0
    assert torch.equal(head_shares(rand, 4)[:, 2], torch.ones(50))


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="positive divisor"):
        head_shares(SparseCoder(64, 8, "relu", seed=0), 5)
    with pytest.raises(ValueError, match="linear pre-activation"):
        linear_preactivation(SparseCoder(64, 8, "gated", seed=0))
    assert attention_layer("blocks.3.attn.heads") == 3
    assert attention_layer("blocks.3.resid_post") is None and attention_layer(None) is None


@pytest.mark.embedded
@pytest.mark.slow
@pytest.mark.requires_model("smollm2-135m")
def test_dfa_terms_sum_to_preactivation_smollm2():
    sm = load_model("smollm2-135m", device="cpu")
    ids, mask = sm.encode(["When Mary and John went to the store, John gave a drink to Mary."])
    it = attention_internals(sm, ids, mask, 3)
    assert it.values.shape[2:] == (9, 64) and check_recomposition(it) < 1e-5
    coder = _coder(576, 64, "topk", k=8)
    _, rel, rel_heads = _check_dfa(coder, it, mask, 64)
    assert rel < 1e-5 and rel_heads < 1e-5


# ------------------------------------------------------------------ browser data
HOOK = "blocks.1.attn.heads"


@pytest.fixture(scope="module")
def attn_site(lm, tmp_path_factory):
    """Stats and site of a random topk coder on the tiny llama's block-1 attention heads."""
    from conftest import WORDS
    from sparsecodes.interp.site import write_site
    from sparsecodes.interp.stats import collect

    coder = _coder(64, 24, "topk", k=4)
    texts = [" ".join(WORDS[(i * j) % len(WORDS)] for j in range(9)) for i in range(30)]
    # windows of 16 tokens and 16 tokens of left context: every example's whole prefix is kept
    stats = collect(coder, lm, texts, HOOK, 400, context_size=16, batch_size=4, ctx_left=16)
    out = tmp_path_factory.mktemp("attn_site")
    write_site(stats, lm.tokenizer, out)
    return coder, stats, out


def _page_data(path):
    import json
    import re

    m = re.search(r"window\.SC_LATENT = (.*?);</script>", path.read_text())
    return json.loads(m.group(1))


def test_stats_keep_head_shares_and_the_exact_top_sources(lm, attn_site):
    coder, stats, _ = attn_site
    torch.testing.assert_close(stats.head_shares, head_shares(coder, 4))
    assert stats.meta["n_heads"] == 4
    center, checked = stats.ctx_left, 0
    for f in range(0, 24, 3):
        for j in range(2):
            if not stats.top.valid()[f, j]:
                continue
            ids = stats.top.ctx_ids[f, j, : center + 1]
            ids = ids[ids >= 0]  # the window's tokens up to and including the example
            it = attention_internals(lm, ids[None], None, 1)
            dfa = direct_feature_attribution(coder, it, [0], [len(ids) - 1], [f])
            assert len(ids) - 1 == int(stats.top.pos[f, j])
            # the top source's value recomputed from scratch, and the same ranking
            per_src = dfa.terms.sum(1)[0]
            pos = stats.top.src_pos[f, j]
            pos = pos[pos >= 0]
            torch.testing.assert_close(
                per_src[pos].float(), stats.top.src_val[f, j, : len(pos)], atol=1e-5, rtol=1e-4
            )
            assert len(pos) == min(5, len(ids))
            assert float(per_src.max()) == pytest.approx(float(stats.top.src_val[f, j, 0]), 1e-4)
            assert torch.equal(stats.top.src_ids[f, j, : len(pos)], ids[pos])
            # the activation is the DFA total for a firing topk latent
            assert float(dfa.pre[0]) == pytest.approx(float(stats.top.acts[f, j]), rel=1e-4)
            checked += 1
    assert checked >= 8


def test_site_pages_carry_head_shares_and_sources(lm, attn_site):
    from sparsecodes.interp.annotate import TokenStrings

    _, stats, out = attn_site
    strings = TokenStrings(lm.tokenizer)
    f = int(stats.fire_count.argmax())
    data = _page_data(out / "latents" / f"{f}.html")
    shares = data["heads"]["shares"]
    assert shares == [round(v, 4) for v in stats.head_shares[f].tolist()]
    assert sum(shares) == pytest.approx(1.0, abs=1e-3)
    n_top = int(stats.top.valid()[f].sum())
    assert len(data["heads"]["sources"]) == len(data["top"]) == n_top
    rows = data["heads"]["sources"][0]
    p0, dest = int(stats.top.src_pos[f, 0, 0]), int(stats.top.pos[f, 0])
    assert rows[0] == [
        strings(int(stats.top.src_ids[f, 0, 0])),
        round(float(stats.top.src_val[f, 0, 0]), 4),
        p0 - dest,
    ]
    assert all(r[2] <= 0 for rs in data["heads"]["sources"] for r in rs)  # causal: none later
    assert "heads.js" in (out / "latents" / f"{f}.html").read_text()
    assert (out / "assets" / "heads.js").is_file()


def test_residual_coder_pages_have_no_head_data(lm, tmp_path):
    from sparsecodes.interp.site import write_site
    from sparsecodes.interp.stats import collect

    coder = SparseCoder(64, 8, "topk", seed=0, k=2)
    texts = ["alpha beta gamma delta epsilon zeta"] * 4
    stats = collect(coder, lm, texts, "blocks.1.resid_post", 20, context_size=16, batch_size=4)
    assert stats.head_shares is None and stats.top.src_pos is None
    write_site(stats, lm.tokenizer, tmp_path)
    assert _page_data(tmp_path / "latents" / "0.html")["heads"] is None


@pytest.mark.slow
def test_cache_train_export_on_attn_heads_end_to_end(tmp_path):
    """`cache` and `train --store` on blocks.1.attn.heads; the SAELens export is hook_z."""
    import json

    from click.testing import CliRunner

    import sparsecodes
    from sparsecodes.cli import main

    run = CliRunner().invoke
    args = ["cache", "--model", "tiny-llama", "--hook", HOOK, "--max-tokens", "1500"]
    r = run(main, [*args, "--context-size", "32", "-o", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    store = tmp_path / "c" / "tiny-llama" / HOOK
    assert json.loads((store / "manifest.json").read_text())["shape"] == [4, 16]
    args = ["train", "--store", str(store), "--param", "k=4", "--n-latents", "32"]
    args += ["--steps", "5", "--batch-size", "128", "--device", "cpu"]
    r = run(main, [*args, "-o", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    coder = sparsecodes.load(tmp_path / "run")
    assert (coder.d_in, coder.source.hook_name) == (64, HOOK)
    cfg = json.loads((tmp_path / "run" / "final_saelens" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.1.attn.hook_z"
    assert cfg["reshape_activations"] == "hook_z"
    back = sparsecodes.load(tmp_path / "run" / "final_saelens")
    assert back.source.hook_name == HOOK  # hook_z is read back as ours
    x = torch.randn(10, 64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(back.encode(x), coder.encode(x), atol=1e-5, rtol=1e-5)
