"""CE-loss and KL scores of a coder spliced into its model, measured while it trains.

>>> monitor = SpliceMonitor(adapter, "blocks.12.resid_post", windows)     # doctest: +SKIP
>>> monitor(step, coder)      # {"ce_loss_score": ..., "kl_score": ...}   # doctest: +SKIP

A :class:`SpliceMonitor` is a training callback (``callback(step, coder) -> dict``, see
:func:`sparsecodes.training.trainer.train_lockstep`). Its windows are fixed, so the clean model's
CE and the zero-ablation CE and KL do not change during training: they are measured on the first
call (one clean, one spliced and one zero-ablation pass) and kept; each later call costs one
clean pass (KL needs the clean distribution) and one spliced pass. The scores are exactly those
of :func:`~sparsecodes.evaluation.splice.downstream_scores` with variants ``sae`` and ``zero`` on
the same windows and coder state (``ce_loss_score``, ``kl_score`` as in ``docs/metrics.md``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sparsecodes.data import Window
from sparsecodes.evaluation.gap import Method, reconstructor
from sparsecodes.evaluation.splice import (
    Variant,
    ce_loss_score,
    downstream_scores,
    kl_score,
    zero_ablation,
)

logger = logging.getLogger(__name__)

#: the columns a :class:`SpliceMonitor` adds to a history row
COLUMNS = ("ce_loss_score", "kl_score")


class SpliceMonitor:
    """``monitor(step, coder) -> {"ce_loss_score", "kl_score"}`` on fixed held-out windows.

    ``adapter``: a causal model adapter (:func:`sparsecodes.models.load_model`); ``hook``: where
    the coder reads and is spliced; ``windows``: the held-out token windows (their kept
    positions are replaced by the coder's reconstruction ``[n, d_in]``).
    """

    def __init__(
        self, adapter: Any, hook: str, windows: Sequence[Window], *, batch_size: int = 4
    ) -> None:
        if not getattr(adapter, "is_causal", True):
            raise ValueError(
                f"CE/KL scores need a causal language model; {getattr(adapter, 'name', 'this')} "
                "is an encoder (drop --eval-every)"
            )
        if not windows:
            raise ValueError("no held-out windows for the CE/KL scores; use more --eval-tokens")
        self.adapter = adapter
        self.hook = hook
        self.windows = list(windows)
        self.batch_size = batch_size
        #: ``(ce_clean, ce_zero, kl_zero)`` once measured
        self.baseline: tuple[float, float, float] | None = None
        self.n_positions = 0

    def __call__(self, step: int, coder: Any) -> dict[str, float]:
        variants = {"sae": Variant(reconstructor(coder, Method("sae")))}
        if self.baseline is None:
            variants["zero"] = Variant(zero_ablation)
        ds = downstream_scores(
            self.adapter, self.hook, self.windows, variants, batch_size=self.batch_size
        )
        if self.baseline is None:
            self.baseline = (ds.ce_clean, ds.ce["zero"], ds.kl["zero"])
            self.n_positions = ds.n_positions
            logger.info(
                "CE/KL during training at %s: %d positions, CE clean %.4f, zero ablation %.4f",
                self.hook,
                ds.n_positions,
                ds.ce_clean,
                ds.ce["zero"],
            )
        _, ce_zero, kl_zero = self.baseline
        return {
            "ce_loss_score": ce_loss_score(ds.ce["sae"], ds.ce_clean, ce_zero),
            "kl_score": kl_score(ds.kl["sae"], kl_zero),
        }


def splice_monitor(
    adapter: Any,
    hook: str,
    *,
    eval_tokens: int = 2048,
    context_size: int = 128,
    corpus: str | None = None,
    batch_size: int = 4,
) -> SpliceMonitor:
    """A :class:`SpliceMonitor` on the first ``eval_tokens`` kept tokens of the held-out text
    (``corpus``, else the embedded corpus's held-out split, every 20th document) in windows of
    ``context_size`` tokens."""
    from sparsecodes.evaluation.corpus import eval_windows, heldout_texts

    if eval_tokens < 1:
        raise ValueError(f"eval_tokens must be >= 1, got {eval_tokens}")
    what = corpus or "the held-out split of the embedded corpus"
    windows = eval_windows(
        heldout_texts(corpus), adapter.tokenizer, context_size, eval_tokens, what=what
    )
    return SpliceMonitor(adapter, hook, windows, batch_size=batch_size)
