"""`sparsecodes train --eval-every N`: CE/KL splice scores logged during training (tiny llama)."""

from __future__ import annotations

import csv
import math

import torch
from click.testing import CliRunner
from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook

from conftest import fake_store
from sparsecodes import SparseCoder
from sparsecodes.cli import main
from sparsecodes.evaluation.during_training import splice_monitor
from sparsecodes.evaluation.gap import Method, reconstructor
from sparsecodes.evaluation.splice import Variant, downstream_scores, zero_ablation
from sparsecodes.models import load_model

HOOK = "blocks.1.resid_post"


def _direct(lm, monitor, coder):
    ds = downstream_scores(
        lm,
        HOOK,
        monitor.windows,
        {"sae": Variant(reconstructor(coder, Method("sae"))), "zero": Variant(zero_ablation)},
    )
    return ds.ce_loss_score("sae"), ds.kl_score("sae")


def test_monitor_caches_baseline_and_equals_downstream_scores():
    """First call: clean + spliced + zero passes; later calls: clean + spliced only; the scores
    equal a direct downstream_scores call with the zero variant on the same windows."""
    lm = load_model("tiny-llama", device="cpu")
    monitor = splice_monitor(lm, HOOK, eval_tokens=60, context_size=16)
    n_batches = math.ceil(len(monitor.windows) / monitor.batch_size)
    coder = SparseCoder(64, 64, "topk", k=4, seed=0).eval()
    calls = [0]

    def count(module, _args):
        calls[0] += isinstance(module, nn.Embedding)

    handle = register_module_forward_pre_hook(count)
    try:
        first = monitor(1, coder)
        after_first = calls[0]
        with torch.no_grad():
            coder.encoder.W_enc.mul_(2.0)  # a different coder state
        second = monitor(2, coder)
    finally:
        handle.remove()
    assert after_first == 3 * n_batches
    assert calls[0] - after_first == 2 * n_batches
    want = _direct(lm, monitor, coder)
    assert second == {"ce_loss_score": want[0], "kl_score": want[1]}
    assert first["ce_loss_score"] != second["ce_loss_score"]


def test_train_eval_every_logs_scores_every_n_steps(tmp_path):
    """Rows at steps 3 and 6 of 6 carry ce_loss_score/kl_score (CSV cells empty elsewhere), and
    the last equals downstream_scores of the final coder on the same held-out slice."""
    out = tmp_path / "run"
    args = ["train", "--model", "tiny-llama", "--hook", HOOK, "--encoder", "topk"]
    args += ["--param", "k=4", "--n-latents", "64", "--steps", "6", "--batch-size", "64"]
    args += ["--context-size", "16", "--device", "cpu", "--no-saelens"]
    args += ["--eval-every", "3", "--eval-tokens", "60", "--out", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    with (out / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(float(r["step"])) for r in rows] == [1, 2, 3, 4, 5, 6]
    scored = [int(float(r["step"])) for r in rows if r["ce_loss_score"] != ""]
    assert scored == [3, 6]
    assert all((r["kl_score"] != "") == (r["ce_loss_score"] != "") for r in rows)
    coder = SparseCoder.load(out / "final")  # the coder state at step 6
    lm = load_model("tiny-llama", device="cpu")
    monitor = splice_monitor(lm, HOOK, eval_tokens=60, context_size=16)
    ce, kl = _direct(lm, monitor, coder)
    # the CSV writes repr(float), which round-trips exactly; rtol covers a save/load of the
    # weights only (float32 values are stored exactly, so in practice the match is exact)
    assert abs(float(rows[-1]["ce_loss_score"]) - ce) <= 1e-6 * abs(ce)
    assert abs(float(rows[-1]["kl_score"]) - kl) <= 1e-6 * abs(kl)
    assert float(rows[2]["ce_loss_score"]) != float(rows[-1]["ce_loss_score"])


def test_eval_every_on_a_store_of_an_unknown_model_names_the_flag(tmp_path):
    store = fake_store(tmp_path / "store")  # records model "fake"
    args = ["train", "--store", str(store), "--encoder", "topk", "--param", "k=2"]
    args += ["--steps", "4", "--batch-size", "64", "--device", "cpu", "--no-saelens"]
    r = CliRunner().invoke(main, [*args, "--eval-every", "2", "--out", str(tmp_path / "run")])
    assert r.exit_code == 2, r.output
    assert "--eval-every" in r.output and "'fake'" in r.output
    assert not (tmp_path / "run" / "metrics.csv").exists()
