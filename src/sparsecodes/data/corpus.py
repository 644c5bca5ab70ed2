"""Text corpora: an embedded default that ships with Python, local files, or a ``datasets`` name.

``load_texts(spec)`` yields documents (``str``) in a deterministic order:

- ``None`` or ``"embedded"``: about a million characters of English technical prose from the
  running Python's own documentation: every distinct ``pydoc_data`` topic (sorted by key), then, per
  standard-library module in sorted path order, its module, class and function docstrings
  (read with ``ast``, nothing is imported), until :data:`EMBEDDED_CHARS` is reached. Test
  suites, ``idlelib``, ``lib2to3``, ``encodings`` and ``site-packages`` are skipped. The text
  depends on the Python version, which :func:`corpus_fingerprint` therefore records.
- a ``.txt`` file: split into documents on blank lines; a directory: every ``.txt`` file is one
  document, ``.jsonl`` / ``.parquet`` files are read as below (sorted by name).
- a ``.jsonl`` file: one JSON object per line, the ``text_field`` (default ``"text"``) of each.
- a ``.parquet`` file: the ``text_field`` column (pyarrow).
- ``"hf:NAME"`` (or ``"hf:NAME:CONFIG"``): a Hugging Face ``datasets`` dataset, streamed, split
  ``split``; needs the network (a clear error offline).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import re
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

EMBEDDED_CHARS = 1_000_000
"""Target size of the embedded corpus in characters (the last document may overshoot)."""

_SKIP_DIRS = {
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "encodings",
    "site-packages",
    "dist-packages",
    "__pycache__",
    "turtledemo",
    "pydoc_data",
    "ensurepip",
}
_BLANK_LINES = re.compile(r"\n[ \t]*\n+")


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]  # prune before descending
        for f in filenames:
            if f.endswith(".py"):
                p = Path(dirpath, f)
                found.append((p.relative_to(root).as_posix(), p))
    return [p for _, p in sorted(found)]


def _module_docs(path: Path) -> str:
    """Module, class and function docstrings of one source file, joined by blank lines."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return ""
    docs = []
    nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for node in ast.walk(tree):
        if isinstance(node, nodes):
            d = ast.get_docstring(node)
            if d and len(d) > 40:
                docs.append(d.strip())
    return "\n\n".join(docs)


@functools.lru_cache(maxsize=4)
def _embedded(max_chars: int) -> tuple[str, ...]:
    from pydoc_data.topics import topics

    docs: list[str] = []
    seen: set[str] = set()  # some topics repeat (e.g. "if" and "elif")
    total = 0

    def texts() -> Iterator[str]:
        for key in sorted(topics):
            yield topics[key].strip()
        for path in _stdlib_files():
            yield _module_docs(path)

    for text in texts():
        if text and text not in seen:
            seen.add(text)
            docs.append(text)
            total += len(text)
            if total >= max_chars:
                break
    return tuple(docs)


def embedded_texts(max_chars: int = EMBEDDED_CHARS) -> list[str]:
    """The embedded corpus as a list of documents (cached per process)."""
    if max_chars <= 0:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    return list(_embedded(max_chars))


def _read_txt(path: Path) -> Iterator[str]:
    text = path.read_text(encoding="utf-8")
    for doc in _BLANK_LINES.split(text):
        doc = doc.strip()
        if doc:
            yield doc


def _read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or text_field not in row:
                keys = list(row) if isinstance(row, dict) else type(row).__name__
                raise ValueError(
                    f"{path}:{lineno} has no field {text_field!r} (found {keys}); "
                    "pass text_field= to name the field holding the text"
                )
            if row[text_field]:
                yield str(row[text_field])


DATA_EXTRA_FIX = "pip install 'sparsecodes[data]'"
"""How to install the optional packages for parquet files and ``hf:`` datasets."""


def _read_parquet(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ValueError(
            f"reading the parquet corpus {path} needs the `pyarrow` package: {DATA_EXTRA_FIX}"
        ) from e

    pf = pq.ParquetFile(path)
    if text_field not in pf.schema_arrow.names:
        raise ValueError(
            f"{path} has no column {text_field!r} (columns: {pf.schema_arrow.names}); "
            "pass text_field= to name the column holding the text"
        )
    for batch in pf.iter_batches(columns=[text_field]):
        for t in batch.column(0).to_pylist():
            if t:
                yield str(t)


def _read_path(path: Path, text_field: str) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        yield from _read_txt(path)
    elif suffix == ".jsonl":
        yield from _read_jsonl(path, text_field)
    elif suffix == ".parquet":
        yield from _read_parquet(path, text_field)
    else:
        raise ValueError(
            f"cannot read corpus file {path}: unknown suffix {suffix!r}; "
            "use .txt, .jsonl or .parquet (or a directory of them)"
        )


def _read_dir(path: Path, text_field: str) -> Iterator[str]:
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and p.suffix.lower() in (".txt", ".jsonl", ".parquet")
    )
    if not files:
        raise ValueError(f"corpus directory {path} holds no .txt, .jsonl or .parquet files")
    for f in files:
        if f.suffix.lower() == ".txt":
            text = f.read_text(encoding="utf-8").strip()
            if text:
                yield text
        else:
            yield from _read_path(f, text_field)


def _read_hf(name: str, split: str, text_field: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError as e:
        raise ValueError(f"corpus {name!r} needs the `datasets` package: {DATA_EXTRA_FIX}") from e
    ds_name, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(ds_name, config or None, split=split, streaming=True)
    except Exception as e:  # datasets raises many types when offline
        raise ValueError(
            f"could not load dataset {ds_name!r} (split {split!r}): {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}. Datasets need the network (or a local "
            "cache); offline, use the embedded corpus (spec=None) or a local .txt/.jsonl/.parquet"
        ) from e
    for row in ds:
        if text_field not in row:
            raise ValueError(
                f"dataset {ds_name!r} has no field {text_field!r} (fields: {list(row)}); "
                "pass text_field="
            )
        if row[text_field]:
            yield str(row[text_field])


def load_texts(
    spec: str | os.PathLike[str] | None = None,
    *,
    text_field: str = "text",
    split: str = "train",
    max_chars: int | None = None,
) -> Iterator[str]:
    """Documents of the corpus ``spec`` (see the module docstring), in a deterministic order.

    ``max_chars`` stops after the document that reaches that many characters (for the embedded
    corpus it sets the size, default :data:`EMBEDDED_CHARS`).
    """
    if spec is None or (isinstance(spec, str) and spec == "embedded"):
        yield from embedded_texts(max_chars or EMBEDDED_CHARS)
        return
    s = os.fspath(spec)
    path = Path(s)
    if path.is_dir():
        docs: Iterable[str] = _read_dir(path, text_field)
    elif path.is_file():
        docs = _read_path(path, text_field)
    elif s.startswith("hf:"):
        docs = _read_hf(s[3:], split, text_field)
    elif path.suffix.lower() in (".txt", ".jsonl", ".parquet"):
        raise ValueError(f"corpus file {s!r} does not exist")
    else:
        raise ValueError(
            f"unknown corpus {s!r}: use None or 'embedded' for the built-in corpus, a path to a "
            ".txt/.jsonl/.parquet file or directory, or 'hf:NAME' for a datasets name"
        )
    total = 0
    for d in docs:
        yield d
        total += len(d)
        if max_chars is not None and total >= max_chars:
            return


def corpus_fingerprint(
    spec: str | os.PathLike[str] | None,
    items: Iterable[Any] = (),
    **params: Any,
) -> str:
    """sha256 hex digest over the corpus ``spec``, ``params`` and the content of ``items``.

    ``items`` are texts (``str``), token windows (anything with ``input_ids``/``keep`` tensors)
    or token-id tensors; each is hashed with its length so boundaries count. For the embedded
    corpus the Python version is included, since the text comes from the standard library.
    """
    import torch

    h = hashlib.sha256()
    spec_s = "embedded" if spec is None else os.fspath(spec)
    h.update(f"spec={spec_s}\n".encode())
    if spec_s == "embedded":
        h.update(f"python={sys.version_info[:3]}\n".encode())
    for k in sorted(params):
        h.update(f"{k}={params[k]!r}\n".encode())
    for item in items:
        if isinstance(item, str):
            b = item.encode("utf-8")
            h.update(b"T" + len(b).to_bytes(8, "little") + b)
        else:
            tensors = (
                [item.input_ids, item.keep]
                if hasattr(item, "input_ids")
                else [torch.as_tensor(item)]
            )
            for t in tensors:
                b = t.detach().cpu().contiguous().numpy().tobytes()
                h.update(b"W" + str(t.dtype).encode() + len(b).to_bytes(8, "little") + b)
    return h.hexdigest()
