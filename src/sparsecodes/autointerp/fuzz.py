"""Score an explanation by fuzzing: given the explanation, can a model tell contexts whose marked
tokens are where the latent fires from contexts marked at the wrong tokens?

Detection asks *whether* a context holds the feature; fuzzing asks whether the explanation also
says *where*. Positives are the held-out activating contexts with the tokens where the latent is
active marked ``<<like this>>``. Negatives are the non-activating contexts marked at the positions
where a randomly drawn (seeded) positive is marked: the same number and shape of marks, on tokens
where the latent is silent (a negative shorter than those positions keeps the marks that fit, or
one random mark if none does). The model answers, for each excerpt, whether the marked tokens are
what the explanation describes, in the ``"list"`` or ``"yesno"`` format of
:mod:`sparsecodes.autointerp.classify`; the score is the balanced accuracy (chance 0.5).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from sparsecodes.autointerp.classify import AnswerFormat, Classification, Task, classify
from sparsecodes.autointerp.client import ChatBackend
from sparsecodes.autointerp.examples import Context
from sparsecodes.autointerp.explain import CLOSE, OPEN, render_context

FUZZING = Task(
    system_list=(
        "You check an explanation of a feature of a language model. You are given the explanation "
        f"and numbered text excerpts in which some tokens are marked {OPEN}like this{CLOSE}. For "
        "each excerpt, decide whether the marked tokens are correctly marked: are they what the "
        "explanation describes? Reply with exactly one line listing the numbers of the correctly "
        "marked excerpts:\nAnswer: [1, 4]\nor, if none is:\nAnswer: []"
    ),
    system_yesno=(
        "You check an explanation of a feature of a language model. You are given the explanation "
        f"and one text excerpt in which some tokens are marked {OPEN}like this{CLOSE}. Are the "
        "marked tokens what the explanation describes? Reply with one word: yes or no."
    ),
    question="Which of the excerpts 1-{n} are correctly marked?",
    question_one="Are the marked tokens what the explanation describes? Answer yes or no.",
)


def marked_positions(ctx: Context, threshold: float = 0.0) -> list[int]:
    """Indices of the tokens of ``ctx`` whose activation exceeds ``threshold``."""
    return [i for i, a in enumerate(ctx.acts) if a > threshold]


def mismark(ctx: Context, positions: Sequence[int], rng: random.Random) -> str:
    """``ctx`` rendered with marks at ``positions`` (those within its length; one random token
    when none is), whatever its activations."""
    n = len(ctx.tokens)
    if n == 0:
        raise ValueError("cannot mark an empty context")
    keep = sorted({p for p in positions if 0 <= p < n}) or [rng.randrange(n)]
    fake = [0.0] * n
    for p in keep:
        fake[p] = 1.0
    return render_context(Context(list(ctx.tokens), fake), mark=True)


def fuzz(
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
    threshold: float = 0.0,
) -> Classification:
    """Fuzzing balanced accuracy of ``explanation`` (see the module docstring).

    ``positives``: activating contexts (marked where act > ``threshold``); ``negatives``:
    non-activating contexts (marked where a random positive is). Raises ``ValueError`` when a
    side is empty or a positive has no active token, and
    :class:`~sparsecodes.autointerp.client.ChatCallError` when a prompt fails after ``attempts``.
    """
    if not positives or not negatives:
        raise ValueError(
            f"fuzzing needs activating and non-activating contexts, got {len(positives)} and "
            f"{len(negatives)}"
        )
    marks = [marked_positions(c, threshold) for c in positives]
    empty = [i for i, m in enumerate(marks) if not m]
    if empty:
        raise ValueError(
            f"positives {empty[:5]} have no token with activation above {threshold}; pass "
            "activating contexts only"
        )
    rng = random.Random(f"autointerp-fuzz-marks:{seed}")
    pos = [render_context(c, mark=True, threshold=threshold) for c in positives]
    neg = [mismark(c, rng.choice(marks), rng) for c in negatives]
    return classify(
        backend,
        FUZZING,
        explanation,
        pos,
        neg,
        batch_size=batch_size,
        seed=seed,
        attempts=attempts,
        backoff=backoff,
        answer_format=answer_format,
        shuffle_key="autointerp-fuzz",
    )
