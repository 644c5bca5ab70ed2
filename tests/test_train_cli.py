"""`sparsecodes train` from stores and from a live model; resume checks refuse mismatches."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from click.testing import CliRunner

import sparsecodes as sc
from conftest import fake_store, live_stream_windows
from sparsecodes.cli import main
from sparsecodes.training.jobs import NORMALISER_SAMPLE_ROWS


def _train(args: list[str]):
    return CliRunner().invoke(main, ["train", *args], catch_exceptions=False)


def test_train_from_store_writes_run(tmp_path):
    store = fake_store(tmp_path / "store")
    out = tmp_path / "run"
    r = _train(
        [
            "--store",
            str(store),
            "--encoder",
            "topk",
            "--param",
            "k=4",
            "--n-latents",
            "32",
            "--steps",
            "12",
            "--batch-size",
            "256",
            "--checkpoint-every",
            "5",
            "--out",
            str(out),
        ]
    )
    assert r.exit_code == 0, r.output
    m = sc.SparseCoder.load(out / "final")
    assert m.encoder.name == "topk" and m.n_latents == 32
    assert (out / "metrics.csv").read_text().count("\n") >= 2
    run = json.loads((out / "run.json").read_text())
    assert run["source"]["hook_name"] == "blocks.0.resid_post"
    assert (out / "final_saelens" / "cfg.json").exists()


def test_train_refuses_param_no_encoder_takes(tmp_path):
    store = fake_store(tmp_path / "store")
    r = CliRunner().invoke(
        main,
        [
            "train",
            "--store",
            str(store),
            "--encoder",
            "relu",
            "--param",
            "k=4",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert r.exit_code != 0 and "k fits none of the encoders" in r.output


def test_resume_with_other_settings_refused(tmp_path):
    store = fake_store(tmp_path / "store")
    out = tmp_path / "run"
    base = [
        "--store",
        str(store),
        "--n-latents",
        "32",
        "--batch-size",
        "128",
        "--out",
        str(out),
        "--checkpoint-every",
        "2",
        "--no-saelens",
    ]
    assert _train([*base, "--encoder", "topk", "--param", "k=4", "--steps", "4"]).exit_code == 0
    r = CliRunner().invoke(
        main, ["train", *base, "--encoder", "topk", "--param", "k=8", "--steps", "6"]
    )
    assert r.exit_code != 0
    assert "encoder_config" in r.output and "new run dir" in r.output


@pytest.mark.slow
def test_train_live_two_hooks_two_encoders_one_pass(tmp_path, embedded_windows):
    """Four coders (two hooks x two encoders) on one live stream cost the forward passes of one."""
    steps, batch, ctx = 40, 256, 128
    # the normaliser's sample (every hook at once), then the training batches
    want = live_stream_windows(ctx, NORMALISER_SAMPLE_ROWS, steps * batch)
    assert live_stream_windows(ctx, 2 * steps * batch) > live_stream_windows(ctx, steps * batch)
    hooks = ("blocks.0.resid_post", "blocks.1.attn.heads")
    args = ["--model", "tiny-llama", "--hook", hooks[0], "--hook", hooks[1]]
    encs = ("topk", "batchtopk")
    args += ["--encoder", encs[0], "--encoder", encs[1], "--param", "k=4"]
    args += ["--n-latents", "64", "--steps", str(steps), "--batch-size", str(batch)]
    args += ["--context-size", str(ctx), "--device", "cpu", "--no-saelens"]
    r = _train([*args, "--out", str(tmp_path / "live")])
    assert r.exit_code == 0, r.output
    assert embedded_windows[0] == want
    for hook in hooks:  # both coders of a hook: one normaliser sample, so one scale
        a, b = (sc.SparseCoder.load(tmp_path / "live" / hook / e / "final") for e in encs)
        assert (a.encoder.name, b.encoder.name) == encs
        assert a.normaliser.scale == b.normaliser.scale


def _resample_run(tmp_path, name: str, *flags: str) -> tuple[list[dict], dict]:
    """20 steps of TopK k=1 with 64 latents on a 16-d store, every step logged; returns the rows
    of metrics.csv and run.json's train config."""
    store = tmp_path / "store"
    if not store.exists():
        fake_store(store)
    out = tmp_path / name
    args = ["--store", str(store), "--param", "k=1", "--n-latents", "64", "--steps", "20"]
    args += ["--batch-size", "32", "--checkpoint-every", "0", "--no-saelens", "--out", str(out)]
    r = _train([*args, *flags])
    assert r.exit_code == 0, r.output
    with (out / "metrics.csv").open(newline="") as f:
        rows = [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    return rows, json.loads((out / "run.json").read_text())["train"]


def test_resample_flags_reach_the_trainer_and_resample(tmp_path):
    off, cfg_off = _resample_run(tmp_path, "off")
    assert cfg_off["resample_every"] == 0
    assert not any("resampled" in row for row in off)

    hist, cfg = _resample_run(
        tmp_path, "on", "--resample-every", "5", "--resample-window", "3", "--resample-scale", "0.5"
    )
    assert (cfg["resample_every"], cfg["resample_window"], cfg["resample_scale"]) == (5, 3, 0.5)
    counts = {
        int(float(row["step"])): int(float(row["resampled"])) for row in hist if "resampled" in row
    }
    # every 5th step and only then: 4 resampling points in 20 steps
    assert sorted(counts) == [5, 10, 15, 20]
    # k=1 of 64 latents: some are silent for 3 steps by step 5 and get resampled
    assert counts[5] > 0

    # a window longer than the run: no latent has been silent long enough, nothing resampled
    hist_w, _ = _resample_run(tmp_path, "long", "--resample-every", "5", "--resample-window", "50")
    counts_w = {
        int(float(row["step"])): int(float(row["resampled"]))
        for row in hist_w
        if "resampled" in row
    }
    assert counts_w == {5: 0, 10: 0, 15: 0, 20: 0}


def test_resample_flag_refuses_negative_by_name(tmp_path):
    store = fake_store(tmp_path / "store")
    r = CliRunner().invoke(main, ["train", "--store", str(store), "--resample-every", "-1"])
    assert r.exit_code == 2 and "--resample-every" in r.output


def test_autocast_flag_sets_the_step_precision(tmp_path):
    """--autocast reaches TrainConfig: 'off' and 'auto' (fp32 on a CPU) give the same weights,
    'bf16' rounds each step's matmul inputs to bfloat16, so its weights differ (by bf16
    rounding, not more); run.json records the choice."""
    store = fake_store(tmp_path / "store")
    weights, modes = {}, {}
    for mode in ("off", "auto", "bf16"):
        out = tmp_path / mode
        args = ["--store", str(store), "--param", "k=4", "--n-latents", "32", "--steps", "8"]
        args += ["--batch-size", "64", "--checkpoint-every", "0", "--no-saelens"]
        r = _train([*args, "--autocast", mode, "--device", "cpu", "--out", str(out)])
        assert r.exit_code == 0, r.output
        weights[mode] = sc.SparseCoder.load(out / "final").W_dec.detach()
        modes[mode] = json.loads((out / "run.json").read_text())["train"]["autocast"]
        assert weights[mode].dtype == torch.float32  # fp32 master weights in every mode
    assert modes == {"off": "off", "auto": "auto", "bf16": "bf16"}
    assert torch.equal(weights["off"], weights["auto"])
    diff = (weights["bf16"] - weights["off"]).norm() / weights["off"].norm()
    # 8 Adam steps at lr 1e-3 move each unit-norm atom by ~1e-2; bf16 rounding of the inputs
    # (relative 2^-9) perturbs the updates, not the atoms: a small, nonzero change
    assert 0 < diff < 1e-2, diff


def test_autocast_flag_refuses_other_values_by_name(tmp_path):
    store = fake_store(tmp_path / "store")
    r = CliRunner().invoke(main, ["train", "--store", str(store), "--autocast", "fp16"])
    assert r.exit_code == 2 and "--autocast" in r.output
    from sparsecodes.cli.train import train
    from sparsecodes.training.trainer import AUTOCAST_MODES

    opt = next(p for p in train.params if p.name == "autocast")
    assert tuple(opt.type.choices) == AUTOCAST_MODES  # the CLI offers exactly the trainer's modes


def test_parallel_flag_offers_exactly_the_job_modes():
    from sparsecodes.cli.train import train
    from sparsecodes.training.jobs import PARALLEL_MODES

    opt = next(p for p in train.params if p.name == "parallel")
    assert tuple(opt.type.choices) == PARALLEL_MODES  # one list of modes, checked in both places
