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
"n_top", "status", "error", "scores"}}}``. ``score`` and ``status`` are those of the first scorer
(detection by default); ``scores`` holds every scorer's record (:class:`ScoreRecord`: score,
interval ``low``/``high``, ``chance``, status), and the summary has one block per scorer under
``"scorers"`` with the mean over its ``ok`` latents and a bootstrap interval of that mean.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sparsecodes.autointerp.client import ChatBackend, ChatCallError, call_with_retries
from sparsecodes.autointerp.detect import DetectFormat
from sparsecodes.autointerp.examples import LatentExamples
from sparsecodes.autointerp.explain import explain_messages, parse_explanation
from sparsecodes.autointerp.scorers import DetectionScorer, LatentScorer, ScoreRecord
from sparsecodes.files import write_json
from sparsecodes.metrics.intervals import mean_interval

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
    scores: dict[str, ScoreRecord] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("latent")
        d["scores"] = {k: v.to_dict() for k, v in self.scores.items()}
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
            "note": "score = the first scorer's (detection balanced accuracy by default) over ok "
            "latents; failed and skipped latents are excluded (never scored as 0)",
            "scorers": self.scorer_summary(),
        }

    def scorer_summary(self) -> dict[str, dict[str, Any]]:
        """Per scorer: counts by status, the mean of its ``ok`` scores and a bootstrap interval
        of that mean over latents (null with fewer than two)."""
        names: list[str] = []
        for r in self.results:
            names += [n for n in r.scores if n not in names]
        out = {}
        for name in names:
            recs = [r.scores[name] for r in self.results if name in r.scores]
            ok = np.array([x.score for x in recs if x.status == "ok" and x.score is not None])
            iv = mean_interval(ok, seed=0) if len(ok) >= 2 else None
            out[name] = {
                "n_ok": len(ok),
                "n_failed": sum(x.status == "failed" for x in recs),
                "n_skipped": sum(x.status == "skipped" for x in recs),
                "mean": float(ok.mean()) if len(ok) else None,
                "median": float(np.median(ok)) if len(ok) else None,
                "mean_low": iv.low if iv else None,
                "mean_high": iv.high if iv else None,
                "chance": next((x.chance for x in recs if x.chance is not None), None),
            }
        return out

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
    explainer: ChatBackend | None,
    scorer: ChatBackend | None = None,
    config: AutointerpConfig | None = None,
    *,
    scorers: Sequence[LatentScorer] | None = None,
    explanation: str | None = None,
) -> LatentResult:
    """Explain ``ex.latent`` from ``ex.top`` (unless ``explanation`` is given) and score it with
    each of ``scorers`` (default: detection by ``scorer``, itself defaulting to ``explainer``).

    The record's ``status``/``score`` are the first scorer's. A failed explanation fails the
    latent; a failed scorer fails only its own record. An unreachable endpoint raises.
    """
    cfg = config or AutointerpConfig()
    chosen = list(scorers) if scorers is not None else [default_scorer(scorer or explainer, cfg)]
    if not chosen:
        raise ValueError("scorers is empty; pass at least one scorer")
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
    res.explanation = explanation
    if res.explanation is None and any(s.needs_explanation for s in chosen):
        if explainer is None:
            raise ValueError(
                f"latent {ex.latent} has no explanation and no explainer was given; pass an "
                "explainer or explanations for every latent"
            )
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
    seed = hash_seed(cfg.seed, ex.latent)
    for sc in chosen:
        rec = sc.score(ex, res.explanation, seed)
        if rec.status == "ok" and (rec.score is None or not math.isfinite(rec.score)):
            rec = ScoreRecord(sc.name, "failed", error=f"{sc.name}: non-finite score")
        res.scores[sc.name] = rec
    first = res.scores[chosen[0].name]
    res.status, res.score, res.error = first.status, first.score, first.error
    res.true_pos, res.true_neg = first.true_pos, first.true_neg
    return res


def default_scorer(backend: ChatBackend | None, cfg: AutointerpConfig) -> LatentScorer:
    """Detection with ``cfg``'s format, batch size and retries."""
    if backend is None:
        raise ValueError("detection needs a chat backend: pass explainer or scorer")
    return DetectionScorer(
        backend,
        batch_size=cfg.detect_batch_size,
        answer_format=cfg.detect_format,
        attempts=cfg.attempts,
        backoff=cfg.backoff,
    )


def hash_seed(seed: int, latent: int) -> int:
    """A per-latent seed (so a latent's shuffle does not depend on which others run)."""
    return (seed * 1_000_003 + latent) % 2**63


def run_autointerp(
    examples: Sequence[LatentExamples],
    explainer: ChatBackend | None,
    scorer: ChatBackend | None = None,
    config: AutointerpConfig | None = None,
    *,
    scorers: Sequence[LatentScorer] | None = None,
    explanations: Mapping[int, str] | None = None,
    on_result: Callable[[LatentResult], None] | None = None,
    explanations_from: str = "given explanations",
) -> AutointerpReport:
    """:func:`interpret_latent` for each entry of ``examples``, in order.

    ``explanations``: latent id -> explanation to score instead of asking ``explainer`` (e.g.
    those of an earlier run); ``explainer`` may be None when every latent has one, and
    ``explanations_from`` then names where they come from in the report.
    """
    cfg = config or AutointerpConfig()
    chosen = list(scorers) if scorers is not None else [default_scorer(scorer or explainer, cfg)]
    known = explanations or {}
    t0 = time.perf_counter()
    results = []
    for ex in examples:
        r = interpret_latent(
            ex, explainer, config=cfg, scorers=chosen, explanation=known.get(ex.latent)
        )
        results.append(r)
        if on_result is not None:
            on_result(r)
    meta = {
        **asdict(cfg),
        "explainer": explainer.describe() if explainer is not None else explanations_from,
        "scorer": chosen[0].describe(),
        "scorers": {s.name: s.describe() for s in chosen},
    }
    return AutointerpReport(results, meta, time.perf_counter() - t0)


def read_explanations(path: str | Path) -> dict[int, str]:
    """Latent id -> explanation from an output file of :meth:`AutointerpReport.save` (latents
    without an explanation are left out); ``ValueError`` naming the file when it is not one."""
    import json

    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        latents = data["latents"]
        return {int(k): v["explanation"] for k, v in latents.items() if v.get("explanation")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(
            f"{p} is not an autointerp output file ({{'latents': {{id: {{'explanation': ...}}}}}}): "
            f"{e}"
        ) from e


def build_scorers(
    names: Sequence[str],
    backend: ChatBackend | None,
    cfg: AutointerpConfig,
    *,
    endpoint: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
    intruder_shown: int = 5,
    embedding_model: str = "minilm-l6",
    device: str = "auto",
) -> list[LatentScorer]:
    """The scorers called ``names`` (see :data:`~sparsecodes.autointerp.scorers.SCORER_NAMES`).

    Chat scorers use ``backend``; ``simulation`` uses ``endpoint``'s ``/completions`` when given,
    else ``backend``'s local model (a :class:`~sparsecodes.autointerp.LocalChatBackend`);
    ``embedding`` loads ``embedding_model``.
    """
    from sparsecodes.autointerp.embedding import SentenceEmbedder
    from sparsecodes.autointerp.scorers import (
        SCORER_NAMES,
        EmbeddingScorer,
        FuzzScorer,
        IntruderScorer,
        SimulationScorer,
    )
    from sparsecodes.autointerp.simulation import CompletionsSimulator, LocalSimulator

    out: list[LatentScorer] = []
    for name in names:
        if name not in SCORER_NAMES:
            raise ValueError(f"unknown scorer {name!r}; choose from {', '.join(SCORER_NAMES)}")
        if name in ("detection", "fuzz", "intruder") and backend is None:
            raise ValueError(f"the {name} scorer needs a chat model: give an endpoint or a model")
        if name == "detection":
            out.append(default_scorer(backend, cfg))
        elif name == "fuzz":
            out.append(
                FuzzScorer(
                    backend,  # type: ignore[arg-type]
                    batch_size=cfg.detect_batch_size,
                    answer_format=cfg.detect_format,
                    attempts=cfg.attempts,
                    backoff=cfg.backoff,
                )
            )
        elif name == "intruder":
            out.append(
                IntruderScorer(
                    backend,  # type: ignore[arg-type]
                    n_shown=intruder_shown,
                    attempts=cfg.attempts,
                    backoff=cfg.backoff,
                )
            )
        elif name == "embedding":
            from sparsecodes.models import load_model

            adapter = load_model(embedding_model, device=device)
            out.append(EmbeddingScorer(SentenceEmbedder(adapter)))
        else:
            if endpoint:
                sim: Any = CompletionsSimulator(
                    endpoint,
                    model or "",
                    api_key=api_key,
                    timeout=timeout,
                    attempts=cfg.attempts,
                    backoff=cfg.backoff,
                )
            elif backend is not None and hasattr(backend, "model"):
                sim = LocalSimulator(
                    getattr(backend, "model_name", "local"),
                    model=backend.model,
                    tokenizer=backend.tokenizer,  # type: ignore[attr-defined]
                )
            else:
                raise ValueError("the simulation scorer needs an endpoint or a local model")
            out.append(SimulationScorer(sim))
    return out
