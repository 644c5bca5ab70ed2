"""Score an explanation by simulation: from the explanation alone, a language model predicts the
latent's activation on every token; the score is the correlation of prediction and truth.

The prompt (plain text, no chat template) states the task, shows one worked example, then the
explanation and the context one token per line, each followed by a tab and a placeholder::

    Explanation: <explanation>
    Activations:
    <start>
    The\tunknown
     cat\tunknown
    ...

At the position of each placeholder the model's next-token distribution over the digits 0-9 is
read (renormalised over the digits) and its expected value is the simulated activation; the model
never sees a true activation of the scored context ("all at once" simulation, one forward pass
per context). The score is the Pearson correlation between simulated and true activations over
all tokens of the held-out activating and non-activating contexts together (1.0 perfect, 0 no
information), with a bootstrap interval that resamples whole contexts within each group.

Simulators: :class:`LocalSimulator` (any local causal LM, the embedded SmolLM2 by default) and
:class:`CompletionsSimulator` (an OpenAI-compatible ``/completions`` endpoint that returns prompt
log-probabilities with ``echo`` and ``logprobs``, such as vLLM).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from sparsecodes.autointerp.client import OpenAIChatClient, retry_call
from sparsecodes.autointerp.examples import Context
from sparsecodes.autointerp.explain import display_token
from sparsecodes.autointerp.local import local_model
from sparsecodes.metrics.intervals import Interval, bootstrap_interval

PLACEHOLDER = "unknown"
DIGITS = tuple(str(d) for d in range(10))

SIMULATION_HEADER = (
    "We study features of a language model. Each feature responds to one particular thing in a "
    "text. Given an explanation of a feature, predict how strongly it fires on each token, from "
    "0 (not at all) to 9 (most strongly).\n\n"
    "Explanation: the word cat\nActivations:\n<start>\n"
    "The\t0\n cat\t9\n sat\t0\n on\t0\n the\t0\n mat\t0\n.\t0\n<end>\n\n"
)


def simulation_prompt(explanation: str, tokens: Sequence[str]) -> tuple[str, list[str]]:
    """``(prefix, lines)``: the prompt is ``prefix + "".join(line + PLACEHOLDER + "\\n")`` and the
    simulated activation of token ``i`` is read where ``PLACEHOLDER`` of line ``i`` starts."""
    if not explanation.strip():
        raise ValueError("explanation is empty; nothing to simulate from")
    prefix = SIMULATION_HEADER + f"Explanation: {explanation}\nActivations:\n<start>\n"
    return prefix, [display_token(t) + "\t" for t in tokens]


def expected_digit(probs: dict[str, float]) -> float:
    """Expected value of the digits in ``{token: probability}`` (renormalised over digits 0-9)."""
    p = {d: 0.0 for d in DIGITS}
    for tok, q in probs.items():
        if tok.strip() in p:
            p[tok.strip()] += q
    total = sum(p.values())
    if total <= 0.0:
        raise ValueError("no digit 0-9 among the predicted tokens")
    return sum(int(d) * q for d, q in p.items()) / total


class Simulator(Protocol):
    """Predicts a latent's activation (0-9) on each token from an explanation."""

    def simulate(self, explanation: str, tokens: Sequence[str]) -> list[float]: ...

    def describe(self) -> str: ...


class LocalSimulator:
    """Simulation with a local causal LM (one forward pass per context).

    Args:
        model_name: an embedded model name or a local directory (ignored when ``model`` and
            ``tokenizer`` are given).
    """

    def __init__(
        self,
        model_name: str = "smollm2-135m",
        *,
        model: Any = None,
        tokenizer: Any = None,
        device: str = "auto",
    ) -> None:
        model, tokenizer = local_model(model_name, model, tokenizer, device)
        self.model_name = model_name
        self.model = model.eval()
        self.tokenizer = tokenizer
        ids = [tokenizer(d, add_special_tokens=False)["input_ids"] for d in DIGITS]
        bad = [d for d, i in zip(DIGITS, ids, strict=True) if len(i) != 1]
        if bad:
            raise ValueError(
                f"the tokenizer of {model_name!r} splits the digits {bad} into several tokens; "
                "simulation reads one-token digits"
            )
        self.digit_ids = torch.tensor([i[0] for i in ids])

    @classmethod
    def from_adapter(cls, adapter: Any) -> LocalSimulator:
        """Share an already loaded :class:`~sparsecodes.models.ModelAdapter`'s model."""
        return cls(adapter.name, model=adapter.model, tokenizer=adapter.tokenizer)

    def describe(self) -> str:
        return f"local {self.model_name} (digit log-probabilities, all at once)"

    @torch.no_grad()
    def simulate(self, explanation: str, tokens: Sequence[str]) -> list[float]:
        tok = self.tokenizer
        prefix, lines = simulation_prompt(explanation, tokens)
        ids: list[int] = list(tok(prefix, add_special_tokens=True)["input_ids"])
        slot = tok(PLACEHOLDER + "\n", add_special_tokens=False)["input_ids"]
        read: list[int] = []
        for line in lines:
            ids += tok(line, add_special_tokens=False)["input_ids"]
            read.append(len(ids) - 1)  # the logits here predict the token after the tab
            ids += slot
        device = next(self.model.parameters()).device
        logits = self.model(torch.tensor([ids], device=device)).logits[0, read].float().cpu()
        p = torch.softmax(logits[:, self.digit_ids], dim=-1)
        return (p @ torch.arange(10, dtype=torch.float32)).tolist()


class CompletionsSimulator:
    """Simulation through an OpenAI-compatible ``/completions`` endpoint that echoes prompt
    log-probabilities (``echo: true``, ``logprobs: N``; vLLM and OpenAI's legacy API do).

    The digit distribution at each placeholder comes from the ``top_logprobs`` of the prompt token
    that starts there; the endpoint's tokenizer must start a token at each placeholder (a tab
    before it does in common tokenizers), else the call is unparseable.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        top_logprobs: int = 10,
        attempts: int = 3,
        backoff: float = 1.0,
    ) -> None:
        self.client = OpenAIChatClient(base_url, model, api_key=api_key, timeout=timeout)
        self.url = base_url.rstrip("/") + "/completions"
        self.top_logprobs, self.attempts, self.backoff = top_logprobs, attempts, backoff

    def describe(self) -> str:
        return f"openai-compatible {self.client.model} at {self.url} (prompt log-probabilities)"

    def simulate(self, explanation: str, tokens: Sequence[str]) -> list[float]:
        prefix, lines = simulation_prompt(explanation, tokens)
        text, offsets = prefix, []
        for line in lines:
            text += line
            offsets.append(len(text))
            text += PLACEHOLDER + "\n"
        body = {
            "model": self.client.model,
            "prompt": text,
            "max_tokens": 1,
            "temperature": 0.0,
            "echo": True,
            "logprobs": self.top_logprobs,
        }
        values, _ = retry_call(
            lambda: self.client.post_json(self.url, body),
            lambda data: parse_prompt_logprobs(data, offsets),
            attempts=self.attempts,
            backoff=self.backoff,
        )
        return values


def parse_prompt_logprobs(data: Any, offsets: Sequence[int]) -> list[float]:
    """Expected digits at the character ``offsets`` of the prompt, from a completions reply with
    ``choices[0].logprobs.{text_offset, top_logprobs}``; ``ValueError`` when malformed."""
    try:
        lp = data["choices"][0]["logprobs"]
        starts, tops = list(lp["text_offset"]), list(lp["top_logprobs"])
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(
            "expected choices[0].logprobs with text_offset and top_logprobs (ask the server for "
            "echo and logprobs)"
        ) from e
    where = {s: i for i, s in enumerate(starts)}
    out = []
    for k, c in enumerate(offsets):
        if c not in where:
            raise ValueError(f"no prompt token starts at placeholder {k} (character {c})")
        top = tops[where[c]]
        if not isinstance(top, dict):
            raise ValueError(f"no top_logprobs at placeholder {k}")
        out.append(expected_digit({t: math.exp(v) for t, v in top.items()}))
    return out


@dataclass(frozen=True)
class SimulationResult:
    """Correlation of simulated and true activations over all tokens of the scored contexts."""

    score: float
    n_pos: int
    n_neg: int
    n_tokens: int
    interval: Interval


def _moments(sim: Sequence[float], true: Sequence[float]) -> np.ndarray:
    x, y = np.asarray(sim, np.float64), np.asarray(true, np.float64)
    return np.array([len(x), x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum()])


def _correlation(m: np.ndarray) -> np.ndarray:
    """Pearson correlation from summed moments ``[..., 6]`` (0 where a side is constant)."""
    n, sx, sy, sxx, syy, sxy = np.moveaxis(m, -1, 0)
    cov = sxy - sx * sy / n
    vx, vy = sxx - sx * sx / n, syy - sy * sy / n
    denom = np.sqrt(np.clip(vx, 0, None) * np.clip(vy, 0, None))
    scale = np.maximum(np.abs(sxx), np.abs(syy)) + 1.0
    ok = denom > 1e-12 * scale
    return np.where(ok, cov / np.where(ok, denom, 1.0), 0.0)


def simulation_score(
    simulator: Simulator,
    explanation: str,
    positives: Sequence[Context],
    negatives: Sequence[Context],
    *,
    seed: int = 0,
) -> SimulationResult:
    """Pearson correlation of ``simulator``'s predictions with the true activations of
    ``positives`` and ``negatives`` (see the module docstring). A constant prediction (or truth)
    carries no information and scores 0."""
    if not positives or not negatives:
        raise ValueError(
            f"simulation needs activating and non-activating contexts, got {len(positives)} and "
            f"{len(negatives)}"
        )
    moments = []
    for c in [*positives, *negatives]:
        sim = simulator.simulate(explanation, c.tokens)
        if len(sim) != len(c.tokens):
            raise ValueError(f"the simulator returned {len(sim)} values for {len(c.tokens)} tokens")
        moments.append(_moments(sim, c.acts))
    m = np.stack(moments)
    pos, neg = m[: len(positives)], m[len(positives) :]
    return SimulationResult(
        score=float(_correlation(m.sum(0))),
        n_pos=len(positives),
        n_neg=len(negatives),
        n_tokens=int(m[:, 0].sum()),
        interval=bootstrap_interval(
            lambda p, q: _correlation(p.sum(1) + q.sum(1)), pos, neg, seed=seed
        ),
    )
