"""The real-model demo pipeline, end to end on the tiny random llama (fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import require
from sparsecodes.activations import StoreSource
from sparsecodes.experiments.demo import DemoConfig, format_table, run_demo
from sparsecodes.sparse_coder import SparseCoder


def _fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Fraction of variance unexplained about the mean, in float64."""
    xd, hd = x.double(), x_hat.double()
    return float((xd - hd).pow(2).sum() / (xd - xd.mean(0)).pow(2).sum())


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` -> (inode, mtime_ns): a rewritten file changes one of them."""
    return {
        str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_demo_pipeline_tiny_model(tmp_path, embedded_windows):
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
    assert embedded_windows[0] > 0  # the model ran to fill the caches
    methods = [r["method"] for r in result["rows"]]
    assert methods == ["topk (SAE encoder)", "omp k=4", "fista warm, 10 it"]
    sae_row, omp_row, fista_row = result["rows"]
    # every row's FVU and L0, recomputed from the saved SAE on the held-out store
    sae = SparseCoder.load(result["files"]["sae"])
    src = StoreSource(result["files"]["eval_store"], seed=0)
    assert len(src) == cfg.eval_tokens
    x, _ = next(src.batches(len(src)))
    z_sae = sae.encode(x)
    z_omp = sae.encode(x, inference="omp", **omp_row["params"])
    z_fista = sae.encode(x, inference="fista", warm_start=True, **fista_row["params"])
    assert fista_row["params"]["l1"] == result["fista_l1"]
    for row, z in ((sae_row, z_sae), (omp_row, z_omp), (fista_row, z_fista)):
        # the same computation batched differently: float32 rounding only
        assert row["fvu"] == pytest.approx(_fvu(x, sae.decode(z)), rel=1e-4), row["method"]
        assert row["l0"] == pytest.approx(float((z != 0).sum(1).double().mean()), abs=1e-9)
    assert sae_row["l0"] == 4.0 and omp_row["l0"] <= 4.0
    dead = 100.0 * float(((z_sae != 0).sum(0) == 0).float().mean())
    assert result["sae_dead_pct_heldout"] == pytest.approx(dead)
    saved = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert saved["rows"] == result["rows"]
    assert "FVU" in format_table(result)

    # a second run reuses the caches and the finished checkpoint: no forward pass, no shard and
    # no checkpoint file rewritten (manifests, logs and final/ may be rewritten, same weights)
    demo = tmp_path / "demo"
    kept = {**_files(demo / "cache"), **_files(demo / "sae" / "checkpoint")}
    kept = {k: v for k, v in kept.items() if not k.endswith("manifest.json")}
    assert sum(k.endswith(".npy") for k in kept) == 2 and any("trainer" in k for k in kept)
    weights = (demo / "sae" / "final" / "model.safetensors").read_bytes()
    embedded_windows[0] = 0
    again = run_demo(cfg, echo=lambda *_: None)
    assert embedded_windows[0] == 0
    now = {**_files(demo / "cache"), **_files(demo / "sae" / "checkpoint")}
    assert {k: now[k] for k in kept} == kept and len(now) == len(kept) + 2
    assert (demo / "sae" / "final" / "model.safetensors").read_bytes() == weights
    for a, b in zip(again["rows"], result["rows"], strict=True):
        assert (a["method"], a["fvu"], a["l0"], a["params"]) == (
            b["method"],
            b["fvu"],
            b["l0"],
            b["params"],
        )
    assert again["cache_tokens_per_s"] == 0.0


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
