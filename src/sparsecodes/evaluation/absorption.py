"""Feature absorption on the first-letter task (SAEBench's ``absorption_first_letter``).

The task: the model's own vocabulary tokens that are alphabetic words with a leading space
(`` cat``), each labelled by its first letter. Steps, on a seeded train/test split of the tokens:

1. **Ground-truth probes.** For each letter ``L`` a logistic probe "starts with L" on the
   activations (one-vs-rest, balanced). Its test F1 is ``f1_probe``; letters with
   ``f1_probe <= min_probe_f1`` are not evaluated (the model does not represent them linearly).
2. **Latents aligned with each letter** (SAEBench's k-sparse probing). An L1-regularised
   logistic probe on the codes for all letters at once (full-batch Adam, zero start); for
   ``k = 1..max_k`` the ``k`` latents with the largest (signed) weights for ``L`` feed a logistic
   probe whose test F1 is ``f1_sparse_k``. The *split features* of ``L`` are the top-``k`` set
   for the largest ``k`` reached while each step raises F1 by more than ``f1_jump_threshold``.
3. **Absorption** on the test tokens of ``L`` that the ground-truth probe calls positive (the
   probe's true positives). With ``p`` the unit probe direction, ``a = x . p`` the activation's
   projection and ``c_i = z_i (d_i . p)`` latent ``i``'s contribution to it (``z_i`` the code,
   ``d_i`` the latent's atom in activation space, so ``c_i`` is SAEBench's activation x cosine
   for unit atoms):

   - *absorption fraction*: with ``m`` the summed contribution of the split features and ``A``
     the summed contribution of the (at most 3) largest positive contributions of other latents
     whose atom has cosine >= 0.1 with ``p``: 0 when ``m >= a`` or ``A / a < 0.4``; 1 when
     ``m <= 0``; else ``min(A, a - m) / (min(A, a - m) + m)`` clipped to [0, 1];
   - *full absorption*: no split feature fires (code < 1e-8), the top-contributing latent has
     cosine >= 0.025 with ``p``, ``a >= 0``, and its contribution is >= 0.4 ``a``.

   Per letter: ``mean_absorption_fraction`` (sum over true positives / their number),
   ``full_absorption_rate``, ``num_full_absorption``, ``num_probe_true_positives``,
   ``num_split_features``. Over evaluated letters: ``mean_absorption_fraction_score``,
   ``mean_full_absorption_score``, ``mean_num_split_features`` and their standard deviations
   (SAEBench's keys, under ``eval_result_metrics["mean"]``).

:func:`absorption_scores` works on given activations (synthetic checks);
:func:`first_letter_activations` reads them from a model with in-context prompts
("`` cat`` has the first letter: C" lines, then the token), at the token's position.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sparsecodes.evaluation.probes import binary_f1, fit_logistic, split_indices
from sparsecodes.seeding import derive_seed

__all__ = [
    "EVAL_TYPE_ABSORPTION",
    "LETTERS",
    "absorption",
    "absorption_scores",
    "alpha_tokens",
    "coder_atoms",
    "first_letter_activations",
]

logger = logging.getLogger(__name__)

EVAL_TYPE_ABSORPTION = "absorption_first_letter"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
EPS = 1e-8
FULL_ABSORPTION_COS = 0.025
FRACTION_COS = 0.1
PROJECTION_PROPORTION = 0.4
MAX_ABSORBING_LATENTS = 3


@torch.no_grad()
def coder_atoms(coder: Any) -> Tensor:
    """``[n_latents, d]``: each latent's unit code decoded into activation space, minus the
    decoded zero code (the atom as the model sees it, input scaling included)."""
    n = int(coder.n_latents)
    dev = coder.W_dec.device
    zero = coder.decode(torch.zeros(1, n, device=dev))
    return (coder.decode(torch.eye(n, device=dev)) - zero).float().cpu()


def _l1_probe(
    codes: Tensor, letter_idx: Tensor, n_letters: int, *, l1: float, steps: int, lr: float
) -> Tensor:
    """``[n_letters, n_latents]`` weights of one-vs-rest logistic probes on ``codes`` with an
    L1 penalty ``l1 * mean_over_letters(sum |w|)`` (positive-class weighted), full-batch Adam."""
    x = codes.float()
    y = torch.nn.functional.one_hot(letter_idx, n_letters).float()
    pos = y.sum(0).clamp_min(1)
    pos_weight = (y.shape[0] - pos) / pos
    w = torch.zeros(n_letters, x.shape[1], requires_grad=True)
    b = torch.zeros(n_letters, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            loss = loss_fn(x @ w.T + b, y) + l1 * w.abs().sum(-1).mean()
            loss.backward()
            opt.step()
    return w.detach()


def _split_features(
    weights: Tensor,
    codes_tr: Tensor,
    y_tr: Tensor,
    codes_te: Tensor,
    y_te: Tensor,
    max_k: int,
    jump: float,
) -> tuple[list[int], list[float]]:
    order = torch.argsort(weights, descending=True, stable=True)
    best, split, f1s = -100.0, [], []
    growing = True
    for k in range(1, max_k + 1):
        feats = order[:k]
        x_tr = codes_tr[:, feats]
        if x_tr.abs().sum() == 0:  # no selected latent ever fires: a constant probe
            f1 = 0.0
        else:
            probe = fit_logistic(x_tr, y_tr)
            f1 = binary_f1(probe.predict(codes_te[:, feats]), y_te)
        f1s.append(f1)
        if growing and f1 > best + jump:
            best, split = f1, feats.tolist()
        else:
            growing = False
    return split, f1s


def _absorption_of_token(
    act_proj: float, contrib: Tensor, codes: Tensor, cos: Tensor, main: list[int]
) -> tuple[float, bool]:
    main_proj = float(contrib[main].sum()) if main else 0.0
    others = torch.ones_like(contrib, dtype=torch.bool)
    if main:
        others[main] = False
    others &= (cos >= FRACTION_COS) & (contrib > 0)
    cand = contrib[others]
    top = cand.topk(min(MAX_ABSORBING_LATENTS, cand.numel())).values
    absorbers = float(top.sum())
    share = absorbers / act_proj if act_proj != 0 else 0.0
    if main_proj >= act_proj or share < PROJECTION_PROPORTION:
        fraction = 0.0
    elif main_proj <= 0.0:
        fraction = 1.0
    else:
        absorbed = min(absorbers, act_proj - main_proj)
        fraction = float(np.clip(absorbed / (absorbed + main_proj), 0.0, 1.0))
    # full absorption by a single latent
    full = False
    if all(float(codes[i]) < EPS for i in main) and act_proj >= 0:
        top1 = int(torch.argmax(contrib))
        full = (
            float(cos[top1]) >= FULL_ABSORPTION_COS
            and act_proj != 0
            and float(contrib[top1]) / act_proj >= PROJECTION_PROPORTION
        )
    return fraction, full


def _summary(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return float(statistics.mean(values)), (
        float(statistics.stdev(values)) if len(values) > 1 else 0.0
    )


@torch.no_grad()
def absorption_scores(
    acts: Tensor,
    words: Sequence[str],
    coder: Any,
    *,
    test_fraction: float = 0.2,
    max_k: int = 10,
    f1_jump_threshold: float = 0.03,
    min_probe_f1: float = 0.6,
    min_letters: int = 20,
    l1: float = 0.01,
    l1_steps: int = 300,
    l1_lr: float = 0.01,
    seed: int = 0,
) -> dict[str, Any]:
    """First-letter absorption of ``coder`` on activations ``acts`` ``[n, d]`` of ``words``.

    ``words``: the ``n`` tokens (their first non-space character, lowercased, is the label;
    every word must start with a letter a-z). ``coder``: anything with ``encode`` ``[n, d] ->
    [n, n_latents]``, ``decode``, ``n_latents`` and ``W_dec`` (a ``SparseCoder``).

    Returns a JSON-able dict with SAEBench's keys: ``eval_type_id``, ``eval_config``,
    ``eval_result_metrics["mean"]`` (``None`` values when no letter passes ``min_probe_f1``) and
    ``eval_result_details`` (one entry per evaluated letter with ``first_letter``, the
    per-letter figures, ``f1_probe``, ``split_feats`` and ``absorbed_tokens``: the tokens
    counted as fully absorbed). ``num_letters_evaluated`` < ``min_letters`` (SAEBench refuses
    to score then) is flagged in ``eval_result_unstructured["warning"]``.
    """
    acts = torch.as_tensor(acts).float().cpu()
    letters = [w.strip()[:1].lower() for w in words]
    bad = [w for w, c in zip(words, letters, strict=True) if c not in LETTERS]
    if bad:
        raise ValueError(f"every word must start with a letter a-z; got {bad[:5]}")
    if acts.shape[0] != len(words):
        raise ValueError(f"acts has {acts.shape[0]} rows for {len(words)} words")
    present = sorted(set(letters))
    idx = torch.tensor([present.index(c) for c in letters])
    train, test = split_indices(letters, test_fraction, seed=seed, purpose="absorption-split")
    codes = coder.encode(acts.to(coder.W_dec.device)).float().cpu()
    atoms = coder_atoms(coder)
    atom_norm = atoms.norm(dim=1).clamp_min(1e-30)
    weights = _l1_probe(codes[train], idx[train], len(present), l1=l1, steps=l1_steps, lr=l1_lr)
    details: list[dict[str, Any]] = []
    for li, letter in enumerate(present):
        y_tr, y_te = idx[train] == li, idx[test] == li
        if int(y_tr.sum()) < 1 or int(y_te.sum()) < 1 or int((~y_tr).sum()) < 1:
            continue
        probe = fit_logistic(acts[train], y_tr)
        pred_te = probe.predict(acts[test])
        f1_probe = binary_f1(pred_te, y_te)
        if f1_probe <= min_probe_f1:
            logger.info(
                "letter %s: probe F1 %.3f <= %.2f, not evaluated", letter, f1_probe, min_probe_f1
            )
            continue
        split, f1s = _split_features(
            weights[li], codes[train], y_tr, codes[test], y_te, max_k, f1_jump_threshold
        )
        p = probe.direction
        cos = (atoms @ p) / atom_norm
        proj_atoms = atoms @ p
        tps = [test[j] for j in range(len(test)) if bool(y_te[j]) and bool(pred_te[j])]
        fractions, full_words = [], []
        for r in tps:
            frac, full = _absorption_of_token(
                float(acts[r] @ p), codes[r] * proj_atoms, codes[r], cos, split
            )
            fractions.append(frac)
            if full:
                full_words.append(words[r])
        n_tp = len(tps)
        details.append(
            {
                "first_letter": letter,
                "mean_absorption_fraction": sum(fractions) / n_tp if n_tp else 0.0,
                "full_absorption_rate": len(full_words) / n_tp if n_tp else 0.0,
                "num_full_absorption": len(full_words),
                "num_probe_true_positives": n_tp,
                "num_split_features": len(split),
                "f1_probe": f1_probe,
                "f1_sparse_sae": f1s,
                "split_feats": split,
                "absorbed_tokens": full_words,
            }
        )
    af = _summary([d["mean_absorption_fraction"] for d in details])
    fa = _summary([d["full_absorption_rate"] for d in details])
    ns = _summary([float(d["num_split_features"]) for d in details])
    out: dict[str, Any] = {
        "eval_type_id": EVAL_TYPE_ABSORPTION,
        "eval_config": {
            "random_seed": seed,
            "f1_jump_threshold": f1_jump_threshold,
            "max_k_value": max_k,
            "min_GT_probe_f1": min_probe_f1,
            "min_feats_for_eval": min_letters,
            "k_sparse_probe_l1_decay": l1,
            "test_fraction": test_fraction,
        },
        "eval_result_metrics": {
            "mean": {
                "mean_absorption_fraction_score": af[0],
                "mean_full_absorption_score": fa[0],
                "mean_num_split_features": ns[0],
                "std_dev_absorption_fraction_score": af[1],
                "std_dev_full_absorption_score": fa[1],
                "std_dev_num_split_features": ns[1],
            }
        },
        "eval_result_details": details,
        "eval_result_unstructured": {"num_letters_evaluated": len(details)},
    }
    if len(details) < min_letters:
        out["eval_result_unstructured"]["warning"] = (
            f"only {len(details)} letters have a probe F1 above {min_probe_f1} "
            f"(SAEBench needs {min_letters} to score absorption)"
        )
    return out


def alpha_tokens(tokenizer: Any) -> list[tuple[int, str]]:
    """``(token id, text)`` of every vocabulary token that decodes to a space followed by one
    or more ASCII letters (e.g. `` cat``), sorted by id."""
    out = []
    for tid in sorted(tokenizer.get_vocab().values()):
        text = tokenizer.decode([tid])
        if len(text) > 1 and text[0] == " " and text[1:].isascii() and text[1:].isalpha():
            out.append((tid, text))
    return out


@torch.no_grad()
def first_letter_activations(
    adapter: Any,
    hook: str,
    *,
    max_words: int | None = 2000,
    n_icl: int = 10,
    template: str = "{word} has the first letter:",
    batch_size: int = 32,
    seed: int = 0,
) -> tuple[Tensor, list[str]]:
    """Activations at ``hook`` of vocabulary words in first-letter prompts.

    Each prompt: ``n_icl`` in-context lines ``template + " X"`` (other words, ``X`` their first
    letter, upper case), then the word's own token; the activation is read at that token (the
    model is causal, so what follows it in SAEBench's template cannot change it). Words:
    :func:`alpha_tokens`, a seeded sample of ``max_words`` (None: all). Returns
    ``(acts [n, d] float32 on the CPU, words)``.
    """
    tok = adapter.tokenizer
    vocab = alpha_tokens(tok)
    if len(vocab) < n_icl + 2:
        raise ValueError(f"the vocabulary has only {len(vocab)} alphabetic word tokens")
    rng = np.random.default_rng(derive_seed(seed, "absorption-words"))
    chosen = (
        vocab
        if max_words is None or max_words >= len(vocab)
        else [vocab[i] for i in sorted(rng.choice(len(vocab), max_words, replace=False))]
    )
    bos = tok.bos_token_id
    rows: list[list[int]] = []
    for tid, _word in chosen:
        examples = []
        while len(examples) < n_icl:
            j = int(rng.integers(len(vocab)))
            if vocab[j][0] != tid and vocab[j] not in examples:
                examples.append(vocab[j])
        lines = "".join(
            template.format(word=w) + " " + w.strip()[0].upper() + "\n" for _, w in examples
        )
        ids = tok(lines, add_special_tokens=False)["input_ids"] + [tid]
        rows.append(([bos] if bos is not None else []) + ids)
    out = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        width = max(len(r) for r in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for j, r in enumerate(chunk):
            ids[j, : len(r)] = torch.tensor(r)
            mask[j, : len(r)] = 1
        act = adapter.run(ids.to(adapter.device), mask.to(adapter.device), [hook])[hook]
        last = mask.sum(1) - 1
        out.append(act[torch.arange(len(chunk)), last.to(act.device)].float().cpu())
    return torch.cat(out), [w for _, w in chosen]


def absorption(
    coder: Any,
    adapter: Any,
    hook: str,
    *,
    max_words: int | None = 2000,
    n_icl: int = 10,
    seed: int = 0,
    **kwargs: Any,
) -> dict[str, Any]:
    """First-letter absorption of ``coder`` at ``hook`` of ``adapter``: the activations of
    :func:`first_letter_activations`, scored by :func:`absorption_scores` (``kwargs``)."""
    acts, words = first_letter_activations(
        adapter, hook, max_words=max_words, n_icl=n_icl, seed=seed
    )
    out = absorption_scores(acts, words, coder, seed=seed, **kwargs)
    out["eval_config"].update({"max_words": max_words, "n_icl": n_icl, "hook": hook})
    return out
