"""TensorBoard logging of training rows: what is written equals metrics.csv, also after a resume."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import sparsecodes as sc
from conftest import fake_store, require
from sparsecodes.activations import TensorSource
from sparsecodes.cli import main
from sparsecodes.training import TrainConfig
from sparsecodes.training.log import TensorBoardLogger
from sparsecodes.training.run import train_run


def _csv_rows(path: Path) -> list[dict[str, float]]:
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    require("tensorboard", reason="TensorBoard logging needs `pip install tensorboard`")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def _assert_matches_csv(log_dir: Path, csv_path: Path) -> None:
    rows = _csv_rows(csv_path)
    got = _scalars(log_dir)
    keys = [k for k in rows[0] if k != "step"]
    assert sorted(got) == sorted(f"train/{k}" for k in keys)
    for k in keys:
        events = got[f"train/{k}"]
        assert [s for s, _ in events] == [int(r["step"]) for r in rows], k
        for (step, value), r in zip(events, rows, strict=True):  # TensorBoard stores float32
            assert math.isclose(value, r[k], rel_tol=1e-6, abs_tol=1e-30), (k, step, value, r[k])


def test_train_cli_tensorboard_one_subdir_per_run(tmp_path):
    require("tensorboard", reason="TensorBoard logging needs `pip install tensorboard`")
    store = fake_store(tmp_path / "store")
    out, tb = tmp_path / "run", tmp_path / "tb"
    args = ["train", "--store", str(store), "--encoder", "topk", "--encoder", "relu"]
    args += ["--param", "k=4", "--n-latents", "32", "--steps", "12", "--batch-size", "256"]
    args += ["--checkpoint-every", "5", "--no-saelens", "--out", str(out), "--tensorboard", str(tb)]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tb.iterdir()) == [
        "blocks.0.resid_post-relu",
        "blocks.0.resid_post-topk",
    ]
    for enc in ("topk", "relu"):
        csv_path = out / "blocks.0.resid_post" / enc / "metrics.csv"
        assert len(_csv_rows(csv_path)) == 12  # log_every 1 for 12 steps
        _assert_matches_csv(tb / f"blocks.0.resid_post-{enc}", csv_path)


class _Crash(Exception):
    pass


def test_tensorboard_resume_hides_steps_past_checkpoint(tmp_path, small_problem):
    require("tensorboard", reason="TensorBoard logging needs `pip install tensorboard`")
    x, _, _ = small_problem
    run, tb = tmp_path / "run", tmp_path / "tb"
    cfg = TrainConfig(steps=20, lr=3e-3, batch_size=32, seed=0, log_every=1)

    on_disk: list[int] = []

    def crash_at_10(row: dict[str, float]) -> None:
        if row["step"] == 10:  # as if killed: what the checkpoint at 6 relies on must be on disk
            on_disk.extend(s for s, _ in _scalars(tb)["train/loss"])
            raise _Crash

    def coder() -> sc.SparseCoder:
        c = sc.SparseCoder(8, 16, "relu", l1=0.01, seed=0)
        c.normaliser.fit(x)
        return c

    with pytest.raises(_Crash):  # rows 1-10 logged, last checkpoint at step 6
        train_run(
            coder(),
            TensorSource(x, seed=0),
            cfg,
            run,
            checkpoint_every=6,
            loggers=[crash_at_10],
            tensorboard_dir=tb,
        )
    assert set(range(1, 7)) <= set(on_disk)  # flushed before the checkpoint was written
    first = _scalars(tb)["train/tokens_per_s"]
    assert [s for s, _ in first] == list(range(1, 11))  # closed (flushed) despite the crash

    train_run(coder(), TensorSource(x, seed=0), cfg, run, checkpoint_every=6, tensorboard_dir=tb)
    assert len(list(tb.glob("events.out.tfevents.*"))) == 2
    # Steps 7-10 of the crashed run are hidden: every step once, and tokens_per_s (which differs
    # between the two runs) from the resumed run for 7-20 and the crashed one for 1-6.
    _assert_matches_csv(tb, run / "metrics.csv")
    again = dict(_scalars(tb)["train/tokens_per_s"])
    assert all(again[s] == v for s, v in first[:6])


def test_tensorboard_fresh_run_hides_older_events(tmp_path):
    require("tensorboard", reason="TensorBoard logging needs `pip install tensorboard`")
    for scale in (1.0, 2.0):  # a second fresh run in the same directory replaces the first
        lg = TensorBoardLogger(tmp_path)
        for step in (1, 2, 3):
            lg({"step": float(step), "loss": scale * step, "note": "not a number"})  # type: ignore[dict-item]
        lg.close()
    assert _scalars(tmp_path) == {"train/loss": [(1, 2.0), (2, 4.0), (3, 6.0)]}


def test_tensorboard_missing_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(RuntimeError, match="pip install tensorboard"):
        TensorBoardLogger(tmp_path)
    store = fake_store(tmp_path / "store")
    r = CliRunner().invoke(
        main,
        [
            "train",
            "--store",
            str(store),
            "--steps",
            "2",
            "--out",
            str(tmp_path / "r"),
            "--tensorboard",
            str(tmp_path / "tb"),
        ],
    )
    assert r.exit_code != 0 and "pip install tensorboard" in r.output
    assert not (tmp_path / "r").exists()  # refused before training


def test_wandb_gives_each_coder_its_own_run(tmp_path, monkeypatch):
    wandb = require("wandb", reason="wandb is not installed")
    from sparsecodes.training.log import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    a = WandbLogger("sparsecodes-test", {"encoder": "topk"}, name="a")
    b = WandbLogger("sparsecodes-test", {"encoder": "relu"}, name="b")
    try:
        assert a.run.id != b.run.id and (a.run.name, b.run.name) == ("a", "b")
        assert b.run.config["encoder"] == "relu"
        a({"step": 1, "loss": 1.0})
        b({"step": 1, "loss": 2.0})
    finally:
        a.close()
        b.close()
    assert wandb.run is None
