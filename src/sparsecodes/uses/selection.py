"""Data selection by feature similarity (after the MoNA data-selection paper, arXiv 2503.15573).

Each document is represented by the **mean of its tokens' codes** (BOS and other special tokens
excluded; :func:`~sparsecodes.uses.documents.iter_document_codes`). The target set is reduced to
its **centroid** ``c = mean over target documents of their mean codes`` and every pool document
``x`` is scored by the generalised (weighted) Jaccard index against it::

    J(x, c) = sum_i min(x_i, c_i) / sum_i max(x_i, c_i)

(codes must be non-negative; ``J`` is 0 when both are all zero). The top ``k`` pool documents
by ``J`` are selected, ties going to the earlier document.

Scoring touches only a document's active latents: with ``x`` sparse and ``c >= 0``,
``sum min = sum_{i: x_i > 0} min(x_i, c_i)`` and
``sum max = sum(c) + sum_{i: x_i > 0} max(x_i - c_i, 0)``. The pool streams in batches of
:class:`~sparsecodes.codes.SparseCodes` and a running top-``k`` heap keeps the best, so memory is
``O(batch * nnz + k)`` for any pool size; ``[n_docs, n_latents]`` is never formed.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparsecodes.codes import SparseCodes

logger = logging.getLogger(__name__)

__all__ = [
    "Selected",
    "TopK",
    "generalised_jaccard",
    "jaccard_to_centroid",
    "parse_top",
    "select_documents",
    "select_top",
    "selection_rows",
    "target_centroid",
    "write_selection",
]


def generalised_jaccard(x: Tensor, y: Tensor) -> Tensor:
    """Generalised Jaccard index of non-negative vectors along the last dim.

    ``x`` ``[..., n]`` and ``y`` broadcastable to it -> ``[...]``:
    ``sum min(x, y) / sum max(x, y)``, 0 where both are all zero.
    """
    if (x < 0).any() or (y < 0).any():
        raise ValueError(
            "the generalised Jaccard index needs non-negative codes; use a coder with "
            "non-negative latents (TopK, ReLU, JumpReLU) or non-negative inference"
        )
    num = torch.minimum(x, y).sum(-1)
    den = torch.maximum(x, y).sum(-1)
    return torch.where(den > 0, num / den.clamp(min=torch.finfo(den.dtype).tiny), 0.0)


def target_centroid(batches: Iterable[SparseCodes]) -> Tensor:
    """``[n_latents]`` float64 mean of the target documents' mean codes (streamed)."""
    total: Tensor | None = None
    n = 0
    for b in batches:
        if total is None:
            total = torch.zeros(b.n_latents, dtype=torch.float64)
        total.index_add_(0, b.indices.reshape(-1).cpu(), b.values.reshape(-1).double().cpu())
        n += b.indices.shape[0]
    if total is None or n == 0:
        raise ValueError("the target set has no documents; pass a non-empty --target file")
    c = total / n
    if (c < 0).any():
        raise ValueError(
            "the target centroid has negative entries: the generalised Jaccard index needs "
            "non-negative codes (a TopK, ReLU or JumpReLU coder)"
        )
    if not (c > 0).any():
        raise ValueError(
            "no latent fires on any target document, so every similarity is 0; check that the "
            "coder matches the model and hook, and that the target texts are not empty"
        )
    return c


def jaccard_to_centroid(codes: SparseCodes, centroid: Tensor) -> Tensor:
    """``[b]`` float64 generalised Jaccard index of each row of ``codes`` with ``centroid``.

    ``codes``: :class:`SparseCodes` ``[b, n_latents]`` (non-negative; padding entries with
    value 0 are allowed); ``centroid``: ``[n_latents]`` non-negative. Costs ``O(b * k)``.
    """
    if centroid.shape != (codes.n_latents,):
        raise ValueError(
            f"centroid has shape {tuple(centroid.shape)} but the codes have "
            f"{codes.n_latents} latents"
        )
    vals = codes.values.double()
    if (vals < 0).any():
        raise ValueError(
            "the generalised Jaccard index needs non-negative codes; use a coder with "
            "non-negative latents (TopK, ReLU, JumpReLU)"
        )
    c = centroid.double().to(vals.device)
    ci = c[codes.indices]  # [b, k]
    # padding entries (value 0) contribute min(0, c) = 0 and max(0 - c, 0) = 0
    num = torch.minimum(vals, ci).sum(1)
    den = c.sum() + (vals - ci).clamp(min=0).sum(1)
    return torch.where(den > 0, num / den.clamp(min=1e-300), 0.0)


_TOP = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(%?)\s*$")


def parse_top(top: str | int | float, n_docs: int | None) -> int:
    """How many documents ``top`` selects from ``n_docs``.

    ``"5%"`` -> ``ceil(0.05 * n_docs)`` (needs ``n_docs``), ``"500"`` or ``500`` -> 500; at most
    ``n_docs`` when known.
    """
    m = _TOP.match(str(top))
    if m is None:
        raise ValueError(f"--top must be a count (500) or a percentage (5%), got {top!r}")
    value, pct = float(m.group(1)), m.group(2) == "%"
    if pct:
        if not 0 < value <= 100:
            raise ValueError(f"--top percentage must be in (0, 100], got {top!r}")
        if n_docs is None:
            raise ValueError("a percentage --top needs the pool size")
        k = math.ceil(value / 100.0 * n_docs - 1e-9)
    else:
        if value != int(value) or value < 1:
            raise ValueError(f"--top count must be a positive integer, got {top!r}")
        k = int(value)
    return min(k, n_docs) if n_docs is not None else k


@dataclass(frozen=True)
class Selected:
    """One selected pool document: its 0-based pool ``index``, ``score`` and ``item`` (whatever
    the pool stream paired with it, e.g. a :class:`~sparsecodes.uses.documents.Record`)."""

    index: int
    score: float
    item: Any = None


class TopK:
    """Running top-``k`` by score over a stream (a min-heap of size ``k``).

    Ties keep the earlier index. ``push`` costs ``O(log k)``; memory is ``O(k)``.
    """

    def __init__(self, k: int) -> None:
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        self.k = k
        self._heap: list[tuple[float, int, Any]] = []  # (score, -index, item): min = worst

    def push(self, index: int, score: float, item: Any = None) -> None:
        entry = (score, -index, item)
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, entry)
        elif entry[:2] > self._heap[0][:2]:
            heapq.heapreplace(self._heap, entry)

    def threshold(self) -> float:
        """The lowest kept score (``-inf`` until ``k`` documents were seen)."""
        return self._heap[0][0] if len(self._heap) == self.k else -math.inf

    def result(self) -> list[Selected]:
        """Kept documents, best first (ties: lower index first)."""
        ordered = sorted(self._heap, key=lambda e: (-e[0], -e[1]))
        return [Selected(-neg, float(s), item) for s, neg, item in ordered]

    def __len__(self) -> int:
        return len(self._heap)


def select_top(
    centroid: Tensor,
    pool: Iterable[tuple[SparseCodes, list[Any] | None]],
    k: int,
    *,
    progress: bool = False,
    total: int | None = None,
) -> list[Selected]:
    """The ``k`` pool documents most similar to ``centroid``, best first.

    Args:
        centroid: ``[n_latents]`` target centroid (:func:`target_centroid`).
        pool: batches ``(codes, items)``: :class:`SparseCodes` ``[b, n_latents]`` and ``b`` items
            to keep with the selected rows (or None).
        k: how many to select (:func:`parse_top`).
        progress / total: a tqdm bar counting documents (``total`` documents if known).

    Memory: one batch plus ``k`` items.
    """
    heap = TopK(k)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="doc", desc="select", dynamic_ncols=True)
    seen = 0
    try:
        for codes, items in pool:
            scores = jaccard_to_centroid(codes, centroid)
            b = scores.shape[0]
            if items is not None and len(items) != b:
                raise ValueError(f"a pool batch has {b} codes but {len(items)} items")
            # only rows that can enter the heap are pushed
            cand = (scores >= heap.threshold()).nonzero(as_tuple=True)[0].tolist()
            for j in cand:
                heap.push(seen + j, float(scores[j]), items[j] if items is not None else None)
            seen += b
            if bar is not None:
                bar.update(b)
    finally:
        if bar is not None:
            bar.close()
    if seen == 0:
        raise ValueError("the pool has no documents; pass a non-empty --pool file")
    logger.info("scored %d pool documents; kept %d", seen, len(heap))
    return heap.result()


def _batched(it: Iterable[Any], n: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def select_documents(
    coder: Any,
    adapter: Any,
    hook: str,
    target: Iterable[str],
    pool: Iterable[Any],
    top: str | int,
    *,
    n_pool: int | None = None,
    text_of: Any = None,
    batch_size: int = 16,
    max_tokens: int = 128,
    progress: bool = False,
) -> tuple[list[Selected], Tensor]:
    """Select the pool documents nearest the target set; ``(selected best first, centroid)``.

    ``pool`` yields items (strings, or anything ``text_of(item)`` turns into the text, e.g.
    :class:`~sparsecodes.uses.documents.Record` with ``text_of=lambda r: r.text``); ``n_pool``
    is the pool size (needed for a percentage ``top``; counted if ``pool`` has a length).
    """
    from sparsecodes.uses.documents import iter_document_codes

    get_text = text_of or (lambda t: t)
    if n_pool is None and hasattr(pool, "__len__"):
        n_pool = len(pool)  # type: ignore[arg-type]
    k = parse_top(top, n_pool)
    kw = {"batch_size": batch_size, "max_tokens": max_tokens}
    centroid = target_centroid(
        b.codes for b in iter_document_codes(coder, adapter, hook, target, **kw)
    )

    def stream() -> Iterator[tuple[SparseCodes, list[Any]]]:
        for items in _batched(pool, batch_size):
            texts = [get_text(it) for it in items]
            (b,) = iter_document_codes(coder, adapter, hook, texts, **kw)
            yield b.codes, items

    chosen = select_top(centroid, stream(), k, progress=progress, total=n_pool)
    return chosen, centroid


def selection_rows(selected: Iterable[Selected]) -> list[dict[str, Any]]:
    """JSON-ready rows: ``rank`` (1 = best), ``score``, ``pool_index`` and, for
    :class:`~sparsecodes.uses.documents.Record` items, ``line`` and the record's own fields
    (its ``text`` or whole JSON object; our keys win a name clash)."""
    from sparsecodes.uses.documents import Record

    rows = []
    for rank, s in enumerate(selected, start=1):
        ours: dict[str, Any] = {"rank": rank, "score": s.score, "pool_index": s.index}
        if isinstance(s.item, Record):
            ours["line"] = s.item.line
            rows.append({**s.item.fields, **ours})
        elif isinstance(s.item, str):
            rows.append({"text": s.item, **ours})
        else:
            rows.append(ours)
    return rows


def write_selection(path: str | os.PathLike[str], selected: Iterable[Selected]) -> Path:
    """Write :func:`selection_rows` as JSON Lines to ``path``, atomically."""
    from sparsecodes.files import write_text

    lines = [json.dumps(r, ensure_ascii=False) for r in selection_rows(selected)]
    return write_text(path, "".join(line + "\n" for line in lines))
