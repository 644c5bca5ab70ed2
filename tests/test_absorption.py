"""First-letter absorption on a constructed hierarchy where the answer is known.

Words of four letters; word ``w`` of letter ``L`` has activation ``u_L + 0.5 e_w`` (``u_L``,
``e_w`` coordinate axes, so every direction is exactly orthogonal). The coder has one latent per
letter (atom ``u_L``). With absorption planted, 30 words of letter ``a`` each get a
token-specific latent (atom along ``u_a + 0.5 e_w``) that fires on that word only, and the
``a`` latent is inhibited on exactly those words: SAEBench's definition then counts each such
word, when the probe finds it, as fully absorbed (absorption fraction 1), and every other word
as not absorbed.
"""

from __future__ import annotations

import pytest
import torch

from sparsecodes.evaluation.absorption import absorption_scores, alpha_tokens
from sparsecodes.evaluation.probes import split_indices

LET = "abcd"
PER = 80
N_ABS = 30


class PlantedCoder:
    """A linear-threshold coder built by hand: ``codes = relu(x @ E + c)``, ``x_hat = codes @ D``."""

    def __init__(self, enc: torch.Tensor, bias: torch.Tensor, dec: torch.Tensor) -> None:
        self.enc, self.bias, self.W_dec = enc, bias, dec
        self.n_latents = dec.shape[0]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.enc + self.bias)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes @ self.W_dec


def hierarchy(absorb: bool):
    n_words = len(LET) * PER
    d = len(LET) + n_words
    words, rows = [], []
    for li, letter in enumerate(LET):
        for j in range(PER):
            w = len(words)
            words.append(f" {letter}{'xyzq'[j % 4]}{j:03d}")
            x = torch.zeros(d)
            x[li] = 1.0
            x[len(LET) + w] = 0.5
            rows.append(x)
    acts = torch.stack(rows)
    absorbed = list(range(N_ABS)) if absorb else []  # the first 30 words of letter a
    n_lat = len(LET) + len(absorbed)
    enc = torch.zeros(d, n_lat)
    bias = torch.zeros(n_lat)
    dec = torch.zeros(n_lat, d)
    for li in range(len(LET)):
        enc[li, li] = 1.0
        dec[li, li] = 1.0
    for a, w in enumerate(absorbed):
        axis = len(LET) + w
        enc[axis, 0] = -4.0  # the a latent is silent on the absorbed word
        enc[axis, len(LET) + a] = 4.0
        bias[len(LET) + a] = -1.0  # 4 * 0.5 - 1 = 1 on its word, 0 elsewhere
        dec[len(LET) + a, 0] = 1.0
        dec[len(LET) + a, axis] = 0.5
    return acts, words, PlantedCoder(enc, bias, dec), [words[w] for w in absorbed]


def run(absorb: bool):
    acts, words, coder, absorbed = hierarchy(absorb)
    out = absorption_scores(acts, words, coder, test_fraction=0.5, min_letters=4, seed=3)
    return out, words, absorbed


def test_absorption_finds_the_planted_absorbing_latents():
    out, words, absorbed = run(absorb=True)
    letters = [w.strip()[0] for w in words]
    _, test = split_indices(letters, 0.5, seed=3, purpose="absorption-split")
    expected = sorted(set(absorbed) & {words[i] for i in test})
    by_letter = {d["first_letter"]: d for d in out["eval_result_details"]}
    assert sorted(by_letter) == list(LET)
    a = by_letter["a"]
    assert a["num_probe_true_positives"] == PER // 2  # the probe finds every test word of a
    assert sorted(a["absorbed_tokens"]) == expected and len(expected) > 5
    assert a["full_absorption_rate"] == pytest.approx(len(expected) / (PER // 2))
    assert a["mean_absorption_fraction"] == pytest.approx(len(expected) / (PER // 2))
    assert a["split_feats"] == [0]  # the absorbers are not counted as split features
    for letter in "bcd":
        assert by_letter[letter]["mean_absorption_fraction"] == 0.0
        assert by_letter[letter]["num_full_absorption"] == 0
    mean = out["eval_result_metrics"]["mean"]
    assert mean["mean_absorption_fraction_score"] == pytest.approx(len(expected) / (PER // 2) / 4)


def test_absorption_is_zero_without_an_absorbing_latent():
    out, _, _ = run(absorb=False)
    mean = out["eval_result_metrics"]["mean"]
    assert out["eval_result_unstructured"]["num_letters_evaluated"] == 4
    assert mean["mean_absorption_fraction_score"] == 0.0
    assert mean["mean_full_absorption_score"] == 0.0
    assert mean["mean_num_split_features"] == 1.0


def test_alpha_tokens_keeps_space_led_alphabetic_tokens_only():
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    pieces = [
        "<s>",
        "\u0120cat",
        "cat",
        "\u0120C",
        "\u012012",
        "\u0120caf\u00c3\u00a9",
        "\u0120do-g",
        "\u0120",
    ]
    tk = Tokenizer(models.WordLevel({p: i for i, p in enumerate(pieces)}, unk_token="<s>"))
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk)
    # kept: " cat", " C"; dropped: no space, digits, a non-ASCII letter, a hyphen, a bare space
    assert alpha_tokens(tok) == [(1, " cat"), (3, " C")]


def word_level_llama():
    """The tiny random llama with a word-level tokenizer: whole words are single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from sparsecodes.models import ModelAdapter, tiny_llama

    words = [f"\u0120{a}{b}" for a in "abcdefgh" for b in "aeiou"]
    pieces = ["<pad>", "<s>", "</s>", "\u0120has", "\u0120the", "\u0120first", "\u0120letter", ":"]
    pieces += [c for c in "ABCDEFGH"] + ["\u0120" + c for c in "ABCDEFGH"] + ["\u010a", *words]
    tk = Tokenizer(models.WordLevel({p: i for i, p in enumerate(pieces)}, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    model, _ = tiny_llama(0, vocab_size=len(pieces))
    return ModelAdapter(model, tok, name="tiny-words")


def test_first_letter_activations_read_the_word_token_whatever_the_padding():
    from sparsecodes.evaluation.absorption import first_letter_activations

    lm = word_level_llama()
    hook = "blocks.1.resid_post"
    acts, words = first_letter_activations(lm, hook, max_words=12, n_icl=3, batch_size=5, seed=0)
    assert acts.shape == (12, lm.d_model) and len(set(words)) == 12
    ids, mask = lm.encode([words[0]])
    alone = lm.run(ids, mask, [hook])[hook][0, -1]
    # in-context lines before the word change its activation (the model attends to them)
    assert not torch.allclose(acts[0], alone, atol=1e-4)
    again, _ = first_letter_activations(lm, hook, max_words=12, n_icl=3, batch_size=12, seed=0)
    assert torch.allclose(acts, again, atol=1e-5)  # batch size (padding) does not matter
