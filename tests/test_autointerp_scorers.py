"""The scorers beside detection: fuzzing, intruder, embedding, simulation; their intervals; the
pipeline with several scorers, given explanations and failures that are never zeros.

Chat scorers run against the REAL local HTTP server of ``test_autointerp`` with scripted models
whose right answers are known from the contexts; the simulation endpoint is a local
``/v1/completions`` server with a one-character-per-token "tokenizer".
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sparsecodes.autointerp import (
    AutointerpConfig,
    CompletionsSimulator,
    Context,
    DetectionScorer,
    EmbeddingScorer,
    FuzzScorer,
    IntruderScorer,
    LatentExamples,
    LocalSimulator,
    SimulationScorer,
    embedding_score,
    fuzz,
    intruder,
    run_autointerp,
    simulation_score,
)
from sparsecodes.autointerp.intruder import parse_intruder
from sparsecodes.autointerp.simulation import expected_digit, simulation_prompt
from sparsecodes.metrics.intervals import (
    auroc,
    auroc_interval,
    balanced_accuracy_interval,
    correlation_interval,
    mean_interval,
    wilson_interval,
)
from sparsecodes.metrics.ranking import roc_auc_from_arrays
from test_autointerp import TEXTS, _save_tiny_coder, _user, chat_server
from test_autointerp import tiny as tiny

# ---------------------------------------------------------------------------- intervals


def test_wilson_and_fisher_intervals_match_their_formulas() -> None:
    w = wilson_interval(8, 10)
    # Wilson, z = 1.959964: centre (0.8 + z^2/20) / (1 + z^2/10), computed by hand
    z = 1.959963984540054
    c = (0.8 + z * z / 20) / (1 + z * z / 10)
    h = z * math.sqrt(0.8 * 0.2 / 10 + z * z / 400) / (1 + z * z / 10)
    assert (w.low, w.high) == pytest.approx((c - h, c + h), abs=1e-12)
    assert (w.low, w.high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    f = correlation_interval(0.5, 28)  # se = 1/5: atanh(0.5) -/+ 1.96 * 0.2
    assert (f.low, f.high) == pytest.approx(
        (math.tanh(math.atanh(0.5) - 0.2 * z), math.tanh(math.atanh(0.5) + 0.2 * z)), abs=1e-12
    )
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(3, 2)


def test_bootstrap_intervals_cover_the_point_and_narrow_with_more_items() -> None:
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1.0, 1.0, 30), rng.normal(0.0, 1.0, 30)
    small = auroc_interval(pos, neg, seed=1)
    big = auroc_interval(np.tile(pos, 8), np.tile(neg, 8), seed=1)
    a = auroc(pos, neg)
    assert small.low < a < small.high
    assert big.high - big.low < 0.6 * (small.high - small.low)  # ~ 1/sqrt(8) of the width
    assert a == roc_auc_from_arrays(np.r_[np.ones(30, bool), np.zeros(30, bool)], np.r_[pos, neg])
    # the batched bootstrap AUROC equals the scalar one on a fixed resample
    same = auroc_interval(np.array([2.0, 3.0]), np.array([1.0, 1.0]), seed=0)
    assert same.low == same.high == 1.0
    ba = balanced_accuracy_interval(np.ones(10, bool), np.zeros(10, bool))
    assert ba.low == ba.high == 0.5  # every resample: all positives right, all negatives wrong
    m = mean_interval(np.arange(100.0))
    assert m.low < 49.5 < m.high and m.high - m.low < 15


# ---------------------------------------------------------------------------- fuzzing


def ctx(words: list[str], active: str | None) -> Context:
    return Context(words, [2.0 if w.strip() == active else 0.0 for w in words])


def fuzz_examples(word: str = "cat") -> tuple[list[Context], list[Context]]:
    """Positives: ``word`` at position 1, active there. Negatives: ``word`` at position 3 and
    silent (the latent never fires there), so marks copied from a positive (position 1) never
    land on it."""
    pos = [ctx(["The", f" {word}", " sat", " down", " here"], word) for _ in range(6)]
    pos += [ctx(["A", f" {word}", " ran", " off"], word) for _ in range(2)]
    neg = [ctx(["We", " saw", " the", f" {word}", " go"], None) for _ in range(5)]
    neg += [ctx(["Rain", " fell", " all", " day"], None) for _ in range(3)]
    return pos, neg


def marks_say(body: dict, headers: dict) -> tuple[int, str]:
    """Mark-aware judge: yes iff every marked span is the explained word."""
    user = _user(body)
    word = re.match(r"Explanation: the word (\S+)", user).group(1)
    one = re.search(r"^Excerpt: (.*)$", user, re.M)

    def ok(text: str) -> bool:
        marks = re.findall(r"<<(.+?)>>", text)
        return bool(marks) and all(m.strip() == word for m in marks)

    if one:
        return 200, "yes" if ok(one.group(1)) else "no"
    hits = [n for n, text in re.findall(r"^(\d+)\. (.*)$", user, re.M) if ok(text)]
    return 200, "Answer: [" + ", ".join(hits) + "]"


def text_says(body: dict, headers: dict) -> tuple[int, str]:
    """Mark-blind judge: yes iff the word is anywhere in the excerpt."""
    user = _user(body)
    word = re.match(r"Explanation: the word (\S+)", user).group(1)
    one = re.search(r"^Excerpt: (.*)$", user, re.M)
    if one:
        return 200, "yes" if word in one.group(1) else "no"
    hits = [n for n, text in re.findall(r"^(\d+)\. (.*)$", user, re.M) if word in text]
    return 200, "Answer: [" + ", ".join(hits) + "]"


@pytest.mark.parametrize("fmt", ["list", "yesno"])
def test_fuzzing_rewards_marks_on_the_right_tokens_only(fmt: str) -> None:
    from sparsecodes.autointerp import OpenAIChatClient

    pos, neg = fuzz_examples()
    with chat_server(marks_say) as (url, _):
        right = fuzz(OpenAIChatClient(url, "m"), "the word cat", pos, neg, batch_size=4,
                     backoff=0.0, answer_format=fmt)  # fmt: skip
    assert right.score == 1.0 and right.true_pos == 8 and right.true_neg == 8
    with chat_server(text_says) as (url, _):
        blind = fuzz(OpenAIChatClient(url, "m"), "the word cat", pos, neg, batch_size=4,
                     backoff=0.0, answer_format=fmt)  # fmt: skip
    # the 5 negatives holding "cat" (marked elsewhere) fool a judge that ignores the marks
    assert blind.true_neg == 3 and blind.score == pytest.approx(0.5 * (1 + 3 / 8))
    assert blind.interval.low <= blind.score <= blind.interval.high


def test_fuzzing_rejects_positives_without_active_tokens() -> None:
    _, neg = fuzz_examples()
    with pytest.raises(ValueError, match="no token with activation"):
        fuzz(None, "x", [ctx(["a", " b"], None)], neg)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- intruder


def odd_one_out(body: dict, headers: dict) -> tuple[int, str]:
    """Answers the excerpt whose marked tokens differ from the most common marked token."""
    user = _user(body)
    rows = re.findall(r"^(\d+)\. (.*)$", user, re.M)
    marked = {n: tuple(m.strip() for m in re.findall(r"<<(.+?)>>", t)) for n, t in rows}
    common = max(set(marked.values()), key=list(marked.values()).count)
    odd = [n for n, m in marked.items() if m != common]
    return 200, f"Answer: {odd[0] if odd else 1}"


def test_intruder_is_found_when_the_latent_is_coherent_and_not_when_it_is_not() -> None:
    from sparsecodes.autointerp import OpenAIChatClient

    pos, _ = fuzz_examples()
    # intruders without the word, so a random mark never lands on it
    neg = [ctx(["Rain", " fell", " all", " day"], None) for _ in range(8)]
    with chat_server(odd_one_out) as (url, srv):
        r = intruder(OpenAIChatClient(url, "m"), pos, neg, n_shown=4, backoff=0.0)
    assert (r.score, r.n_trials, r.n_correct, r.chance) == (1.0, 8, 8, 0.25)
    assert len(srv.requests) == 8 and r.interval.high == 1.0 and r.interval.low > 0.6
    # a latent firing on a different word in every context: the odd one is not recognisable
    words = ["dog", "sun", "car", "hat", "pen", "box", "cup", "key"]
    mixed = [ctx(["The", f" {w}", " sat", " down"], w) for w in words]
    with chat_server(lambda b, h: (200, "Answer: 1")) as (url, _):
        r1 = intruder(OpenAIChatClient(url, "m"), mixed, neg, n_shown=4, backoff=0.0, seed=3)
    # always answering 1 is right exactly when the intruder was put first
    assert r1.n_correct < 8


def test_parse_intruder_is_strict() -> None:
    assert parse_intruder("The odd one.\nAnswer: 3", 4) == 3
    assert parse_intruder("Answer: [2]", 4) == 2
    for bad in ("3", "Answer: 5", "Answer: 1 Answer: 2", "Answer: none"):
        with pytest.raises(ValueError):
            parse_intruder(bad, 4)


# ---------------------------------------------------------------------------- embedding


class WordEmbedder:
    """Bag-of-words unit vectors over a fixed vocabulary (an exact, model-free embedder)."""

    query_prefix = ""
    vocab = ("cat", "dog", "rain", "sat", "fell", "the")

    def embed(self, texts):
        rows = []
        for t in texts:
            v = torch.tensor([float(w in t.lower()) for w in self.vocab]) + 1e-3
            rows.append(v / v.norm())
        return torch.stack(rows)

    def describe(self) -> str:
        return "bag of words"


def test_embedding_score_is_the_auroc_of_cosine_similarities() -> None:
    pos, neg = fuzz_examples()
    emb = WordEmbedder()
    r = embedding_score(emb, "cat sat", pos, neg, seed=0)
    q = emb.embed(["cat sat"])[0]
    sims = [float(emb.embed([c.text])[0] @ q) for c in pos + neg]
    assert r.score == pytest.approx(auroc(np.array(sims[:8]), np.array(sims[8:])), abs=1e-12)
    # cosines: positives 0.82 (cat, sat, the) or 0.71 (cat); negatives 0.5 (cat, the) or ~0
    assert r.score == 1.0 and r.interval.low <= r.score <= r.interval.high
    wrong = embedding_score(emb, "rain fell", pos, neg, seed=0)
    # the explanation of something else is closer to the (rain) negatives than to the positives
    assert wrong.mean_similarity_neg > wrong.mean_similarity_pos and wrong.score < r.score


@pytest.mark.requires_model("minilm-l6")
def test_minilm_embedding_separates_a_right_from_a_wrong_explanation() -> None:
    from sparsecodes.autointerp import SentenceEmbedder

    code = ["def add(a, b): return a + b", "for i in range(10): print(i)",
            "import os; os.path.join(a, b)", "class Foo(object): pass"]  # fmt: skip
    weather = ["It rained all day in the city.", "The sun was hot this afternoon.",
               "Snow fell on the mountains.", "A cold wind blew from the north."]  # fmt: skip
    as_ctx = lambda ts: [Context([t], [1.0]) for t in ts]  # noqa: E731
    emb = SentenceEmbedder(device="cpu")
    right = embedding_score(emb, "Python source code", as_ctx(code), as_ctx(weather))
    wrong = embedding_score(emb, "the weather", as_ctx(code), as_ctx(weather))
    assert right.score == 1.0 and wrong.score == 0.0


# ---------------------------------------------------------------------------- simulation


class Echo:
    """A simulator that returns ``f(true activation)`` (it is told the truth by a side channel)."""

    def __init__(self, contexts: list[Context], f) -> None:
        self.by_tokens = {tuple(c.tokens): c.acts for c in contexts}
        self.f = f

    def simulate(self, explanation, tokens):
        return [self.f(a) for a in self.by_tokens[tuple(tokens)]]

    def describe(self) -> str:
        return "echo"


def _varied() -> tuple[list[Context], list[Context]]:
    pos = [Context(["a", "b", "c"], [0.0, 3.0, 1.0]), Context(["d", "e"], [2.0, 0.0]),
           Context(["f", "g", "h"], [0.5, 0.0, 4.0])]  # fmt: skip
    neg = [Context(["i", "j"], [0.0, 0.0]), Context(["k", "l", "m"], [0.0, 0.0, 0.0])]
    return pos, neg


def test_simulation_score_is_the_correlation_over_all_tokens() -> None:
    pos, neg = _varied()
    perfect = simulation_score(Echo(pos + neg, lambda a: 2 * a + 1), "x", pos, neg)
    assert perfect.score == pytest.approx(1.0) and perfect.n_tokens == 13
    flipped = simulation_score(Echo(pos + neg, lambda a: -a), "x", pos, neg)
    assert flipped.score == pytest.approx(-1.0)
    flat = simulation_score(Echo(pos + neg, lambda a: 4.0), "x", pos, neg)
    assert flat.score == 0.0  # a constant prediction carries no information
    noisy = Echo(pos + neg, lambda a: a)
    noisy.by_tokens[("d", "e")] = [0.0, 2.0]  # one context predicted backwards
    truth = np.array([0, 3, 1, 2, 0, 0.5, 0, 4, 0, 0, 0, 0, 0])
    sim = np.array([0, 3, 1, 0, 2, 0.5, 0, 4, 0, 0, 0, 0, 0])
    r = simulation_score(noisy, "x", pos, neg)
    assert r.score == pytest.approx(np.corrcoef(truth, sim)[0, 1], abs=1e-12)
    assert r.interval.low <= r.score <= r.interval.high


def test_expected_digit_renormalises_over_digits() -> None:
    assert expected_digit({"2": 0.25, " 6": 0.25, "unknown": 0.5}) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="no digit"):
        expected_digit({"unknown": 1.0})


class TabModel(torch.nn.Module):
    """Logits: digit 9 after a tab token, digit 0 everywhere else (so reading at the wrong
    position gives 0, at the right one 9)."""

    def __init__(self, tab_id: int, digit_ids: list[int], vocab: int) -> None:
        super().__init__()
        self.tab_id, self.digit_ids, self.vocab = tab_id, digit_ids, vocab
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        out = torch.zeros(ids.shape[0], ids.shape[1], self.vocab)
        out[..., self.digit_ids[0]] = 5.0
        tab = ids == self.tab_id
        out[tab, self.digit_ids[9]] = 50.0
        return type("Out", (), {"logits": out})()


def test_local_simulator_reads_the_digit_after_each_tab(tiny) -> None:
    adapter, _ = tiny
    tok = adapter.tokenizer
    digit_ids = [tok(str(d), add_special_tokens=False)["input_ids"][0] for d in range(10)]
    tab = tok("\t", add_special_tokens=False)["input_ids"]
    assert len(tab) == 1
    sim = LocalSimulator("tab", model=TabModel(tab[0], digit_ids, len(tok)), tokenizer=tok)
    out = sim.simulate("the word cat", ["The", " cat", " sat"])
    assert out == pytest.approx([9.0, 9.0, 9.0], abs=1e-6)


class _CompletionsHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.bodies.append(body)
        prompt = body["prompt"]
        # one character per token; after a tab the model splits 7 and 3 evenly
        tops = [{"7": math.log(0.5), "3": math.log(0.5)} if i and prompt[i - 1] == "\t"
                else {"x": 0.0} for i in range(len(prompt))]  # fmt: skip
        lp = {"text_offset": list(range(len(prompt))), "top_logprobs": tops}
        if self.server.broken:
            lp = {}
        payload = json.dumps({"choices": [{"text": "", "logprobs": lp}]}).encode()
        self.send_response(200 if self.path == "/v1/completions" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def completions_server(broken: bool = False) -> Iterator[tuple[str, ThreadingHTTPServer]]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _CompletionsHandler)
    srv.bodies, srv.broken = [], broken
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/v1", srv
    finally:
        srv.shutdown()
        srv.server_close()


def test_completions_simulator_reads_prompt_logprobs_at_each_placeholder() -> None:
    with completions_server() as (url, srv):
        out = CompletionsSimulator(url, "m", backoff=0.0).simulate("cats", ["A", " cat"])
    assert out == pytest.approx([5.0, 5.0])
    body = srv.bodies[0]
    assert body["echo"] is True and body["logprobs"] == 10
    prefix, lines = simulation_prompt("cats", ["A", " cat"])
    assert body["prompt"] == prefix + "A\tunknown\n cat\tunknown\n" and lines == ["A\t", " cat\t"]


def test_simulation_failure_is_failed_not_zero_and_left_out_of_the_mean() -> None:
    pos, neg = _varied()
    ex = LatentExamples(4, top=pos[:1], held_out_activating=pos, non_activating=neg)
    with completions_server(broken=True) as (url, _):
        sim = SimulationScorer(CompletionsSimulator(url, "m", attempts=2, backoff=0.0))
        emb = EmbeddingScorer(WordEmbedder())
        report = run_autointerp([ex], None, scorers=[emb, sim], explanations={4: "a"})
    rec = report.results[0]
    assert rec.scores["simulation"].status == "failed"
    assert rec.scores["simulation"].score is None and "logprobs" in rec.scores["simulation"].error
    assert rec.status == "ok" and rec.scores["embedding"].status == "ok"  # first scorer decides
    s = report.summary()["scorers"]
    assert s["simulation"] == {"n_ok": 0, "n_failed": 1, "n_skipped": 0, "mean": None,
                               "median": None, "mean_low": None, "mean_high": None,
                               "chance": None}  # fmt: skip


# ---------------------------------------------------------------------------- pipeline + CLI


def test_given_explanations_are_scored_without_an_explainer_call() -> None:
    from sparsecodes.autointerp import OpenAIChatClient

    pos, neg = fuzz_examples()
    exs = [LatentExamples(i, top=pos[:2], held_out_activating=pos, non_activating=neg)
           for i in (0, 1, 2)]  # fmt: skip
    with chat_server(marks_say) as (url, srv):
        client = OpenAIChatClient(url, "m")
        cfg = AutointerpConfig(detect_batch_size=8, backoff=0.0)
        scorers = [DetectionScorer(client, batch_size=8, backoff=0.0),
                   FuzzScorer(client, batch_size=8, backoff=0.0),
                   EmbeddingScorer(WordEmbedder())]  # fmt: skip
        report = run_autointerp(
            exs, None, config=cfg, scorers=scorers,
            explanations={0: "the word cat", 1: "the word cat", 2: "the word dog"},
        )  # fmt: skip
    assert not any(_user(r["body"]).startswith("Excerpts (feature") for r in srv.requests)
    assert len(srv.requests) == 3 * 2 * 2  # 3 latents x 2 chat scorers x 16 excerpts / 8
    fz = [r.scores["fuzz"].score for r in report.results]
    assert fz == [1.0, 1.0, 0.5]  # "dog" is never marked: every excerpt judged wrong
    summ = report.summary()["scorers"]["fuzz"]
    assert summ["mean"] == pytest.approx(2.5 / 3) and summ["mean_low"] <= summ["mean"]
    assert report.config["scorers"]["embedding"] == "bag of words"


def test_intruder_runs_without_explanations_or_explainer() -> None:
    from sparsecodes.autointerp import OpenAIChatClient

    pos, _ = fuzz_examples()
    neg = [ctx(["Rain", " fell", " all", " day"], None) for _ in range(8)]
    ex = LatentExamples(0, top=pos[:3], held_out_activating=pos[3:], non_activating=neg)
    with chat_server(odd_one_out) as (url, _):
        sc = IntruderScorer(OpenAIChatClient(url, "m"), n_shown=4, backoff=0.0)
        report = run_autointerp([ex], None, scorers=[sc])
    r = report.results[0]
    assert r.explanation is None and r.status == "ok" and r.score == 1.0


def test_cli_scores_given_explanations_with_several_scorers(tiny, tmp_path: Path) -> None:
    from sparsecodes.cli import main

    run = _save_tiny_coder(tiny, tmp_path / "run")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(TEXTS))
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    common = ["--latents", "0-3", "--corpus", str(corpus), "--n-windows", "24",
              "--context-size", "16", "--n-top", "3", "--n-held-out", "4",
              "--n-non-activating", "4", "--backoff", "0", "--device", "cpu"]  # fmt: skip

    def answer(body: dict, headers: dict) -> tuple[int, str]:
        user = _user(body)
        if user.startswith("Excerpts (feature marked"):
            return 200, "Explanation: code"
        if user.startswith("Excerpts:"):
            return 200, "Answer: 2"
        return 200, "Answer: [1]"

    with chat_server(answer) as (url, srv):
        res = CliRunner().invoke(
            main, ["autointerp", str(run), "--endpoint", url, "--model", "m", "--out",
                   str(first), *common])  # fmt: skip
        assert res.exit_code == 0, res.output
        n_explain = sum(_user(r["body"]).startswith("Excerpts (feature") for r in srv.requests)
        res = CliRunner().invoke(
            main, ["autointerp", str(run), "--endpoint", url, "--model", "m", "--out",
                   str(second), "--explanations", str(first),
                   "--scorers", "detection,fuzz,intruder", *common])  # fmt: skip
        assert res.exit_code == 0, res.output
        n_explain2 = sum(_user(r["body"]).startswith("Excerpts (feature") for r in srv.requests)
    assert n_explain > 0 and n_explain2 == n_explain  # the second run asked for none
    data = json.loads(second.read_text())
    assert set(data["summary"]["scorers"]) == {"detection", "fuzz", "intruder"}
    for rec in data["latents"].values():
        if rec["status"] == "ok":
            assert rec["explanation"] == "code"
            for name in ("detection", "fuzz"):
                sc = rec["scores"][name]
                if sc["status"] == "ok":
                    assert sc["low"] <= sc["score"] <= sc["high"] and sc["chance"] == 0.5
    bad = CliRunner().invoke(main, ["autointerp", str(run), "--scorers", "nope", *common])
    assert bad.exit_code != 0 and "unknown scorer" in bad.output


def test_top_tokens_explanation_names_the_most_frequent_active_tokens() -> None:
    """Counts only tokens with a positive activation, most frequent first (ties in first-seen
    order), stripped; no active token is an error, not an empty explanation."""
    from sparsecodes.autointerp import top_tokens_explanation

    ctxs = [
        Context([" cat", " sat", " on"], [1.0, 0.0, 2.0]),
        Context([" cat", " mat", " on"], [0.5, 3.0, 0.0]),
        Context([" on", " cat", " the"], [0.1, 0.2, 0.0]),
    ]
    assert top_tokens_explanation(ctxs) == 'the tokens "cat", "on", "mat"'
    assert top_tokens_explanation(ctxs, n=1) == 'the tokens "cat"'
    with pytest.raises(ValueError, match="no active token"):
        top_tokens_explanation([Context([" a"], [0.0])])
