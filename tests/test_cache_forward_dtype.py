"""``sparsecodes cache --forward-dtype bfloat16``: the tiny llama's activations against fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sparsecodes.cli import main

HOOK = "blocks.1.resid_post"


def _cache(out: Path, forward_dtype: str) -> np.ndarray:
    args = ["cache", "--model", "tiny-llama", "--hook", HOOK, "--max-tokens", "512",
            "--dtype", "float32", "--forward-dtype", forward_dtype, "--out", str(out),
            "--device", "cpu", "--no-progress"]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    shards = sorted((out / "tiny-llama" / HOOK).glob("shard-*.npy"))
    return np.concatenate([np.load(s) for s in shards])


@pytest.mark.slow  # three tiny-llama cache runs: ~100 s on the loaded 2-core machine
def test_bf16_forward_matches_fp32_activations_within_bf16_rounding(tmp_path):
    ref = _cache(tmp_path / "fp32", "float32")
    bf = _cache(tmp_path / "bf16", "bfloat16")
    assert ref.shape == bf.shape and ref.shape[0] == 512
    # bf16 keeps 8 significant bits (relative rounding 2^-9 per operation); through two blocks
    # of matmuls, norms and softmax the per-row error stays a few times that. Stated tolerance:
    # relative error of each row's vector under 2^-4, and over the whole store under 2^-5.
    err = np.linalg.norm(bf - ref, axis=1) / np.linalg.norm(ref, axis=1)
    total = np.linalg.norm(bf - ref) / np.linalg.norm(ref)
    assert err.max() < 2**-4 and total < 2**-5, (err.max(), total)
    assert total > 0  # the forward did run in bf16 (fp32 would match exactly)
    auto = _cache(tmp_path / "auto", "auto")  # this CPU: bf16 only with avx512_bf16/AMX
    from sparsecodes.devices import native_bf16

    assert np.array_equal(auto, bf if native_bf16("cpu") else ref)
