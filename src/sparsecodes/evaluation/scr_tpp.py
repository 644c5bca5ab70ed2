"""Spurious correlation removal (SCR) and targeted probe perturbation (TPP), as SAEBench defines
them, on mean-pooled activations.

Both ablate latents: with codes ``z`` of the activations ``x``, zeroing the latents in a set
``S`` and keeping the coder's error gives ``x - (decode(z) - decode(z with S zeroed))``. For an
affine decoder (all of ours) this commutes with the mean over a text's tokens, so it is applied
to the mean-pooled activations and codes directly.

A latent's *effect* on a probe ``w`` (trained on the clean activations of the class pair
``pos``/``neg``): ``(mean(z | pos) - mean(z | neg))_i * (w . d_i)``, ``d_i`` the latent's atom in
activation space, on the training split. SCR ranks by its absolute value; TPP by its value with
the mean difference clipped at 0 (latents of the positive class only).

**SCR** (dataset with two attributes, e.g. profession x gender; the pair ``(a1, a2)`` of the
first attribute, ``(b1, b2)`` of the second). Probes on the training split: ``first`` (``a1``
vs ``a2``, second attribute balanced), ``second`` (``b1`` vs ``b2``) and the *biased* probe
(``a1 & b1`` vs ``a2 & b2``). On the test split, the biased probe's accuracy on the ``first``
task is ``original``, the ``first`` probe's is ``clean``; ablating the top ``n`` latents by effect
on the ``second`` probe changes the biased probe's accuracy to ``changed``, and
``scr_dir1_threshold_n = (changed - original) / (clean - original)`` (0 when
``clean - original < 0.001``). ``scr_dir2`` swaps the attributes. ``scr_metric_threshold_n`` is
dir1 when the biased probe is worse on the first task than on the second (it learnt the second
attribute, which is then the one to remove), dir2 when it is worse on the second, absent when
equal.

**TPP** (one attribute with several classes). One-vs-rest probes per class ``c``. Ablating the top
``n`` latents of ``c``: ``intended = acc_c(clean) - acc_c(ablated)``; ``unintended`` = the mean of
the same drop over the other classes' probes (on their own test data);
``tpp_threshold_n_total_metric = intended - unintended``. Averaged over classes.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sparsecodes.evaluation.absorption import coder_atoms
from sparsecodes.evaluation.probes import (
    LogisticProbe,
    accuracy,
    fit_logistic,
    pooled,
    pooled_codes,
    split_indices,
    text_activations,
)
from sparsecodes.evaluation.probing import one_vs_rest_rows
from sparsecodes.seeding import derive_seed

__all__ = [
    "EVAL_TYPE_SCR",
    "EVAL_TYPE_TPP",
    "THRESHOLDS",
    "ablate",
    "latent_effects",
    "scr",
    "scr_scores",
    "tpp",
    "tpp_scores",
]

EVAL_TYPE_SCR = "scr"
EVAL_TYPE_TPP = "tpp"
THRESHOLDS = (2, 5, 10, 20, 50, 100, 500)


def latent_effects(
    codes: Tensor, y: Tensor, probe: LogisticProbe, atoms: Tensor, *, mode: str
) -> Tensor:
    """``[n_latents]`` effects of each latent on ``probe`` (module docstring): ``mode="scr"``
    absolute, ``mode="tpp"`` positive-class only (mean difference clipped at 0)."""
    y = torch.as_tensor(y).bool()
    diff = codes[y].double().mean(0) - codes[~y].double().mean(0)
    if mode == "tpp":
        diff = diff.clamp_min(0)
    eff = diff * (atoms.double() @ probe.weight.double())
    return eff.abs() if mode == "scr" else eff


def _top(effects: Tensor, n: int) -> Tensor:
    """Indices of the ``n`` largest non-zero effects (fewer when fewer are non-zero)."""
    nz = int((effects != 0).sum())
    k = min(n, nz)
    return torch.topk(effects, k).indices if k else torch.zeros(0, dtype=torch.long)


@torch.no_grad()
def ablate(acts: Tensor, codes: Tensor, coder: Any, latents: Tensor) -> Tensor:
    """``[n, d]``: ``acts`` with the latents ``latents`` zeroed in ``codes`` and the coder's error
    kept: ``acts - (decode(codes) - decode(codes with latents zeroed))``."""
    if latents.numel() == 0:
        return acts.clone()
    dev = coder.W_dec.device
    z = codes.to(dev)
    z_off = z.clone()
    z_off[:, latents.to(dev)] = 0
    delta = (coder.decode(z) - coder.decode(z_off)).float().cpu()
    return acts - delta


def _balanced(
    rows: dict[Any, list[int]], keys: Sequence[Any], rng: np.random.Generator
) -> list[int]:
    n = min(len(rows.get(k, [])) for k in keys)
    out: list[int] = []
    for k in keys:
        r = rows.get(k, [])
        out += [r[i] for i in sorted(rng.permutation(len(r))[:n])]
    return out


def scr_scores(
    acts: Tensor,
    codes: Tensor,
    coder: Any,
    first: Sequence[str],
    second: Sequence[str],
    *,
    first_pair: tuple[str, str],
    second_pair: tuple[str, str],
    thresholds: Sequence[int] = THRESHOLDS,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, float | None]:
    """SCR figures (module docstring) for pooled ``acts`` ``[n, d]`` and ``codes`` ``[n, F]``
    with two label columns: ``first`` (e.g. profession) and ``second`` (e.g. gender).
    ``first_pair = (a1, a2)``, ``second_pair = (b1, b2)``: the biased probe separates
    ``a1 & b1`` from ``a2 & b2``. Returns SAEBench's ``scr_dir1_threshold_n``,
    ``scr_dir2_threshold_n`` and ``scr_metric_threshold_n`` keys, plus the clean accuracies."""
    (a1, a2), (b1, b2) = first_pair, second_pair
    keep = [i for i in range(len(first)) if first[i] in (a1, a2) and second[i] in (b1, b2)]
    cells = [f"{first[i]}|{second[i]}" for i in keep]
    tr_k, te_k = split_indices(cells, test_fraction, seed=seed, purpose="scr-split")
    rng = np.random.default_rng(derive_seed(seed, "scr-balance"))
    atoms = coder_atoms(coder)

    def by_cell(part: list[int]) -> dict[tuple[str, str], list[int]]:
        out: dict[tuple[str, str], list[int]] = {}
        for j in part:
            i = keep[j]
            out.setdefault((first[i], second[i]), []).append(i)
        return out

    def tasks(part: list[int]) -> dict[str, tuple[list[int], Tensor]]:
        cell = by_cell(part)
        f_rows = _balanced(cell, [(a1, b1), (a1, b2), (a2, b1), (a2, b2)], rng)
        y_f = torch.tensor([first[i] == a1 for i in f_rows])
        y_s = torch.tensor([second[i] == b1 for i in f_rows])
        b_rows = _balanced(cell, [(a1, b1), (a2, b2)], rng)
        y_b = torch.tensor([first[i] == a1 for i in b_rows])
        return {"first": (f_rows, y_f), "second": (f_rows, y_s), "biased": (b_rows, y_b)}

    train, test = tasks(tr_k), tasks(te_k)
    probes = {name: fit_logistic(acts[rows], y) for name, (rows, y) in train.items()}
    te_rows, y_first = test["first"]
    _, y_second = test["second"]
    x_te = acts[te_rows]
    clean_first = accuracy(probes["first"].predict(x_te), y_first)
    clean_second = accuracy(probes["second"].predict(x_te), y_second)
    biased_on_first = accuracy(probes["biased"].predict(x_te), y_first)
    biased_on_second = accuracy(probes["biased"].predict(x_te), y_second)
    effects = {
        name: latent_effects(codes[train[name][0]], train[name][1], probes[name], atoms, mode="scr")
        for name in ("first", "second")
    }
    out: dict[str, float | None] = {
        "clean_first_accuracy": clean_first,
        "clean_second_accuracy": clean_second,
        "biased_probe_first_accuracy": biased_on_first,
        "biased_probe_second_accuracy": biased_on_second,
    }
    for n in thresholds:
        for direction, ablated, clean, original, y in (
            (1, "second", clean_first, biased_on_first, y_first),
            (2, "first", clean_second, biased_on_second, y_second),
        ):
            x_ab = ablate(x_te, codes[te_rows], coder, _top(effects[ablated], n))
            changed = accuracy(probes["biased"].predict(x_ab), y)
            score = 0.0 if clean - original < 0.001 else (changed - original) / (clean - original)
            out[f"scr_dir{direction}_threshold_{n}"] = float(score)
        if biased_on_first < biased_on_second:
            out[f"scr_metric_threshold_{n}"] = out[f"scr_dir1_threshold_{n}"]
        elif biased_on_first > biased_on_second:
            out[f"scr_metric_threshold_{n}"] = out[f"scr_dir2_threshold_{n}"]
        else:
            out[f"scr_metric_threshold_{n}"] = None
    return out


def tpp_scores(
    acts: Tensor,
    codes: Tensor,
    coder: Any,
    labels: Sequence[str],
    *,
    thresholds: Sequence[int] = THRESHOLDS,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    """TPP figures (module docstring) for pooled ``acts`` ``[n, d]``, ``codes`` ``[n, F]`` and
    ``labels`` (two or more classes). Returns the class means under SAEBench's keys
    ``tpp_threshold_n_total_metric``, ``..._intended_diff_only``, ``..._unintended_diff_only``,
    and ``per_class`` (the same per class)."""
    labels = [str(v) for v in labels]
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"TPP needs two or more classes, got {classes}")
    tr, te = split_indices(labels, test_fraction, seed=seed, purpose="tpp-split")
    atoms = coder_atoms(coder)
    probes, effects, test_sets = {}, {}, {}
    for c in classes:
        r_tr, y_tr = one_vs_rest_rows([labels[i] for i in tr], c, seed=seed, purpose="tpp-train")
        rows_tr = [tr[i] for i in r_tr]
        probes[c] = fit_logistic(acts[rows_tr], y_tr)
        effects[c] = latent_effects(codes[rows_tr], y_tr, probes[c], atoms, mode="tpp")
        r_te, y_te = one_vs_rest_rows([labels[i] for i in te], c, seed=seed, purpose="tpp-test")
        test_sets[c] = ([te[i] for i in r_te], y_te)
    clean = {c: accuracy(probes[c].predict(acts[r]), y) for c, (r, y) in test_sets.items()}
    per_class: dict[str, dict[str, float]] = {}
    for c in classes:
        m: dict[str, float] = {}
        for n in thresholds:
            top = _top(effects[c], n)
            drop = {}
            for j, (rows, y) in test_sets.items():
                x_ab = ablate(acts[rows], codes[rows], coder, top)
                drop[j] = clean[j] - accuracy(probes[j].predict(x_ab), y)
            unintended = float(np.mean([drop[j] for j in classes if j != c]))
            m[f"tpp_threshold_{n}_total_metric"] = drop[c] - unintended
            m[f"tpp_threshold_{n}_intended_diff_only"] = drop[c]
            m[f"tpp_threshold_{n}_unintended_diff_only"] = unintended
        per_class[c] = m
    keys = next(iter(per_class.values())).keys()
    out: dict[str, Any] = {k: float(np.mean([per_class[c][k] for c in classes])) for k in keys}
    out["per_class"] = per_class
    out["clean_accuracy"] = clean
    return out


def _pooled_pair(
    coder: Any,
    adapter: Any,
    hook: str,
    texts: Sequence[str],
    batch_size: int,
    cache: MutableMapping[Any, Any] | None,
) -> tuple[Tensor, Tensor]:
    token_acts = text_activations(adapter, hook, texts, batch_size=batch_size, cache=cache)
    return pooled(token_acts), pooled_codes(coder, token_acts)


def scr(
    coder: Any,
    adapter: Any,
    hook: str,
    dataset: Any,
    *,
    first: str = "profession",
    second: str = "gender",
    first_pair: tuple[str, str] = ("professor", "nurse"),
    second_pair: tuple[str, str] = ("male", "female"),
    thresholds: Sequence[int] = THRESHOLDS,
    seed: int = 0,
    batch_size: int = 16,
    cache: MutableMapping[Any, Any] | None = None,
) -> dict[str, Any]:
    """SCR of ``coder`` at ``hook`` on a two-attribute
    :class:`~sparsecodes.evaluation.datasets.LabelledSet` (default: professor/nurse x
    male/female, as SAEBench). ``cache``: the model's activations, shared with :func:`tpp` and
    other SAEs (:func:`~sparsecodes.evaluation.probes.text_activations`). JSON-able, SAEBench's
    layout (``eval_result_metrics``
    ``["scr_metrics"]``, ``eval_result_details`` per dataset)."""
    acts, codes = _pooled_pair(coder, adapter, hook, dataset.texts, batch_size, cache)
    scores = scr_scores(
        acts,
        codes,
        coder,
        dataset.labels[first],
        dataset.labels[second],
        first_pair=first_pair,
        second_pair=second_pair,
        thresholds=thresholds,
        seed=seed,
    )
    keys = [k for k in scores if k.startswith("scr_")]
    return {
        "eval_type_id": EVAL_TYPE_SCR,
        "eval_config": {"n_values": list(thresholds), "random_seed": seed, "hook": hook},
        "eval_result_metrics": {"scr_metrics": {k: scores[k] for k in keys}},
        "eval_result_details": [{"dataset_name": dataset.name, **{k: scores[k] for k in keys}}],
        "eval_result_unstructured": {k: v for k, v in scores.items() if k not in keys},
    }


def tpp(
    coder: Any,
    adapter: Any,
    hook: str,
    dataset: Any,
    *,
    label: str = "profession",
    thresholds: Sequence[int] = THRESHOLDS,
    seed: int = 0,
    batch_size: int = 16,
    cache: MutableMapping[Any, Any] | None = None,
) -> dict[str, Any]:
    """TPP of ``coder`` at ``hook`` on the classes of ``dataset.labels[label]``. JSON-able,
    SAEBench's layout (``eval_result_metrics["tpp_metrics"]``). ``cache``: as :func:`scr`."""
    acts, codes = _pooled_pair(coder, adapter, hook, dataset.texts, batch_size, cache)
    scores = tpp_scores(acts, codes, coder, dataset.labels[label], thresholds=thresholds, seed=seed)
    keys = [k for k in scores if k.startswith("tpp_")]
    return {
        "eval_type_id": EVAL_TYPE_TPP,
        "eval_config": {"n_values": list(thresholds), "random_seed": seed, "hook": hook},
        "eval_result_metrics": {"tpp_metrics": {k: scores[k] for k in keys}},
        "eval_result_details": [{"dataset_name": dataset.name, **{k: scores[k] for k in keys}}],
        "eval_result_unstructured": {
            "per_class": scores["per_class"],
            "clean_accuracy": scores["clean_accuracy"],
        },
    }
