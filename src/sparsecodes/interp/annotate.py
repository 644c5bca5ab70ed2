"""Which latents fire on which tokens of a text: the engine of ``serve`` and ``inspect``.

:func:`annotate` tokenises a text (with BOS, as in training windows), runs the model to the hook,
encodes every non-special token with the coder and keeps each token's strongest latents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

MAX_TEXT_CHARS = 20_000


@dataclass
class Annotation:
    """Per token: its string, whether it is special (not encoded) and its top latents.

    ``latents[i]`` is a list of ``(latent_id, activation)`` pairs, strongest first (empty for
    special tokens and tokens where nothing fires).
    """

    tokens: list[str]
    token_ids: list[int]
    special: list[bool]
    latents: list[list[tuple[int, float]]]

    def to_json(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "token_ids": self.token_ids,
            "special": self.special,
            "latents": [[[i, round(a, 4)] for i, a in row] for row in self.latents],
        }


class TokenStrings:
    """Display strings of token ids, decoded one id at a time and cached."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        s = self._cache.get(token_id)
        if s is None:
            try:
                s = self.tokenizer.decode([token_id])
            except Exception:
                s = ""
            if not s:
                tok = self.tokenizer.convert_ids_to_tokens(token_id)
                s = str(tok) if tok is not None else f"<{token_id}>"
            self._cache[token_id] = s
        return s


@torch.no_grad()
def annotate(
    coder: Any,
    adapter: Any,
    hook: str,
    text: str,
    *,
    top_n: int = 5,
    strings: TokenStrings | None = None,
) -> Annotation:
    """Annotate ``text``: each token's ``top_n`` latents by activation (activations > 0 only)."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(
            f"text has {len(text)} characters; at most {MAX_TEXT_CHARS} are annotated at once"
        )
    if top_n < 1:
        raise ValueError(f"top_n must be at least 1, got {top_n}")
    strings = strings or TokenStrings(adapter.tokenizer)
    ids, mask = adapter.encode([text])
    special_ids = set(getattr(adapter.tokenizer, "all_special_ids", []) or [])
    row = ids[0].tolist()
    special = [i in special_ids for i in row]
    if row:
        special[0] = special[0] or row[0] in special_ids
    acts = adapter.run(ids, mask, [hook])[hook]
    acts = acts.flatten(2) if acts.dim() > 3 else acts
    keep = torch.tensor([not s for s in special], device=acts.device)
    latents: list[list[tuple[int, float]]] = [[] for _ in row]
    if keep.any():
        x = acts[0][keep].float().to(coder.device)
        codes = coder.encode(x).float()  # [n, L]
        vals, idx = codes.topk(min(top_n, codes.shape[1]), dim=1)
        positions = keep.nonzero().flatten().tolist()
        for p, vs, js in zip(positions, vals.tolist(), idx.tolist(), strict=True):
            latents[p] = [(j, v) for v, j in zip(vs, js, strict=True) if v > 0]
    return Annotation(
        tokens=[strings(i) for i in row], token_ids=row, special=special, latents=latents
    )
