"""Score an explanation by detection: can a model, given only the explanation, tell held-out
activating contexts from non-activating ones?

The held-out activating (positive) and non-activating (negative) contexts are shown unmarked and
shuffled together (seeded), in the ``"list"`` or ``"yesno"`` answer format of
:mod:`sparsecodes.autointerp.classify`. The score is the balanced accuracy
``(TP / n_pos + TN / n_neg) / 2``: 0.5 is chance whatever the class sizes, 1.0 perfect.
"""

from __future__ import annotations

from collections.abc import Sequence

from sparsecodes.autointerp.classify import (
    ANSWER_FORMATS,
    AnswerFormat,
    Classification,
    Task,
    classify,
    list_messages,
    parse_answer_list,
)
from sparsecodes.autointerp.client import ChatBackend, Message
from sparsecodes.autointerp.examples import Context
from sparsecodes.autointerp.explain import render_context

DETECTION = Task(
    system_list=(
        "You check an explanation of a feature of a language model. You are given the explanation "
        "and numbered text excerpts. Decide for each excerpt whether it contains the feature "
        "described. Reply with exactly one line listing the numbers of the excerpts that contain "
        "it:\nAnswer: [1, 4]\nor, if none does:\nAnswer: []"
    ),
    system_yesno=(
        "You check an explanation of a feature of a language model. You are given the explanation "
        "and one text excerpt. Does the excerpt contain the feature described? Reply with one "
        "word: yes or no."
    ),
    question="Which of the excerpts 1-{n} contain the feature?",
    question_one="Does the excerpt contain the feature? Answer yes or no.",
)

#: kept for callers of the earlier names
DetectFormat = AnswerFormat
DETECT_FORMATS = ANSWER_FORMATS
Detection = Classification


def detect_messages(explanation: str, contexts: Sequence[Context]) -> list[Message]:
    """The chat messages asking which of ``contexts`` (numbered from 1) match ``explanation``."""
    if not contexts:
        raise ValueError("contexts is empty; detection needs at least one context")
    return list_messages(DETECTION, explanation, [render_context(c, mark=False) for c in contexts])


def parse_detection(answer: str, n: int) -> set[int]:
    """The 1-based excerpt numbers in ``Answer: [...]`` (see
    :func:`~sparsecodes.autointerp.classify.parse_answer_list`)."""
    return parse_answer_list(answer, n)


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
    answer_format: AnswerFormat = "list",
) -> Classification:
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
    return classify(
        backend,
        DETECTION,
        explanation,
        [render_context(c, mark=False) for c in positives],
        [render_context(c, mark=False) for c in negatives],
        batch_size=batch_size,
        seed=seed,
        attempts=attempts,
        backoff=backoff,
        answer_format=answer_format,
    )
