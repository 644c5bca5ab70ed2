"""A local HTTP server: the static browser plus a JSON endpoint that annotates any text.

Routes: every static file of the site directory, and

- ``POST /api/annotate`` with JSON ``{"text": str, "top_n": int (optional)}``, or
  ``GET /api/annotate?text=...&top_n=...``: returns :meth:`Annotation.to_json` (tokens, special
  flags, per-token ``[[latent, activation], ...]``), 400 with ``{"error": ...}`` on bad input;
- ``POST /api/steer`` with JSON ``{"prompt": str, "latent": int, "alpha": float (optional,
  default 8), "clamp": float (optional: clamp instead of add), "max_new_tokens": int
  (optional)}``, or the same as ``GET`` query parameters: the greedy continuation of the prompt
  without and with the latent steered, and the next-token logits that moved most
  (:meth:`sparsecodes.uses.steering.SteerResult.to_json`); 400 with ``{"error": ...}`` on bad
  input (the steer box of the latent pages, ``assets/steer.js``);
- ``GET /api/info``: model, hook, number of latents.

It binds ``127.0.0.1`` by default: the endpoint runs a model on request, so exposing it on
other interfaces is left to an explicit ``host``. Model calls are serialised with a lock
(threads serve files concurrently).
"""

from __future__ import annotations

import functools
import json
import os
import threading
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sparsecodes.interp.annotate import TokenStrings, annotate

MAX_BODY_BYTES = 1_000_000
MAX_TOP_N = 50
MAX_NEW_TOKENS = 64
DEFAULT_ALPHA = 8.0


class _Handler(SimpleHTTPRequestHandler):
    server: AnnotateServer

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def _json(self, status: int, obj: Any) -> None:
        body = json.dumps(obj, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _annotate(self, params: dict[str, Any]) -> None:
        text = params.get("text")
        if not isinstance(text, str):
            self._json(HTTPStatus.BAD_REQUEST, {"error": "give 'text' as a string"})
            return
        try:
            top_n = int(params.get("top_n", 5))
        except (TypeError, ValueError):
            self._json(HTTPStatus.BAD_REQUEST, {"error": "'top_n' must be an integer"})
            return
        if not 1 <= top_n <= MAX_TOP_N:
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"'top_n' must be in 1..{MAX_TOP_N}"})
            return
        try:
            result = self.server.annotate(text, top_n)
        except ValueError as e:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
            return
        self._json(HTTPStatus.OK, result)

    def _steer(self, params: dict[str, Any]) -> None:
        prompt = params.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            self._json(HTTPStatus.BAD_REQUEST, {"error": "give 'prompt' as a non-empty string"})
            return
        try:
            latent = int(params["latent"])
            alpha = params.get("alpha")
            alpha = DEFAULT_ALPHA if alpha in (None, "") else float(alpha)
            clamp = params.get("clamp")
            clamp = None if clamp in (None, "") else float(clamp)
            n_new = int(params.get("max_new_tokens", 20))
        except (KeyError, TypeError, ValueError):
            self._json(
                HTTPStatus.BAD_REQUEST,
                {
                    "error": "give 'latent' as an integer; 'alpha', 'clamp' as numbers and "
                    "'max_new_tokens' as an integer (optional)"
                },
            )
            return
        if not 1 <= n_new <= MAX_NEW_TOKENS:
            self._json(
                HTTPStatus.BAD_REQUEST,
                {"error": f"'max_new_tokens' must be in 1..{MAX_NEW_TOKENS}"},
            )
            return
        try:
            result = self.server.steer(prompt, latent, alpha, clamp=clamp, max_new_tokens=n_new)
        except ValueError as e:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
            return
        self._json(HTTPStatus.OK, result)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/api/annotate":
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            self._annotate(q)
        elif url.path == "/api/steer":
            self._steer({k: v[0] for k, v in parse_qs(url.query).items()})
        elif url.path == "/api/info":
            self._json(HTTPStatus.OK, self.server.info)
        elif url.path.startswith("/api/"):
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no endpoint {url.path}"})
        else:
            super().do_GET()

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        routes = {"/api/annotate": self._annotate, "/api/steer": self._steer}
        if url.path not in routes:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no POST endpoint {url.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY_BYTES:
            self._json(
                HTTPStatus.BAD_REQUEST, {"error": f"body must be 1..{MAX_BODY_BYTES} bytes of JSON"}
            )
            return
        try:
            params = json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._json(HTTPStatus.BAD_REQUEST, {"error": "body is not valid JSON"})
            return
        if not isinstance(params, dict):
            self._json(HTTPStatus.BAD_REQUEST, {"error": "body must be a JSON object"})
            return
        routes[url.path](params)


class AnnotateServer(ThreadingHTTPServer):
    """Serves ``site_dir`` and annotates text with ``coder`` on ``adapter``'s ``hook``."""

    daemon_threads = True

    def __init__(
        self,
        site_dir: str | os.PathLike[str],
        coder: Any,
        adapter: Any,
        hook: str,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        verbose: bool = False,
    ) -> None:
        if not os.path.isdir(site_dir):
            raise FileNotFoundError(f"site directory {site_dir} does not exist")
        handler = functools.partial(_Handler, directory=os.fspath(site_dir))
        super().__init__((host, port), handler)
        self.coder, self.adapter, self.hook, self.verbose = coder, adapter, hook, verbose
        self._lock = threading.Lock()
        self._strings = TokenStrings(adapter.tokenizer)
        self.info = {
            "model_name": getattr(adapter, "name", None),
            "hook_name": hook,
            "n_latents": coder.n_latents,
            "d_in": coder.d_in,
        }

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def annotate(self, text: str, top_n: int = 5) -> dict[str, Any]:
        with self._lock:
            return annotate(
                self.coder, self.adapter, self.hook, text, top_n=top_n, strings=self._strings
            ).to_json()

    def steer(
        self,
        prompt: str,
        latent: int,
        alpha: float = DEFAULT_ALPHA,
        *,
        clamp: float | None = None,
        max_new_tokens: int = 20,
    ) -> dict[str, Any]:
        """Continuations of ``prompt`` without and with ``latent`` steered (added with weight
        ``alpha``, or clamped to ``clamp``): :func:`sparsecodes.uses.steering.compare` as JSON."""
        from sparsecodes.uses.steering import compare

        edit: dict[str, Any] = (
            {"clamp": {latent: clamp}} if clamp is not None else {"add": {latent: alpha}}
        )
        with self._lock:
            return compare(
                self.adapter,
                self.coder,
                prompt,
                self.hook,
                max_new_tokens=max_new_tokens,
                token_string=self._strings,
                **edit,
            ).to_json()


def start_in_thread(server: AnnotateServer) -> threading.Thread:
    """Run ``server`` in a daemon thread; stop it with ``server.shutdown(); server.server_close()``."""
    thread = threading.Thread(target=server.serve_forever, name="sparsecodes-serve", daemon=True)
    thread.start()
    return thread
