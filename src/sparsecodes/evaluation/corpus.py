"""Which text an evaluation runs on: held-out windows, and separate calibration windows.

- Held-out (evaluation) text: ``--corpus PATH`` when given, else the embedded corpus's held-out
  split, every 20th document (``texts[::20]`` of ``list(load_texts(None))``), the split the demo
  never trains on.
- Calibration text (for choosing an iterative method's sparsity parameter): ``--calib-corpus``
  when given, else the embedded corpus's training split (the other documents); never the
  evaluation windows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from sparsecodes.data import Window, load_texts, token_windows

#: the embedded corpus's held-out split: every HELDOUT_EVERY-th document
HELDOUT_EVERY = 20


def heldout_texts(corpus: str | None = None, *, text_field: str = "text") -> list[str]:
    """Documents to evaluate on: all of ``corpus``, or the embedded held-out split (None)."""
    if corpus is None or corpus == "embedded[heldout]":
        return list(load_texts(None))[::HELDOUT_EVERY]
    return list(load_texts(corpus, text_field=text_field))


def calibration_texts(corpus: str | None = None, *, text_field: str = "text") -> list[str]:
    """Documents for calibration: all of ``corpus``, or the embedded corpus's training split
    (the documents not in the held-out split) when None."""
    if corpus is not None:
        return list(load_texts(corpus, text_field=text_field))
    return [t for i, t in enumerate(load_texts(None)) if i % HELDOUT_EVERY]


def take_windows(
    texts: Iterable[str],
    tokenizer: Any,
    context_size: int,
    max_tokens: int | None = None,
) -> Iterator[Window]:
    """Windows of ``texts`` until ``max_tokens`` *kept* (non-special) positions are covered."""
    kept = 0
    for w in token_windows(texts, tokenizer, context_size):
        if max_tokens is not None and kept >= max_tokens:
            return
        kept += int(w.keep.sum())
        yield w


def eval_windows(
    texts: list[str],
    tokenizer: Any,
    context_size: int,
    max_tokens: int | None = None,
    *,
    what: str = "the evaluation corpus",
) -> list[Window]:
    """All windows for evaluation; raises ``ValueError`` when there are none (empty corpus)."""
    if not texts or not any(t.strip() for t in texts):
        raise ValueError(f"{what} is empty (no documents with text); pass a --corpus with text")
    windows = list(take_windows(texts, tokenizer, context_size, max_tokens))
    if not windows:
        n = len(tokenizer(" ".join(texts[:100]), add_special_tokens=False)["input_ids"])
        raise ValueError(
            f"{what} gives no token window of context_size={context_size} (it holds only about "
            f"{n} tokens); pass a larger --corpus or a smaller --context-size"
        )
    if not any(bool(w.keep.any()) for w in windows):
        raise ValueError(f"{what} holds only special tokens (BOS/separators): nothing to evaluate")
    return windows
