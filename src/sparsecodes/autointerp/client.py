"""Chat backends: the ``ChatBackend`` protocol, an OpenAI-compatible HTTP client, and retries.

A backend answers a list of chat messages (``{"role": "system"|"user"|"assistant",
"content": str}``) with the assistant's text. :class:`OpenAIChatClient` posts to any
OpenAI-compatible ``{base_url}/chat/completions`` endpoint (OpenAI, vLLM, llama.cpp's server,
Ollama, LM Studio, ...) with the standard library only. One call is one HTTP request; retries live
in :func:`call_with_retries`, which also retries answers its ``parse`` function rejects.

Errors: :class:`ChatCallError` is one failed call (HTTP error status, timeout, malformed
response, unparseable answer); :class:`EndpointUnreachableError` means nothing answered at the URL
(connection refused, unknown host) and, after the retries, stops the whole run, naming the URL.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Protocol, TypeVar, runtime_checkable

Message = dict[str, str]
T = TypeVar("T")

API_KEY_ENV = "SPARSECODES_LLM_API_KEY"
"""Environment variable read for the API key when none is given (then ``OPENAI_API_KEY``)."""


class ChatCallError(RuntimeError):
    """One chat call failed: HTTP error, timeout, malformed response or unparseable answer."""


class EndpointUnreachableError(RuntimeError):
    """Nothing answers at the endpoint URL (connection refused, unknown host, ...)."""


@runtime_checkable
class ChatBackend(Protocol):
    """Anything that answers chat messages with the assistant's reply text."""

    def complete(self, messages: list[Message]) -> str: ...

    def describe(self) -> str: ...


def _check_messages(messages: list[Message]) -> None:
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

    def describe(self) -> str:
        return f"openai-compatible {self.model} at {self.url}"

    def complete(self, messages: list[Message]) -> str:
        """POST ``messages``; the first choice's ``message.content``.

        Raises :class:`EndpointUnreachableError` when no server answers, :class:`ChatCallError`
        for an HTTP error status, a timeout or a response without a text answer.
        """
        _check_messages(messages)
        body: dict[str, object] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode("utf-8", "replace").strip()
            raise ChatCallError(
                f"HTTP {e.code} {e.reason} from {self.url}" + (f": {detail}" if detail else "")
            ) from e
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise ChatCallError(
                    f"timed out after {self.timeout:g} s waiting for {self.url}"
                ) from e
            raise EndpointUnreachableError(
                f"cannot reach the chat endpoint {self.url}: {e.reason}"
            ) from e
        except TimeoutError as e:
            raise ChatCallError(f"timed out after {self.timeout:g} s waiting for {self.url}") from e
        except (ConnectionError, OSError) as e:  # reset mid-response, ...
            raise ChatCallError(f"connection to {self.url} failed: {e}") from e
        try:
            data = json.loads(raw)
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ChatCallError(
                f"{self.url} returned no chat answer (expected choices[0].message.content): "
                f"{raw[:200].decode('utf-8', 'replace')!r}"
            ) from e
        if not isinstance(content, str):
            raise ChatCallError(f"{self.url} returned a non-text answer: {content!r}")
        return content


def call_with_retries(
    backend: ChatBackend,
    messages: list[Message],
    parse: Callable[[str], T],
    *,
    attempts: int = 3,
    backoff: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[T, str]:
    """``(parse(answer), answer)`` from the first of up to ``attempts`` calls that succeeds.

    A call fails when the backend raises :class:`ChatCallError` or ``parse`` raises
    ``ValueError``; failures are retried after ``backoff * 2**i`` seconds. After the last attempt:
    :class:`EndpointUnreachableError` if every attempt found no server, else :class:`ChatCallError`
    naming the attempts and the last reason.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    if backoff < 0:
        raise ValueError(f"backoff must be non-negative seconds, got {backoff}")
    reasons: list[str] = []
    unreachable = 0
    for i in range(attempts):
        if i:
            sleep(backoff * 2 ** (i - 1))
        try:
            answer = backend.complete(messages)
        except EndpointUnreachableError as e:
            unreachable += 1
            reasons.append(str(e))
            continue
        except ChatCallError as e:
            reasons.append(str(e))
            continue
        try:
            return parse(answer), answer
        except ValueError as e:
            reasons.append(f"unparseable answer ({e}): {answer[:200]!r}")
    if unreachable == attempts:
        raise EndpointUnreachableError(
            f"{reasons[-1]} (tried {attempts} time{'s' if attempts > 1 else ''}); check that the "
            "server is running and the --endpoint URL is right"
        )
    raise ChatCallError(f"failed after {attempts} attempt(s); last: {reasons[-1]}")
