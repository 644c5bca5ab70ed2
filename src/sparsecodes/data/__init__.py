"""Corpora and tokenised windows.

``load_texts(spec=None)`` yields documents (None = an embedded ~1M-character corpus of Python's
own documentation); ``token_windows(texts, tokenizer, context_size)`` yields fixed-length
:class:`Window` s whose ``keep`` mask is False at BOS/special positions; ``corpus_fingerprint``
hashes a spec and its content for manifests.
"""

from sparsecodes.data.corpus import EMBEDDED_CHARS, corpus_fingerprint, embedded_texts, load_texts
from sparsecodes.data.windows import (
    Window,
    batch_windows,
    bos_id,
    separator_id,
    token_stream,
    token_windows,
)

__all__ = [
    "EMBEDDED_CHARS",
    "Window",
    "batch_windows",
    "bos_id",
    "corpus_fingerprint",
    "embedded_texts",
    "load_texts",
    "separator_id",
    "token_stream",
    "token_windows",
]
