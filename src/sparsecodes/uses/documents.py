"""Documents as codes: the mean of a document's token codes, and the files documents come in.

:func:`iter_document_codes` runs a model up to a coder's hook over documents in batches and
yields, per batch, each document's **mean code** over its tokens (the BOS token, padding and
every other special token of the tokenizer are excluded) in sparse form
(:class:`~sparsecodes.codes.SparseCodes`), optionally with the mean raw activation. Only one
batch's token codes ``[tokens_in_batch, n_latents]`` are ever dense, so a pool of any size
streams in bounded memory.

:func:`read_documents` reads the files ``sparsecodes select`` takes: one document per line, or
JSON Lines with a ``"text"`` field (``.jsonl`` files, or any file whose first non-blank line
starts with ``{``). Blank lines are skipped.

Coder directories are opened with :func:`sparsecodes.load` (the one loader).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparsecodes.codes import SparseCodes, to_sparse

__all__ = [
    "DocumentBatch",
    "Record",
    "count_documents",
    "document_codes",
    "iter_document_codes",
    "read_documents",
]


@dataclass(frozen=True)
class Record:
    """One document read from a file.

    Attributes:
        index: 0-based position among the file's documents (blank lines not counted).
        line: 1-based line number in the file.
        text: the document's text.
        fields: the whole JSON object for JSON Lines input (``{"text": text}`` for plain lines).
    """

    index: int
    line: int
    text: str
    fields: dict[str, Any]


def _is_jsonl(path: Path) -> bool:
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return True
    with path.open(encoding="utf-8") as f:
        for raw in f:
            if raw.strip():
                return raw.lstrip().startswith("{")
    return False


def read_documents(path: str | os.PathLike[str], text_field: str = "text") -> Iterator[Record]:
    """Stream the documents of ``path`` (see the module docstring for the formats).

    Raises ``ValueError`` naming the line of a JSON Lines row that is not an object with a string
    ``text_field``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"document file {p} does not exist; pass a text file (one document per line) "
            f"or a JSON Lines file with a {text_field!r} field"
        )
    jsonl = _is_jsonl(p)
    index = 0
    with p.open(encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            if jsonl:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{p}:{lineno} is not valid JSON ({e})") from e
                if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
                    raise ValueError(
                        f"{p}:{lineno}: each JSON Lines row must be an object with a string "
                        f"{text_field!r} field"
                    )
                yield Record(index, lineno, obj[text_field], obj)
            else:
                yield Record(index, lineno, line, {text_field: line})
            index += 1


def count_documents(path: str | os.PathLike[str], text_field: str = "text") -> int:
    """Number of documents :func:`read_documents` yields for ``path`` (one streamed pass)."""
    return sum(1 for _ in read_documents(path, text_field))


@dataclass(frozen=True)
class DocumentBatch:
    """Mean codes of one batch of ``b`` documents.

    Attributes:
        codes: :class:`SparseCodes` ``[b, n_latents]``: each document's mean token code.
        n_tokens: ``[b]`` int64 tokens averaged per document (0 for a document with no
            non-special token; its code is all zero).
        activations: ``[b, d_in]`` mean raw activation per document, or None when not asked for.
    """

    codes: SparseCodes
    n_tokens: Tensor
    activations: Tensor | None = None


def _special_ids(tokenizer: Any) -> list[int]:
    ids = getattr(tokenizer, "all_special_ids", None) or []
    return sorted({int(i) for i in ids if i is not None})


def iter_document_codes(
    coder: Any,
    adapter: Any,
    hook: str,
    texts: Iterable[str],
    *,
    batch_size: int = 16,
    max_tokens: int = 128,
    with_activations: bool = False,
) -> Iterator[DocumentBatch]:
    """Yield :class:`DocumentBatch` es for ``texts``, ``batch_size`` documents at a time.

    Args:
        coder: a :class:`~sparsecodes.sparse_coder.SparseCoder` reading ``hook``.
        adapter: the :class:`~sparsecodes.models.ModelAdapter` it reads.
        texts: the documents; each is tokenised with BOS prepended and cut to its first
            ``max_tokens`` tokens (BOS included). BOS, padding and other special tokens are
            excluded from the mean.
        with_activations: also return the mean raw activation ``[b, d_in]`` (a baseline).

    Memory: one batch's activations and token codes, ``[batch_size * max_tokens, n_latents]``.
    """
    import math

    for name, v in (("batch_size", batch_size), ("max_tokens", max_tokens)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    width = math.prod(adapter.hook_shape(hook))
    if width != coder.d_in:
        raise ValueError(
            f"hook {hook!r} of {adapter.name} has width {width} but the coder reads "
            f"d_in={coder.d_in}; pass the hook the coder was trained on"
        )
    special = torch.tensor(_special_ids(adapter.tokenizer), dtype=torch.long)
    batch: list[str] = []

    def run(docs: list[str]) -> DocumentBatch:
        ids, mask = adapter.encode(docs, prepend_bos=True)
        ids, mask = ids[:, :max_tokens], mask[:, :max_tokens]
        acts = adapter.run(ids, mask, [hook])[hook]
        acts = acts.flatten(2) if acts.dim() > 3 else acts
        keep = mask.bool() & ~torch.isin(ids, special.to(ids.device))
        b_idx, t_idx = keep.nonzero(as_tuple=True)
        x = acts[b_idx, t_idx].float().to(coder.device)  # [tokens, d_in]
        b_idx = b_idx.to(coder.device)
        with torch.no_grad():
            tok_codes = coder.encode(x) if x.shape[0] else x.new_zeros(0, coder.n_latents)
        tok_codes = tok_codes.to_dense() if isinstance(tok_codes, SparseCodes) else tok_codes
        n = torch.bincount(b_idx, minlength=len(docs))
        denom = n.clamp(min=1).unsqueeze(1).to(tok_codes.dtype)
        sums = tok_codes.new_zeros(len(docs), coder.n_latents).index_add_(0, b_idx, tok_codes)
        mean_acts = None
        if with_activations:
            mean_acts = x.new_zeros(len(docs), x.shape[1]).index_add_(0, b_idx, x) / denom
            mean_acts = mean_acts.cpu()
        codes = to_sparse(sums / denom)
        codes = SparseCodes(codes.indices.cpu(), codes.values.cpu(), codes.n_latents)
        return DocumentBatch(codes, n.cpu(), mean_acts)

    for t in texts:
        if not isinstance(t, str):
            raise ValueError(f"documents must be strings, got {type(t).__name__}")
        batch.append(t)
        if len(batch) == batch_size:
            yield run(batch)
            batch = []
    if batch:
        yield run(batch)


def document_codes(
    coder: Any,
    adapter: Any,
    hook: str,
    texts: Iterable[str],
    *,
    batch_size: int = 16,
    max_tokens: int = 128,
) -> Tensor:
    """Dense mean codes ``[n_docs, n_latents]`` of ``texts`` (for small sets; see
    :func:`iter_document_codes` for streaming)."""
    parts = [
        b.codes.to_dense()
        for b in iter_document_codes(
            coder, adapter, hook, texts, batch_size=batch_size, max_tokens=max_tokens
        )
    ]
    if not parts:
        raise ValueError("no documents given")
    return torch.cat(parts)
