"""A training run killed with SIGKILL and started again ends with the same weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

import sparsecodes as sc

SCRIPT = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    import sparsecodes as sc
    from sparsecodes.activations import TensorSource
    from sparsecodes.training import TrainConfig
    from sparsecodes.training.run import train_run
    x = torch.load(sys.argv[1])
    coder = sc.SparseCoder(8, 16, "relu", l1=0.01, seed=0)
    coder.normaliser.fit(x)
    cfg = TrainConfig(steps=int(sys.argv[3]), lr=3e-3, batch_size=32, seed=0, log_every=5)
    train_run(coder, TensorSource(x, seed=0), cfg, sys.argv[2], checkpoint_every=3)
    print("DONE")
    """
)


def _run(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *args], env=env, **kw)


def test_kill_and_resume_gives_same_weights(tmp_path: Path, small_problem):
    x, _, _ = small_problem
    data = tmp_path / "x.pt"
    torch.save(x, data)
    steps = "600"
    ref = _run([str(data), str(tmp_path / "ref"), steps])
    assert ref.wait(timeout=300) == 0

    run = tmp_path / "killed"
    log = run / "metrics.csv"
    for rows_before_kill in (20, 50):  # kill twice, at different points, mid-run
        p = _run([str(data), str(run), steps])
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None:
            if log.exists() and len(log.read_text().splitlines()) > rows_before_kill:
                break
            time.sleep(0.005)
        assert p.poll() is None, "the run finished before it could be killed; raise steps"
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert (run / "checkpoint").exists() or (run / ".checkpoint.old").exists()
    p = _run([str(data), str(run), steps])
    assert p.wait(timeout=300) == 0

    a = sc.SparseCoder.load(tmp_path / "ref" / "final")
    b = sc.SparseCoder.load(run / "final")
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), k
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    steps_logged = [float(r.split(",")[0]) for r in rows[1:]]
    assert steps_logged == sorted(set(steps_logged)), "CSV has duplicated or unordered steps"
