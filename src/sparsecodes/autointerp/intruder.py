"""Score a latent by intruder detection: shown several contexts where it fires and one where it
does not, can a model pick the odd one out? No explanation is involved: the score says whether
the latent's activating contexts share something a reader can see.

Each trial shows ``n_shown`` numbered excerpts: ``n_shown - 1`` activating contexts drawn (seeded)
from the latent's activating contexts, marked ``<<where it fires>>``, and one non-activating
context (the intruder) marked at as many random tokens as the others average, inserted at a random
position. The reply must hold exactly one ``Answer: N`` with ``N`` in ``1..n_shown``; anything
else is unparseable (an error, never a guess). The score is the fraction of trials answered
correctly; chance is ``1 / n_shown``; the interval is Wilson's.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from sparsecodes.autointerp.client import ChatBackend, Message, call_with_retries
from sparsecodes.autointerp.examples import Context
from sparsecodes.autointerp.explain import CLOSE, OPEN, render_context
from sparsecodes.autointerp.fuzz import marked_positions
from sparsecodes.metrics.intervals import Interval, wilson_interval

INTRUDER_SYSTEM = (
    "You are shown numbered text excerpts with some tokens marked "
    f"{OPEN}like this{CLOSE}. In all but one excerpt the marked tokens have something in common. "
    "One excerpt is the intruder: its marked tokens do not share it. Reply with exactly one "
    "line giving the intruder's number:\nAnswer: 3"
)

_ANSWER_ONE = re.compile(r"answer\s*:\s*\[?\s*(\d+)\s*\]?", re.IGNORECASE)


def intruder_messages(excerpts: Sequence[str]) -> list[Message]:
    """The chat messages asking which of ``excerpts`` (numbered from 1) is the intruder."""
    if len(excerpts) < 2:
        raise ValueError(f"an intruder trial needs at least 2 excerpts, got {len(excerpts)}")
    lines = [f"{i}. {e}" for i, e in enumerate(excerpts, start=1)]
    user = (
        "Excerpts:\n" + "\n".join(lines) + f"\n\nWhich of the excerpts 1-{len(excerpts)} is "
        "the intruder?"
    )
    return [{"role": "system", "content": INTRUDER_SYSTEM}, {"role": "user", "content": user}]


def parse_intruder(answer: str, n: int) -> int:
    """The 1-based excerpt number in ``Answer: N``; ``ValueError`` unless exactly one is there
    and it is in ``1..n``."""
    found = _ANSWER_ONE.findall(answer)
    if len(found) != 1:
        raise ValueError(
            f"expected exactly one 'Answer: N', found {len(found)}" if found else "no 'Answer: N'"
        )
    k = int(found[0])
    if not 1 <= k <= n:
        raise ValueError(f"answer {k} is outside the excerpts 1-{n}")
    return k


@dataclass(frozen=True)
class IntruderResult:
    """Fraction of trials where the intruder was found, with the Wilson interval."""

    score: float
    n_trials: int
    n_correct: int
    n_shown: int
    chance: float
    n_calls: int
    interval: Interval


def intruder(
    backend: ChatBackend,
    activating: Sequence[Context],
    non_activating: Sequence[Context],
    *,
    n_shown: int = 5,
    n_trials: int | None = None,
    seed: int = 0,
    attempts: int = 3,
    backoff: float = 1.0,
    threshold: float = 0.0,
) -> IntruderResult:
    """Run ``n_trials`` intruder trials (default: one per non-activating context).

    Raises ``ValueError`` when there are fewer than ``n_shown - 1`` activating contexts, no
    non-activating one, or an activating context with no active token; and
    :class:`~sparsecodes.autointerp.client.ChatCallError` when a trial fails after ``attempts``.
    """
    if n_shown < 2:
        raise ValueError(f"n_shown must be at least 2, got {n_shown}")
    if len(activating) < n_shown - 1 or not non_activating:
        raise ValueError(
            f"intruder trials of {n_shown} excerpts need at least {n_shown - 1} activating and 1 "
            f"non-activating contexts, got {len(activating)} and {len(non_activating)}"
        )
    marks = [marked_positions(c, threshold) for c in activating]
    if any(not m for m in marks):
        raise ValueError("an activating context has no active token; pass activating contexts")
    trials = len(non_activating) if n_trials is None else n_trials
    if trials < 1:
        raise ValueError(f"n_trials must be at least 1, got {trials}")
    rng = random.Random(f"autointerp-intruder:{seed}")
    correct = 0
    for t in range(trials):
        shown = rng.sample(range(len(activating)), n_shown - 1)
        excerpts = [render_context(activating[i], threshold=threshold) for i in shown]
        odd = non_activating[t % len(non_activating)]
        n_marks = max(1, round(sum(len(marks[i]) for i in shown) / len(shown)))
        n_marks = min(n_marks, len(odd.tokens))
        fake = [0.0] * len(odd.tokens)
        for p in rng.sample(range(len(odd.tokens)), n_marks):
            fake[p] = 1.0
        where = rng.randrange(n_shown)
        excerpts.insert(where, render_context(Context(list(odd.tokens), fake)))
        k, _ = call_with_retries(
            backend,
            intruder_messages(excerpts),
            lambda a: parse_intruder(a, n_shown),
            attempts=attempts,
            backoff=backoff,
        )
        correct += k == where + 1
    return IntruderResult(
        score=correct / trials,
        n_trials=trials,
        n_correct=correct,
        n_shown=n_shown,
        chance=1.0 / n_shown,
        n_calls=trials,
        interval=wilson_interval(correct, trials),
    )
