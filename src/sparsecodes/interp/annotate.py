"""Which latents fire on which tokens of a text: the engine of ``serve`` and ``inspect``.

:func:`annotate` tokenises a text (with BOS, as in training windows), runs the model to the hook,
encodes every non-special token with the coder and keeps each token's strongest latents.
"""

from __future__ import annotations

import codecs
import json
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


def _byte_level_map(tokenizer: Any) -> dict[str, int] | None:
    """GPT-2's unicode-symbol -> byte table when ``tokenizer`` decodes with a ByteLevel decoder."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        decoder = json.loads(backend.to_str()).get("decoder")
    except (AttributeError, TypeError, ValueError):
        return None
    if '"ByteLevel"' not in json.dumps(decoder):
        return None
    # the byte -> printable-symbol table of GPT-2 (tokenizers' ByteLevel uses the same one)
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    bs += list(range(ord("®"), ord("ÿ") + 1))
    table = {chr(b): b for b in bs}
    n = 0
    for b in range(256):
        if b not in bs:
            table[chr(256 + n)] = b
            n += 1
    return table


class TokenStrings:
    """Display strings of token ids.

    ``strings(token_id)`` is one token out of context (the logit lens's promoted tokens): decoded
    alone and cached; a token holding only part of a UTF-8 character shows its bytes escaped
    (``\\xe6``), never ``\ufffd``.

    ``strings.sequence(ids)`` is a run of consecutive tokens (a context, an annotated text): a
    byte-level BPE tokenizer splits typographic quotes, accented and non-Latin characters over
    several tokens, so each token's string is what it adds to the decoded text. The character
    appears on the token that completes it and the tokens before show ``""``; bytes continuing a
    character begun before ``ids[0]`` are dropped. Away from those edges
    ``"".join(strings.sequence(ids)) == tokenizer.decode(ids)``.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}
        self._byte_map = _byte_level_map(tokenizer)
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        self._added = {int(i) for i in added}
        self._bytes: dict[int, bytes | str] = {}
        self._seq_cache: dict[tuple[int, ...], list[str]] = {}

    def _decode(self, ids: list[int]) -> str:
        try:
            return self.tokenizer.decode(ids, clean_up_tokenization_spaces=False)
        except TypeError:
            return self.tokenizer.decode(ids)

    def __call__(self, token_id: int) -> str:
        s = self._cache.get(token_id)
        if s is None:
            try:
                s = self._decode([token_id])
            except Exception:
                s = ""
            if "\ufffd" in s:
                raw = self._token_bytes(token_id)
                if isinstance(raw, bytes):
                    s = raw.decode("utf-8", errors="backslashreplace")
                else:
                    tok = self.tokenizer.convert_ids_to_tokens(token_id)
                    s = str(tok) if tok is not None else s
            if not s:
                tok = self.tokenizer.convert_ids_to_tokens(token_id)
                s = str(tok) if tok is not None else f"<{token_id}>"
            self._cache[token_id] = s
        return s

    def _token_bytes(self, token_id: int) -> bytes | str:
        """The token's bytes (byte-level tokenizers), or its text for added/special tokens."""
        raw = self._bytes.get(token_id)
        if raw is None:
            table = self._byte_map
            tok = None
            if table is not None and token_id not in self._added:
                tok = self.tokenizer.convert_ids_to_tokens(token_id)
            if isinstance(tok, str) and tok and all(ch in table for ch in tok):  # type: ignore[operator]
                raw = bytes(table[ch] for ch in tok)  # type: ignore[index]
            else:
                raw = self._decode([token_id])
            self._bytes[token_id] = raw
        return raw

    def sequence(self, ids: list[int]) -> list[str]:
        """One display string per token of the consecutive tokens ``ids`` (see the class)."""
        ids = [int(i) for i in ids]
        if self._byte_map is not None:
            return self._sequence_bytes(ids)
        key = tuple(ids)  # contexts recur across latents; decoding is the slow path
        out = self._seq_cache.get(key)
        if out is None:
            if len(self._seq_cache) >= 100_000:
                self._seq_cache.clear()
            out = self._seq_cache[key] = self._sequence_decoded(ids)
        return list(out)

    def _sequence_bytes(self, ids: list[int]) -> list[str]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")
        out: list[str] = []
        at_start = True
        for t in ids:
            raw = self._token_bytes(t)
            if isinstance(raw, str):  # an added or special token: its text, whole
                decoder.reset()  # a character left incomplete before it is dropped
                out.append(raw)
                at_start = False
                continue
            if at_start:  # the run may begin inside a character: skip its continuation bytes
                k = 0
                while k < len(raw) and 0x80 <= raw[k] < 0xC0:
                    k += 1
                raw = raw[k:]
                at_start = not raw
            out.append(decoder.decode(raw))
        return out

    def _sequence_decoded(self, ids: list[int]) -> list[str]:
        # other tokenizers: what decoding one more token adds, over a short sliding window
        out: list[str] = []
        prefix = read = 0
        started = False
        for i in range(len(ids)):
            prev = self._decode(ids[prefix:read])
            new = self._decode(ids[prefix : i + 1])
            if new.endswith("\ufffd"):  # the last character is not complete yet
                out.append("")
                continue
            same = next(
                (k for k, (a, b) in enumerate(zip(prev, new, strict=False)) if a != b), len(prev)
            )
            piece = new[min(same, len(new)) :]
            if not started:
                piece = piece.lstrip("\ufffd")
                started = bool(piece)
            out.append(piece)
            prefix, read = read, i + 1
        return out


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
    return Annotation(tokens=strings.sequence(row), token_ids=row, special=special, latents=latents)
