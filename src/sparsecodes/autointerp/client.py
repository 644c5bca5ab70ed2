"""Chat backends: the ``ChatBackend`` protocol, an OpenAI-compatible HTTP client, and retries.

A backend answers a list of chat messages (``{"role": "system"|"user"|"assistant",
"content": str}``) with the assistant's text. :class:`OpenAIChatClient` posts to any
OpenAI-compatible ``{base_url}/chat/completions`` endpoint (OpenAI, vLLM, llama.cpp's server,
Ollama, LM Studio, ...) with ``httpx``. One call is one HTTP request; retries live in
:func:`call_with_retries` (``tenacity``), which also retries answers its ``parse`` function
rejects.

Retries: only what can succeed on a second try is retried: timeouts, dropped connections, HTTP
408, 409, 429 and 5xx, unparseable answers. Other client errors (400, 401, 403, 404, 422, ...) fail
at once. A ``Retry-After`` header (seconds or an HTTP date) on a 429 or 503 sets the wait;
otherwise waits grow exponentially with jitter. Attempts and the total time are bounded.

Errors: :class:`ChatCallError` is one failed call (HTTP error status, timeout, malformed
response, unparseable answer); :class:`EndpointUnreachableError` means nothing answered at the URL
(connection refused, unknown host) and, after the retries, stops the whole run, naming the URL.
"""

from __future__ import annotations

import email.utils
import os
import random
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

import httpx
import tenacity

Message = dict[str, str]
T = TypeVar("T")
A = TypeVar("A")

API_KEY_ENV = "SPARSECODES_LLM_API_KEY"
"""Environment variable read for the API key when none is given (then ``OPENAI_API_KEY``)."""


RETRYABLE_STATUS = frozenset({408, 409, 429})
"""Client-error statuses worth retrying (with every 5xx); other 4xx fail at once."""


class ChatCallError(RuntimeError):
    """One chat call failed: HTTP error, timeout, malformed response or unparseable answer.

    ``status``: the HTTP status, if the server answered. ``retryable``: whether trying again can
    succeed. ``retry_after``: seconds the server asked to wait (``Retry-After``), if it did.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = True,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


class EndpointUnreachableError(RuntimeError):
    """Nothing answers at the endpoint URL (connection refused, unknown host, ...)."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP date.

    ``now``: the current POSIX time for an HTTP date (default ``time.time()``). Dates in the past
    give 0; an unparseable or missing value gives None.
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP date is GMT
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)


@runtime_checkable
class ChatBackend(Protocol):
    """Anything that answers chat messages with the assistant's reply text."""

    def complete(self, messages: list[Message]) -> str: ...

    def describe(self) -> str: ...


def check_messages(messages: list[Message]) -> None:
    """Raise ``ValueError`` unless ``messages`` is a non-empty list of role/content dicts."""
    if not messages:
        raise ValueError("messages is empty; pass at least one {'role', 'content'} message")
    for m in messages:
        if m.get("role") not in ("system", "user", "assistant") or not isinstance(
            m.get("content"), str
        ):
            raise ValueError(
                f"each message needs role 'system', 'user' or 'assistant' and a string content, "
                f"got {m!r}"
            )


class OpenAIChatClient:
    """An OpenAI-compatible chat-completions client (one HTTP request per :meth:`complete`).

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1`` (``/chat/completions`` is
            appended; a URL already ending in ``/chat/completions`` is used as is).
        model: the model name sent in the request.
        api_key: sent as ``Authorization: Bearer``; None reads ``$SPARSECODES_LLM_API_KEY`` then
            ``$OPENAI_API_KEY``; no key sends no header (local servers need none).
        timeout: seconds to wait for one response.
        temperature, max_tokens: sampling settings sent with every request (greedy by default).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        temperature: float = 0.0,
        max_tokens: int = 256,
        seed: int | None = 0,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"endpoint {base_url!r} is not an http(s) URL; pass e.g. http://127.0.0.1:8000/v1"
            )
        if not model:
            raise ValueError("model is empty; pass the model name the endpoint serves")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout}")
        url = base_url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model = model
        self.api_key = api_key or os.environ.get(API_KEY_ENV) or os.environ.get("OPENAI_API_KEY")
        self.timeout = timeout
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.seed = seed
        self._http = httpx.Client(timeout=timeout)

    def describe(self) -> str:
        return f"openai-compatible {self.model} at {self.url}"

    def complete(self, messages: list[Message]) -> str:
        """POST ``messages``; the first choice's ``message.content``.

        Raises :class:`EndpointUnreachableError` when no server answers, :class:`ChatCallError`
        for an HTTP error status, a timeout or a response without a text answer.
        """
        check_messages(messages)
        body: dict[str, object] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        data = self.post_json(self.url, body)
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as e:
            raise ChatCallError(
                f"{self.url} returned no chat answer (expected choices[0].message.content): "
                f"{str(data)[:200]!r}"
            ) from e
        if not isinstance(content, str):
            raise ChatCallError(f"{self.url} returned a non-text answer: {content!r}")
        return content

    def post_json(self, url: str, body: dict[str, Any]) -> Any:
        """POST ``body`` as JSON to ``url`` (with this client's key and timeout); the parsed reply.

        Raises :class:`EndpointUnreachableError` when no server answers, :class:`ChatCallError`
        for an HTTP error status, a timeout, a broken connection or a reply that is not JSON.
        """
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            resp = self._http.post(url, json=body, headers=headers)
        except httpx.ConnectError as e:
            raise EndpointUnreachableError(f"cannot reach the chat endpoint {url}: {e}") from e
        except httpx.TimeoutException as e:
            raise ChatCallError(f"timed out after {self.timeout:g} s waiting for {url}") from e
        except httpx.TransportError as e:  # reset mid-response, protocol error, ...
            raise ChatCallError(f"connection to {url} failed: {e}") from e
        if resp.status_code >= 400:
            status = resp.status_code
            detail = resp.content[:300].decode("utf-8", "replace").strip()
            retryable = status in RETRYABLE_STATUS or status >= 500
            retry_after = (
                parse_retry_after(resp.headers.get("Retry-After")) if status in (429, 503) else None
            )
            raise ChatCallError(
                f"HTTP {status} {resp.reason_phrase} from {url}"
                + (f": {detail}" if detail else "")
                + ("" if retryable else " (not retried: fix the request, key or URL)"),
                status=status,
                retryable=retryable,
                retry_after=retry_after,
            )
        try:
            return resp.json()
        except ValueError as e:
            raise ChatCallError(
                f"{url} returned no JSON: {resp.content[:200].decode('utf-8', 'replace')!r}"
            ) from e

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> OpenAIChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _RetryBudget:
    """tenacity ``wait`` and ``stop`` for :func:`call_with_retries` (one instance per call)."""

    def __init__(
        self,
        attempts: int,
        backoff: float,
        max_delay: float,
        max_total: float | None,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.attempts, self.backoff, self.max_delay = attempts, backoff, max_delay
        self.max_total, self.clock, self.rng = max_total, clock, rng
        self.start = clock()
        self.stop_reason = ""

    def wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return float(retry_after)  # the server said when; no jitter
        base = min(self.max_delay, self.backoff * 2 ** (state.attempt_number - 1))
        return base * (0.5 + 0.5 * self.rng.random())  # jitter: between half and all of it

    def stop(self, state: tenacity.RetryCallState) -> bool:
        if state.attempt_number >= self.attempts:
            self.stop_reason = f"failed after {self.attempts} attempt(s)"
            return True
        delay = state.upcoming_sleep
        if delay > self.max_delay:
            self.stop_reason = (
                f"gave up after {state.attempt_number} attempt(s): the server asked to wait "
                f"{delay:g} s (Retry-After), more than max_delay={self.max_delay:g} s"
            )
            return True
        if self.max_total is not None and self.clock() - self.start + delay > self.max_total:
            self.stop_reason = (
                f"gave up after {state.attempt_number} attempt(s): waiting {delay:g} s more "
                f"would pass max_total={self.max_total:g} s"
            )
            return True
        return False


class _Unparseable(Exception):
    """``parse`` rejected an answer (retried like a failed call)."""


def _retryable(e: BaseException) -> bool:
    if isinstance(e, ChatCallError):
        return e.retryable
    return isinstance(e, EndpointUnreachableError | _Unparseable)


def call_with_retries(
    backend: ChatBackend,
    messages: list[Message],
    parse: Callable[[str], T],
    *,
    attempts: int = 3,
    backoff: float = 1.0,
    max_delay: float = 60.0,
    max_total: float | None = 300.0,
    sleep: Callable[[float], Any] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
) -> tuple[T, str]:
    """``(parse(answer), answer)`` from the first of up to ``attempts`` calls that succeeds.

    A call fails when the backend raises :class:`ChatCallError` or
    :class:`EndpointUnreachableError`, or ``parse`` raises ``ValueError``. A failure is retried
    unless it cannot succeed on a second try (``ChatCallError.retryable`` false: HTTP 400, 401,
    403, 404, ...). The wait before retry ``i`` (1, 2, ...) is the server's ``Retry-After`` when
    it sent one, else ``backoff * 2**(i-1)`` (at most ``max_delay``) times a random factor in
    [0.5, 1) (jitter, so many clients do not retry in step). No retry is made that would wait more
    than ``max_delay`` or end past ``max_total`` seconds after the first call started.

    Raises, when no call succeeded: :class:`EndpointUnreachableError` if every attempt found no
    server, else :class:`ChatCallError` naming the attempts and the last reason (with the last
    failure's ``status``). ``sleep``, ``clock`` and ``rng`` are injectable for tests.
    """
    return retry_call(
        lambda: backend.complete(messages),
        parse,
        attempts=attempts,
        backoff=backoff,
        max_delay=max_delay,
        max_total=max_total,
        sleep=sleep,
        clock=clock,
        rng=rng,
    )


def retry_call(
    request: Callable[[], A],
    parse: Callable[[A], T],
    *,
    attempts: int = 3,
    backoff: float = 1.0,
    max_delay: float = 60.0,
    max_total: float | None = 300.0,
    sleep: Callable[[float], Any] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
) -> tuple[T, A]:
    """``(parse(answer), answer)`` from the first of up to ``attempts`` calls of ``request()``
    that succeeds, with the retry policy of :func:`call_with_retries` (any request that raises
    :class:`ChatCallError` / :class:`EndpointUnreachableError`, e.g. a completions call)."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    if backoff < 0:
        raise ValueError(f"backoff must be non-negative seconds, got {backoff}")
    if max_delay < 0 or (max_total is not None and max_total < 0):
        raise ValueError(
            f"max_delay and max_total must be non-negative, got {max_delay}, {max_total}"
        )
    reasons: list[str] = []
    unreachable = 0
    budget = _RetryBudget(attempts, backoff, max_delay, max_total, clock, rng or random.Random())

    def once() -> tuple[T, str]:
        nonlocal unreachable
        try:
            answer = request()
        except EndpointUnreachableError as e:
            unreachable += 1
            reasons.append(str(e))
            raise
        except ChatCallError as e:
            reasons.append(str(e))
            raise
        try:
            return parse(answer), answer
        except ValueError as e:
            shown = answer[:200] if isinstance(answer, str) else str(answer)[:200]
            reasons.append(f"unparseable answer ({e}): {shown!r}")
            raise _Unparseable(reasons[-1]) from e

    retrying = tenacity.Retrying(
        sleep=sleep,
        stop=budget.stop,
        wait=budget.wait,
        retry=tenacity.retry_if_exception(_retryable),
        reraise=True,
    )
    try:
        return retrying(once)
    except (ChatCallError, EndpointUnreachableError, _Unparseable) as e:
        n = len(reasons)
        if isinstance(e, ChatCallError) and not e.retryable:
            raise
        if unreachable == n:
            raise EndpointUnreachableError(
                f"{reasons[-1]} (tried {n} time{'s' if n > 1 else ''}); check that the "
                "server is running and the --endpoint URL is right"
            ) from e
        raise ChatCallError(
            f"{budget.stop_reason or f'failed after {n} attempt(s)'}; last: {reasons[-1]}",
            status=getattr(e, "status", None),
        ) from e
