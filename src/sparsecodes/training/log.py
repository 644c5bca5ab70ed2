"""Per-run metric logs: a CSV file (always) and Weights & Biases (when installed and asked)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


class CSVLogger:
    """Appends one row per logged step to ``path``; on resume, rows past ``resume_step`` are cut.

    Columns are fixed by the first row written; later keys not in it are dropped.
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
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        tmp.replace(self.path)

    def __call__(self, row: dict[str, float]) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
            self.path.parent.mkdir(parents=True, exist_ok=True)
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
                "wandb logging asked for but wandb is not installed: pip install wandb"
            ) from e
        self.run = wandb.init(project=project, config=config, name=name)

    def __call__(self, row: dict[str, float]) -> None:
        self.run.log(row, step=int(row["step"]))
