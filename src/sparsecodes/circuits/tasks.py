"""Prompt generators for circuit tasks (IOI, greater-than, docstring), for any tokenizer.

Every :class:`Prompt` carries its own label (``positive=True``: the answer is determined by the
prompt; ``False``: a matched negative whose answer is undetermined) and the token ids whose logits
define its logit difference, so labels never depend on array position. A positive and its negative
share a ``pair`` id and (by construction, checked) the same token length.

Logit difference at the final position: ``LSE(logits[correct]) - LSE(logits[wrong])``
(LSE = logsumexp; with one token on each side this is the plain logit difference).

- ``ioi``: ABBA/BABA templates, e.g. "When Mary and John went to the store, John gave a drink to";
  correct = IO (" Mary"), wrong = S (" John"). Negative: S replaced by a third distinct name.
  Names are kept only if ``" Name"`` is one token for the tokenizer.
- ``greater-than``: "The war lasted from the year 1732 to the year 17". If the tokenizer splits
  digits (SmolLM2, byte-level), the next token is the tens digit ``D`` of the end year: correct =
  digits ``> d`` (the start year's tens digit), wrong = digits ``< d``; start tens digit 2..8 so both
  sides are non-empty. If two-digit numbers are single tokens (GPT-2 style), the next token is
  ``YY``: correct = ``YY > start``, wrong = ``YY < start``. Negative: start year ``170u``, where
  every continuation is later (the "01" corruption of Hanna et al., 2023).
- ``docstring``: a function ``def f(self, a, b, c):`` whose docstring lists ``:param a:`` and
  ``:param b:`` and ends with ``:param``; correct = " c", wrong = " a", " b". Negative: the
  arguments in the ``def`` are replaced by three other names, so the next parameter is
  undetermined.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

TASKS = ("ioi", "greater-than", "docstring")

NAMES = [
    "Mary",
    "John",
    "Tom",
    "James",
    "Anna",
    "Sarah",
    "Paul",
    "Mark",
    "Lisa",
    "Kate",
    "David",
    "Emma",
    "Peter",
    "Alice",
    "Bob",
    "Jack",
    "Mike",
    "Laura",
    "Susan",
    "Helen",
    "George",
    "Henry",
    "Robert",
    "Linda",
]

IOI_TEMPLATES = (
    "When {A} and {B} went to the store,{S} gave a drink to",
    "When {A} and {B} went to the park,{S} gave a ball to",
    "Then, {A} and {B} had a long argument. Afterwards{S} said to",
    "After {A} and {B} went to the office,{S} gave a book to",
    "While {A} and {B} were working at the school,{S} gave a letter to",
)

GT_NOUNS = [
    "war",
    "expedition",
    "reign",
    "project",
    "drought",
    "strike",
    "voyage",
    "siege",
    "journey",
]
GT_TEMPLATE = "The {noun} lasted from the year 17{yy} to the year 17"

DOC_ARGS = [
    "load",
    "size",
    "files",
    "last",
    "data",
    "name",
    "item",
    "value",
    "path",
    "mode",
    "key",
    "count",
    "text",
    "user",
    "url",
    "port",
    "index",
    "limit",
    "token",
    "state",
]
DOC_WORDS = [
    "the",
    "of",
    "a",
    "new",
    "old",
    "first",
    "last",
    "small",
    "large",
    "red",
    "blue",
    "green",
    "fast",
    "slow",
    "open",
]
DOC_FUNCS = ["run", "load", "check", "parse", "build", "update", "fetch", "send", "read", "write"]
DOC_DEF = "def {fn}(self,{a},{b},{c}):\n"
DOC_TEMPLATE = (
    'def {fn}(...):\n    """{desc}\n\n    :param{a}: {d1}\n    :param{b}: {d2}\n    :param'
)


@dataclass(frozen=True)
class Prompt:
    """One prompt with its label and answer tokens.

    Attributes:
        text: the prompt (no BOS; the adapter adds it).
        positive: True when the answer is determined by the prompt.
        correct: token ids whose logits count for the answer.
        wrong: token ids whose logits count against it.
        pair: id shared by a positive and its matched negative.
        task: task name.
        info: free-form details (template, names, years).
    """

    text: str
    positive: bool
    correct: tuple[int, ...]
    wrong: tuple[int, ...]
    pair: int
    task: str
    info: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def _single(tok: Any, s: str) -> int | None:
    ids = tok(s, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def _singles(tok: Any, words: list[str], prefix: str = " ") -> dict[str, int]:
    out = {}
    for w in words:
        i = _single(tok, prefix + w)
        if i is not None:
            out[w] = i
    return out


def _need(pool: dict[str, int], n: int, what: str) -> list[str]:
    if len(pool) < n:
        raise ValueError(
            f"only {len(pool)} {what} are usable answer tokens for this tokenizer; need at least {n}"
        )
    return sorted(pool)


def _ntok(tok: Any, s: str) -> int:
    return len(tok(s, add_special_tokens=False)["input_ids"])


def _answer_pool(tok: Any, words: list[str], need: int) -> tuple[str, dict[str, int]]:
    """``(trail, {word: answer token id})``.

    Where ``" word"`` is one token (BPE tokenizers), the answer is that token and the prompt ends
    without a trailing space (``trail=""``). Otherwise (byte-level tokenizers) the prompt ends with
    a space (``trail=" "``) and the answer is the first token of ``"word"``; only words whose first
    token is unique among ``words`` are kept, so the answer still names one word.
    """
    pool = _singles(tok, words)
    if len(pool) >= need:
        return "", pool
    first = {w: tok(w, add_special_tokens=False)["input_ids"][0] for w in words}
    counts: dict[int, int] = {}
    for t in first.values():
        counts[t] = counts.get(t, 0) + 1
    return " ", {w: t for w, t in first.items() if counts[t] == 1}


def _same_length(tok: Any, word: str, pool: list[str], avoid: set[str], rng: random.Random) -> str:
    """A word of ``pool`` not in ``avoid`` with the same token count as ``word`` (after a space)."""
    n = _ntok(tok, " " + word)
    options = [w for w in pool if w not in avoid and _ntok(tok, " " + w) == n]
    if not options:
        raise ValueError(f"no replacement for {word!r} with the same token length")
    return rng.choice(options)


def ioi(tok: Any, n: int, seed: int = 0) -> list[Prompt]:
    """``n`` IOI pairs (positive + matched negative), ABBA and BABA alternating."""
    trail, pool = _answer_pool(tok, NAMES, 3)
    names = _need(pool, 3, "IOI names")
    every = sorted(NAMES)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        t = IOI_TEMPLATES[i % len(IOI_TEMPLATES)] + trail
        io, s = rng.sample(names, 2)
        c = _same_length(tok, s, every, {io, s}, rng)
        order = "ABBA" if (i // len(IOI_TEMPLATES)) % 2 == 0 else "BABA"
        a, b = (io, s) if order == "ABBA" else (s, io)
        fill = {"A": a, "B": b}
        pos = t.format(**fill, S=" " + s)
        neg = t.format(**fill, S=" " + c)
        info = {"template": t, "order": order, "io": io, "s": s, "c": c}
        ans, bad = (pool[io],), (pool[s],)
        out.append(Prompt(pos, True, ans, bad, i, "ioi", info))
        out.append(Prompt(neg, False, ans, bad, i, "ioi", info))
    return out


def greater_than(tok: Any, n: int, seed: int = 0) -> list[Prompt]:
    """``n`` greater-than pairs; see the module docstring for how digits are handled."""
    digits = _singles(tok, [str(d) for d in range(10)], prefix="")
    nouns = sorted(GT_NOUNS)  # the same noun in a pair, so its token count does not matter
    probe = tok(" 17", add_special_tokens=False)["input_ids"]
    split = len(probe) >= 2 and len(digits) == 10 and _single(tok, "7") == probe[-1]
    pairs2 = _singles(tok, [f"{y:02d}" for y in range(100)], prefix="")
    if not split and len(pairs2) < 100:
        raise ValueError(
            "greater-than needs a tokenizer that splits digits one per token or has every "
            "two-digit number 00..99 as one token; this one has neither"
        )
    rng = random.Random(seed)
    out = []
    for i in range(n):
        noun = rng.choice(nouns)
        tens, units = rng.randint(2, 8), rng.randint(0, 9)
        yy = 10 * tens + units
        neg_yy = units  # 170u: every continuation is later
        if split:
            ans = tuple(digits[str(d)] for d in range(tens + 1, 10))
            bad = tuple(digits[str(d)] for d in range(0, tens))
        else:
            ans = tuple(pairs2[f"{y:02d}"] for y in range(yy + 1, 100))
            bad = tuple(pairs2[f"{y:02d}"] for y in range(0, yy))
        info = {"noun": noun, "start": 1700 + yy, "neg_start": 1700 + neg_yy, "split": split}
        pos = GT_TEMPLATE.format(noun=noun, yy=f"{yy:02d}")
        neg = GT_TEMPLATE.format(noun=noun, yy=f"{neg_yy:02d}")
        out.append(Prompt(pos, True, ans, bad, i, "greater-than", info))
        out.append(Prompt(neg, False, ans, bad, i, "greater-than", info))
    return out


def docstring(tok: Any, n: int, seed: int = 0) -> list[Prompt]:
    """``n`` docstring pairs; the negative's ``def`` lists three other argument names."""
    trail, pool = _answer_pool(tok, DOC_ARGS, 6)
    args = _need(pool, 6, "docstring argument names")
    every = sorted(DOC_ARGS)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b, c = rng.sample(args, 3)
        used = {a, b, c}
        x = _same_length(tok, a, every, used, rng)
        y = _same_length(tok, b, every, used | {x}, rng)
        z = _same_length(tok, c, every, used | {x, y}, rng)
        fn = rng.choice(DOC_FUNCS)
        desc = " ".join(rng.sample(DOC_WORDS, 3))
        d1, d2 = (" ".join(rng.sample(DOC_WORDS, 2)) for _ in range(2))
        common = {"fn": fn, "desc": desc, "d1": d1, "d2": d2, "a": " " + a, "b": " " + b}
        pos = DOC_TEMPLATE.format(**common) + trail
        # the negative corrupts the def line only: the docstring keeps a, b
        neg = DOC_DEF.format(fn=fn, a=" " + x, b=" " + y, c=" " + z) + pos.split("\n", 1)[1]
        pos = DOC_DEF.format(fn=fn, a=" " + a, b=" " + b, c=" " + c) + pos.split("\n", 1)[1]
        ans, bad = (pool[c],), (pool[a], pool[b])
        info = {"args": [a, b, c], "corrupt": [x, y, z]}
        out.append(Prompt(pos, True, ans, bad, i, "docstring", info))
        out.append(Prompt(neg, False, ans, bad, i, "docstring", info))
    return out


def make_task(name: str, tokenizer: Any, n: int, seed: int = 0) -> list[Prompt]:
    """``n`` positive/negative pairs (``2 * n`` prompts) of task ``name`` for ``tokenizer``."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    gens = {"ioi": ioi, "greater-than": greater_than, "docstring": docstring}
    if name not in gens:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return gens[name](tokenizer, n, seed)
