"""A resumable training run in a directory: checkpoints, CSV log, final model.

Layout of ``run_dir``: ``checkpoint/`` (latest resumable state), ``metrics.csv``, ``final/``
(the trained :class:`SparseCoder`), ``run.json`` (the full configuration). Starting the same run
again continues from ``checkpoint/`` and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsecodes.training.log import CSVLogger
from sparsecodes.training.trainer import TrainConfig, Trainer

if TYPE_CHECKING:
    from sparsecodes.activations.source import ActivationSource
    from sparsecodes.sparse_coder import SparseCoder


def train_run(
    coder: SparseCoder,
    source: ActivationSource,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    checkpoint_every: int = 100,
    resume: bool = True,
    extra_config: dict[str, Any] | None = None,
    loggers: list[Callable[[dict[str, float]], None]] | None = None,
) -> SparseCoder:
    """Train ``coder`` on ``source`` inside ``run_dir``, resuming from its checkpoint if present.

    The normaliser must already be fitted (``coder.normaliser.fit(sample)``) on a fresh run.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(coder, config)
    ckpt = run_dir / "checkpoint"
    resumed_from: int | None = None
    if resume and (ckpt.exists() or ckpt.with_name(".checkpoint.old").exists()):
        trainer.load_checkpoint(ckpt, source)
        resumed_from = trainer.state.step
    info = {"train": trainer.config_dict(), "model": coder.config(), **(extra_config or {})}
    (run_dir / "run.json").write_text(json.dumps(info, indent=2, default=str))
    csv_log = CSVLogger(run_dir / "metrics.csv", resume_step=resumed_from)

    def log(row: dict[str, float]) -> None:
        csv_log(row)
        for lg in loggers or []:
            lg(row)

    trainer.fit(source, checkpoint_dir=ckpt, checkpoint_every=checkpoint_every, logger=log)
    coder.train_config = {**coder.train_config, **trainer.config_dict(), **(extra_config or {})}
    coder._fitted = True
    coder.save(run_dir / "final")
    return coder
