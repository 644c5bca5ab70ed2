"""Explain and score many latents; the per-latent records and the summary written to JSON.

Each latent ends in one ``status``:

- ``"ok"``: explained and scored; ``score`` is the detection balanced accuracy.
- ``"failed"``: a chat call failed after its retries (HTTP error, timeout, unparseable answer);
  ``error`` says which stage and why, ``score`` is null. A failure is never scored as 0 and is
  left out of the aggregates, which count the failures instead.
- ``"skipped"``: not enough contexts (a latent that never fired has nothing to explain; one with
  no held-out activating or no non-activating contexts cannot be scored). ``score`` is null;
  ``explanation`` is kept when one was written.

An unreachable endpoint (no server at the URL) stops the run with
:class:`~sparsecodes.autointerp.client.EndpointUnreachableError` instead of failing every latent.

The JSON file (what the feature browser reads) is ``{"summary": {...}, "config": {...},
"latents": {"<latent id>": {"explanation", "score", "n_pos", "n_neg", "true_pos", "true_neg",
"n_top", "status", "error"}}}``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from sparsecodes.autointerp.client import ChatBackend, ChatCallError, call_with_retries
from sparsecodes.autointerp.detect import DetectFormat, detect
from sparsecodes.autointerp.examples import LatentExamples
from sparsecodes.autointerp.explain import explain_messages, parse_explanation
from sparsecodes.files import write_json

Status = Literal["ok", "failed", "skipped"]


@dataclass(frozen=True)
class AutointerpConfig:
    """How explanations are asked for and scored.

    ``detect_batch_size``: excerpts per detection prompt. ``attempts``: tries per chat call
    (retries = attempts - 1), with ``backoff * 2**i`` seconds between them. ``seed`` fixes the
    detection shuffles. ``mark_threshold``: tokens with activation above it are marked in
    explanation prompts.
    ``detect_format``: ``"list"`` (numbered excerpts, ``Answer: [...]``) or ``"yesno"`` (one
    excerpt per call; see :mod:`sparsecodes.autointerp.detect`).
    """

    detect_batch_size: int = 10
    attempts: int = 3
    backoff: float = 1.0
    seed: int = 0
    mark_threshold: float = 0.0
    detect_format: DetectFormat = "list"


@dataclass
class LatentResult:
    """One latent's record in the output file."""

    latent: int
    status: Status
    explanation: str | None = None
    score: float | None = None
    n_pos: int = 0
    n_neg: int = 0
    true_pos: int | None = None
    true_neg: int | None = None
    n_top: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("latent")
        return d


@dataclass
class AutointerpReport:
    """Per-latent results, the settings and who explained / scored."""

    results: list[LatentResult]
    config: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        """Counts by status and the score statistics over the ``ok`` latents only."""
        ok = [r.score for r in self.results if r.status == "ok" and r.score is not None]
        return {
            "n_latents": len(self.results),
            "n_ok": sum(r.status == "ok" for r in self.results),
            "n_failed": sum(r.status == "failed" for r in self.results),
            "n_skipped": sum(r.status == "skipped" for r in self.results),
            "mean_score": statistics.fmean(ok) if ok else None,
            "median_score": statistics.median(ok) if ok else None,
            "std_score": statistics.stdev(ok) if len(ok) > 1 else None,
            "min_score": min(ok) if ok else None,
            "max_score": max(ok) if ok else None,
            "n_pos_total": sum(r.n_pos for r in self.results if r.status == "ok"),
            "n_neg_total": sum(r.n_neg for r in self.results if r.status == "ok"),
            "chance_score": 0.5,
            "elapsed_s": round(self.elapsed_s, 3),
            "note": "score = detection balanced accuracy over ok latents; failed and skipped "
            "latents are excluded (never scored as 0)",
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "config": self.config,
            "latents": {str(r.latent): r.to_dict() for r in self.results},
        }

    def save(self, path: str | Path) -> Path:
        """Write the report as JSON to ``path`` atomically (``sparsecodes.files.write_json``)."""
        return write_json(path, self.to_json(), allow_nan=False)


def interpret_latent(
    ex: LatentExamples,
    explainer: ChatBackend,
    scorer: ChatBackend | None = None,
    config: AutointerpConfig | None = None,
) -> LatentResult:
    """Explain ``ex.latent`` from ``ex.top`` and score it by detection (``scorer`` defaults to
    ``explainer``). Failed calls become ``status="failed"``; an unreachable endpoint raises."""
    cfg = config or AutointerpConfig()
    scorer = scorer or explainer
    res = LatentResult(
        ex.latent,
        "skipped",
        n_pos=len(ex.held_out_activating),
        n_neg=len(ex.non_activating),
        n_top=len(ex.top),
    )
    if not ex.top:
        res.error = "the latent never fired on the contexts searched: nothing to explain"
        return res
    try:
        res.explanation, _ = call_with_retries(
            explainer,
            explain_messages(ex.top, threshold=cfg.mark_threshold),
            parse_explanation,
            attempts=cfg.attempts,
            backoff=cfg.backoff,
        )
    except ChatCallError as e:
        res.status, res.error = "failed", f"explain: {e}"
        return res
    if not ex.held_out_activating or not ex.non_activating:
        res.error = (
            f"cannot score: {res.n_pos} held-out activating and {res.n_neg} non-activating "
            "contexts (detection needs both); search more windows"
        )
        return res
    try:
        d = detect(
            scorer,
            res.explanation,
            ex.held_out_activating,
            ex.non_activating,
            batch_size=cfg.detect_batch_size,
            seed=hash_seed(cfg.seed, ex.latent),
            attempts=cfg.attempts,
            backoff=cfg.backoff,
            answer_format=cfg.detect_format,
        )
    except ChatCallError as e:
        res.status, res.error = "failed", f"detect: {e}"
        return res
    if not math.isfinite(d.score):  # pragma: no cover - balanced_accuracy is always finite
        res.status, res.error = "failed", "detect: non-finite score"
        return res
    res.status, res.score = "ok", d.score
    res.true_pos, res.true_neg = d.true_pos, d.true_neg
    return res


def hash_seed(seed: int, latent: int) -> int:
    """A per-latent seed (so a latent's shuffle does not depend on which others run)."""
    return (seed * 1_000_003 + latent) % 2**63


def run_autointerp(
    examples: Sequence[LatentExamples],
    explainer: ChatBackend,
    scorer: ChatBackend | None = None,
    config: AutointerpConfig | None = None,
    *,
    on_result: Callable[[LatentResult], None] | None = None,
) -> AutointerpReport:
    """:func:`interpret_latent` for each entry of ``examples``, in order."""
    cfg = config or AutointerpConfig()
    scorer = scorer or explainer
    t0 = time.perf_counter()
    results = []
    for ex in examples:
        r = interpret_latent(ex, explainer, scorer, cfg)
        results.append(r)
        if on_result is not None:
            on_result(r)
    meta = {
        **asdict(cfg),
        "explainer": explainer.describe(),
        "scorer": scorer.describe(),
    }
    return AutointerpReport(results, meta, time.perf_counter() - t0)
