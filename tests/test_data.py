"""Corpora (embedded, txt, jsonl, parquet, datasets errors), token windows and fingerprints."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import require
from sparsecodes.data import (
    EMBEDDED_CHARS,
    Window,
    batch_windows,
    corpus_fingerprint,
    embedded_texts,
    load_texts,
    token_stream,
    token_windows,
)
from sparsecodes.data import corpus as corpus_mod
from sparsecodes.models.embedded import byte_tokenizer, weights_path


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def embedded():
    return list(load_texts())


# ---------------------------------------------------------------- embedded corpus
def test_embedded_corpus_is_about_a_million_chars(embedded):
    n = sum(len(d) for d in embedded)
    assert EMBEDDED_CHARS <= n < 1.1 * EMBEDDED_CHARS
    assert len(embedded) > 100
    assert all(isinstance(d, str) and d.strip() == d and d for d in embedded)
    assert len(set(embedded)) == len(embedded)
    # both sources are present: pydoc topics and stdlib docstrings
    from pydoc_data.topics import topics

    assert embedded[0] == topics[sorted(topics)[0]].strip()
    assert any("Return" in d for d in embedded[len(topics) :])
    assert list(load_texts("embedded")) == embedded


def test_embedded_corpus_is_deterministic_across_rebuilds():
    corpus_mod._embedded.cache_clear()
    a = embedded_texts(520_000)  # the topics plus a few stdlib modules
    corpus_mod._embedded.cache_clear()
    b = embedded_texts(520_000)
    assert a == b and a is not b
    assert sum(map(len, a)) >= 520_000
    assert corpus_fingerprint(None, a) == corpus_fingerprint(None, b)


# ---------------------------------------------------------------- local files
def test_txt_file_splits_on_blank_lines(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("first doc\nline two\n\n\nsecond doc\n  \nthird\n", encoding="utf-8")
    assert list(load_texts(p)) == ["first doc\nline two", "second doc", "third"]


def test_directory_one_doc_per_txt_file_sorted(tmp_path):
    (tmp_path / "b.txt").write_text("bee\n\nbuzz", encoding="utf-8")
    (tmp_path / "a.txt").write_text("ant", encoding="utf-8")
    (tmp_path / "ignored.csv").write_text("x", encoding="utf-8")
    assert list(load_texts(tmp_path)) == ["ant", "bee\n\nbuzz"]


def test_jsonl_with_default_and_custom_field(tmp_path):
    p = tmp_path / "c.jsonl"
    rows = [{"text": "one", "body": "uno"}, {"text": "two", "body": "dos"}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert list(load_texts(p)) == ["one", "two"]
    assert list(load_texts(p, text_field="body")) == ["uno", "dos"]
    with pytest.raises(ValueError, match="text_field"):
        list(load_texts(p, text_field="nope"))


def test_parquet_column(tmp_path):
    pa = require("pyarrow")
    pq = require("pyarrow.parquet")
    p = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["alpha", "beta", None, "gamma"], "n": [1, 2, 3, 4]}), p)
    assert list(load_texts(p)) == ["alpha", "beta", "gamma"]
    with pytest.raises(ValueError, match="no column 'body'"):
        list(load_texts(p, text_field="body"))


def test_max_chars_stops_after_reaching_it(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("\n\n".join(["abcde"] * 10), encoding="utf-8")
    assert len(list(load_texts(p, max_chars=12))) == 3


def test_bad_specs_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        list(load_texts(tmp_path / "missing.txt"))
    bad = tmp_path / "c.csv"
    bad.write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\.txt, \.jsonl or \.parquet"):
        list(load_texts(bad))
    with pytest.raises(ValueError, match="unknown corpus"):
        list(load_texts("not a corpus"))


def test_datasets_name_offline_error(monkeypatch):
    datasets = require("datasets")

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach the hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match="embedded corpus"):
        list(load_texts("hf:someone/some-corpus"))


# ---------------------------------------------------------------- windows
def _texts():
    return ["alpha beta gamma", "delta", "the quick brown fox jumps over the lazy dog " * 3]


def test_windows_have_fixed_length_and_bos_masked(tok):
    T = 16
    ws = list(token_windows(_texts(), tok, T))
    stream = list(token_stream(_texts(), tok))
    assert len(ws) == len(stream) // (T - 1)
    for w in ws:
        assert isinstance(w, Window)
        assert w.input_ids.shape == w.keep.shape == (T,)
        assert w.input_ids.dtype == torch.int64 and w.keep.dtype == torch.bool
        assert w.input_ids[0] == tok.bos_token_id and not w.keep[0]
        special = torch.isin(w.input_ids, torch.tensor(tok.all_special_ids))
        assert torch.equal(w.keep, ~special)
    # nothing lost or reordered: window bodies are consecutive slices of the stream
    bodies = torch.cat([w.input_ids[1:] for w in ws]).tolist()
    assert bodies == stream[: len(bodies)]
    # documents are separated by EOS, which is masked
    eos_positions = [i for i, t in enumerate(stream) if t == tok.eos_token_id]
    assert len(eos_positions) == 3
    assert tok.decode(stream[: eos_positions[0]]) == "alpha beta gamma"
    assert any(not w.keep[1:].all() for w in ws)


def test_windows_without_bos(tok):
    ws = list(token_windows(_texts(), tok, 8, prepend_bos=False))
    stream = list(token_stream(_texts(), tok))
    assert torch.cat([w.input_ids for w in ws]).tolist() == stream[: 8 * len(ws)]
    assert ws[0].keep[0]  # a normal token at position 0 is kept


def test_windows_deterministic_and_fingerprinted(tok, tmp_path):
    a = list(token_windows(_texts(), tok, 12))
    b = list(token_windows(_texts(), tok, 12))
    fa = corpus_fingerprint("x", a, context_size=12)
    assert fa == corpus_fingerprint("x", b, context_size=12)
    assert fa != corpus_fingerprint("x", a, context_size=13)
    assert fa != corpus_fingerprint("y", a, context_size=12)
    assert fa != corpus_fingerprint("x", a[:-1], context_size=12)
    # text boundaries count, and content counts
    assert corpus_fingerprint("x", ["ab", "c"]) != corpus_fingerprint("x", ["a", "bc"])
    assert corpus_fingerprint("x", ["ab"]) != corpus_fingerprint("x", ["ac"])


def test_batch_windows(tok):
    ws = list(token_windows(_texts(), tok, 8))
    batches = list(batch_windows(ws, 3))
    assert [b[0].shape[0] for b in batches] == [3] * (len(ws) // 3) + (
        [len(ws) % 3] if len(ws) % 3 else []
    )
    ids, keep = batches[0]
    assert ids.shape == keep.shape == (3, 8)
    assert torch.equal(ids[1], ws[1].input_ids)


def test_bad_context_size(tok):
    with pytest.raises(ValueError, match="context_size"):
        list(token_windows(_texts(), tok, 1))


def test_embedded_corpus_windows_with_tiny_llama_tokenizer(tok, embedded):
    ws = []
    for w in token_windows(embedded[:20], tok, 128):
        ws.append(w)
    assert len(ws) > 100
    ids, keep = torch.stack([w.input_ids for w in ws]), torch.stack([w.keep for w in ws])
    # kept: every token but the BOS of each window and the EOS between documents
    assert torch.equal(keep, ~torch.isin(ids, torch.tensor(tok.all_special_ids)))
    assert (
        not keep[:, 0].any()
        and keep[:, 1:].sum() == keep[:, 1:].numel() - (ids[:, 1:] == tok.eos_token_id).sum()
    )
    assert 0 < int((ids == tok.eos_token_id).sum()) < 20  # at most one separator per document


@pytest.mark.requires_model("minilm-l6")
def test_bert_tokenizer_uses_cls_and_is_not_truncated():
    from transformers import AutoTokenizer

    bt = AutoTokenizer.from_pretrained(str(weights_path("minilm-l6")))
    long_doc = (
        "sparse coding of activations " * 200
    )  # far past the tokenizer's 128-token truncation
    ws = list(token_windows([long_doc], bt, 64))
    assert len(ws) >= 800 // 63
    assert all(w.input_ids[0] == bt.cls_token_id and not w.keep[0] for w in ws)
    seps = torch.stack([w.input_ids for w in ws]) == bt.sep_token_id
    assert seps.sum() <= 1
