"""The scorers of an explanation (or of a latent), behind one interface, for the pipeline.

=============  ===================================================  =========  ==============
name           question                                             chance     interval
=============  ===================================================  =========  ==============
detection      does a context hold the feature? (unmarked)          0.5 (BA)   bootstrap
fuzz           are the marked tokens the ones the feature is on?    0.5 (BA)   bootstrap
intruder       which of n marked contexts is not the latent's?      1 / n      Wilson
embedding      is the explanation closer to activating contexts?    0.5 (AUC)  bootstrap
simulation     do predicted per-token activations track the truth?  0 (r)      bootstrap
=============  ===================================================  =========  ==============

Detection, fuzzing and simulation use the held-out activating and the non-activating contexts;
the intruder test uses all activating contexts (it needs no explanation); embedding needs no
chat model at all. Each :meth:`LatentScorer.score` returns a :class:`ScoreRecord`: ``ok`` with a
score and its interval, ``skipped`` when the latent lacks the contexts the scorer needs, or
``failed`` when a model call failed after its retries. **A failure is never a score of 0**: it has
no score and is left out of every mean.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from sparsecodes.autointerp.classify import AnswerFormat
from sparsecodes.autointerp.client import ChatBackend, ChatCallError
from sparsecodes.autointerp.detect import detect
from sparsecodes.autointerp.embedding import Embedder, embedding_score
from sparsecodes.autointerp.examples import LatentExamples
from sparsecodes.autointerp.fuzz import fuzz
from sparsecodes.autointerp.intruder import intruder
from sparsecodes.autointerp.simulation import Simulator, simulation_score
from sparsecodes.metrics.intervals import Interval

Status = Literal["ok", "failed", "skipped"]
SCORER_NAMES: tuple[str, ...] = ("detection", "fuzz", "intruder", "embedding", "simulation")


@dataclass
class ScoreRecord:
    """One scorer's result for one latent (``score``/``low``/``high`` None unless ``ok``)."""

    scorer: str
    status: Status
    score: float | None = None
    low: float | None = None
    high: float | None = None
    level: float | None = None
    chance: float | None = None
    n_pos: int = 0
    n_neg: int = 0
    n_calls: int = 0
    error: str | None = None
    true_pos: int | None = None
    true_neg: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("scorer")
        return d

    @classmethod
    def ok(
        cls, scorer: str, score: float, interval: Interval, chance: float, **kw: Any
    ) -> ScoreRecord:
        return cls(scorer, "ok", score, interval.low, interval.high, interval.level, chance, **kw)


class LatentScorer(Protocol):
    """Scores one latent's examples (and explanation, when ``needs_explanation``)."""

    name: str
    needs_explanation: bool

    def score(self, ex: LatentExamples, explanation: str | None, seed: int) -> ScoreRecord: ...

    def describe(self) -> str: ...


def _pos_neg_missing(ex: LatentExamples) -> str | None:
    if ex.held_out_activating and ex.non_activating:
        return None
    return (
        f"cannot score: {len(ex.held_out_activating)} held-out activating and "
        f"{len(ex.non_activating)} non-activating contexts (both are needed); search more windows"
    )


@dataclass
class _ChatScorer:
    backend: ChatBackend
    batch_size: int = 10
    answer_format: AnswerFormat = "list"
    attempts: int = 3
    backoff: float = 1.0

    def describe(self) -> str:
        return self.backend.describe()


class DetectionScorer(_ChatScorer):
    """Detection balanced accuracy (:mod:`sparsecodes.autointerp.detect`)."""

    name = "detection"
    needs_explanation = True

    def score(self, ex: LatentExamples, explanation: str | None, seed: int) -> ScoreRecord:
        return _classification(self.name, detect, self, ex, explanation, seed)


class FuzzScorer(_ChatScorer):
    """Fuzzing balanced accuracy (:mod:`sparsecodes.autointerp.fuzz`)."""

    name = "fuzz"
    needs_explanation = True

    def score(self, ex: LatentExamples, explanation: str | None, seed: int) -> ScoreRecord:
        return _classification(self.name, fuzz, self, ex, explanation, seed)


def _classification(
    name: str, fn: Any, cfg: _ChatScorer, ex: LatentExamples, explanation: str | None, seed: int
) -> ScoreRecord:
    missing = _pos_neg_missing(ex)
    if missing or explanation is None:
        return ScoreRecord(name, "skipped", error=missing or "no explanation")
    try:
        r = fn(
            cfg.backend,
            explanation,
            ex.held_out_activating,
            ex.non_activating,
            batch_size=cfg.batch_size,
            seed=seed,
            attempts=cfg.attempts,
            backoff=cfg.backoff,
            answer_format=cfg.answer_format,
        )
    except ChatCallError as e:
        return ScoreRecord(name, "failed", error=f"{name}: {e}")
    return ScoreRecord.ok(
        name,
        r.score,
        r.interval,
        0.5,
        n_pos=r.n_pos,
        n_neg=r.n_neg,
        n_calls=r.n_calls,
        true_pos=r.true_pos,
        true_neg=r.true_neg,
    )


@dataclass
class IntruderScorer:
    """Intruder accuracy (:mod:`sparsecodes.autointerp.intruder`); needs no explanation."""

    backend: ChatBackend
    n_shown: int = 5
    attempts: int = 3
    backoff: float = 1.0
    name = "intruder"
    needs_explanation = False

    def describe(self) -> str:
        return self.backend.describe()

    def score(self, ex: LatentExamples, explanation: str | None, seed: int) -> ScoreRecord:
        activating = [*ex.top, *ex.held_out_activating]
        if len(activating) < self.n_shown - 1 or not ex.non_activating:
            return ScoreRecord(
                self.name,
                "skipped",
                error=f"cannot score: {len(activating)} activating (need {self.n_shown - 1}) and "
                f"{len(ex.non_activating)} non-activating contexts",
            )
        try:
            r = intruder(
                self.backend,
                activating,
                ex.non_activating,
                n_shown=self.n_shown,
                seed=seed,
                attempts=self.attempts,
                backoff=self.backoff,
            )
        except ChatCallError as e:
            return ScoreRecord(self.name, "failed", error=f"intruder: {e}")
        return ScoreRecord.ok(
            self.name,
            r.score,
            r.interval,
            r.chance,
            n_pos=len(activating),
            n_neg=len(ex.non_activating),
            n_calls=r.n_calls,
        )


@dataclass
class EmbeddingScorer:
    """Embedding ROC AUC (:mod:`sparsecodes.autointerp.embedding`); no chat model."""

    embedder: Embedder
    name = "embedding"
    needs_explanation = True

    def describe(self) -> str:
        return self.embedder.describe()

    def score(self, ex: LatentExamples, explanation: str | None, seed: int) -> ScoreRecord:
        missing = _pos_neg_missing(ex)
        if missing or explanation is None:
            return ScoreRecord(self.name, "skipped", error=missing or "no explanation")
        r = embedding_score(
            self.embedder, explanation, ex.held_out_activating, ex.non_activating, seed=seed
        )
        return ScoreRecord.ok(self.name, r.score, r.interval, 0.5, n_pos=r.n_pos, n_neg=r.n_neg)


@dataclass
class SimulationScorer:
    """Simulation correlation (:mod:`sparsecodes.autointerp.simulation`)."""

    simulator: Simulator
    name = "simulation"
    needs_explanation = True

    def describe(self) -> str:
        return self.simulator.describe()

    def score(self, ex: LatentExamples, explanation: str | None, seed: int) -> ScoreRecord:
        missing = _pos_neg_missing(ex)
        if missing or explanation is None:
            return ScoreRecord(self.name, "skipped", error=missing or "no explanation")
        try:
            r = simulation_score(
                self.simulator, explanation, ex.held_out_activating, ex.non_activating, seed=seed
            )
        except ChatCallError as e:
            return ScoreRecord(self.name, "failed", error=f"simulation: {e}")
        n = len(ex.held_out_activating) + len(ex.non_activating)
        return ScoreRecord.ok(
            self.name, r.score, r.interval, 0.0, n_pos=r.n_pos, n_neg=r.n_neg, n_calls=n
        )
