"""Sentence embeddings from an encoder model (the embedded all-MiniLM-L6-v2 by default).

The sentence-transformers recipe for MiniLM: the last hidden state, mean-pooled over the
non-padding tokens, then L2-normalised, so the dot product of two embeddings is their cosine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def embed_sentences(
    adapter: Any, texts: Sequence[str], *, batch_size: int = 64, max_length: int = 128
) -> Tensor:
    """``[len(texts), d_model]`` unit-norm mean-pooled embeddings of ``texts`` (float32, CPU).

    ``adapter``: a :class:`~sparsecodes.models.ModelAdapter` of an encoder (``load_model(
    "minilm-l6")``). Texts longer than ``max_length`` tokens are truncated.
    """
    if not texts:
        raise ValueError("texts is empty; pass at least one text to embed")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must be strings; items {bad[:5]} are not")
    tok, model = adapter.tokenizer, adapter.model
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tok(
            list(texts[i : i + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
        h = model(**enc).last_hidden_state.float()
        m = enc["attention_mask"].unsqueeze(-1).float()
        out.append(F.normalize((h * m).sum(1) / m.sum(1).clamp_min(1.0), dim=-1).cpu())
    return torch.cat(out)
