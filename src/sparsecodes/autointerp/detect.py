"""Score an explanation by detection: can a model, given only the explanation, tell held-out
activating contexts from non-activating ones?

The held-out activating (positive) and non-activating (negative) contexts are shuffled together
(seeded) and shown unmarked, in one of two strict answer formats:

- ``"list"``: prompts of ``batch_size`` numbered excerpts; the reply must hold exactly one
  ``Answer: [i, j, ...]`` with the numbers of the excerpts that contain the feature
  (``Answer: []`` for none), distinct and in range.
- ``"yesno"``: one excerpt per prompt; the reply must start with ``yes`` or ``no`` (optionally
  after ``Answer:``). Costs one call per excerpt, but small models follow it far more often.

Anything else is unparseable (an error, never a guess). The score is the balanced accuracy
``(TP / n_pos + TN / n_neg) / 2``: 0.5 is chance whatever the class sizes, 1.0 perfect.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sparsecodes.autointerp.client import ChatBackend, Message, call_with_retries
from sparsecodes.autointerp.examples import Context
from sparsecodes.autointerp.explain import render_context

DETECT_SYSTEM = (
    "You check an explanation of a feature of a language model. You are given the explanation "
    "and numbered text excerpts. Decide for each excerpt whether it contains the feature "
    "described. Reply with exactly one line listing the numbers of the excerpts that contain "
    "it:\nAnswer: [1, 4]\nor, if none does:\nAnswer: []"
)

DETECT_YESNO_SYSTEM = (
    "You check an explanation of a feature of a language model. You are given the explanation "
    "and one text excerpt. Does the excerpt contain the feature described? Reply with one word: "
    "yes or no."
)

DetectFormat = Literal["list", "yesno"]
DETECT_FORMATS: tuple[str, ...] = ("list", "yesno")

_ANSWER = re.compile(r"answer\s*:\s*\[([^\[\]]*)\]", re.IGNORECASE)
_NUMBERS = re.compile(r"^\s*(\d+\s*(,\s*\d+\s*)*)?$")


def detect_messages(explanation: str, contexts: Sequence[Context]) -> list[Message]:
    """The chat messages asking which of ``contexts`` (numbered from 1) match ``explanation``."""
    if not contexts:
        raise ValueError("contexts is empty; detection needs at least one context")
    lines = [f"{i}. {render_context(c, mark=False)}" for i, c in enumerate(contexts, start=1)]
    user = (
        f"Explanation: {explanation}\n\nExcerpts:\n"
        + "\n".join(lines)
        + f"\n\nWhich of the excerpts 1-{len(contexts)} contain the feature?"
    )
    return [{"role": "system", "content": DETECT_SYSTEM}, {"role": "user", "content": user}]


def detect_yesno_messages(explanation: str, context: Context) -> list[Message]:
    """The chat messages asking whether one ``context`` matches ``explanation``."""
    user = (
        f"Explanation: {explanation}\n\nExcerpt: {render_context(context, mark=False)}\n\n"
        "Does the excerpt contain the feature? Answer yes or no."
    )
    return [{"role": "system", "content": DETECT_YESNO_SYSTEM}, {"role": "user", "content": user}]


_YESNO = re.compile(r"^\W*(?:answer\W*)?(yes|no)\b", re.IGNORECASE)


def parse_yesno(answer: str) -> bool:
    """True for a reply starting ``yes``, False for ``no``; ``ValueError`` otherwise."""
    m = _YESNO.match(answer)
    if not m:
        raise ValueError("the reply does not start with yes or no")
    return m.group(1).lower() == "yes"


def parse_detection(answer: str, n: int) -> set[int]:
    """The 1-based excerpt numbers in ``Answer: [...]``; ``ValueError`` unless exactly one list
    of distinct numbers in ``1..n`` is there."""
    found = _ANSWER.findall(answer)
    if len(found) != 1:
        raise ValueError(
            f"expected exactly one 'Answer: [...]' list, found {len(found)}"
            if found
            else "no 'Answer: [...]' list"
        )
    body = found[0]
    if not _NUMBERS.match(body):
        raise ValueError(f"the list [{body}] is not comma-separated numbers")
    nums = [int(s) for s in body.split(",") if s.strip()]
    if len(set(nums)) != len(nums):
        raise ValueError(f"the list [{body}] repeats a number")
    bad = [k for k in nums if not 1 <= k <= n]
    if bad:
        raise ValueError(f"numbers {bad} are outside the excerpts 1-{n}")
    return set(nums)


def balanced_accuracy(predicted: Sequence[bool], truth: Sequence[bool]) -> float:
    """``(TP / n_pos + TN / n_neg) / 2``; needs at least one positive and one negative."""
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} labels")
    n_pos = sum(truth)
    n_neg = len(truth) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"balanced accuracy needs positives and negatives, got {n_pos} and {n_neg}"
        )
    tp = sum(p and t for p, t in zip(predicted, truth, strict=True))
    tn = sum((not p) and (not t) for p, t in zip(predicted, truth, strict=True))
    return 0.5 * (tp / n_pos + tn / n_neg)


@dataclass(frozen=True)
class Detection:
    """A detection result: ``score`` (balanced accuracy) with its counts."""

    score: float
    n_pos: int
    n_neg: int
    true_pos: int
    true_neg: int
    n_calls: int


def detect(
    backend: ChatBackend,
    explanation: str,
    positives: Sequence[Context],
    negatives: Sequence[Context],
    *,
    batch_size: int = 10,
    seed: int = 0,
    attempts: int = 3,
    backoff: float = 1.0,
    answer_format: DetectFormat = "list",
) -> Detection:
    """Ask ``backend`` which of the shuffled ``positives`` + ``negatives`` fit ``explanation``.

    ``answer_format``: ``"list"`` (``batch_size`` excerpts per prompt) or ``"yesno"`` (one per
    prompt). Raises :class:`~sparsecodes.autointerp.client.ChatCallError` when a prompt fails after
    ``attempts`` (then no score exists: a partial one would be biased), and ``ValueError`` when
    either side is empty.
    """
    if not positives or not negatives:
        raise ValueError(
            f"detection needs activating and non-activating contexts, got {len(positives)} and "
            f"{len(negatives)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if answer_format not in DETECT_FORMATS:
        raise ValueError(f"answer_format must be one of {DETECT_FORMATS}, got {answer_format!r}")
    items = [(c, True) for c in positives] + [(c, False) for c in negatives]
    random.Random(f"autointerp-detect:{seed}").shuffle(items)
    predicted: list[bool] = []
    calls = 0
    if answer_format == "yesno":
        for c, _ in items:
            yes, _ = call_with_retries(
                backend,
                detect_yesno_messages(explanation, c),
                parse_yesno,
                attempts=attempts,
                backoff=backoff,
            )
            predicted.append(yes)
            calls += 1
    else:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            chosen, _ = call_with_retries(
                backend,
                detect_messages(explanation, [c for c, _ in chunk]),
                lambda a, n=len(chunk): parse_detection(a, n),
                attempts=attempts,
                backoff=backoff,
            )
            calls += 1
            predicted += [i in chosen for i in range(1, len(chunk) + 1)]
    truth = [t for _, t in items]
    return Detection(
        score=balanced_accuracy(predicted, truth),
        n_pos=len(positives),
        n_neg=len(negatives),
        true_pos=sum(p and t for p, t in zip(predicted, truth, strict=True)),
        true_neg=sum((not p) and (not t) for p, t in zip(predicted, truth, strict=True)),
        n_calls=calls,
    )
