"""Data selection by feature similarity (sparsecodes.uses.selection, `sparsecodes select`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sparsecodes.codes import SparseCodes, to_sparse
from sparsecodes.uses.documents import read_documents
from sparsecodes.uses.selection import (
    TopK,
    generalised_jaccard,
    jaccard_to_centroid,
    parse_top,
    select_top,
    target_centroid,
)

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_generalised_jaccard_matches_a_hand_computed_example():
    x = torch.tensor([1.0, 0.0, 2.0, 3.0, 0.0])
    y = torch.tensor([2.0, 1.0, 0.0, 3.0, 0.0])
    # minima 1+0+0+3+0 = 4, maxima 2+1+2+3+0 = 8
    assert generalised_jaccard(x, y).item() == 0.5
    assert generalised_jaccard(x, x).item() == 1.0
    assert generalised_jaccard(torch.zeros(3), torch.zeros(3)).item() == 0.0
    # the sparse path (only x's active latents, padding entries of value 0) gives the same
    sx = SparseCodes(torch.tensor([[3, 0, 2, 4, 4]]), torch.tensor([[3.0, 1, 2, 0, 0]]), 5)
    assert jaccard_to_centroid(sx, y.double()).item() == 0.5
    with pytest.raises(ValueError, match="non-negative"):
        generalised_jaccard(-x, y)


def _random_pool(n: int, n_latents: int, nnz: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(n, n_latents, generator=g).argsort(1)[:, :nnz]
    vals = torch.rand(n, nnz, generator=g).round(decimals=1)  # coarse values: exact ties occur
    return torch.zeros(n, n_latents).scatter_(1, idx, vals)


def test_selection_order_equals_brute_force_ranking_with_ties_to_the_earlier_document():
    pool = _random_pool(500, 40, 4, seed=0)
    target = _random_pool(20, 40, 6, seed=1)
    c = target_centroid([to_sparse(target[:7]), to_sparse(target[7:])])
    torch.testing.assert_close(c, target.double().mean(0))
    best = int(generalised_jaccard(pool.double(), c[None]).argmax())
    pool[499] = pool[best]  # an exact tie at the top: `best` must come before 499
    batches = [
        (to_sparse(pool[i : i + 33]), list(range(i, min(i + 33, 500)))) for i in range(0, 500, 33)
    ]
    chosen = select_top(c, batches, k=60)
    brute = generalised_jaccard(pool.double(), c[None])
    order = sorted(range(500), key=lambda i: (-float(brute[i]), i))[:60]
    assert [s.index for s in chosen] == order
    assert [s.item for s in chosen] == order
    torch.testing.assert_close(
        torch.tensor([s.score for s in chosen], dtype=torch.float64),
        brute[order],
        rtol=1e-12,
        atol=0,
    )
    assert order[:2] == [best, 499] and brute[best] == brute[499]


def test_topk_heap_keeps_the_best_and_breaks_ties_by_index():
    h = TopK(3)
    for i, s in enumerate([0.5, 0.9, 0.5, 0.1, 0.9, 0.5]):
        h.push(i, s)
    assert [(s.index, s.score) for s in h.result()] == [(1, 0.9), (4, 0.9), (0, 0.5)]


def test_parse_top_counts_and_percentages():
    assert parse_top("5%", 1000) == 50
    assert parse_top("5%", 1001) == 51  # ceil
    assert parse_top("500", 100) == 100
    assert parse_top(7, None) == 7
    assert parse_top("0.5%", 1000) == 5
    for bad in ("five", "0", "-3", "150%", "2.5"):
        with pytest.raises(ValueError, match="--top"):
            parse_top(bad, 1000)


def test_read_documents_plain_lines_and_jsonl(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("first doc\n\n  \nsecond doc\n")
    recs = list(read_documents(a))
    assert [(r.index, r.line, r.text) for r in recs] == [(0, 1, "first doc"), (1, 4, "second doc")]
    b = tmp_path / "b.data"
    b.write_text('{"text": "x", "id": 7}\n\n{"text": "y"}\n')
    recs = list(read_documents(b))
    assert [(r.index, r.line, r.text, r.fields.get("id")) for r in recs] == [
        (0, 1, "x", 7),
        (1, 3, "y", None),
    ]
    b.write_text('{"text": "x"}\n{"body": "y"}\n')
    with pytest.raises(ValueError, match=r"b.data:2.*'text'"):
        list(read_documents(b))


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys, torch
    from sparsecodes.codes import SparseCodes
    from sparsecodes.uses.selection import select_top

    n_docs, n_latents, nnz, batch = int(sys.argv[1]), 16384, 64, 1000
    g = torch.Generator().manual_seed(0)
    c = torch.rand(n_latents, dtype=torch.float64, generator=g)
    warm = select_top(c, [(SparseCodes(torch.zeros(2, nnz, dtype=torch.long),
                                       torch.zeros(2, nnz), n_latents), None)], 1)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def pool():
        for s in range(0, n_docs, batch):
            idx = torch.randint(0, n_latents, (batch, nnz), generator=g)
            yield SparseCodes(idx, torch.rand(batch, nnz, generator=g), n_latents), None

    chosen = select_top(c, pool(), k=n_docs // 20, progress=True, total=n_docs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(base, peak, len(chosen), flush=True)
    """
)


def test_selection_over_100k_documents_runs_in_bounded_memory_with_a_document_progress_bar():
    """100k documents x 16384 latents would be 6.6 GB dense (0.05 GB as sparse codes if all
    were kept); streaming keeps only one batch and the top 5%: peak RSS grows by < 64 MB."""
    n_docs = 100_000
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(n_docs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    base_kb, peak_kb, n_chosen = map(int, proc.stdout.split())
    dense_mb = n_docs * 16384 * 4 / 2**20
    grew_mb = (peak_kb - base_kb) / 1024
    assert n_chosen == 5000
    assert grew_mb < 64, f"peak RSS grew {grew_mb:.0f} MB (dense would be {dense_mb:.0f} MB)"
    bar = proc.stderr.replace("\r", "\n")
    assert "100000/100000" in bar and "doc" in bar


@pytest.fixture(scope="module")
def tiny():
    from sparsecodes.models import load_model
    from sparsecodes.sparse_coder import SparseCoder

    adapter = load_model("tiny-llama", device="cpu")
    coder = SparseCoder(64, 256, "topk", k=8, seed=0)
    return coder, adapter, "blocks.1.resid_post"


def test_document_codes_are_mean_token_codes_without_bos_or_padding(tiny):
    from sparsecodes.uses.documents import iter_document_codes

    coder, adapter, hook = tiny
    texts = ["short", "a much longer document than the first one", ""]
    (batch,) = list(iter_document_codes(coder, adapter, hook, texts, batch_size=8))
    for i, t in enumerate(texts[:2]):
        ids, mask = adapter.encode([t])
        acts = adapter.run(ids, mask, [hook])[hook][0, 1:]  # drop BOS
        torch.testing.assert_close(
            batch.codes.to_dense()[i], coder.encode(acts).mean(0), atol=1e-5, rtol=1e-5
        )
        assert batch.n_tokens[i] == len(t.encode())  # byte tokenizer: one token per byte
    assert batch.n_tokens[2] == 0 and not batch.codes.to_dense()[2].any()


def test_select_documents_puts_the_target_document_itself_first(tiny):
    from sparsecodes.uses.selection import select_documents

    coder, adapter, hook = tiny
    pool = [f"document number {i} about topic {i % 5}" for i in range(40)]
    chosen, _ = select_documents(coder, adapter, hook, [pool[23]], pool, "10%", batch_size=6)
    assert len(chosen) == 4
    assert chosen[0].index == 23 and chosen[0].score == 1.0
    assert all(s.score < 1.0 for s in chosen[1:])


def test_cli_select_writes_the_top_rows_with_scores(tiny, tmp_path):
    from click.testing import CliRunner

    from sparsecodes.cli import main
    from sparsecodes.uses.selection import select_documents

    coder, adapter, hook = tiny
    coder.save(tmp_path / "sae")
    pool = [f"line {i}: the {'cat' if i % 3 else 'stock market'} report" for i in range(30)]
    (tmp_path / "pool.txt").write_text("\n".join(pool) + "\n")
    (tmp_path / "target.jsonl").write_text(json.dumps({"text": "the stock market report"}) + "\n")
    out = tmp_path / "sel.jsonl"
    res = CliRunner().invoke(
        main,
        [
            "select", "--sae", str(tmp_path / "sae"), "--target", str(tmp_path / "target.jsonl"),
            "--pool", str(tmp_path / "pool.txt"), "--top", "20%", "--out", str(out),
            "--model", "tiny-llama", "--hook", hook, "--device", "cpu", "--no-progress",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expect, _ = select_documents(coder, adapter, hook, ["the stock market report"], pool, 6)
    assert [r["pool_index"] for r in rows] == [s.index for s in expect]
    assert [r["rank"] for r in rows] == list(range(1, 7))
    assert all(
        r["text"] == pool[r["pool_index"]] and r["line"] == r["pool_index"] + 1 for r in rows
    )
    assert [r["score"] for r in rows] == pytest.approx([s.score for s in expect], rel=1e-9)
    assert "selected 6 of 30" in res.output


def test_cli_select_bad_top_is_a_clear_error(tmp_path):
    from click.testing import CliRunner

    from sparsecodes.cli import main

    (tmp_path / "p.txt").write_text("a\nb\n")
    (tmp_path / "sae").mkdir()
    res = CliRunner().invoke(
        main,
        ["select", "--sae", str(tmp_path / "sae"), "--target", str(tmp_path / "p.txt"),
         "--pool", str(tmp_path / "p.txt"), "--top", "lots", "--out", str(tmp_path / "o")],
    )  # fmt: skip
    assert res.exit_code != 0 and "--top must be a count" in res.output
