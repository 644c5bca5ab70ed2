"""Per-run metric logs: a CSV file (always), Weights & Biases and TensorBoard (when asked).

A logger is a callable taking one row (a dict of floats with a ``"step"`` key). It may also have
``flush()`` (called by :func:`~sparsecodes.training.run.train_runs` before every checkpoint, so a
run killed and resumed finds every row up to its checkpoint on disk) and ``close()`` (called once
when training ends, normally or not).
"""

from __future__ import annotations

import csv
import io
import numbers
from pathlib import Path
from typing import Any

from sparsecodes.files import write_text

TENSORBOARD_FIX = "pip install tensorboard (or pip install 'sparsecodes[tensorboard]')"


class CSVLogger:
    """Appends one row per logged step to ``path``; on resume, rows past ``resume_step`` are cut.

    Columns are the first row's keys; a later row with a new key (e.g. ``resampled``, logged only
    on resampling steps) adds that column, the file rewritten with it empty in earlier rows.
    """

    def __init__(self, path: str | Path, *, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.fields: list[str] | None = None
        if self.path.exists() and resume_step is not None:
            with self.path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if float(r["step"]) <= resume_step]
            if rows:
                self.fields = list(rows[0])
                self._rewrite(rows)
            else:
                self.path.unlink()
        elif self.path.exists():
            self.path.unlink()

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        assert self.fields is not None
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=self.fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        write_text(self.path, buf.getvalue())

    def __call__(self, row: dict[str, float]) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif self.fields is not None and any(k not in self.fields for k in row):
            with self.path.open(newline="") as f:
                rows = list(csv.DictReader(f))
            self.fields += [k for k in row if k not in self.fields]
            self._rewrite(rows)
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)


class WandbLogger:
    """Logs rows to wandb if the package is installed; raises a clear error otherwise."""

    def __init__(self, project: str, config: dict[str, Any], name: str | None = None) -> None:
        try:
            import wandb
        except ImportError as e:
            raise RuntimeError(
                "wandb logging asked for but wandb is not installed: pip install wandb "
                "(or pip install 'sparsecodes[wandb]')"
            ) from e
        # create_new: several coders trained in lockstep get one run each (wandb's default
        # returns the already-active run, so every coder would log into the first one)
        self.run = wandb.init(project=project, config=config, name=name, reinit="create_new")

    def __call__(self, row: dict[str, float]) -> None:
        self.run.log(row, step=int(row["step"]))

    def close(self) -> None:
        self.run.finish()


def require_tensorboard() -> None:
    """Raise a RuntimeError naming the fix if TensorBoard logging cannot work here."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as e:
        raise RuntimeError(
            f"TensorBoard logging asked for but tensorboard is not installed: {TENSORBOARD_FIX}"
        ) from e


class TensorBoardLogger:
    """Writes every numeric field of a row but ``step`` as a scalar ``train/<key>`` at that step.

    Event files go to ``log_dir`` (view with ``tensorboard --logdir DIR``). With ``resume_step``
    (a run continued from its checkpoint at that step) events logged past it by the interrupted
    run are hidden through TensorBoard's ``purge_step``, as :class:`CSVLogger` cuts its rows: the
    reloaded curves have each step once. A fresh run (``resume_step=None``) hides any older events
    in ``log_dir`` the same way. Pending events reach the disk at least every ``flush_secs``
    seconds (SummaryWriter's background thread), on :meth:`flush` and on :meth:`close`.
    """

    def __init__(
        self,
        log_dir: str | Path,
        *,
        resume_step: int | None = None,
        flush_secs: int = 10,
        prefix: str = "train/",
    ) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.prefix = prefix
        # SessionLog.START at purge_step hides every earlier-written event with step >= it; rows
        # up to and including the checkpoint's step stay (the resumed run does not log it again).
        purge = 0 if resume_step is None else int(resume_step) + 1
        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge, flush_secs=flush_secs)

    def __call__(self, row: dict[str, float]) -> None:
        step = int(row["step"])
        for key, value in row.items():
            if key == "step" or not isinstance(value, numbers.Real):
                continue
            self.writer.add_scalar(self.prefix + key, float(value), global_step=step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
