"""Kill-and-resume: a store written by a job SIGKILLed at any moment and restarted is
byte-identical to one written without interruption; and the cache pipeline's resume logic."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import sparsecodes.activations.store as store_mod
from sparsecodes.activations.cache import CacheResult, cache_activations, store_path
from sparsecodes.activations.reader import StoreSource
from sparsecodes.activations.store import StoreMismatchError, read_manifest

TESTS_DIR = Path(__file__).parent


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process writes skip fsync (slow on a busy disk); the SIGKILL children keep it."""
    monkeypatch.setattr(store_mod, "DURABLE", False)


def store_snapshot(path: Path) -> dict[str, bytes]:
    """Every shard file's bytes plus the shard list, rows and completeness of the manifest."""
    m = read_manifest(path)
    snap = {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.name != "manifest.json"}
    snap["manifest"] = repr(([(s.file, s.rows, s.sha256) for s in m.shards], m.rows, m.complete))
    return snap


def assert_same_store(a: Path, b: Path) -> None:
    sa, sb = store_snapshot(a), store_snapshot(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k] == sb[k], f"{k} differs"


# ----------------------------------------------------------------- writer-level SIGKILL tests

# A deterministic producer: batch b is a function of b alone. The child runs it after loading
# store.py on its own (numpy and sparsecodes.files only, no torch import, so it starts fast);
# resumes run in-process.
PRODUCER = textwrap.dedent(
    """
    import time
    import numpy as np

    def produce(store, out, n_batches):
        w = store.StoreWriter(out, model="m", hook="h", shape=(6,), dtype="float16",
                              corpus_fingerprint="fp", context_size=8, shard_rows=16)
        print("ready", flush=True)
        row = 0
        for b in range(n_batches):
            rng = np.random.default_rng(b)
            x = rng.standard_normal((int(rng.integers(0, 9)), 6)).astype(np.float32)
            w.append(x, start_row=row)
            row += len(x)
            time.sleep(0.001)
        w.close(complete=True)
    """
)

WRITER_CHILD = PRODUCER + textwrap.dedent(
    """
    import importlib.util, os, signal, sys, types
    # store.py imports sparsecodes.files (stdlib only): load it without the package's __init__
    # (which imports torch), so the child starts in about a second
    pkg = types.ModuleType("sparsecodes")
    pkg.__path__ = [os.path.dirname(os.path.dirname(os.path.abspath(sys.argv[1])))]
    sys.modules["sparsecodes"] = pkg
    spec = importlib.util.spec_from_file_location("store_under_test", sys.argv[1])
    store = importlib.util.module_from_spec(spec)
    sys.modules["store_under_test"] = store
    spec.loader.exec_module(store)

    out, n_batches, kill_at, when = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    calls = [0]
    real_replace = os.replace

    def replace(a, b):  # SIGKILL ourselves around the kill_at-th rename, if asked
        if calls[0] == kill_at and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(a, b)
        if calls[0] == kill_at and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        calls[0] += 1

    os.replace = replace
    produce(store, out, n_batches)
    """
)


def produce(out: Path, n_batches: int) -> None:
    """Run the producer to completion in this process."""
    ns: dict = {}
    exec(PRODUCER, ns)
    with contextlib.redirect_stdout(io.StringIO()):
        ns["produce"](store_mod, out, n_batches)


def run_writer(
    script: Path, out: Path, n_batches: int, kill_at: int = -1, when: str = "-", delay=None
) -> int:
    """Run the writer child; kill it ``delay`` s after it is ready, if given."""
    cmd = [sys.executable, str(script), store_mod.__file__, str(out), str(n_batches)]
    p = subprocess.Popen([*cmd, str(kill_at), when], stdout=subprocess.PIPE, text=True)
    if delay is not None:
        p.stdout.readline()  # "ready"
        time.sleep(delay)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
    p.communicate()
    return p.returncode


@pytest.fixture
def writer_script(tmp_path: Path) -> Path:
    script = tmp_path / "writer_child.py"
    script.write_text(WRITER_CHILD)
    return script


def test_sigkill_at_random_moments_then_resume_is_byte_identical(
    tmp_path: Path, writer_script: Path
) -> None:
    ref = tmp_path / "ref"
    produce(ref, 200)
    assert read_manifest(ref).complete and len(read_manifest(ref).shards) > 20
    rng = np.random.default_rng(12345)
    out = tmp_path / "killed"
    kills = 0
    for _ in range(5):  # repeated random kills, each restart resuming the previous one
        rc = run_writer(writer_script, out, 200, delay=float(rng.uniform(0.0, 0.25)))
        if rc == 0:
            break
        assert rc == -signal.SIGKILL
        kills += 1
        m = read_manifest(out)  # whatever moment it died, the store on disk is a valid prefix
        assert all(s.rows == 16 for s in m.shards)
        store_mod.verify_store(out)
    assert kills >= 3
    produce(out, 200)
    assert_same_store(ref, out)


def test_sigkill_around_each_rename_then_resume_is_byte_identical(
    tmp_path: Path, writer_script: Path
) -> None:
    ref = tmp_path / "ref"
    produce(ref, 40)
    # renames: 0 = initial manifest, 1 = first shard, 2 = its manifest, ...
    # before 1: shard tmp left over; after 1: shard not in manifest; before/after 2: manifest
    for kill_at, when in [(1, "before"), (1, "after"), (2, "before"), (2, "after")]:
        out = tmp_path / f"k{kill_at}{when}"
        assert run_writer(writer_script, out, 40, kill_at, when) == -signal.SIGKILL
        produce(out, 40)
        assert_same_store(ref, out)
    # extending a finished store replaces its short last shard: kill around that too
    big = tmp_path / "big"
    produce(big, 90)
    for kill_at, when in [(1, "after"), (2, "after")]:
        out = tmp_path / f"ext{kill_at}{when}"
        produce(out, 40)
        assert read_manifest(out).shards[-1].rows < 16
        assert run_writer(writer_script, out, 90, kill_at, when) == -signal.SIGKILL
        produce(out, 90)
        assert_same_store(big, out)


# ------------------------------------------------------------------ the cache pipeline itself

HOOKS = ["blocks.0.resid_post", "blocks.1.attn.heads"]


class FakeAdapter:
    """A deterministic stand-in for a ModelAdapter: activations are a fixed function of ids."""

    name = "fake-model"
    tokenizer = None
    device = "cpu"

    def __init__(self, delay: float = 0.0) -> None:
        g = torch.Generator().manual_seed(0)
        self.emb = torch.randn(50, 6, generator=g)
        self.head = torch.randn(50, 2, 3, generator=g)
        self.delay = delay
        self.calls = 0

    def hook_points(self) -> list[str]:
        return [*HOOKS, "blocks.1.resid_post"]

    def hook_shape(self, hook: str) -> tuple[int, ...]:
        return (2, 3) if hook.endswith("heads") else (6,)

    def run(self, ids, attention_mask=None, hooks=()):
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        resid = self.emb[ids].cumsum(dim=1) * 0.5 + torch.sin(ids.float())[..., None]
        heads = self.head[ids] * torch.arange(ids.shape[1]).float()[None, :, None, None]
        acts = {"blocks.0.resid_post": resid, "blocks.1.attn.heads": heads}
        return {h: acts[h] for h in hooks}


def fake_windows(n: int = 60, t: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Windows of ids with keep False at position 0 (BOS) and at id 0 (a 'special' token)."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 50, (t,), generator=g)
        keep = ids != 0
        keep[0] = False
        out.append((ids, keep))
    return out


def run_job(out: Path, *, delay: float = 0.0, adapter=None, **kw) -> CacheResult:
    kw = {"context_size": 16, "batch_size": 4, "shard_rows": 32, "dtype": "float16", **kw}
    return cache_activations(
        adapter or FakeAdapter(delay),
        texts=[],
        hooks=kw.pop("hooks", HOOKS),
        out_dir=out,
        corpus_fingerprint=kw.pop("corpus_fingerprint", "fake-corpus"),
        windows=kw.pop("windows", fake_windows()),
        progress=False,
        **kw,
    )


def test_cache_writes_kept_rows_of_every_hook(tmp_path: Path) -> None:
    res = run_job(tmp_path / "out")
    wins = fake_windows()
    n_keep = sum(int(k.sum()) for _, k in wins)
    assert res.rows == n_keep and res.complete and res.corpus_exhausted
    a = FakeAdapter()
    ids = torch.stack([i for i, _ in wins])
    keep = torch.stack([k for _, k in wins])
    for h in HOOKS:
        m = read_manifest(res.stores[h])
        assert m.rows == n_keep and m.hook == h and m.model == "fake-model"
        assert m.shape == list(a.hook_shape(h)) and m.info["batch_size"] == 4
        want = a.run(ids, hooks=[h])[h][keep].to(torch.float16).float().reshape(n_keep, -1)
        src = StoreSource(res.stores[h], shuffle_buffer_shards=100)
        got = next(src.batches(n_keep))[0]
        # the reader shuffles: compare as multisets of rows
        key = lambda t: t[torch.argsort(t[:, 0] * 1e4 + t[:, 1])]  # noqa: E731
        torch.testing.assert_close(key(got), key(want), rtol=0, atol=0)
    assert res.stores[HOOKS[0]] == store_path(tmp_path / "out", "fake-model", HOOKS[0])


def test_rerun_skips_stored_batches_and_extends_to_byte_identical(tmp_path: Path) -> None:
    ref = run_job(tmp_path / "ref")
    a = FakeAdapter()
    part = run_job(tmp_path / "out", adapter=a, max_tokens=150)
    assert part.rows == 150 and not part.corpus_exhausted
    calls = a.calls
    again = run_job(tmp_path / "out", adapter=a, max_tokens=150)
    assert a.calls == calls and again.batches_run == 0 and again.rows == 150
    more = run_job(tmp_path / "out", adapter=a)  # continue to the end of the corpus
    assert more.batches_skipped >= 150 // (4 * 15) and more.new_rows == ref.rows - 150
    for h in HOOKS:
        assert_same_store(ref.stores[h], more.stores[h])


def test_stores_with_uneven_progress_resume_byte_identical(tmp_path: Path) -> None:
    ref = run_job(tmp_path / "ref")
    shutil.copytree(tmp_path / "ref", tmp_path / "out")
    out = {h: store_path(tmp_path / "out", "fake-model", h) for h in HOOKS}
    # hook 0 lost its last three shards (deleted like a corrupt shard), hook 1 only its last one
    for h, n in zip(HOOKS, (3, 1), strict=True):
        for s in read_manifest(out[h]).shards[-n:]:
            (out[h] / s.file).unlink()
    res = run_job(tmp_path / "out")
    assert 0 < res.batches_run < ref.batches_run and res.batches_skipped > 0
    for h in HOOKS:
        assert_same_store(ref.stores[h], out[h])


def test_cache_refuses_a_store_of_another_job(tmp_path: Path) -> None:
    run_job(tmp_path / "out", max_tokens=40)
    with pytest.raises(StoreMismatchError, match="context_size") as e:
        run_job(tmp_path / "out", context_size=32)
    assert str(tmp_path / "out") in str(e.value)
    with pytest.raises(StoreMismatchError, match="corpus_fingerprint"):
        run_job(tmp_path / "out", corpus_fingerprint="another corpus")
    with pytest.raises(ValueError, match="unknown hook"):
        run_job(tmp_path / "out", hooks=["blocks.9.mlp_out"])


PIPELINE_CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from pathlib import Path
    from test_cache_resume import run_job
    print("ready", flush=True)
    run_job(Path(sys.argv[2]), delay=0.02)
    """
)


def test_sigkill_of_cache_job_then_resume_is_byte_identical(tmp_path: Path) -> None:
    ref = run_job(tmp_path / "ref")
    script = tmp_path / "pipeline_child.py"
    script.write_text(PIPELINE_CHILD)
    cmd = [sys.executable, str(script), str(TESTS_DIR), str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = np.random.default_rng(7)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    p.stdout.readline()
    time.sleep(float(rng.uniform(0.05, 0.25)))  # the job takes ~15 x 0.02 s of forwards
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert p.returncode == -signal.SIGKILL
    assert read_manifest(store_path(tmp_path / "out", "fake-model", HOOKS[0])).rows < ref.rows
    res = run_job(tmp_path / "out")
    assert res.complete
    for h in HOOKS:
        assert_same_store(ref.stores[h], res.stores[h])


class CharTokenizer:
    """A character-level stand-in for a HF tokenizer: ids 2..49, BOS 0, EOS 1."""

    bos_token_id, eos_token_id, pad_token_id = 0, 1, None
    all_special_ids = (0, 1)

    def __call__(self, texts, **_):
        return {"input_ids": [[2 + ord(c) % 48 for c in t] for t in texts]}


def test_cache_tokenises_texts_with_token_windows(tmp_path: Path) -> None:
    adapter = FakeAdapter()
    adapter.tokenizer = CharTokenizer()
    texts = [f"document number {i}: " + "abc xyz " * (i % 7) for i in range(40)]
    res = cache_activations(
        adapter, texts, HOOKS[:1], tmp_path, context_size=16, batch_size=3, progress=False
    )
    m = read_manifest(res.stores[HOOKS[0]])
    stream = [tok for t in texts for tok in [*CharTokenizer()([t])["input_ids"][0], 1]]
    n_windows = len(stream) // 15  # BOS + 15 stream tokens; a trailing partial window is dropped
    kept = sum(tok != 1 for tok in stream[: n_windows * 15])  # BOS and EOS separators dropped
    assert m.rows == kept and kept < n_windows * 16
    assert m.corpus_fingerprint and res.corpus_exhausted
    # same texts -> same fingerprint -> resumes; other texts -> refused
    again = cache_activations(
        adapter, texts, HOOKS[:1], tmp_path, context_size=16, batch_size=3, progress=False
    )
    assert again.batches_run == 0
    with pytest.raises(StoreMismatchError, match="corpus_fingerprint"):
        cache_activations(adapter, texts[:-1], HOOKS[:1], tmp_path, context_size=16, progress=False)


def test_cli_cache_help_lists_the_options() -> None:
    from click.testing import CliRunner

    from sparsecodes.cli import main

    out = CliRunner().invoke(main, ["cache", "--help"])
    assert out.exit_code == 0
    for opt in (
        "--model",
        "--hook",
        "--corpus",
        "--max-tokens",
        "--context-size",
        "--out",
        "--dtype",
    ):
        assert opt in out.output
