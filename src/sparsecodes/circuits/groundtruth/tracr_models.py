"""RASP programs compiled by tracr, converted to torch, with ground-truth circuits by construction.

Optional: needs ``tracr-pypi``, ``jax`` and ``dm-haiku`` (the ``tracr`` extra:
``pip install 'sparsecodes[tracr]'``); never imported by the core. :func:`tracr_available`
says whether they are installed.

- :func:`compile_program` compiles one of :data:`PROGRAMS` (each ~7-10 s on CPU).
- :func:`to_torch` converts the tracr params (``transformer/layer_i/attn/{query,key,value,linear}``
  and ``mlp/linear_{1,2}``; no layer norm; non-causal; logits scaled by ``1/sqrt(key_size)``)
  into a :class:`HeadTransformer` whose ``W_U`` projects onto the program's output space.
- :func:`stack_programs` places several compiled programs side by side in one model: each
  program keeps its own residual block, its layer ``i`` heads sit in layer ``i`` of the stack, and
  its MLP units are concatenated. Without layer norm the composition is exact: every program
  computes exactly what it computed alone, and ``W_U`` reads only the first program's output.

**Task and ground truth** (:func:`tracr_task`): the stack ``hist`` + ``frac_prevs("x")`` +
``reverse``, read out at the final position through ``hist`` (how often the final token occurs).
Positives: the final token (never ``x``) recurs earlier in the prompt; the matched negative replaces
each earlier copy by another non-``x`` token that differs from the final one, so the count of
``x`` and the length are unchanged. The compiled program is right on both (tracr models are
exact); the contrast is between prompts where the counting head's attention finds matches and
prompts where it finds none. Ground truth = the heads with a path to the readout: the ``hist``
selector-width head only. ``frac_prevs`` (output identical within a pair), ``length`` (constant),
the ``reverse`` aggregation head (copies the first token: only weakly correlated with the label) and
the empty padding heads that tracr's layer allocation leaves are not in the circuit.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sparsecodes.circuits.groundtruth.model import HeadTransformer
from sparsecodes.circuits.groundtruth.task import GroundTruthTask

PROGRAMS = ("hist", "frac_prevs", "reverse", "length")
BOS, PAD = "BOS", "PAD"


def tracr_available() -> bool:
    """True when tracr, jax and haiku are importable."""
    return all(importlib.util.find_spec(m) is not None for m in ("tracr", "jax", "haiku"))


def _require() -> None:
    if not tracr_available():
        raise ImportError(
            "tracr, jax and dm-haiku are needed for compiled RASP models: "
            "pip install 'sparsecodes[tracr]'"
        )


@dataclass
class Compiled:
    """A compiled program: ``assembled`` (tracr's model) and the ``output_label`` of its SOp."""

    name: str
    assembled: Any
    output_label: str


def compile_program(name: str, vocab: set[str], max_seq_len: int) -> Compiled:
    """Compile program ``name`` (one of :data:`PROGRAMS`) with tracr."""
    _require()
    from tracr.compiler import compiling, lib
    from tracr.rasp import rasp

    if name == "hist":
        prog = lib.make_hist()
    elif name == "frac_prevs":
        prog = lib.make_frac_prevs(rasp.tokens == "x")
    elif name == "reverse":
        prog = lib.make_reverse(rasp.tokens)
    elif name == "length":
        prog = lib.make_length()
    else:
        raise ValueError(f"unknown program {name!r}; choose one of {PROGRAMS}")
    assembled = compiling.compile_rasp_to_model(
        prog, vocab=set(vocab), max_seq_len=max_seq_len, compiler_bos=BOS, compiler_pad=PAD
    )
    return Compiled(name, assembled, prog.label)


@dataclass
class Converted:
    """A tracr program as plain arrays, ready to be placed in a :class:`HeadTransformer`.

    ``layers[i]`` holds ``attn`` ``(Wq, bq, Wk, bk, Wv, bv, Wo)`` per head (numpy, ``[d, key]`` /
    ``[key, d]``), ``b_O`` ``[d]``, ``mlp`` ``(W1 [d, h], b1, W2 [h, d], b2)``; ``W_E``, ``W_pos``;
    ``out_dims`` the residual indices of the output space; ``categorical`` whether the output is
    decoded by argmax; ``encoding`` token -> id; ``decoding`` output index -> value.
    """

    layers: list[dict[str, Any]]
    W_E: np.ndarray
    W_pos: np.ndarray
    key_size: int
    out_dims: list[int]
    categorical: bool
    encoding: dict[str, int]
    decoding: dict[int, Any] | None
    residual_labels: list[str]
    assembled: Any


def convert(assembled: Any) -> Converted:
    """Read a tracr assembled model's params into :class:`Converted` (numpy)."""
    p = {
        k: {kk: np.asarray(vv, dtype=np.float64) for kk, vv in v.items()}
        for k, v in assembled.params.items()
    }
    cfg = assembled.model_config
    H, key = cfg.num_heads, cfg.key_size
    layers = []
    for i in range(cfg.num_layers):
        a = f"transformer/layer_{i}/attn/"
        heads = []
        for h in range(H):
            sl = slice(h * key, (h + 1) * key)
            heads.append(
                tuple(
                    [
                        p[a + "query"]["w"][:, sl], p[a + "query"]["b"][sl],
                        p[a + "key"]["w"][:, sl], p[a + "key"]["b"][sl],
                        p[a + "value"]["w"][:, sl], p[a + "value"]["b"][sl],
                        p[a + "linear"]["w"][sl, :],
                    ]
                )
            )  # fmt: skip
        m = f"transformer/layer_{i}/mlp/"
        mlp = (
            p[m + "linear_1"]["w"],
            p[m + "linear_1"]["b"],
            p[m + "linear_2"]["w"],
            p[m + "linear_2"]["b"],
        )
        layers.append({"attn": heads, "b_O": p[a + "linear"]["b"], "mlp": mlp})
    labels = [str(x) for x in assembled.residual_labels]
    out_name = assembled.output_encoder is not None and hasattr(
        assembled.output_encoder, "encoding_map"
    )

    return Converted(
        layers=layers,
        W_E=p["token_embed"]["embeddings"],
        W_pos=p["pos_embed"]["embeddings"],
        key_size=key,
        out_dims=[],
        categorical=bool(out_name),
        encoding=dict(assembled.input_encoder.encoding_map),
        decoding=(
            {v: k for k, v in assembled.output_encoder.encoding_map.items()} if out_name else None
        ),
        residual_labels=labels,
        assembled=assembled,
    )


def _output_dims(conv: Converted, output_label: str) -> list[int]:
    if conv.categorical:
        dims = [i for i, s in enumerate(conv.residual_labels) if s.startswith(output_label + ":")]
    else:
        dims = [i for i, s in enumerate(conv.residual_labels) if s == output_label]
    if not dims:
        raise ValueError(f"no residual direction is named after the output {output_label!r}")
    return dims


def stack_programs(programs: list[Compiled]) -> tuple[HeadTransformer, dict]:
    """Place compiled programs side by side (see the module docstring); ``W_U`` reads program 0.

    Returns the model and ``meta``: ``head_owner`` ``{(layer, head): (program index, its head)}``,
    ``empty`` heads (all-zero weights), ``blocks`` (residual offset of each program), ``encoding``.
    """
    convs = [convert(c.assembled) for c in programs]
    enc0 = convs[0].encoding
    for c in convs[1:]:
        if c.encoding != enc0:
            raise ValueError("programs must be compiled with the same vocab and max_seq_len")
    n_layers = max(len(c.layers) for c in convs)
    n_heads = sum(len(c.layers[0]["attn"]) for c in convs)
    key = max(c.key_size for c in convs)
    dims = [c.W_E.shape[1] for c in convs]
    offs = np.cumsum([0, *dims])
    d_model = int(offs[-1])
    d_mlp = sum(max(c.layers[i]["mlp"][0].shape[1] for i in range(len(c.layers))) for c in convs)
    vocab, max_len = convs[0].W_E.shape[0], convs[0].W_pos.shape[0]
    out_dims = _output_dims(convs[0], programs[0].output_label)
    model = HeadTransformer(
        vocab, max_len, d_model, n_layers, n_heads, key, len(out_dims),
        d_mlp=d_mlp, causal=False, attn_scale=1 / math.sqrt(key),
    )  # fmt: skip
    owner: dict[tuple[int, int], tuple[int, int]] = {}
    empty: set[tuple[int, int]] = set()

    def t(a: np.ndarray) -> Tensor:
        return torch.as_tensor(a, dtype=torch.float32)

    with torch.no_grad():
        h0, u0 = 0, 0
        for pi, c in enumerate(convs):
            o, d = int(offs[pi]), dims[pi]
            blk = slice(o, o + d)
            model.W_E[:, blk] = t(c.W_E)
            model.W_pos[:, blk] = t(c.W_pos)
            Hc = len(c.layers[0]["attn"])
            width = max(c.layers[i]["mlp"][0].shape[1] for i in range(len(c.layers)))
            # rescale queries so that logits / sqrt(key) equal tracr's logits / sqrt(key_c)
            qs = math.sqrt(key / c.key_size)
            for li in range(n_layers):
                for hh in range(Hc):
                    owner[(li, h0 + hh)] = (pi, hh)
                    if li >= len(c.layers):
                        empty.add((li, h0 + hh))
                        continue
                    Wq, bq, Wk, bk, Wv, bv, Wo = c.layers[li]["attn"][hh]
                    ks = Wq.shape[1]
                    model.W_Q[li, h0 + hh, blk, :ks] = t(Wq) * qs
                    model.b_Q[li, h0 + hh, :ks] = t(bq) * qs
                    model.W_K[li, h0 + hh, blk, :ks] = t(Wk)
                    model.b_K[li, h0 + hh, :ks] = t(bk)
                    model.W_V[li, h0 + hh, blk, :ks] = t(Wv)
                    model.b_V[li, h0 + hh, :ks] = t(bv)
                    model.W_O[li, h0 + hh, :ks, blk] = t(Wo)
                    if not (np.any(Wv) and np.any(Wo)):
                        empty.add((li, h0 + hh))
                if li < len(c.layers):
                    model.b_O[li, blk] = t(c.layers[li]["b_O"])
                    W1, b1, W2, b2 = c.layers[li]["mlp"]
                    u = slice(u0, u0 + W1.shape[1])
                    model.W_in[li, blk, u] = t(W1)
                    model.b_in[li, u] = t(b1)
                    model.W_out[li, u, blk] = t(W2)
                    model.b_out[li, blk] = t(b2)
            h0 += Hc
            u0 += width
        for j, dim in enumerate(out_dims):
            model.W_U[dim, j] = 1.0
    model.eval()
    meta = {
        "head_owner": owner,
        "empty": empty,
        "blocks": [int(x) for x in offs],
        "encoding": enc0,
        "decoding": convs[0].decoding,
        "categorical": convs[0].categorical,
    }
    return model, meta


def encode(tokens: list[list[str]], encoding: dict[str, int]) -> Tensor:
    """``[B, T]`` ids for token lists that start with ``"BOS"``."""
    try:
        return torch.tensor([[encoding[s] for s in row] for row in tokens], dtype=torch.long)
    except KeyError as e:
        raise ValueError(f"token {e} is not in the compiled vocabulary {sorted(encoding)}") from e


def tracr_reference(assembled: Any, tokens: list[str]) -> tuple[np.ndarray, list[Any]]:
    """tracr's own final residual ``[T, d]`` and decoded output for one prompt."""
    out = assembled.apply(tokens)
    return np.asarray(out.residuals[-1])[0], list(out.decoded)


def hist_prompts(
    n_pairs: int, *, length: int, letters: str = "abcd", seed: int = 0
) -> tuple[list[list[str]], Tensor, Tensor]:
    """Matched prompts for the ``hist`` contrast (module docstring), shuffled.

    Returns token lists (with BOS) ``2 * n_pairs`` long, labels and the true count of the final
    token (>= 2 for positives, 1 for negatives).
    """
    if len(letters) < 3:
        raise ValueError("letters needs at least 3 symbols (final token, and two for replacements)")
    g = np.random.default_rng(seed)
    pool = [*letters, "x"]
    rows, labels, counts = [], [], []
    for _ in range(n_pairs):
        f = str(g.choice(list(letters)))
        body = [str(g.choice(pool)) for _ in range(length - 1)]
        if f not in body:
            body[int(g.integers(length - 1))] = f
        neg = [str(g.choice([c for c in letters if c != f])) if s == f else s for s in body]
        rows += [[BOS, *body, f], [BOS, *neg, f]]
        labels += [True, False]
        counts += [body.count(f) + 1, 1]
    order = g.permutation(2 * n_pairs)
    return (
        [rows[i] for i in order],
        torch.tensor(labels)[order],
        torch.tensor(counts)[order],
    )


def tracr_task(
    n_pairs: int = 16, *, max_seq_len: int = 6, seed: int = 0, programs: Any = None
) -> GroundTruthTask:
    """The ``hist`` + ``frac_prevs`` + ``reverse`` stack with the hist contrast (module docstring).

    ``programs``: already compiled ``[hist, frac_prevs, reverse]`` models to reuse (compiling
    takes ~25 s); compiled with ``vocab={a,b,c,d,x}`` when None.
    """
    vocab = {"a", "b", "c", "d", "x"}
    if programs is None:
        programs = [
            compile_program(n, vocab, max_seq_len) for n in ("hist", "frac_prevs", "reverse")
        ]
    model, meta = stack_programs(programs)
    tokens, labels, counts = hist_prompts(n_pairs, length=max_seq_len, seed=seed)
    ids = encode(tokens, meta["encoding"])
    decode = meta["decoding"]
    inv = {v: k for k, v in decode.items()}
    answers = torch.tensor([inv[int(c)] for c in counts])
    circuit = frozenset(
        h for h, (pi, _) in meta["head_owner"].items() if pi == 0 and h not in meta["empty"]
    )
    return GroundTruthTask(
        name="tracr-hist-stack",
        model=model,
        ids=ids,
        labels=labels,
        answers=answers,
        circuit=circuit,
        notes="heads with a path to the readout (hist's selector-width head); see tracr_models.py",
        extra={"empty_heads": sorted(meta["empty"]), "head_owner": meta["head_owner"]},
    )
