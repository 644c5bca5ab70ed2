"""The sharded activation store and its reader: round trips, manifest, corruption, shuffling."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import sparsecodes.activations.store as store_mod
from sparsecodes.activations.reader import StoreSource
from sparsecodes.activations.store import (
    FORMAT_VERSION,
    CorruptShardError,
    StoreMismatchError,
    StoreWriter,
    read_manifest,
    read_shard,
    to_float32,
    verify_store,
)


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process writes skip fsync (slow on a busy disk); the SIGKILL children keep it."""
    monkeypatch.setattr(store_mod, "DURABLE", False)


IDENT = {
    "model": "fake-model",
    "hook": "blocks.0.resid_post",
    "corpus_fingerprint": "abc123",
    "context_size": 16,
}


def make_store(
    path: Path,
    x: np.ndarray,
    *,
    shard_rows: int = 8,
    dtype: str = "float32",
    chunks: tuple[int, ...] = (5, 11, 3),
    **ident: object,
) -> Path:
    """Write rows ``x`` [n, *shape] in irregular chunks and close the store."""
    kw = {**IDENT, **ident}
    w = StoreWriter(path, shape=x.shape[1:], dtype=dtype, shard_rows=shard_rows, **kw)
    pos, i = 0, 0
    while pos < len(x):
        n = chunks[i % len(chunks)]
        w.append(x[pos : pos + n], start_row=pos)
        pos += n
        i += 1
    w.close()
    return path


def id_rows(n: int, d: int = 4) -> np.ndarray:
    """Rows whose first value is their index (exact in float32)."""
    x = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    x[:, 0] = np.arange(n)
    return x


def read_all(path: Path) -> np.ndarray:
    m = read_manifest(path)
    parts = [np.load(path / s.file, mmap_mode="r") for s in m.shards]
    return to_float32(np.concatenate(parts), m.dtype)


# ------------------------------------------------------------------------------------ writer


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_round_trip_rows_and_dtype(tmp_path: Path, dtype: str) -> None:
    x = np.random.default_rng(1).standard_normal((45, 3, 2)).astype(np.float32) * 10
    make_store(tmp_path / "s", x, dtype=dtype, shard_rows=8)
    m = read_manifest(tmp_path / "s")
    assert m.rows == 45 and m.shape == [3, 2] and m.dtype == dtype
    assert [s.rows for s in m.shards] == [8, 8, 8, 8, 8, 5]
    first = np.load(tmp_path / "s" / m.shards[0].file, mmap_mode="r")
    assert isinstance(first, np.memmap)
    assert (
        first.dtype == {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32}[dtype]
    )
    got = read_all(tmp_path / "s")
    want = {
        "float16": x.astype(np.float16).astype(np.float32),
        "bfloat16": torch.from_numpy(x).to(torch.bfloat16).float().numpy(),
        "float32": x,
    }[dtype]
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, x) or dtype == "float32"


def test_bf16_torch_tensor_input_is_stored_bit_exactly(tmp_path: Path) -> None:
    t = torch.randn(20, 4).to(torch.bfloat16)
    w = StoreWriter(tmp_path / "s", shape=(4,), dtype="bfloat16", shard_rows=8, **IDENT)
    w.append(t)
    w.close()
    np.testing.assert_array_equal(read_all(tmp_path / "s"), t.float().numpy())


def test_float16_overflow_is_refused(tmp_path: Path) -> None:
    w = StoreWriter(tmp_path / "s", shape=(2,), dtype="float16", shard_rows=4, **IDENT)
    with pytest.raises(ValueError, match="overflow float16"):
        w.append(np.array([[1.0, 1e6]], dtype=np.float32))


def test_manifest_contents(tmp_path: Path) -> None:
    make_store(tmp_path / "s", id_rows(20), shard_rows=8, dtype="float16", info={"batch_size": 4})
    data = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert data["format_version"] == FORMAT_VERSION
    for k, v in IDENT.items():
        assert data[k] == v
    assert data["shape"] == [4] and data["dtype"] == "float16" and data["shard_rows"] == 8
    assert data["rows"] == 20 and data["complete"] is True
    assert [s["rows"] for s in data["shards"]] == [8, 8, 4]
    files = sorted(p.name for p in (tmp_path / "s").glob("*.npy"))
    assert files == sorted(s["file"] for s in data["shards"])
    import hashlib

    for s in data["shards"]:
        digest = hashlib.sha256((tmp_path / "s" / s["file"]).read_bytes()).hexdigest()
        assert s["sha256"] == digest
    assert {"time", "host", "numpy", "sparsecodes"} <= set(data["created"])
    assert data["info"]["batch_size"] == 4


def test_unfinished_store_holds_only_full_shards(tmp_path: Path) -> None:
    w = StoreWriter(tmp_path / "s", shape=(4,), shard_rows=8, **IDENT)
    w.append(id_rows(21))
    m = read_manifest(tmp_path / "s")  # what a crash right now would leave
    assert m.rows == 16 and not m.complete and all(s.rows == 8 for s in m.shards)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", "other-model"),
        ("hook", "blocks.1.resid_post"),
        ("corpus_fingerprint", "zzz"),
        ("context_size", 32),
        ("dtype", "bfloat16"),
        ("shard_rows", 16),
    ],
)
def test_mismatched_manifest_is_refused(tmp_path: Path, field: str, value: object) -> None:
    make_store(tmp_path / "s", id_rows(10))
    kw: dict = {**IDENT, "shape": (4,), "dtype": "float32", "shard_rows": 8, field: value}
    with pytest.raises(StoreMismatchError) as e:
        StoreWriter(tmp_path / "s", **kw)
    assert field in str(e.value) and str(tmp_path / "s") in str(e.value)


def test_leftover_tmp_and_unlisted_shards_removed_on_open(tmp_path: Path) -> None:
    make_store(tmp_path / "s", id_rows(16))
    (tmp_path / "s" / "shard-000002-8.npy.tmp").write_bytes(b"partial")
    (tmp_path / "s" / "shard-000002-8.npy").write_bytes(b"never acknowledged")
    w = StoreWriter(tmp_path / "s", shape=(4,), dtype="float32", shard_rows=8, **IDENT)
    assert w.rows == 16
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "manifest.json",
        "shard-000000-8.npy",
        "shard-000001-8.npy",
    ]


def test_append_drops_rows_already_held_and_refuses_gaps(tmp_path: Path) -> None:
    x = id_rows(30)
    w = StoreWriter(tmp_path / "s", shape=(4,), dtype="float32", shard_rows=8, **IDENT)
    w.append(x[:12], start_row=0)
    assert w.append(x[5:20], start_row=5) == 8  # rows 5..11 already held
    with pytest.raises(ValueError, match="gap"):
        w.append(x[25:], start_row=25)
    w.append(x[20:], start_row=20)
    w.close()
    np.testing.assert_array_equal(read_all(tmp_path / "s"), x)


def test_extending_a_finished_store_matches_writing_it_at_once(tmp_path: Path) -> None:
    x = id_rows(37)
    make_store(tmp_path / "once", x)
    make_store(tmp_path / "ext", x[:20])
    w = StoreWriter(tmp_path / "ext", shape=(4,), dtype="float32", shard_rows=8, **IDENT)
    assert w.rows == 20 and w.complete
    w.append(x, start_row=0)
    w.close()
    a, b = read_manifest(tmp_path / "once"), read_manifest(tmp_path / "ext")
    assert [(s.file, s.sha256) for s in a.shards] == [(s.file, s.sha256) for s in b.shards]
    assert sorted(p.name for p in (tmp_path / "ext").iterdir()) == sorted(
        p.name for p in (tmp_path / "once").iterdir()
    )


def corrupt(path: Path) -> None:
    """Flip one bit of one value in the middle of the shard's data (past the .npy header)."""
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        header = f.tell()
    b = bytearray(path.read_bytes())
    at = header + (len(b) - header) // 2
    assert header <= at < len(b)
    b[at] ^= 0x01
    path.write_bytes(bytes(b))


def test_corrupt_shard_detected_naming_the_file(tmp_path: Path) -> None:
    make_store(tmp_path / "s", id_rows(40))
    m = read_manifest(tmp_path / "s")
    # one epoch, one shard per batch: all five shards read (and verified) in this order
    it = StoreSource(tmp_path / "s", shuffle_buffer_shards=1, seed=0).batches(8)
    order = [int(next(it)[0][0, 0]) // 8 for _ in range(5)]
    assert sorted(order) == list(range(5))
    i = order[-1]  # corrupt the shard that seed 0 serves last
    bad = tmp_path / "s" / m.shards[i].file
    corrupt(bad)
    # every reader of a store refuses it, naming the file
    with pytest.raises(CorruptShardError) as e:
        verify_store(tmp_path / "s")
    assert str(bad) in str(e.value) and "Delete" in str(e.value)
    with pytest.raises(CorruptShardError, match=bad.name):
        StoreSource(tmp_path / "s").verify()
    with pytest.raises(CorruptShardError, match=bad.name):
        read_shard(tmp_path / "s", m.shards[i], m, np.empty((8, 4), np.float32))
    src = StoreSource(tmp_path / "s", shuffle_buffer_shards=5)  # one group: all shards
    with pytest.raises(CorruptShardError, match=bad.name):
        next(src.batches(4))
    # a source serves the good shards, then refuses the bad one when it first reaches it,
    # before serving any of its rows
    served = []
    src = StoreSource(tmp_path / "s", shuffle_buffer_shards=1, seed=0)
    with pytest.raises(CorruptShardError, match=bad.name):
        for x, _ in src.batches(8):  # one shard per batch
            served.append(int(x[0, 0]) // 8)
    assert served == order[:-1]
    # the header-level checks still hold: a shard of the wrong size or a missing one
    bad.write_bytes(bad.read_bytes()[:-4])
    with pytest.raises(CorruptShardError, match="bytes, expected"):
        verify_store(tmp_path / "s")
    bad.unlink()
    with pytest.raises(CorruptShardError, match="missing"):
        next(StoreSource(tmp_path / "s", shuffle_buffer_shards=5).batches(4))


def test_repair_command_is_the_cache_command_plus_verify(tmp_path: Path) -> None:
    info = {"batch_size": 4, "max_tokens": 10, "corpus": "embedded"}
    store = make_store(tmp_path / "out" / "m" / IDENT["hook"], id_rows(10), info=info)
    m = read_manifest(store)
    assert store_mod.repair_command(store, m) == (
        "sparsecodes cache --model fake-model --hook blocks.0.resid_post --corpus embedded "
        "--context-size 16 --batch-size 4 --max-tokens 10 --dtype float32 --shard-rows 8 "
        f"--out {tmp_path / 'out'} --verify"
    )
    # a demo's store (a slice of the corpus) cannot be remade by `cache`: no command offered
    demo = make_store(
        tmp_path / "d" / "m" / IDENT["hook"],
        id_rows(10),
        info={**info, "corpus": "embedded[train]"},
    )
    assert store_mod.repair_command(demo, read_manifest(demo)) is None
    corrupt(demo / read_manifest(demo).shards[0].file)
    with pytest.raises(CorruptShardError, match="Delete that file and re-run") as e:
        verify_store(demo)
    assert "sparsecodes demo" in str(e.value)


def test_verified_shard_changed_later_in_the_same_process_is_checked_again(
    tmp_path: Path,
) -> None:
    make_store(tmp_path / "s", id_rows(16))
    m = read_manifest(tmp_path / "s")
    next(StoreSource(tmp_path / "s", shuffle_buffer_shards=5).batches(4))  # both verified
    import os
    import time

    time.sleep(0.02)  # a later mtime than the verified file's
    corrupt(tmp_path / "s" / m.shards[1].file)
    os.utime(tmp_path / "s" / m.shards[1].file)
    with pytest.raises(CorruptShardError, match=m.shards[1].file):
        next(StoreSource(tmp_path / "s", shuffle_buffer_shards=5).batches(4))


def test_read_shard_hashes_while_reading_one_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_store(tmp_path / "s", id_rows(3000, d=100), shard_rows=3000, chunks=(3000,))
    m = read_manifest(tmp_path / "s")
    size = (tmp_path / "s" / m.shards[0].file).stat().st_size
    read = [0]
    real_open = open

    class Counting:
        def __init__(self, f):
            self.f = f

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def read(self, n=-1):
            b = self.f.read(n)
            read[0] += len(b)
            return b

        def readinto(self, buf):
            got = self.f.readinto(buf)
            read[0] += got
            return got

    monkeypatch.setattr(
        store_mod, "open", lambda *a, **k: Counting(real_open(*a, **k)), raising=False
    )
    monkeypatch.setattr(store_mod, "_HASH_CHUNK", 64 << 10)  # several chunks per shard
    out = np.empty((3000, 100), np.float32)
    read_shard(tmp_path / "s", m.shards[0], m, out)
    np.testing.assert_array_equal(out, id_rows(3000, d=100))
    header = size - out.nbytes
    # the data once plus the header (parsed, then re-read for the hash): one pass
    assert read[0] == size + header
    read[0] = 0
    read_shard(tmp_path / "s", m.shards[0], m, out)  # already verified: no hashing
    assert read[0] == size


def test_deleting_a_corrupt_shard_and_rewriting_restores_the_store(tmp_path: Path) -> None:
    x = id_rows(40)
    make_store(tmp_path / "s", x)
    before = read_manifest(tmp_path / "s")
    corrupt(tmp_path / "s" / before.shards[2].file)
    # opening with verify=True cuts back to the good prefix, as does deleting the file
    w = StoreWriter(tmp_path / "s", shape=(4,), dtype="float32", shard_rows=8, verify=True, **IDENT)
    assert w.rows == 16 and not w.complete
    w.append(x, start_row=0)
    w.close()
    after = verify_store(tmp_path / "s")
    assert [s.sha256 for s in after.shards] == [s.sha256 for s in before.shards]


# ------------------------------------------------------------------------------------ reader


def epochs_of(src: StoreSource, batch: int, n_epochs: int) -> tuple[list[np.ndarray], list[int]]:
    n = len(src)
    n_batches = -(-n * n_epochs // batch)
    it = src.batches(batch)
    xs = [next(it)[0] for _ in range(n_batches)]
    sizes = [x.shape[0] for x in xs]
    ids = torch.cat(xs)[:, 0].numpy()
    return [ids[e * n : (e + 1) * n] for e in range(n_epochs)], sizes


def test_the_reader_threads_parse_npy_headers_one_at_a_time(tmp_path: Path, monkeypatch) -> None:
    # numpy parses .npy headers with ast.literal_eval, which two threads at once can break on
    # CPython 3.11 ("AST constructor recursion depth mismatch", seen in CI)
    real = np.lib.format.read_array_header_1_0
    held = []
    monkeypatch.setattr(
        np.lib.format,
        "read_array_header_1_0",
        lambda f: held.append(store_mod._NPY_HEADER_LOCK.locked()) or real(f),
    )
    make_store(tmp_path / "s", id_rows(64), shard_rows=8)
    src = StoreSource(tmp_path / "s", seed=0, shuffle_buffer_shards=4)
    rows = torch.cat([x for x, _ in itertools.islice(src.batches(16), 4)])
    assert sorted(rows[:, 0].tolist()) == list(range(64))  # one epoch, every row once
    assert len(held) == 8 and all(held)  # every shard's header, each under the lock


def test_reader_yields_every_row_once_per_epoch(tmp_path: Path) -> None:
    make_store(tmp_path / "s", id_rows(53), shard_rows=8)
    src = StoreSource(tmp_path / "s", seed=3, shuffle_buffer_shards=2)
    assert src.d_in == 4 and len(src) == 53
    x, extra = next(StoreSource(tmp_path / "s").batches(10))
    assert x.dtype == torch.float32 and x.shape == (10, 4) and extra is None
    epochs, sizes = epochs_of(src, batch=10, n_epochs=3)
    # 53 rows, batch 10: the remainder of an epoch is completed from the next epoch
    assert set(sizes) == {10}
    for e in epochs:
        assert sorted(e.tolist()) == list(range(53))
    assert not np.array_equal(epochs[0], epochs[1])  # a fresh order every epoch
    assert not np.array_equal(epochs[0], np.arange(53))


def test_reader_is_deterministic_by_seed(tmp_path: Path) -> None:
    make_store(tmp_path / "s", id_rows(60))

    def first(seed: int) -> torch.Tensor:
        it = StoreSource(tmp_path / "s", seed=seed).batches(16)
        return torch.cat([next(it)[0] for _ in range(6)])

    torch.testing.assert_close(first(7), first(7), rtol=0, atol=0)
    assert not torch.equal(first(7), first(8))


def test_reader_resumes_exactly_from_state_dict(tmp_path: Path) -> None:
    make_store(tmp_path / "s", id_rows(61), shard_rows=8)
    src = StoreSource(tmp_path / "s", seed=1, shuffle_buffer_shards=3)
    it = src.batches(7)
    for _ in range(11):  # crosses group and epoch boundaries
        next(it)
    state = json.loads(json.dumps(src.state_dict()))
    want = [next(it)[0] for _ in range(15)]
    resumed = StoreSource(tmp_path / "s", seed=999, shuffle_buffer_shards=3)
    resumed.load_state_dict(state)
    it2 = resumed.batches(7)
    for a in want:
        torch.testing.assert_close(next(it2)[0], a, rtol=0, atol=0)
    other = StoreSource(tmp_path / "s", shuffle_buffer_shards=2)
    with pytest.raises(ValueError, match="shuffle_buffer_shards"):
        other.load_state_dict(state)


def test_reader_batches_mix_rows_from_shards_far_apart(tmp_path: Path) -> None:
    make_store(tmp_path / "s", id_rows(400), shard_rows=8)  # 50 shards
    src = StoreSource(tmp_path / "s", seed=0, shuffle_buffer_shards=3)
    epochs, _ = epochs_of(src, batch=32, n_epochs=2)
    assert all(sorted(e.tolist()) == list(range(400)) for e in epochs)
    # the first 24 rows served (one buffer of 3 shards) come from 3 shards far apart
    shard_of = np.asarray(epochs[0][:24]) // 8
    assert len(set(shard_of.tolist())) == 3 and np.ptp(shard_of) > 3


MEMORY_CHILD = """
import json, sys
from sparsecodes.activations import StoreSource

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024  # kB -> bytes

src = StoreSource(sys.argv[1], seed=0, shuffle_buffer_shards=int(sys.argv[2]))
batch = int(sys.argv[3])
it = src.batches(batch)
try:  # reset the peak (VmHWM) to the current RSS, so imports' peaks do not count
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    reset = True
except OSError:
    reset = False
base = status("VmRSS")
ids_sum = 0.0
for _ in range(len(src) // batch):  # one full epoch, every shard read and checksummed
    x, _ = next(it)
    ids_sum += float(x[:, 0].double().sum())
print(json.dumps({"base": base, "peak": status("VmHWM"), "reset": reset, "ids_sum": ids_sum}))
"""


def test_reader_peak_memory_is_bounded_by_the_buffer_not_the_store(tmp_path: Path) -> None:
    """Peak resident memory of a child reading a 192 MiB store stays far below the store size.

    The store: 196608 rows x 256 float32 = 192 MiB in 192 shards of 1024 rows (1 MiB each).
    The reader holds ``shuffle_buffer_shards=4`` shards (4 MiB) plus a batch of 1024 rows
    (1 MiB, and its float32 tensor: 1 MiB more). Its peak RSS over a full epoch, above the RSS
    it had before the first batch, must stay under 48 MiB (room for the allocator, torch's lazy
    initialisation and a few buffers in flight); a reader that loaded the store, or kept the
    shards it read (in memory or mapped), would exceed it by 144 MiB or more.
    """
    import os
    import subprocess
    import sys

    rows, d, shard_rows = 196608, 256, 1024
    w = StoreWriter(tmp_path / "s", shape=(d,), dtype="float32", shard_rows=shard_rows, **IDENT)
    for start in range(0, rows, 16 * shard_rows):
        x = np.ones((16 * shard_rows, d), dtype=np.float32)
        x[:, 0] = np.arange(start, start + len(x))
        x[:, 1:] *= np.arange(1, d, dtype=np.float32)  # not all equal, whatever the bytes
        w.append(x, start_row=start)
    w.close()
    store_bytes = sum(p.stat().st_size for p in (tmp_path / "s").glob("*.npy"))
    assert store_bytes >= rows * d * 4
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, str(tmp_path / "s"), "4", "1024"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["ids_sum"] == rows * (rows - 1) / 2  # every row read once (exact in float64)
    growth = got["peak"] - got["base"]
    bound = 48 << 20
    assert growth < bound, f"peak RSS grew {growth / 2**20:.0f} MiB reading a 192 MiB store"
    assert store_bytes - bound >= 144 << 20  # loading the whole store could not pass


def test_reader_pools_several_stores_and_flattens_row_shape(tmp_path: Path) -> None:
    a = id_rows(20, d=6).reshape(20, 2, 3)
    b = id_rows(30, d=6).reshape(30, 2, 3)
    b[:, 0, 0] += 100
    make_store(tmp_path / "a", a, dtype="float32")
    make_store(tmp_path / "b", b, dtype="float16")  # mixed dtypes -> float32 buffer
    src = StoreSource([tmp_path / "a", tmp_path / "b"], shuffle_buffer_shards=2)
    assert src.d_in == 6 and len(src) == 50
    (e,), _ = epochs_of(src, batch=9, n_epochs=1)
    assert sorted(e.tolist()) == list(range(20)) + list(range(100, 130))
    make_store(tmp_path / "c", id_rows(10, d=5))
    with pytest.raises(ValueError, match="different row shapes"):
        StoreSource([tmp_path / "a", tmp_path / "c"])


def test_missing_store_has_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an activation store"):
        StoreSource(tmp_path / "nope")


# ------------------------------------------------------------------ the CLI: refuse, then repair


def test_train_refuses_a_corrupt_shard_and_the_named_command_repairs_it(tmp_path: Path) -> None:
    """`train --store` stops on a flipped byte with the shard's name and the repair command;
    the checkpoint already written is kept; running that command restores the store's bytes and
    the same training resumes."""
    import re
    import shlex

    from click.testing import CliRunner

    from sparsecodes.cli import main

    def cli(*args: str):
        return CliRunner().invoke(main, list(args))

    made = cli(
        "cache", "--model", "tiny-llama", "--hook", "blocks.0.resid_post", "--max-tokens", "384",
        "--context-size", "32", "--batch-size", "4", "--dtype", "float32", "--shard-rows", "128",
        "--out", str(tmp_path / "acts"), "--no-progress",
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    store = tmp_path / "acts" / "tiny-llama" / "blocks.0.resid_post"
    m = read_manifest(store)
    assert [s.rows for s in m.shards] == [128, 128, 128]
    good = {s.file: (store / s.file).read_bytes() for s in m.shards}
    run = tmp_path / "run"
    train = (
        "train", "--store", str(store), "--encoder", "topk", "--param", "k=4", "--n-latents",
        "32", "--batch-size", "64", "--checkpoint-every", "2", "--out", str(run),
    )  # fmt: skip
    first = cli(*train, "--steps", "4")
    assert first.exit_code == 0, first.output
    kept = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    assert any("checkpoint" in str(p) for p in kept)

    bad = store / m.shards[1].file
    corrupt(bad)
    refused = cli(*train, "--steps", "8")
    assert refused.exit_code != 0
    out = refused.output
    assert str(bad) in out and "CorruptShardError" in out, out
    # nothing already written is lost (nor changed): checkpoint, metrics, final model
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == kept
    found = re.search(r"^  (sparsecodes cache .*)$", out, re.MULTILINE)
    assert found, out
    cmd = shlex.split(found.group(1))
    assert "--verify" in cmd and cmd[cmd.index("--out") + 1] == str(tmp_path / "acts")

    repaired = cli(*cmd[1:], "--no-progress")
    assert repaired.exit_code == 0, repaired.output
    assert verify_store(store).rows == 384
    assert {s.file: (store / s.file).read_bytes() for s in read_manifest(store).shards} == good
    resumed = cli(*train, "--steps", "8")
    assert resumed.exit_code == 0, resumed.output
    assert last_logged_step(run) == 8


def last_logged_step(run: Path) -> int:
    """The last step logged in a run's metrics.csv."""
    import csv

    with open(run / "metrics.csv") as f:
        return int(float(list(csv.DictReader(f))[-1]["step"]))
