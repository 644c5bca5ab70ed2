"""Ask a chat model to sort excerpts into yes / no, in one of two strict answer formats.

The core of the detection and fuzzing scorers. Excerpts (already rendered to one line each, with
or without ``<<marks>>``) are shuffled together with their truth (seeded) and shown unmarked by
their truth, in one of two formats:

- ``"list"``: prompts of ``batch_size`` numbered excerpts; the reply must hold exactly one
  ``Answer: [i, j, ...]`` with the numbers of the excerpts judged "yes" (``Answer: []`` for none),
  distinct and in range.
- ``"yesno"``: one excerpt per prompt; the reply must start with ``yes`` or ``no`` (optionally
  after ``Answer:``). Costs one call per excerpt, but small models follow it far more often.

Anything else is unparseable (an error, never a guess): a prompt that still fails after its
retries raises :class:`~sparsecodes.autointerp.client.ChatCallError`, and no partial result exists.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from sparsecodes.autointerp.client import ChatBackend, Message, call_with_retries
from sparsecodes.metrics.intervals import Interval, balanced_accuracy_interval

AnswerFormat = Literal["list", "yesno"]
ANSWER_FORMATS: tuple[str, ...] = ("list", "yesno")

_ANSWER = re.compile(r"answer\s*:\s*\[([^\[\]]*)\]", re.IGNORECASE)
_NUMBERS = re.compile(r"^\s*(\d+\s*(,\s*\d+\s*)*)?$")
_YESNO = re.compile(r"^\W*(?:answer\W*)?(yes|no)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Task:
    """The wording of one yes/no classification task.

    ``system_list`` / ``system_yesno``: the system prompts of the two formats; ``question``: the
    last line of a ``list`` prompt, with ``{n}`` for the number of excerpts; ``question_one``: the
    last line of a ``yesno`` prompt.
    """

    system_list: str
    system_yesno: str
    question: str
    question_one: str


def list_messages(task: Task, explanation: str, excerpts: Sequence[str]) -> list[Message]:
    """The chat messages asking which of ``excerpts`` (numbered from 1) fit ``explanation``."""
    if not excerpts:
        raise ValueError("excerpts is empty; a prompt needs at least one excerpt")
    lines = [f"{i}. {e}" for i, e in enumerate(excerpts, start=1)]
    user = (
        f"Explanation: {explanation}\n\nExcerpts:\n"
        + "\n".join(lines)
        + "\n\n"
        + task.question.format(n=len(excerpts))
    )
    return [{"role": "system", "content": task.system_list}, {"role": "user", "content": user}]


def yesno_messages(task: Task, explanation: str, excerpt: str) -> list[Message]:
    """The chat messages asking whether one ``excerpt`` fits ``explanation``."""
    user = f"Explanation: {explanation}\n\nExcerpt: {excerpt}\n\n{task.question_one}"
    return [{"role": "system", "content": task.system_yesno}, {"role": "user", "content": user}]


def parse_yesno(answer: str) -> bool:
    """True for a reply starting ``yes``, False for ``no``; ``ValueError`` otherwise."""
    m = _YESNO.match(answer)
    if not m:
        raise ValueError("the reply does not start with yes or no")
    return m.group(1).lower() == "yes"


def parse_answer_list(answer: str, n: int) -> set[int]:
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
class Classification:
    """A yes/no classification result: ``score`` (balanced accuracy) with its counts and its
    confidence ``interval`` (stratified bootstrap over the excerpts)."""

    score: float
    n_pos: int
    n_neg: int
    true_pos: int
    true_neg: int
    n_calls: int
    interval: Interval


def classify(
    backend: ChatBackend,
    task: Task,
    explanation: str,
    positives: Sequence[str],
    negatives: Sequence[str],
    *,
    batch_size: int = 10,
    seed: int = 0,
    attempts: int = 3,
    backoff: float = 1.0,
    answer_format: AnswerFormat = "list",
    shuffle_key: str = "autointerp-detect",
) -> Classification:
    """Ask ``backend`` which of the shuffled rendered ``positives`` + ``negatives`` fit
    ``explanation``; the balanced accuracy of its answers against the truth.

    Raises :class:`~sparsecodes.autointerp.client.ChatCallError` when a prompt fails after
    ``attempts``, ``ValueError`` when either side is empty or an option is out of range.
    """
    if not positives or not negatives:
        raise ValueError(
            f"classification needs positive and negative excerpts, got {len(positives)} and "
            f"{len(negatives)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")
    items = [(e, True) for e in positives] + [(e, False) for e in negatives]
    random.Random(f"{shuffle_key}:{seed}").shuffle(items)
    predicted: list[bool] = []
    calls = 0
    if answer_format == "yesno":
        for e, _ in items:
            yes, _ = call_with_retries(
                backend,
                yesno_messages(task, explanation, e),
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
                list_messages(task, explanation, [e for e, _ in chunk]),
                lambda a, n=len(chunk): parse_answer_list(a, n),
                attempts=attempts,
                backoff=backoff,
            )
            calls += 1
            predicted += [i in chosen for i in range(1, len(chunk) + 1)]
    truth = [t for _, t in items]
    pos_ok = np.array([p for p, t in zip(predicted, truth, strict=True) if t])
    neg_ok = np.array([not p for p, t in zip(predicted, truth, strict=True) if not t])
    return Classification(
        score=balanced_accuracy(predicted, truth),
        n_pos=len(positives),
        n_neg=len(negatives),
        true_pos=int(pos_ok.sum()),
        true_neg=int(neg_ok.sum()),
        n_calls=calls,
        interval=balanced_accuracy_interval(pos_ok, neg_ok, seed=seed),
    )
