"""Hand-built attention-only transformers with a planted induction circuit.

Task ("A B ... A -> B"): a prompt is ``[BOS, x_1, ..., x_{T-2}, x_j]`` with distinct tokens
``x_i`` and ``1 <= j <= T-3``; the answer is ``x_{j+1}``. Its matched negative replaces the final
token by a token ``z`` that occurs nowhere in the prompt (so nothing can be copied and the
answer is undetermined); every other position is identical.

Residual stream (one-hot, no superposition): token block ``[0, V+1)``, position block
``[V+1, V+1+T)``, then one private ``d_head`` block per head that its ``W_O`` writes (identity).
Attention is sharp (logit scale ``beta``). Two layers x four heads:

=======  ===========================================================  =================
head     behaviour                                                    in the circuit?
=======  ===========================================================  =================
L0H0     ``circuit="duplicate"``: duplicate-token head, attends to    yes
         the earlier occurrence of the current token (BOS if none),
         value = that position's one-hot (BOS value 0).
         ``circuit="previous"``: current-token head (distractor).     no
L0H1     previous-token head, value = previous token.                 only in "previous"
L0H2     BOS head, constant output one-hot(BOS).                      no
L0H3     uniform over earlier positions, value = token (bag of the    no
         prompt before the final token: identical in a matched pair).
L1H0     induction head. "duplicate": queries position ``j+1`` from   yes
         L0H0's output; "previous": matches the current token with
         L0H1's output at each key. Value = token (BOS 0); its output
         is the only block ``W_U`` reads.
L1H1     current-token head (outputs the final token).                no
L1H2     silent head (attends BOS, value 0): all-zero output.         no
L1H3     uniform over earlier positions, value = L0H1's block.         no
=======  ===========================================================  =================

The ``"duplicate"`` circuit is label-dependent at the final position in both its heads (L0H0 and
L1H0 fall silent on negatives). The ``"previous"`` variant is the classic induction circuit: the
previous-token head acts at *key* positions and its output at the final position (the token
before last) is identical in a matched pair, so no method that compares head outputs between
positives and negatives at the final position can see it; it is kept as an honest hard case.
``rotate=True`` applies a seeded random orthogonal rotation to every head's value and query/key
spaces (the function computed is unchanged; head outputs are no longer axis-aligned one-hots).
"""

from __future__ import annotations

from typing import Literal

import torch

from sparsecodes.circuits.groundtruth.model import HeadTransformer
from sparsecodes.circuits.groundtruth.task import GroundTruthTask

Variant = Literal["duplicate", "previous"]


def build_induction_model(
    *,
    vocab_size: int = 16,
    seq_len: int = 12,
    circuit: Variant = "duplicate",
    beta: float = 30.0,
    rotate: bool = False,
    seed: int = 0,
) -> HeadTransformer:
    """The hand-built model of the module docstring (``vocab_size`` tokens plus BOS = 0).

    ``seq_len`` counts the BOS. Sizes: ``d_head = V + 1 + T`` and ``d_model = 9 * d_head`` for
    ``V = vocab_size``, ``T = seq_len`` (token and position blocks plus one block per head).
    """
    if circuit not in ("duplicate", "previous"):
        raise ValueError(f"circuit must be 'duplicate' or 'previous', got {circuit!r}")
    if seq_len < 4:
        raise ValueError(f"seq_len must be >= 4 (BOS, A, B, A), got {seq_len}")
    if vocab_size < seq_len - 1:
        raise ValueError(
            f"vocab_size={vocab_size} must be >= seq_len - 1 = {seq_len - 1} so that prompts have "
            "distinct tokens and a fresh token for the negatives; raise vocab_size"
        )
    V1, T = vocab_size + 1, seq_len
    dh = V1 + T
    L, H = 2, 4
    base = V1 + T
    d_model = base + L * H * dh
    m = HeadTransformer(V1, T, d_model, L, H, dh, V1, causal=True, attn_scale=1.0)

    def tok(i: int) -> int:
        return i

    def pos(p: int) -> int:
        return V1 + p

    def blk(layer: int, h: int, e: int) -> int:
        return base + (layer * H + h) * dh + e

    with torch.no_grad():
        for i in range(V1):
            m.W_E[i, tok(i)] = 1.0
        for p in range(T):
            m.W_pos[p, pos(p)] = 1.0
        for layer in range(L):
            for h in range(H):
                for e in range(dh):
                    m.W_O[layer, h, e, blk(layer, h, e)] = 1.0
        WQ, WK, WV, bQ = m.W_Q, m.W_K, m.W_V, m.b_Q

        def attend_self(layer: int, h: int, sign: float) -> None:
            for p in range(T):
                WQ[layer, h, pos(p), V1 + p] = sign * beta
                WK[layer, h, pos(p), V1 + p] = 1.0

        def value_tokens(layer: int, h: int, with_bos: bool = True) -> None:
            for i in range(0 if with_bos else 1, V1):
                WV[layer, h, tok(i), i] = 1.0

        def bos_sink(layer: int, h: int, strength: float) -> None:
            bQ[layer, h, 0] = strength
            WK[layer, h, tok(0), 0] = 1.0

        # L0H0
        if circuit == "duplicate":
            for i in range(1, V1):
                WQ[0, 0, tok(i), i] = beta
                WK[0, 0, tok(i), i] = 1.0
            bos_sink(0, 0, beta / 2)
            attend_self(0, 0, -1.0)
            for p in range(1, T):
                WV[0, 0, pos(p), p] = 1.0
        else:
            attend_self(0, 0, +1.0)
            value_tokens(0, 0)
        # L0H1 previous token
        for p in range(1, T):
            WQ[0, 1, pos(p), V1 + p - 1] = beta
            WK[0, 1, pos(p - 1), V1 + p - 1] = 1.0
        value_tokens(0, 1)
        # L0H2 BOS head, L0H3 uniform over earlier positions
        bos_sink(0, 2, beta)
        value_tokens(0, 2)
        attend_self(0, 3, -1.0)
        value_tokens(0, 3)
        # L1H0 induction
        if circuit == "duplicate":
            for j in range(1, T - 1):
                WQ[1, 0, blk(0, 0, j), V1 + j + 1] = beta
            for p in range(T):
                WK[1, 0, pos(p), V1 + p] = 1.0
        else:
            for i in range(1, V1):
                WQ[1, 0, tok(i), i] = beta
                WK[1, 0, blk(0, 1, i), i] = 1.0
        bos_sink(1, 0, beta / 2)
        value_tokens(1, 0, with_bos=False)
        # L1H1 current token, L1H2 silent, L1H3 uniform over L0H1's block
        attend_self(1, 1, +1.0)
        value_tokens(1, 1)
        bos_sink(1, 2, beta)
        attend_self(1, 3, -1.0)
        for i in range(V1):
            WV[1, 3, blk(0, 1, i), i] = 1.0
        for i in range(V1):
            m.W_U[blk(1, 0, i), i] = 1.0
        if rotate:
            _rotate_heads(m, seed)
    m.eval()
    return m


def _rotate_heads(m: HeadTransformer, seed: int) -> None:
    """Rotate every head's value and query/key spaces by seeded random orthogonal matrices."""
    g = torch.Generator().manual_seed(seed)
    for layer in range(m.n_layers):
        for h in range(m.n_heads):
            for kind in ("ov", "qk"):
                R, _ = torch.linalg.qr(torch.randn(m.d_head, m.d_head, generator=g))
                if kind == "ov":
                    m.W_V[layer, h] = m.W_V[layer, h] @ R
                    m.b_V[layer, h] = m.b_V[layer, h] @ R
                    m.W_O[layer, h] = R.T @ m.W_O[layer, h]
                else:
                    m.W_Q[layer, h] = m.W_Q[layer, h] @ R
                    m.b_Q[layer, h] = m.b_Q[layer, h] @ R
                    m.W_K[layer, h] = m.W_K[layer, h] @ R
                    m.b_K[layer, h] = m.b_K[layer, h] @ R


def induction_prompts(
    n_pairs: int, *, vocab_size: int = 16, seq_len: int = 12, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n_pairs`` matched positive/negative prompts, shuffled.

    Returns ``ids`` ``[2 * n_pairs, seq_len]``, ``labels`` ``[2 * n_pairs]`` bool and ``answers``
    ``[2 * n_pairs]`` (``x_{j+1}`` for positives, -1 for negatives).
    """
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    if vocab_size < seq_len - 1:
        raise ValueError(f"vocab_size={vocab_size} must be >= seq_len - 1 = {seq_len - 1}")
    g = torch.Generator().manual_seed(seed)
    n_body = seq_len - 2
    rows, labels, answers = [], [], []
    for _ in range(n_pairs):
        perm = torch.randperm(vocab_size, generator=g) + 1
        body, fresh = perm[:n_body], perm[n_body:]
        j = int(torch.randint(1, n_body, (1,), generator=g))  # 1-based index into body
        z = fresh[int(torch.randint(len(fresh), (1,), generator=g))]
        head = torch.cat([torch.zeros(1, dtype=torch.long), body])
        rows += [torch.cat([head, body[j - 1 : j]]), torch.cat([head, z.view(1)])]
        labels += [True, False]
        answers += [int(body[j]), -1]
    order = torch.randperm(2 * n_pairs, generator=g)
    return (
        torch.stack(rows)[order],
        torch.tensor(labels)[order],
        torch.tensor(answers)[order],
    )


def handbuilt_task(
    n_pairs: int = 16,
    *,
    circuit: Variant = "duplicate",
    vocab_size: int = 16,
    seq_len: int = 12,
    rotate: bool = True,
    seed: int = 0,
) -> GroundTruthTask:
    """The hand-built model with ``n_pairs`` matched prompt pairs; ground truth = planted heads."""
    model = build_induction_model(
        vocab_size=vocab_size, seq_len=seq_len, circuit=circuit, rotate=rotate, seed=seed
    )
    ids, labels, answers = induction_prompts(
        n_pairs, vocab_size=vocab_size, seq_len=seq_len, seed=seed
    )
    truth = {(0, 0), (1, 0)} if circuit == "duplicate" else {(0, 1), (1, 0)}
    return GroundTruthTask(
        name=f"handbuilt-{circuit}",
        model=model,
        ids=ids,
        labels=labels,
        answers=answers,
        circuit=frozenset(truth),
        notes=f"planted by construction ({circuit} variant); see handbuilt.py",
    )
