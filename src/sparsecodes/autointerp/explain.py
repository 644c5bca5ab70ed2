"""Explain a latent: show a chat model its top contexts, activating tokens marked, and ask for a
short description.

Tokens where the latent is active (activation above ``threshold``, by default any positive value)
are wrapped in ``<<`` ``>>``; adjacent active tokens share one pair of marks. The model is asked
for one line ``Explanation: <phrase>``; the phrase after the label is the explanation (a reply
without the label gives its first non-empty line, since an explanation is free text). An empty
reply is unparseable.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from sparsecodes.autointerp.client import Message
from sparsecodes.autointerp.examples import Context

OPEN, CLOSE = "<<", ">>"
MAX_EXPLANATION_CHARS = 300

EXPLAIN_SYSTEM = (
    "You are an interpretability researcher studying a feature of a language model. You are "
    f"shown text excerpts in which the feature fires; the tokens where it fires are marked like "
    f"{OPEN}this{CLOSE}. Say in one short phrase what the marked tokens have in common: a word, a "
    "kind of word, a pattern, a topic or a grammatical role. Reply with exactly one line:\n"
    "Explanation: <short phrase>"
)


def display_token(token: str) -> str:
    """A token made safe for a one-line excerpt (newlines and tabs shown escaped)."""
    return token.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")


def render_context(ctx: Context, *, mark: bool = True, threshold: float = 0.0) -> str:
    """The context's text on one line; with ``mark``, tokens with act > ``threshold`` in ``<<>>``."""
    parts: list[str] = []
    inside = False
    for tok, a in zip(ctx.tokens, ctx.acts, strict=True):
        active = mark and a > threshold
        if active and not inside:
            parts.append(OPEN)
        elif not active and inside:
            parts.append(CLOSE)
        inside = active
        parts.append(display_token(tok))
    if inside:
        parts.append(CLOSE)
    return "".join(parts).strip()


def explain_messages(contexts: Sequence[Context], *, threshold: float = 0.0) -> list[Message]:
    """The chat messages asking for an explanation of the latent active in ``contexts``."""
    if not contexts:
        raise ValueError("contexts is empty; an explanation needs at least one activating context")
    lines = [
        f"{i}. {render_context(c, threshold=threshold)}" for i, c in enumerate(contexts, start=1)
    ]
    user = "Excerpts (feature marked with " + OPEN + CLOSE + "):\n" + "\n".join(lines)
    return [{"role": "system", "content": EXPLAIN_SYSTEM}, {"role": "user", "content": user}]


_LABEL = re.compile(r"^\s*\**\s*explanation\s*\**\s*:\s*\**\s*(.*)$", re.IGNORECASE)


def parse_explanation(answer: str) -> str:
    """The explanation in a reply; raises ``ValueError`` when it holds none."""
    lines = [ln for ln in answer.splitlines() if ln.strip()]
    text = None
    for ln in lines:
        m = _LABEL.match(ln)
        if m:
            text = m.group(1)
            break
    if text is None and lines:
        text = lines[0]
    text = (text or "").strip().strip("*").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()  # a quoted phrase
    if not text:
        raise ValueError("the reply holds no explanation")
    return text[:MAX_EXPLANATION_CHARS]


def top_tokens_explanation(contexts: Sequence[Context], n: int = 3) -> str:
    """An explanation without any model: the ``n`` most frequent tokens (stripped) at which the
    latent is active in ``contexts`` (its top contexts), quoted: ``the tokens "a", "b", "c"``.

    A baseline: what an explainer that only lists the activating tokens would say. The embedding
    scorer tells these apart from another latent's (docs/benchmarks-suite.md)."""
    counts: Counter[str] = Counter()
    for c in contexts:
        counts.update(t.strip() or repr(t) for t, a in zip(c.tokens, c.acts, strict=True) if a > 0)
    words = [w for w, _ in counts.most_common(n)]
    if not words:
        raise ValueError("the contexts hold no active token; nothing to name")
    return "the tokens " + ", ".join(f'"{w}"' for w in words)
