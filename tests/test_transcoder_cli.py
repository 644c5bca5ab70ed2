"""`sparsecodes train --transcoder`: (input, output) pairs from one live stream, transcoders per
layer and a crosscoder, and the rows of a pair being the same tokens on both sides."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import sparsecodes as sc
from conftest import live_stream_windows
from sparsecodes.activations.live import LiveModelSource
from sparsecodes.cli import main
from sparsecodes.cli.train import transcoder_pairs
from sparsecodes.data import load_texts
from sparsecodes.models import load_model
from sparsecodes.training.jobs import NORMALISER_SAMPLE_ROWS
from sparsecodes.transcoder import Transcoder


@pytest.fixture
def torch_gemm():
    """Every matmul through torch (bit-equality below needs the same BLAS calls)."""
    from sparsecodes.kernels import gemm

    before = gemm.gemm_backend()
    gemm.set_gemm_backend("torch")
    yield
    gemm.set_gemm_backend(before)


def test_pair_source_rows_are_the_same_tokens(torch_gemm):
    lm = load_model("tiny-llama", device="cpu")
    hooks = ["blocks.1.mlp_in", "blocks.1.mlp_out", "blocks.0.mlp_in", "blocks.0.mlp_out"]
    # one pass on this thread's torch threads, as mlp(x) below: bit-equality needs the same BLAS
    # calls (a forward split over one-thread workers differs by float32 rounding)
    texts = list(load_texts(None))[:200]
    live = LiveModelSource(lm, texts, hooks, context_size=32, forward_workers=1)
    pair = live.pair_source(["blocks.1.mlp_in"], ["blocks.1.mlp_out"])
    cross = live.pair_source(["blocks.0.mlp_in", "blocks.1.mlp_in"], ["blocks.1.mlp_out"])
    assert (pair.d_in, pair.d_out, cross.d_in) == (64, 64, 128)
    for (x, y), (xc, yc) in zip(pair.batches(700), cross.batches(700), strict=False):
        with torch.no_grad():  # mlp(mlp_in) == mlp_out holds exactly only row by row aligned
            assert torch.equal(lm.blocks[1].mlp(x), y)
        assert torch.equal(xc[:, 64:], x) and torch.equal(yc, y)
        assert not torch.equal(xc[:, :64], x)
        break


def test_transcoder_pairs_expand_layers_and_crosscoder():
    spec = ("blocks.{i}.mlp_in:blocks.{i}.mlp_out",)
    assert transcoder_pairs(spec, "0-1,3", False) == (
        (("blocks.0.mlp_in",), ("blocks.0.mlp_out",)),
        (("blocks.1.mlp_in",), ("blocks.1.mlp_out",)),
        (("blocks.3.mlp_in",), ("blocks.3.mlp_out",)),
    )
    ((ins, outs),) = transcoder_pairs(spec, "0-1", True)
    assert ins == ("blocks.0.mlp_in", "blocks.1.mlp_in")
    assert outs == ("blocks.0.mlp_out", "blocks.1.mlp_out")


@pytest.mark.slow
def test_train_transcoders_for_two_layers_share_forward_passes(tmp_path, embedded_windows):
    steps, batch, ctx = 30, 256, 128  # a batch spans at most two passes (LiveModelSource)
    want = live_stream_windows(ctx, NORMALISER_SAMPLE_ROWS, steps * batch)
    args = ["train", "--model", "tiny-llama", "--device", "cpu", "--context-size", str(ctx)]
    args += ["--transcoder", "blocks.{i}.mlp_in:blocks.{i}.mlp_out", "--layers", "0-1", "--skip"]
    args += ["--encoder", "batchtopk", "--param", "k=8", "--n-latents", "128"]
    args += ["--steps", str(steps), "--batch-size", str(batch), "--out", str(tmp_path / "tc")]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert embedded_windows[0] == want  # two transcoders, the forward passes of one
    for i in (0, 1):
        run = tmp_path / "tc" / f"blocks.{i}.mlp_in__blocks.{i}.mlp_out" / "batchtopk"
        tc = sc.load(run)
        assert isinstance(tc, Transcoder) and tc.skip is not None
        assert (tc.in_hook, tc.out_hook) == (f"blocks.{i}.mlp_in", f"blocks.{i}.mlp_out")
        assert json.loads((run / "run.json").read_text())["source"]["hook_name_out"] == tc.out_hook
        sl = sc.load(run / "final_saelens")
        x = torch.randn(20, 64)
        torch.testing.assert_close(sl.forward_out(x), tc.forward_out(x), atol=1e-5, rtol=1e-5)


def test_train_crosscoder_cli(tmp_path):
    args = ["train", "--model", "tiny-llama", "--device", "cpu", "--context-size", "32"]
    args += ["--transcoder", "blocks.{i}.resid_post:blocks.{i}.mlp_out", "--layers", "0-2"]
    args += ["--crosscoder", "--encoder", "topk", "--param", "k=4", "--n-latents", "64"]
    args += ["--steps", "3", "--batch-size", "64", "--no-saelens", "--out", str(tmp_path / "cc")]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    cc = sc.load(tmp_path / "cc")
    assert cc.is_crosscoder and cc.in_widths == (64, 64, 64) and cc.out_widths == (64, 64, 64)
    assert cc.out_hooks == tuple(f"blocks.{i}.mlp_out" for i in range(3))


def test_transcoder_cli_errors(tmp_path):
    base = ["train", "--model", "tiny-llama", "--out", str(tmp_path / "x"), "--steps", "1"]
    r = CliRunner().invoke(main, [*base, "--transcoder", "blocks.{i}.mlp_in"])
    assert r.exit_code != 0 and "is not IN:OUT" in r.output
    r = CliRunner().invoke(main, [*base, "--transcoder", "blocks.{i}.mlp_in:blocks.{i}.mlp_out"])
    assert r.exit_code != 0 and "needs --layers" in r.output
    r = CliRunner().invoke(
        main, [*base, "--transcoder", "blocks.0.mlp_in:blocks.0.mlp_out", "--encoder", "fista"]
    )
    assert r.exit_code != 0 and "cannot train a transcoder" in r.output
    r = CliRunner().invoke(main, [*base, "--hook", "blocks.0.mlp_out", "--skip"])
    assert r.exit_code != 0 and "--skip" in r.output
