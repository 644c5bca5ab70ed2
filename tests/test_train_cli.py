"""`sparsecodes train` from stores and from a live model; resume checks refuse mismatches."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import sparsecodes as sc
from conftest import fake_store
from sparsecodes.cli import main


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
def test_train_live_two_hooks_one_pass(tmp_path):
    out = tmp_path / "live"
    r = _train(
        [
            "--model",
            "tiny-llama",
            "--hook",
            "blocks.0.resid_post",
            "--hook",
            "blocks.1.attn.heads",
            "--encoder",
            "topk",
            "--param",
            "k=4",
            "--n-latents",
            "64",
            "--steps",
            "4",
            "--batch-size",
            "256",
            "--out",
            str(out),
            "--no-saelens",
        ]
    )
    assert r.exit_code == 0, r.output
    for hook in ("blocks.0.resid_post", "blocks.1.attn.heads"):
        assert (out / hook / "topk" / "final" / "model.safetensors").exists()
