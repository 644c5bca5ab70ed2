"""The real-model demo pipeline, end to end on the tiny random llama (fast)."""

from __future__ import annotations

import json

import pytest

from conftest import require
from sparsecodes.experiments.demo import DemoConfig, format_table, run_demo


def test_demo_pipeline_tiny_model(tmp_path):
    cfg = DemoConfig(
        model="tiny-llama",
        hook="blocks.1.resid_post",
        train_tokens=4096,
        eval_tokens=512,
        n_latents=64,
        k=4,
        steps=20,
        batch_size=256,
        fista_iters=10,
        out=str(tmp_path / "demo"),
        device="cpu",
    )
    result = run_demo(cfg, echo=lambda *_: None)
    methods = [r["method"] for r in result["rows"]]
    assert methods[0].startswith("topk") and any("omp" in m for m in methods)
    by = {r["method"].split()[0]: r for r in result["rows"]}
    assert by["topk"]["l0"] == pytest.approx(4.0)
    assert by["omp"]["l0"] <= 4.0 + 1e-6
    for r in result["rows"]:
        assert 0.0 <= r["fvu"] < 1.5 and r["flops_per_token"] > 0
    saved = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert saved["rows"] == result["rows"]
    assert "FVU" in format_table(result)
    # a second run reuses the cache and the finished checkpoint
    again = run_demo(cfg, echo=lambda *_: None)
    assert again["rows"][0]["fvu"] == pytest.approx(result["rows"][0]["fvu"])


@pytest.mark.slow
@pytest.mark.embedded
def test_demo_smollm2_small(tmp_path):
    require("gguf")
    cfg = DemoConfig(
        train_tokens=4096,
        eval_tokens=512,
        steps=10,
        batch_size=512,
        fista_iters=10,
        out=str(tmp_path / "demo"),
        device="cpu",
    )
    result = run_demo(cfg, echo=lambda *_: None)
    assert len(result["rows"]) == 3
