"""Auto-interpretability: explain + detection scoring against a REAL local HTTP chat server.

The server (``http.server`` in a thread on 127.0.0.1) implements ``/v1/chat/completions`` with a
scripted "lexical" model: it explains a latent as the first marked token and, when scoring, says
yes to exactly the excerpts containing that word. The expected balanced accuracy is computed here
from the contexts and that rule, independently of the pipeline's shuffling and batching.
"""

from __future__ import annotations

import email.utils
import json
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import require_model
from sparsecodes.autointerp import (
    AutointerpConfig,
    ChatCallError,
    Context,
    EndpointUnreachableError,
    LatentExamples,
    LocalChatBackend,
    OpenAIChatClient,
    balanced_accuracy,
    call_with_retries,
    collect_examples,
    parse_detection,
    parse_explanation,
    run_autointerp,
)
from sparsecodes.autointerp.classify import parse_yesno
from sparsecodes.autointerp.client import parse_retry_after

# ---------------------------------------------------------------------------- scripted server

# a script answers (status, text) or (status, text, extra response headers)
Script = Callable[[dict, dict], tuple[int, str] | tuple[int, str, dict[str, str]]]


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
        if self.path != "/v1/chat/completions":
            status, text, extra = 404, "not found", []
        else:
            status, text, *extra = srv.script(body, dict(self.headers))
        if status == 200:
            payload = json.dumps(
                {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
            ).encode()
        else:
            payload = json.dumps({"error": {"message": text}}).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (extra[0] if extra else {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the client gave up (timeout test)
            pass

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def chat_server(script: Script) -> Iterator[tuple[str, ThreadingHTTPServer]]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.script, srv.requests, srv.lock = script, [], threading.Lock()
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/v1", srv
    finally:
        srv.shutdown()
        srv.server_close()


def _user(body: dict) -> str:
    return next(m["content"] for m in body["messages"] if m["role"] == "user")


def lexical(body: dict, headers: dict) -> tuple[int, str]:
    """Explain: the first marked token. Detect: the excerpts containing the explained word."""
    user = _user(body)
    if user.startswith("Excerpts (feature marked"):
        word = re.search(r"^\d+\. .*?<<(.+?)>>", user, re.M).group(1).strip()
        return 200, f"Explanation: the word {word}"
    word = re.match(r"Explanation: the word (\S+)", user).group(1)
    one = re.search(r"^Excerpt: (.*)$", user, re.M)
    if one:  # the yes/no format
        return 200, "Yes." if word in one.group(1) else "no"
    hits = [int(n) for n, text in re.findall(r"^(\d+)\. (.*)$", user, re.M) if word in text]
    return 200, "Answer: [" + ", ".join(map(str, hits)) + "]"


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------------------- hand-made examples


def ctx(words: list[str], active: str | None) -> Context:
    return Context(words, [1.5 if w.strip() == active else 0.0 for w in words])


def make_examples(latent: int, word: str) -> LatentExamples:
    """Positives: 4 of 6 contain ``word``; negatives: 1 of 5 contains it."""
    top = [ctx(["The", f" {word}", " sat", " here"], word) for _ in range(3)]
    held = [
        ctx(["A", f" {word}", " ran"], word),
        ctx(["My", f" {word}", " is", " old"], word),
        ctx(["One", " more", f" {word}"], word),
        ctx([f"{word}", " food", " is", " good"], word),
        ctx(["Birds", " fly", " south"], "fly"),  # the latent fires, the word is absent
        ctx(["Nothing", " here"], "here"),
    ]
    non = [
        ctx(["Rain", " falls"], None),
        ctx(["Stocks", " rose", " today"], None),
        ctx(["The", f" {word}", " slept"], None),  # the word without the latent
        ctx(["Blue", " sky"], None),
        ctx(["Quiet", " night"], None),
    ]
    return LatentExamples(latent, top, held, non)


def expected_score(ex: LatentExamples, word: str) -> tuple[float, int, int]:
    """What the lexical rule implies: (balanced accuracy, TP, TN), computed directly."""
    tp = sum(word in c.text for c in ex.held_out_activating)
    tn = sum(word not in c.text for c in ex.non_activating)
    return 0.5 * (tp / len(ex.held_out_activating) + tn / len(ex.non_activating)), tp, tn


FAST = AutointerpConfig(detect_batch_size=4, attempts=3, backoff=0.0, seed=0)


# ---------------------------------------------------------------------------- end to end (HTTP)


def test_explain_and_score_end_to_end_against_real_server() -> None:
    exs = [make_examples(3, "cat"), make_examples(7, "dog")]
    with chat_server(lexical) as (url, srv):
        client = OpenAIChatClient(url, "scripted", api_key="sk-test")
        report = run_autointerp(exs, client, config=FAST)
    by = {r.latent: r for r in report.results}
    for ex, word in zip(exs, ("cat", "dog"), strict=True):
        r = by[ex.latent]
        want, tp, tn = expected_score(ex, word)
        assert r.status == "ok" and r.error is None
        assert r.explanation == f"the word {word}"
        assert r.score == pytest.approx(want)
        assert (r.true_pos, r.true_neg, r.n_pos, r.n_neg) == (tp, tn, 6, 5)
    # 2 latents x (1 explain + ceil(11 / 4) detection prompts)
    assert len(srv.requests) == 2 * (1 + 3)
    req = srv.requests[0]
    assert req["body"]["model"] == "scripted"
    assert req["headers"]["Authorization"] == "Bearer sk-test"
    assert "<< cat>>" in _user(req["body"])  # activating tokens marked for the explainer
    assert all("<<" not in _user(r["body"]) for r in srv.requests[1:4])  # unmarked for scoring
    s = report.summary()
    assert s["n_ok"] == 2 and s["n_failed"] == 0
    assert s["mean_score"] == pytest.approx(sum(r.score for r in report.results) / 2)
    assert s["n_pos_total"] == 12 and s["n_neg_total"] == 10


def test_yesno_format_scores_the_same_with_one_call_per_excerpt() -> None:
    ex = make_examples(3, "cat")
    cfg = AutointerpConfig(detect_format="yesno", backoff=0.0)
    with chat_server(lexical) as (url, srv):
        report = run_autointerp([ex], OpenAIChatClient(url, "m"), config=cfg)
    r = report.results[0]
    assert r.status == "ok"
    assert r.score == pytest.approx(expected_score(ex, "cat")[0])
    assert len(srv.requests) == 1 + 6 + 5


def test_detection_is_seeded_and_seed_changes_the_order() -> None:
    ex = make_examples(0, "cat")

    def prompts(seed: int) -> list[str]:
        with chat_server(lexical) as (url, srv):
            run_autointerp([ex], OpenAIChatClient(url, "m"), config=AutointerpConfig(seed=seed))
        return [_user(r["body"]) for r in srv.requests]

    a, b, c = prompts(0), prompts(0), prompts(1)
    assert a == b
    assert a[1:] != c[1:]


def test_server_error_twice_then_success_is_retried() -> None:
    state = {"n": 0}

    def flaky(body: dict, headers: dict) -> tuple[int, str]:
        state["n"] += 1
        return (500, "overloaded") if state["n"] <= 2 else lexical(body, headers)

    ex = make_examples(1, "cat")
    with chat_server(flaky) as (url, srv):
        report = run_autointerp([ex], OpenAIChatClient(url, "m"), config=FAST)
    r = report.results[0]
    assert r.status == "ok"
    assert r.score == pytest.approx(expected_score(ex, "cat")[0])
    assert len(srv.requests) == 2 + 1 + 3


def test_always_failing_latent_is_failed_not_zero_and_left_out_of_the_mean() -> None:
    def dog_fails(body: dict, headers: dict) -> tuple[int, str]:
        return (500, "boom") if "dog" in _user(body) else lexical(body, headers)

    exs = [make_examples(0, "cat"), make_examples(1, "dog")]
    with chat_server(dog_fails) as (url, srv):
        report = run_autointerp(exs, OpenAIChatClient(url, "m"), config=FAST)
    ok, bad = report.results
    assert bad.status == "failed" and bad.score is None
    assert "HTTP 500" in bad.error and "explain" in bad.error and "3 attempt" in bad.error
    assert sum("dog" in _user(r["body"]) for r in srv.requests) == FAST.attempts
    s = report.summary()
    assert (s["n_ok"], s["n_failed"]) == (1, 1)
    assert s["mean_score"] == pytest.approx(ok.score)
    out = report.to_json()["latents"]["1"]
    assert out["score"] is None and out["status"] == "failed"


def test_unparseable_detection_answer_is_failed_after_retries() -> None:
    def vague(body: dict, headers: dict) -> tuple[int, str]:
        if _user(body).startswith("Excerpts (feature marked"):
            return lexical(body, headers)
        return 200, "I think maybe the first few of them."

    with chat_server(vague) as (url, srv):
        report = run_autointerp([make_examples(0, "cat")], OpenAIChatClient(url, "m"), config=FAST)
    r = report.results[0]
    assert r.status == "failed" and r.score is None
    assert r.explanation == "the word cat"
    assert "detect" in r.error and "unparseable" in r.error
    assert len(srv.requests) == 1 + FAST.attempts
    assert report.summary()["mean_score"] is None


def test_timeout_is_a_failed_call() -> None:
    def slow(body: dict, headers: dict) -> tuple[int, str]:
        time.sleep(1.0)
        return lexical(body, headers)

    cfg = AutointerpConfig(attempts=2, backoff=0.0)
    with chat_server(slow) as (url, _):
        client = OpenAIChatClient(url, "m", timeout=0.2)
        report = run_autointerp([make_examples(0, "cat")], client, config=cfg)
    r = report.results[0]
    assert r.status == "failed" and r.score is None and "timed out" in r.error


def test_unreachable_endpoint_is_a_clear_error_naming_the_url() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    with pytest.raises(EndpointUnreachableError, match=re.escape(url + "/chat/completions")):
        run_autointerp([make_examples(0, "cat")], OpenAIChatClient(url, "m"), config=FAST)


def test_client_rejects_bad_arguments_and_malformed_responses() -> None:
    with pytest.raises(ValueError, match="http"):
        OpenAIChatClient("127.0.0.1:8000", "m")
    with chat_server(lambda b, h: (200, "x")) as (url, _):
        client = OpenAIChatClient(url, "m")
        assert client.complete([{"role": "user", "content": "hi"}]) == "x"
        with pytest.raises(ValueError, match="role"):
            client.complete([{"role": "robot", "content": "hi"}])
        bad = OpenAIChatClient(url.replace("/v1", "/nope"), "m")
        with pytest.raises(ChatCallError, match="HTTP 404"):
            bad.complete([{"role": "user", "content": "hi"}])


# ---------------------------------------------------------------------------- retry policy
HI = [{"role": "user", "content": "hi"}]


class FakeTime:
    """A clock that only moves when ``sleep`` is called; records the sleeps."""

    def __init__(self) -> None:
        self.now, self.sleeps = 1000.0, []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def scripted(*answers: tuple) -> Script:
    """Answers in turn; the last one repeats."""
    it = iter(answers)
    last: list[tuple] = []

    def script(body: dict, headers: dict) -> tuple:
        last[:] = [next(it, last[0] if last else (200, "ok"))]
        return last[0]

    return script


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_tried_once(status: int) -> None:
    fake = FakeTime()
    with (
        chat_server(scripted((status, "no"))) as (url, srv),
        pytest.raises(ChatCallError, match=f"HTTP {status}.*not retried") as e,
    ):
        call_with_retries(
            OpenAIChatClient(url, "m"), HI, str, attempts=5, sleep=fake.sleep, clock=fake.clock
        )
    assert len(srv.requests) == 1 and fake.sleeps == []
    assert e.value.status == status and not e.value.retryable


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503])
def test_transient_errors_are_retried(status: int) -> None:
    fake = FakeTime()
    with chat_server(scripted((status, "busy"), (200, "fine"))) as (url, srv):
        got = call_with_retries(
            OpenAIChatClient(url, "m"), HI, str, backoff=0.1, sleep=fake.sleep, clock=fake.clock
        )
    assert got == ("fine", "fine") and len(srv.requests) == 2 and len(fake.sleeps) == 1


def test_success_after_two_503s_with_exponential_jittered_backoff() -> None:
    fake = FakeTime()
    with chat_server(scripted((503, "a"), (503, "b"), (200, "ok"))) as (url, srv):
        got = call_with_retries(
            OpenAIChatClient(url, "m"),
            HI,
            str,
            attempts=3,
            backoff=1.0,
            sleep=fake.sleep,
            clock=fake.clock,
            rng=random.Random(7),
        )
    assert got == ("ok", "ok") and len(srv.requests) == 3
    r = random.Random(7)
    want = [1.0 * (0.5 + 0.5 * r.random()), 2.0 * (0.5 + 0.5 * r.random())]
    assert fake.sleeps == pytest.approx(want, abs=1e-12)
    assert 0.5 <= fake.sleeps[0] < 1.0 <= fake.sleeps[1] < 2.0


def test_retry_after_seconds_on_429_sets_the_wait() -> None:
    fake = FakeTime()
    answers = ((429, "slow down", {"Retry-After": "1"}), (200, "ok"))
    with chat_server(scripted(*answers)) as (url, srv):
        call_with_retries(
            OpenAIChatClient(url, "m"), HI, str, backoff=30.0, sleep=fake.sleep, clock=fake.clock
        )
    assert fake.sleeps == [1.0] and len(srv.requests) == 2  # not the 15-30 s backoff
    # and with the real clock: about 1 s passes between the two requests
    with chat_server(scripted(*answers)) as (url, srv):
        t0 = time.monotonic()
        call_with_retries(OpenAIChatClient(url, "m"), HI, str, backoff=30.0)
        elapsed = time.monotonic() - t0
    assert len(srv.requests) == 2 and 0.95 <= elapsed < 5.0


def test_retry_after_http_date_on_503_sets_the_wait() -> None:
    fake = FakeTime()
    date = email.utils.formatdate(time.time() + 3, usegmt=True)  # whole seconds
    answers = ((503, "maintenance", {"Retry-After": date}), (200, "ok"))
    with chat_server(scripted(*answers)) as (url, srv):
        call_with_retries(
            OpenAIChatClient(url, "m"), HI, str, backoff=0.0, sleep=fake.sleep, clock=fake.clock
        )
    assert len(srv.requests) == 2 and len(fake.sleeps) == 1
    assert 1.5 <= fake.sleeps[0] <= 3.0


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("7", now=now) == 7.0
    assert parse_retry_after(email.utils.formatdate(now + 42, usegmt=True), now=now) == 42.0
    assert parse_retry_after(email.utils.formatdate(now - 42, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon", now=now) is None and parse_retry_after(None) is None


def test_retries_are_bounded_in_total_time() -> None:
    fake = FakeTime()
    with (
        chat_server(scripted((503, "down"))) as (url, srv),
        pytest.raises(ChatCallError, match="max_total=10") as e,
    ):
        call_with_retries(
            OpenAIChatClient(url, "m"),
            HI,
            str,
            attempts=1000,
            backoff=1.0,
            max_total=10.0,
            sleep=fake.sleep,
            clock=fake.clock,
            rng=random.Random(0),
        )
    assert sum(fake.sleeps) <= 10.0 and len(srv.requests) == len(fake.sleeps) + 1
    assert 3 <= len(srv.requests) <= 5  # waits of ~1, 2, 4, 8 s: the next would pass 10 s
    assert e.value.status == 503


def test_retry_after_beyond_max_delay_gives_up_at_once() -> None:
    fake = FakeTime()
    with (
        chat_server(scripted((429, "quota", {"Retry-After": "3600"}))) as (url, srv),
        pytest.raises(ChatCallError, match="3600 s"),
    ):
        call_with_retries(OpenAIChatClient(url, "m"), HI, str, max_delay=60.0, sleep=fake.sleep)
    assert len(srv.requests) == 1 and fake.sleeps == []


def test_bad_messages_are_not_retried() -> None:
    fake = FakeTime()
    with chat_server(scripted((200, "x"))) as (url, srv), pytest.raises(ValueError, match="role"):
        call_with_retries(
            OpenAIChatClient(url, "m"),
            [{"role": "robot", "content": "x"}],
            str,
            sleep=fake.sleep,
        )
    assert srv.requests == [] and fake.sleeps == []


# ---------------------------------------------------------------------------- parsers, metric


def test_parse_detection_is_strict() -> None:
    assert parse_detection("Answer: [1, 3]", 4) == {1, 3}
    assert parse_detection("Sure.\nanswer:[]", 4) == set()
    for bad in (
        "1, 3",  # no label
        "Answer: [1, 5]",  # out of range
        "Answer: [0]",
        "Answer: [1, 1]",  # repeated
        "Answer: [one]",
        "Answer: [1] Answer: [2]",  # two lists
    ):
        with pytest.raises(ValueError):
            parse_detection(bad, 4)


def test_parse_yesno_is_strict() -> None:
    assert parse_yesno("Yes, it does.") is True
    assert parse_yesno("**No**") is False
    assert parse_yesno("Answer: yes") is True
    for bad in ("Maybe", "The answer is yes", "yesterday", ""):
        with pytest.raises(ValueError):
            parse_yesno(bad)


def test_parse_explanation() -> None:
    assert parse_explanation("Explanation: plural nouns.\n") == "plural nouns."
    assert parse_explanation("**Explanation:** the word 'if'") == "the word 'if'"
    assert parse_explanation("numbers in code") == "numbers in code"
    with pytest.raises(ValueError):
        parse_explanation("  \n ")


def test_balanced_accuracy_matches_sklearn() -> None:
    from sklearn.metrics import balanced_accuracy_score

    g = torch.Generator().manual_seed(0)
    truth = (torch.rand(50, generator=g) < 0.3).tolist()
    pred = (torch.rand(50, generator=g) < 0.5).tolist()
    assert balanced_accuracy(pred, truth) == pytest.approx(balanced_accuracy_score(truth, pred))
    with pytest.raises(ValueError):
        balanced_accuracy([True], [True])


def test_too_few_contexts_is_skipped_not_scored() -> None:
    ex = make_examples(0, "cat")
    dead = LatentExamples(5, [], [], ex.non_activating)
    no_neg = LatentExamples(6, ex.top, ex.held_out_activating, [])
    with chat_server(lexical) as (url, _):
        report = run_autointerp([dead, no_neg], OpenAIChatClient(url, "m"), config=FAST)
    a, b = report.results
    assert a.status == "skipped" and a.explanation is None and a.score is None
    assert b.status == "skipped" and b.explanation == "the word cat" and b.score is None
    assert report.summary()["n_skipped"] == 2


# ---------------------------------------------------------------------------- collector (tiny)

TEXTS = [
    "def add(a, b):\n    return a + b\n" * 3,
    "The cat sat on the mat. The dog ran in the park. " * 4,
    "import os\nimport sys\nprint(os.getcwd(), sys.argv)\n" * 3,
    "Numbers: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12. " * 3,
]


@pytest.fixture(scope="module")
def tiny():
    from sparsecodes import SparseCoder
    from sparsecodes.models import load_model

    adapter = load_model("tiny-llama", device="cpu")
    coder = SparseCoder(adapter.d_model, 32, "relu", seed=0)
    return adapter, coder


def test_collect_examples_splits_and_values(tiny) -> None:
    from sparsecodes.data import batch_windows, token_windows

    adapter, coder = tiny
    hook, latents = "blocks.1.resid_post", [0, 5, 9]
    kw = dict(context_size=16, n_windows=40, n_top=4, n_held_out=5, n_non_activating=5)
    exs = collect_examples(coder, adapter, hook, TEXTS, latents, seed=0, **kw)
    again = collect_examples(coder, adapter, hook, TEXTS, latents, seed=0, **kw)
    assert [e.to_dict() for e in exs] == [e.to_dict() for e in again]
    # independent reference: every window's peak activation per latent
    ids, keep = next(batch_windows(token_windows(TEXTS, adapter.tokenizer, 16), 40))
    x = adapter.run(ids, hooks=[hook])[hook]
    codes = coder.encode(x.reshape(-1, x.shape[-1])).reshape(ids.shape[0], ids.shape[1], -1)
    codes = codes * keep.unsqueeze(-1)
    for ex in exs:
        peaks = codes[:, :, ex.latent].amax(dim=1)
        n_active = int((peaks > 0).sum())
        assert len(ex.top) == min(4, n_active)
        top_peaks = [c.max_act for c in ex.top]
        assert top_peaks == sorted(top_peaks, reverse=True)
        assert top_peaks == pytest.approx(
            peaks.sort(descending=True).values[: len(ex.top)].tolist()
        )
        assert len(ex.held_out_activating) == min(5, n_active - len(ex.top))
        assert all(0 < c.max_act <= top_peaks[-1] for c in ex.held_out_activating)
        assert all(max(c.acts) == 0 for c in ex.non_activating)
        assert len(ex.non_activating) == min(5, ids.shape[0] - n_active)
        for c in ex.top + ex.held_out_activating + ex.non_activating:
            assert len(c.tokens) <= 15  # BOS (and any document separator) dropped
            assert not {"<s>", "</s>", "<pad>"} & set(c.tokens)


def test_local_backend_generates_greedily(tiny) -> None:
    adapter, _ = tiny
    with pytest.raises(ValueError, match="chat template"):
        LocalChatBackend.from_adapter(adapter)
    tok = adapter.tokenizer
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    try:
        backend = LocalChatBackend.from_adapter(adapter, max_new_tokens=5)
        msgs = [{"role": "user", "content": "Explanation:"}]
        a, b = backend.complete(msgs), backend.complete(msgs)
        assert isinstance(a, str) and a == b
    finally:
        tok.chat_template = None


def _save_tiny_coder(tiny, path: Path) -> Path:
    _, coder = tiny
    coder.train_config = {
        "source": {"model_name": "tiny-llama", "hook_name": "blocks.1.resid_post"}
    }
    coder.save(path / "final")
    return path


def test_cli_end_to_end_with_server(tiny, tmp_path: Path, monkeypatch) -> None:
    from sparsecodes.cli import main

    run = _save_tiny_coder(tiny, tmp_path / "run")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(TEXTS))
    out = tmp_path / "explanations.json"

    def answer(body: dict, headers: dict) -> tuple[int, str]:
        if _user(body).startswith("Excerpts (feature marked"):
            return 200, "Explanation: code"
        return 200, "Answer: [1, 2]"

    monkeypatch.setenv("MY_KEY", "k-123")
    with chat_server(answer) as (url, srv):
        res = CliRunner().invoke(
            main,
            [
                "autointerp", str(run), "--latents", "0-2,7", "--endpoint", url,
                "--model", "m", "--api-key-env", "MY_KEY", "--corpus", str(corpus),
                "--n-windows", "24", "--context-size", "16", "--n-top", "3",
                "--n-held-out", "4", "--n-non-activating", "4", "--backoff", "0",
                "--device", "cpu", "--out", str(out),
            ],
        )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert all(r["headers"]["Authorization"] == "Bearer k-123" for r in srv.requests)
    data = json.loads(out.read_text())
    assert set(data["latents"]) == {"0", "1", "2", "7"}
    for rec in data["latents"].values():
        assert {"explanation", "score", "n_pos", "n_neg", "status", "error"} <= set(rec)
        if rec["status"] == "ok":
            want = 0.5 * (rec["true_pos"] / rec["n_pos"] + rec["true_neg"] / rec["n_neg"])
            assert rec["score"] == pytest.approx(want)
            assert rec["explanation"] == "code" and rec["n_pos"] <= 4 and rec["n_neg"] <= 4
        else:
            assert rec["score"] is None and rec["error"]
    s = data["summary"]
    assert s["n_ok"] + s["n_failed"] + s["n_skipped"] == 4
    assert data["config"]["lm"] == "tiny-llama"


def test_cli_unreachable_endpoint_names_the_url(tiny, tmp_path: Path) -> None:
    from sparsecodes.cli import main

    run = _save_tiny_coder(tiny, tmp_path / "run")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(TEXTS))
    url = f"http://127.0.0.1:{closed_port()}/v1"
    res = CliRunner().invoke(
        main,
        [
            "autointerp", str(run), "--latents", "0", "--endpoint", url, "--model", "m",
            "--corpus", str(corpus), "--n-windows", "8", "--context-size", "16",
            "--attempts", "2", "--backoff", "0", "--device", "cpu",
            "--out", str(tmp_path / "e.json"),
        ],
    )  # fmt: skip
    assert res.exit_code != 0
    assert url in res.output and "EndpointUnreachableError" in res.output
    assert not (tmp_path / "e.json").exists()


# ---------------------------------------------------------------------------- SmolLM2 (slow)


@pytest.mark.slow
@pytest.mark.embedded
def test_smollm2_local_backend_explains_and_scores(tmp_path: Path) -> None:
    from sparsecodes import SparseCoder
    from sparsecodes.data import load_texts
    from sparsecodes.models import load_model

    require_model("smollm2-135m")
    torch.set_num_threads(1)
    adapter = load_model("smollm2-135m", device="cpu")
    coder = SparseCoder(adapter.d_model, 64, "relu", seed=0)
    texts = load_texts(None, max_chars=20_000)
    exs = collect_examples(
        coder, adapter, "blocks.2.resid_post", texts, [0, 1],
        context_size=16, n_windows=24, n_top=3, n_held_out=3, n_non_activating=3,
    )  # fmt: skip
    backend = LocalChatBackend.from_adapter(adapter, max_new_tokens=32)
    report = run_autointerp(exs, backend, config=AutointerpConfig(attempts=1, backoff=0.0))
    report.save(tmp_path / "e.json")
    data = json.loads((tmp_path / "e.json").read_text())
    assert set(data["latents"]) == {"0", "1"}
    for rec in data["latents"].values():
        assert rec["status"] in ("ok", "failed", "skipped")
        if rec["status"] == "ok":
            assert isinstance(rec["explanation"], str) and rec["explanation"]
            want = 0.5 * (rec["true_pos"] / rec["n_pos"] + rec["true_neg"] / rec["n_neg"])
            assert rec["score"] == pytest.approx(want)
        else:
            assert rec["score"] is None and rec["error"]
    assert "smollm2-135m" in data["config"]["explainer"]
