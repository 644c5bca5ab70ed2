"""Fixed-length token windows over a corpus, with a keep-mask that drops BOS/special positions.

Documents are tokenised without special tokens and concatenated into one stream, each followed
by a separator (the tokenizer's EOS, else SEP). The stream is cut into consecutive chunks; with
``prepend_bos`` each window starts with BOS (CLS for BERT-style tokenizers) followed by
``context_size - 1`` stream tokens. A trailing partial window is dropped, so every window has
exactly ``context_size`` tokens. ``keep`` is False wherever the token is a special token (BOS,
separators, padding), so activations there are excluded by default: they are huge-norm outliers
that dominate reconstruction metrics.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

_TOKENIZE_BATCH = 64


@dataclass(frozen=True)
class Window:
    """One window: ``input_ids`` ``[T]`` int64 and ``keep`` ``[T]`` bool."""

    input_ids: Tensor
    keep: Tensor


def bos_id(tokenizer: Any) -> int | None:
    """The tokenizer's BOS id, else its CLS id, else None."""
    for attr in ("bos_token_id", "cls_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            return int(v)
    return None


def separator_id(tokenizer: Any) -> int | None:
    """The id put between documents: EOS, else SEP, else BOS, else None."""
    for attr in ("eos_token_id", "sep_token_id", "bos_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            return int(v)
    return None


def _encode_batch(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    # truncation=False overrides truncation saved in tokenizer.json (MiniLM's is 128 tokens);
    # verbose=False silences the "longer than model_max_length" warning for long documents
    out = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)
    return [list(ids) for ids in out["input_ids"]]


def token_stream(texts: Iterable[str], tokenizer: Any) -> Iterator[int]:
    """Token ids of all ``texts`` concatenated, each document followed by the separator."""
    sep = separator_id(tokenizer)
    batch: list[str] = []

    def flush() -> Iterator[int]:
        for ids in _encode_batch(tokenizer, batch):
            yield from ids
            if sep is not None:
                yield sep

    for t in texts:
        batch.append(t)
        if len(batch) == _TOKENIZE_BATCH:
            yield from flush()
            batch = []
    if batch:
        yield from flush()


def token_windows(
    texts: Iterable[str],
    tokenizer: Any,
    context_size: int,
    prepend_bos: bool = True,
) -> Iterator[Window]:
    """Fixed-length windows ``Window(input_ids [context_size], keep [context_size])``.

    Deterministic: the same texts and tokenizer give the same windows.
    """
    if context_size < 2:
        raise ValueError(f"context_size must be at least 2, got {context_size}")
    bos = bos_id(tokenizer) if prepend_bos else None
    body = context_size - (1 if bos is not None else 0)
    special = torch.tensor(
        sorted(set(getattr(tokenizer, "all_special_ids", []) or [])), dtype=torch.long
    )
    buf: list[int] = []
    for tok in token_stream(texts, tokenizer):
        buf.append(tok)
        if len(buf) == body:
            ids = torch.tensor(([bos] if bos is not None else []) + buf, dtype=torch.long)
            keep = ~torch.isin(ids, special)
            if bos is not None:
                keep[0] = False
            yield Window(ids, keep)
            buf = []


def batch_windows(windows: Iterable[Window], batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Stack windows into ``(input_ids [B, T], keep [B, T])``; the last batch may be smaller."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    chunk: list[Window] = []
    for w in windows:
        chunk.append(w)
        if len(chunk) == batch_size:
            yield torch.stack([c.input_ids for c in chunk]), torch.stack([c.keep for c in chunk])
            chunk = []
    if chunk:
        yield torch.stack([c.input_ids for c in chunk]), torch.stack([c.keep for c in chunk])
