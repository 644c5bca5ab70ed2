"""Resumable training runs in directories: checkpoints, CSV logs, final models.

Layout of each run directory: ``checkpoint/`` (latest resumable state), ``metrics.csv``,
``final/`` (the trained :class:`SparseCoder`), ``run.json`` (the full configuration). Starting the
same runs again continues from their checkpoints and ends with the same weights as an
uninterrupted run; the CSV log and TensorBoard events (``RunJob.tensorboard_dir``) drop what the
interrupted run logged past its checkpoint. :func:`train_runs` steps several coders in lockstep,
so coders reading views of one :class:`~sparsecodes.activations.live.LiveModelSource` share every
forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsecodes import distributed as dist_ctx
from sparsecodes.files import write_json
from sparsecodes.training.log import CSVLogger, TensorBoardLogger
from sparsecodes.training.trainer import TrainConfig, Trainer, TranscoderTrainer, train_lockstep

if TYPE_CHECKING:
    from sparsecodes.activations.source import ActivationSource
    from sparsecodes.sparse_coder import SparseCoder


@dataclass
class RunJob:
    """One coder to train: its data source, its directory and extra config to record.

    ``loggers`` receive every logged row (after ``metrics.csv``); those with ``flush()`` are
    flushed before each checkpoint, those with ``close()`` closed when training ends.
    ``tensorboard_dir``: also write TensorBoard event files there (resume-aware, see
    :class:`~sparsecodes.training.log.TensorBoardLogger`). ``pairs``: the coder is a
    :class:`~sparsecodes.transcoder.Transcoder` and its source yields ``(input, output)`` pairs
    (trained by :class:`~sparsecodes.training.trainer.TranscoderTrainer`). ``callback``:
    ``callback(step, coder) -> dict`` run every ``callback_every`` steps of :func:`train_runs`
    (e.g. :class:`~sparsecodes.evaluation.during_training.SpliceMonitor`), its dict merged into
    that history row; ``callback_columns`` are its keys, which ``metrics.csv`` gets from the
    first row on (empty on rows without them).
    """

    coder: SparseCoder
    source: ActivationSource
    run_dir: Path
    extra_config: dict[str, Any] = field(default_factory=dict)
    loggers: list[Callable[[dict[str, float]], None]] = field(default_factory=list)
    tensorboard_dir: Path | None = None
    pairs: bool = False
    callback: Callable[[int, Any], dict[str, float] | None] | None = None
    callback_columns: tuple[str, ...] = ()


def train_runs(
    jobs: Sequence[RunJob],
    config: TrainConfig,
    *,
    checkpoint_every: int = 100,
    resume: bool = True,
    latent_group: Any = None,
    data_group: Any = None,
    own_runs: bool = False,
    callback_every: int | None = None,
) -> list[SparseCoder]:
    """Train every job for ``config.steps`` steps in lockstep, resuming from checkpoints.

    ``latent_group``: train latent-parallel over this process group (every rank of it feeds the
    same rows; each holds a slice of every job's latents, see
    :mod:`sparsecodes.distributed.latent`); checkpoints and ``final/`` hold the full coders.
    ``data_group`` with ``latent_group``: 2-D, data x latent (:func:`sparsecodes.distributed.
    make_grid`): each latent group reads its own rows and gradients are averaged over
    ``data_group`` (the ranks holding the same slice).
    ``own_runs``: these jobs are this rank's alone (coders spread over ranks, "distribute
    modules"): no data parallelism, and this rank writes their directories.
    Jobs with a ``callback`` have it run every ``callback_every`` steps (default
    ``config.log_every``) and after the last step.

    A fresh coder's normaliser must already be fitted (``coder.normaliser.fit(sample)``).
    Returns the trained coders (also saved to ``run_dir/final``). Under ``torchrun`` every rank
    calls it with the same jobs; rank 0 alone writes ``run.json``, logs, checkpoints and
    ``final/`` (the other ranks' loggers are not called).
    """
    main = own_runs or dist_ctx.world().main
    trainers: list[Trainer] = []
    csvs: list[Callable[[dict[str, Any]], None]] = []
    run_loggers: list[list[Callable[[dict[str, float]], None]]] = []  # per job, after the CSV
    try:
        for job in jobs:
            job.run_dir = Path(job.run_dir)
            job.run_dir.mkdir(parents=True, exist_ok=True)
            if latent_group is not None:
                from sparsecodes.distributed.latent import shard_coder

                if job.pairs:
                    raise ValueError("latent parallelism does not train transcoders")
                trainer = Trainer(
                    shard_coder(job.coder, latent_group),
                    config,
                    latent_group=latent_group,
                    data_group=data_group,
                    data_parallel=data_group is not None,
                )
            elif own_runs:
                trainer = (TranscoderTrainer if job.pairs else Trainer)(
                    job.coder, config, writer=True
                )
            else:
                trainer = (TranscoderTrainer if job.pairs else Trainer)(job.coder, config)
            ckpt = job.run_dir / "checkpoint"
            resumed: int | None = None
            if resume and (ckpt.exists() or ckpt.with_name(".checkpoint.old").exists()):
                trainer.load_checkpoint(ckpt, job.source)
                resumed = trainer.state.step
            info = {"train": trainer.config_dict(), "model": job.coder.config(), **job.extra_config}
            trainers.append(trainer)
            if not main:
                run_loggers.append([])
                continue
            write_json(job.run_dir / "run.json", info, default=str)
            csv_log = CSVLogger(job.run_dir / "metrics.csv", resume_step=resumed)
            csvs.append(_with_columns(csv_log, job.callback_columns))
            lgs: list[Callable[[dict[str, float]], None]] = list(job.loggers)
            if job.tensorboard_dir is not None:
                lgs.insert(0, TensorBoardLogger(job.tensorboard_dir, resume_step=resumed))
            run_loggers.append(lgs)

        def checkpoint(n: int) -> None:
            if checkpoint_every > 0 and (n % checkpoint_every == 0 or n == config.steps):
                for trainer, job, lgs in zip(trainers, jobs, run_loggers, strict=True):
                    for lg in lgs:  # every row up to the checkpoint on disk before it exists
                        flush = getattr(lg, "flush", None)
                        if flush is not None:
                            flush()
                    trainer.save_checkpoint(job.run_dir / "checkpoint", job.source)

        by_coder = {id(job.coder): job.callback for job in jobs if job.callback is not None}

        def callback(step: int, coder: Any) -> dict[str, float] | None:
            cb = by_coder.get(id(coder))
            return cb(step, coder) if cb is not None else None

        train_lockstep(
            trainers,
            [job.source for job in jobs],
            loggers=[[c, *lgs] for c, lgs in zip(csvs, run_loggers, strict=True)] if main else None,
            callback=callback if by_coder else None,
            callback_every=callback_every,
            after_step=checkpoint,
        )
        out = []
        for trainer, job in zip(trainers, jobs, strict=True):
            coder = trainer.coder
            if latent_group is not None:  # every rank: the whole coder from the slices
                from sparsecodes.distributed.latent import gather_coder

                coder = job.coder = gather_coder(coder, latent_group)
            coder.train_config = {**coder.train_config, **trainer.config_dict(), **job.extra_config}
            coder.history = trainer.state.history
            coder.mark_fitted()
            coder.eval()
            if main:
                coder.save(job.run_dir / "final")
            out.append(coder)
        dist_ctx.barrier()  # final/ is whole before any rank returns
        return out
    finally:  # also on errors and interrupts, so TensorBoard's pending events reach the disk
        every = [lg for lgs in run_loggers for lg in lgs]
        every += [lg for j in jobs for lg in j.loggers] if main else []
        for lg in {id(lg): lg for lg in every}.values():
            close = getattr(lg, "close", None)
            if close is not None:
                close()


def _with_columns(
    sink: Callable[[dict[str, float]], None], columns: Sequence[str]
) -> Callable[[dict[str, Any]], None]:
    """``sink`` receiving every row with ``columns`` present (None, an empty CSV cell, where
    the row lacks them), so a CSV whose columns come from its first row keeps them."""
    if not columns:
        return sink

    def log(row: dict[str, Any]) -> None:
        sink({**row, **{c: None for c in columns if c not in row}})

    return log


def train_run(
    coder: SparseCoder,
    source: ActivationSource,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    checkpoint_every: int = 100,
    resume: bool = True,
    extra_config: dict[str, Any] | None = None,
    loggers: Sequence[Callable[[dict[str, float]], None]] = (),
    tensorboard_dir: str | Path | None = None,
    latent_group: Any = None,
    data_group: Any = None,
) -> SparseCoder:
    """:func:`train_runs` for one coder; ``loggers`` and ``tensorboard_dir`` as in :class:`RunJob`,
    ``latent_group`` and ``data_group`` as in :func:`train_runs`."""
    job = RunJob(
        coder,
        source,
        Path(run_dir),
        extra_config or {},
        list(loggers),
        None if tensorboard_dir is None else Path(tensorboard_dir),
    )
    return train_runs(
        [job],
        config,
        checkpoint_every=checkpoint_every,
        resume=resume,
        latent_group=latent_group,
        data_group=data_group,
    )[0]
