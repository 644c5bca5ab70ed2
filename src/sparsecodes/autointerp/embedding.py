"""Score an explanation by embedding similarity: no chat model at all.

The explanation and every held-out context are embedded with a sentence encoder (the embedded
all-MiniLM-L6-v2 by default; see :func:`sparsecodes.models.embed_sentences`). A good explanation
is closer (cosine) to the contexts where the latent fires than to those where it does not; the
score is the ROC AUC of the cosine similarity separating held-out activating from non-activating
contexts (0.5 chance, 1.0 perfect), with a stratified bootstrap interval. Contexts are embedded
unmarked (their plain text), once per distinct text (cached across latents).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from sparsecodes.autointerp.examples import Context
from sparsecodes.metrics.intervals import Interval, auroc, auroc_interval


@dataclass(frozen=True)
class EmbeddingResult:
    """ROC AUC of explanation-context cosine similarity (activating vs non-activating)."""

    score: float
    n_pos: int
    n_neg: int
    mean_similarity_pos: float
    mean_similarity_neg: float
    interval: Interval


class SentenceEmbedder:
    """Embeds texts with an encoder model adapter, caching each distinct text.

    Args:
        adapter: a :class:`~sparsecodes.models.ModelAdapter` of a sentence encoder, or None to
            load the embedded ``minilm-l6``.
        query_prefix: text put before every explanation (some embedding models want an
            instruction such as ``"Represent this description: "``; MiniLM wants none).
    """

    def __init__(
        self,
        adapter: Any = None,
        *,
        query_prefix: str = "",
        batch_size: int = 64,
        max_length: int = 128,
        device: str = "auto",
    ) -> None:
        if adapter is None:
            from sparsecodes.models import load_model

            adapter = load_model("minilm-l6", device=device)
        self.adapter = adapter
        self.query_prefix = query_prefix
        self.batch_size = batch_size
        self.max_length = max_length
        self._cache: dict[str, Tensor] = {}

    def describe(self) -> str:
        return f"sentence embeddings of {self.adapter.name} (mean-pooled, cosine)"

    @property
    def n_embedded(self) -> int:
        """How many distinct texts were embedded so far (each once: the scorer's cost)."""
        return len(self._cache)

    def embed(self, texts: Sequence[str]) -> Tensor:
        """``[len(texts), d]`` unit-norm embeddings (cached per text)."""
        from sparsecodes.models import embed_sentences

        new = sorted({t for t in texts if t not in self._cache})
        if new:
            emb = embed_sentences(
                self.adapter, new, batch_size=self.batch_size, max_length=self.max_length
            )
            self._cache.update(zip(new, emb, strict=True))
        return torch.stack([self._cache[t] for t in texts])


class Embedder(Protocol):
    """Anything that embeds texts to unit-norm rows (``[n, d]``), with a prefix for queries."""

    query_prefix: str

    def embed(self, texts: Sequence[str]) -> Tensor: ...

    def describe(self) -> str: ...


def embedding_score(
    embedder: Embedder,
    explanation: str,
    positives: Sequence[Context],
    negatives: Sequence[Context],
    *,
    seed: int = 0,
) -> EmbeddingResult:
    """ROC AUC of ``cos(explanation, context)`` for ``positives`` against ``negatives``."""
    if not explanation.strip():
        raise ValueError("explanation is empty; nothing to embed")
    if not positives or not negatives:
        raise ValueError(
            f"the embedding score needs activating and non-activating contexts, got "
            f"{len(positives)} and {len(negatives)}"
        )
    q = embedder.embed([embedder.query_prefix + explanation])[0]
    sims = embedder.embed([c.text for c in [*positives, *negatives]]) @ q
    s = sims.double().numpy()
    pos, neg = s[: len(positives)], s[len(positives) :]
    return EmbeddingResult(
        score=auroc(pos, neg),
        n_pos=len(pos),
        n_neg=len(neg),
        mean_similarity_pos=float(np.mean(pos)),
        mean_similarity_neg=float(np.mean(neg)),
        interval=auroc_interval(pos, neg, seed=seed),
    )
