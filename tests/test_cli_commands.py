"""`sparsecodes encoders`, `cache` and `serve` end to end (tiny random llama)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import WORDS
from sparsecodes.activations import read_manifest, store_path
from sparsecodes.cli import main
from sparsecodes.data import batch_windows, load_texts, token_windows
from sparsecodes.encoders import available_encoders, get_encoder_class
from sparsecodes.interp import annotate
from sparsecodes.models import load_model
from sparsecodes.sparse_coder import SparseCoder

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def lm():
    return load_model("tiny-llama", device="cpu")


@pytest.fixture
def corpus(tmp_path) -> Path:
    g = torch.Generator().manual_seed(1)
    docs = [
        " ".join(WORDS[i] for i in torch.randint(len(WORDS), (20,), generator=g).tolist()) + "."
        for _ in range(30)
    ]
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(docs))
    return path


def test_encoders_lists_every_registered_encoder_with_its_parameters():
    r = CliRunner().invoke(main, ["encoders"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert [ln.split()[0] for ln in lines] == available_encoders()
    for line in lines:
        name, kind, params = re.match(r"(\S+)\s+(\S+)\s*(.*)$", line).groups()
        cls = get_encoder_class(name)
        assert kind == cls.kind
        fields = dataclasses.fields(cls.config_cls)
        assert params == ", ".join(f"{f.name}={f.default!r}" for f in fields), name
        assert fields  # every encoder has at least one parameter to list


def _store_rows(path: Path) -> np.ndarray:
    """Every row of a float32 store, in corpus order (shards in manifest order)."""
    m = read_manifest(path)
    return np.concatenate([np.load(path / s.file) for s in m.shards]).reshape(m.rows, -1)


def test_cache_stores_the_models_activations_at_the_hooks(lm, corpus, tmp_path):
    hooks = ["blocks.0.resid_post", "blocks.1.attn.heads"]
    ctx, batch, rows = 16, 4, 100
    args = ["cache", "--model", "tiny-llama", "--corpus", str(corpus), "--out", str(tmp_path)]
    args += ["--hook", hooks[0], "--hook", hooks[1], "--context-size", str(ctx)]
    args += ["--batch-size", str(batch), "--max-tokens", str(rows), "--dtype", "float32"]
    args += ["--shard-rows", "32", "--device", "cpu", "--no-progress"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"{rows} rows per hook ({rows} new")
    # the same windows through the model, batched as the cache batches them
    want: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    windows = token_windows(load_texts(str(corpus)), lm.tokenizer, ctx)
    for ids, keep in batch_windows(windows, batch):
        acts = lm.run(ids, hooks=hooks)
        for h in hooks:
            want[h].append(acts[h][keep].reshape(int(keep.sum()), -1))
        if sum(len(w) for w in want[hooks[0]]) >= rows:
            break
    for h in hooks:
        store = store_path(tmp_path, "tiny-llama", h)
        assert f"  {h}: {store}" in r.output
        m = read_manifest(store)
        assert (m.model, m.hook, m.rows, m.dtype) == ("tiny-llama", h, rows, "float32")
        assert m.shape == list(lm.hook_shape(h)) and len(m.shards) == 4  # 32 + 32 + 32 + 4
        got, ref = torch.from_numpy(_store_rows(store)), torch.cat(want[h])[:rows]
        # the caching forward's fused layers sum in another order: float32 rounding, two blocks
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
    # the same command again finds everything stored
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and again.output.startswith(f"{rows} rows per hook (0 new")


def test_cache_forward_workers_option_sets_the_threads_each_batch_is_split_over(
    corpus, tmp_path, monkeypatch
):
    from sparsecodes.activations import cache as cache_module

    asked: list[int | None] = []
    real = cache_module.cache_activations

    def record(*a, **kw):
        asked.append(kw["forward_workers"])
        return real(*a, **kw)

    monkeypatch.setattr(cache_module, "cache_activations", record)
    args = ["cache", "--model", "tiny-llama", "--corpus", str(corpus), "--hook"]
    args += ["blocks.0.resid_post", "--context-size", "16", "--max-tokens", "40", "--no-progress"]
    args += ["--device", "cpu", "--dtype", "float32"]
    runs = {}
    for label, extra in (("auto", []), ("three", ["--forward-workers", "3"])):
        r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / label), *extra])
        assert r.exit_code == 0, r.output
        runs[label] = _store_rows(store_path(tmp_path / label, "tiny-llama", "blocks.0.resid_post"))
    assert asked == [None, 3]
    scale = float(np.abs(runs["auto"]).max())  # float32 rounding of one block
    np.testing.assert_allclose(runs["three"], runs["auto"], rtol=0, atol=1e-5 * scale)
    bad = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "x"), "--forward-workers", "0"])
    assert bad.exit_code == 2 and "--forward-workers" in bad.output


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def test_serve_answers_its_json_api_then_stops_on_sigterm(lm, tmp_path):
    hook = "blocks.1.resid_post"
    coder = SparseCoder(lm.d_model, 24, "relu", seed=3)
    with torch.no_grad():
        coder.encoder.b_enc.fill_(-0.3)
    coder.train_config = {"source": {"model_name": "tiny-llama", "hook_name": hook}}
    coder.save(tmp_path / "sae")
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-u", "-c", "from sparsecodes.cli import main; main()"]
    cmd += ["serve", str(tmp_path / "sae"), "--port", "0", "--device", "cpu"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = []
        while not (m := re.search(r"at (http://127\.0\.0\.1:\d+/)", lines[-1] if lines else "")):
            line = p.stdout.readline()
            assert line, "".join(lines)  # the server died before printing its address
            lines.append(line)
        url = m.group(1)
        assert _get(url + "api/info") == {
            "model_name": "tiny-llama",
            "hook_name": hook,
            "n_latents": 24,
            "d_in": lm.d_model,
        }
        body = json.dumps({"text": "alpha beta gamma", "top_n": 3}).encode()
        req = urllib.request.Request(url + "api/annotate", data=body)
        with urllib.request.urlopen(req, timeout=60) as r:
            got = json.loads(r.read())
        want = annotate(coder, lm, hook, "alpha beta gamma", top_n=3).to_json()
        assert got["tokens"] == want["tokens"] and got["special"] == want["special"]
        assert [[j for j, _ in t] for t in got["latents"]] == [
            [j for j, _ in t] for t in want["latents"]
        ]
        for g_tok, w_tok in zip(got["latents"], want["latents"], strict=True):
            assert [a for _, a in g_tok] == pytest.approx([a for _, a in w_tok], abs=1e-4)
        assert sum(len(t) for t in got["latents"]) > 0
    finally:
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=60)
    assert p.returncode == 0 and "stopped" in out
