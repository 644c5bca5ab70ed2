"""Linear probes and the activations they read, shared by the SAEBench-style metrics.

- :func:`fit_logistic`: binary L2-regularised logistic regression, full-batch L-BFGS in float64
  from a zero start (no random draw, so the same data always gives the same probe), with
  balanced class weights, on the raw (unstandardised) inputs as SAEBench's scikit-learn probes.
  The penalty ``l2 / 2 * |w|^2`` on the mean weighted log-loss; the default ``l2 = 1 / n``
  equals scikit-learn's ``LogisticRegression(C=1, class_weight="balanced")`` objective up to
  the overall scale.
- :func:`top_k_mean_diff`: the ``k`` dimensions with the largest ``|mean(pos) - mean(neg)|``
  (SAEBench's selection for sparse probing).
- :func:`text_activations`: per-text activations at a hook (BOS dropped), their mean over tokens
  (:func:`pooled`), and the mean over tokens of a coder's codes (:func:`pooled_codes`): SAEBench
  probes mean-pooled activations and mean-pooled SAE latents. The activations do not depend on
  the SAE: pass one ``cache`` dict to every call of a run (``sparsecodes bench`` does) and each
  model pass is made once for all SAEs and metrics that read the same texts at the same hook.
- :func:`split_indices`: a seeded, stratified train/test split.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sparsecodes.evaluation.memo import memoized
from sparsecodes.seeding import derive_seed

__all__ = [
    "LogisticProbe",
    "accuracy",
    "binary_f1",
    "fit_logistic",
    "pooled",
    "pooled_codes",
    "split_indices",
    "text_activations",
    "top_k_mean_diff",
]


@dataclass(frozen=True)
class LogisticProbe:
    """``score(x) = x @ weight + bias``; positive scores predict the positive class.

    ``weight`` ``[d]`` (float32) and ``bias`` (scalar).
    """

    weight: Tensor
    bias: float

    @property
    def direction(self) -> Tensor:
        """``[d]`` unit vector along ``weight``."""
        return self.weight / self.weight.norm().clamp_min(1e-30)

    def score(self, x: Tensor) -> Tensor:
        """``[n]`` logits for ``x`` ``[n, d]``."""
        return (x.double().cpu() @ self.weight.double() + self.bias).float()

    def predict(self, x: Tensor) -> Tensor:
        """``[n]`` booleans: ``score(x) > 0``."""
        return self.score(x) > 0


def fit_logistic(
    x: Tensor, y: Tensor, *, l2: float | None = None, max_iter: int = 200
) -> LogisticProbe:
    """Binary logistic regression on ``x`` ``[n, d]`` and boolean labels ``y`` ``[n]``.

    Classes are weighted ``n / (2 n_class)`` (balanced). ``l2`` defaults to ``1 / n``; it
    penalises the weights on ``x / rms(x)`` (one scalar for all columns, for conditioning). Raises ``ValueError`` when ``y`` holds a single class.
    """
    x = torch.as_tensor(x).double().cpu()
    y = torch.as_tensor(y).bool().cpu()
    if x.dim() != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"x must be [n, d] and y [n]; got {tuple(x.shape)} and {tuple(y.shape)}")
    n_pos, n = int(y.sum()), int(y.numel())
    if n_pos in (0, n):
        raise ValueError(
            f"a probe needs both classes in its training rows, got {n_pos} positives of {n}; "
            "use a larger or stratified training split"
        )
    s = float(x.pow(2).mean().sqrt()) or 1.0  # one scalar, for conditioning only
    z = x / s
    t = y.double()
    sw = torch.where(y, n / (2.0 * n_pos), n / (2.0 * (n - n_pos)))
    lam = 1.0 / n if l2 is None else float(l2)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        opt.zero_grad()
        logits = z @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, t, weight=sw)
        loss = loss + 0.5 * lam * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LogisticProbe((w.detach() / s).float(), float(b.detach()))


def accuracy(pred: Tensor, y: Tensor) -> float:
    """Fraction of ``pred`` ``[n]`` (bool) equal to ``y`` ``[n]`` (bool)."""
    return float((torch.as_tensor(pred).bool() == torch.as_tensor(y).bool()).double().mean())


def binary_f1(pred: Tensor, y: Tensor) -> float:
    """F1 of the positive class (0.0 when there are no true positives)."""
    pred, y = torch.as_tensor(pred).bool(), torch.as_tensor(y).bool()
    tp = int((pred & y).sum())
    if tp == 0:
        return 0.0
    return 2.0 * tp / (int(pred.sum()) + int(y.sum()))


def top_k_mean_diff(x: Tensor, y: Tensor, k: int) -> Tensor:
    """``[k]`` column indices of ``x`` ``[n, d]`` with the largest ``|mean(pos) - mean(neg)|``
    (ties broken by the lower index)."""
    y = torch.as_tensor(y).bool()
    diff = (x[y].double().mean(0) - x[~y].double().mean(0)).abs()
    order = np.lexsort((np.arange(diff.numel()), -diff.numpy()))
    return torch.as_tensor(order[: min(k, diff.numel())].copy())


def split_indices(
    labels: Sequence[Any], test_fraction: float, *, seed: int, purpose: str = "probe-split"
) -> tuple[list[int], list[int]]:
    """A seeded split of ``range(len(labels))`` with ``test_fraction`` of each label's rows (at
    least one each side when a label has two or more rows) in the test part."""
    rng = np.random.default_rng(derive_seed(seed, purpose))
    by_label: dict[Any, list[int]] = {}
    for i, lab in enumerate(labels):
        by_label.setdefault(lab, []).append(i)
    train: list[int] = []
    test: list[int] = []
    for lab in sorted(by_label, key=str):
        idx = by_label[lab]
        perm = [idx[j] for j in rng.permutation(len(idx))]
        n_test = round(len(idx) * test_fraction)
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test += perm[:n_test]
        train += perm[n_test:]
    return sorted(train), sorted(test)


@torch.no_grad()
def text_activations(
    adapter: Any,
    hook: str,
    texts: Sequence[str],
    *,
    batch_size: int = 16,
    cache: MutableMapping[Any, Any] | None = None,
) -> list[Tensor]:
    """Per text, the activations at ``hook`` of its tokens (BOS dropped): ``[T_i, d]`` float32 on
    the CPU. ``adapter`` is a :class:`~sparsecodes.models.ModelAdapter`.

    ``cache``: a dict kept by the caller; the result is stored there under the model, hook and
    texts, and a later call with the same ones returns it without running the model.
    """
    key = ("text_activations", getattr(adapter, "name", id(adapter)), hook, tuple(texts))
    return memoized(cache, key, lambda: _text_activations(adapter, hook, texts, batch_size))


def _text_activations(
    adapter: Any, hook: str, texts: Sequence[str], batch_size: int
) -> list[Tensor]:
    out: list[Tensor] = []
    for i in range(0, len(texts), batch_size):
        chunk = list(texts[i : i + batch_size])
        ids, mask = adapter.encode(chunk)
        acts = adapter.run(ids, mask, [hook])[hook].float().cpu()
        acts = acts.reshape(acts.shape[0], acts.shape[1], -1)
        for row, m in zip(acts, mask.cpu(), strict=True):
            n = int(m.sum())
            out.append(row[1:n] if n > 1 else row[:n])
    return out


def pooled(acts: Sequence[Tensor]) -> Tensor:
    """``[n, d]``: the mean over tokens of each text's ``[T_i, d]`` activations."""
    return torch.stack([a.mean(0) for a in acts])


@torch.no_grad()
def pooled_codes(coder: Any, acts: Sequence[Tensor]) -> Tensor:
    """``[n, n_latents]``: the mean over tokens of each text's codes (``coder.encode`` per token)."""
    lengths = [a.shape[0] for a in acts]
    codes = coder.encode(torch.cat(list(acts))).float().cpu()
    return torch.stack([c.mean(0) for c in torch.split(codes, lengths)])
