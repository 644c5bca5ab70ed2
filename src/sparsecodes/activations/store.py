"""Crash-safe sharded on-disk activation store: one directory per (model, hook).

Layout of a store directory::

    manifest.json               what is in the store (see :class:`Manifest`)
    shard-000000-65536.npy      rows [0, 65536) as a raw ``.npy`` array [rows, *shape]
    shard-000001-65536.npy      rows [65536, 131072)
    ...
    shard-000042-1234.npy       a short last shard (only once the cache job has finished)

Shards are plain ``.npy`` files, so ``np.load(path, mmap_mode="r")`` maps them without reading.
Every shard but the last holds exactly ``shard_rows`` rows; the file name carries the shard index
and its row count (a short last shard that is later extended gets a new name, so the manifest
never names a file whose contents changed under it).

Stored dtypes (``Manifest.dtype``):

- ``"float16"``  -- numpy ``<f2``; overflows above 65504 (caught: writing raises instead).
- ``"bfloat16"`` -- the raw bf16 bits stored as ``<u2`` (numpy has no bfloat16); read them back
  with :func:`to_float32` or ``torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)``.
- ``"float32"``  -- numpy ``<f4``.

Crash safety: a shard is written to a ``*.tmp`` file, fsynced, renamed into place with
``os.replace`` and the directory fsynced (:func:`sparsecodes.files.atomic_write`); only then is
``manifest.json`` rewritten the same way.
So whenever the process dies (even SIGKILL), the manifest describes a valid prefix of the rows:
shards it names are complete and match their sha256; rows beyond it were never acknowledged.
Opening a store for writing removes leftover ``*.tmp`` files and shards the manifest does not name.

Reading verifies: :func:`read_shard` hashes a shard's bytes as it reads them the first time a
process reads that file and raises :class:`CorruptShardError` naming the file and the
``sparsecodes cache ... --verify`` command that repairs the store (:func:`repair_command`).

This module needs only numpy (torch tensors are accepted where arrays are, converted lazily).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import re
import shlex
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparsecodes.files import atomic_write, write_bytes

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_SHARD_ROWS = 65536

#: store dtype name -> numpy dtype of the bytes on disk
STORE_DTYPES: dict[str, np.dtype] = {
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),
    "float32": np.dtype("<f4"),
}

#: fields that must agree when an existing store is reopened for writing
IDENTITY_FIELDS = (
    "model",
    "hook",
    "shape",
    "dtype",
    "corpus_fingerprint",
    "context_size",
    "shard_rows",
)

#: fsync files and directories (power-loss safety). Renames alone already make the store safe
#: against the writing process dying (even SIGKILL); tests may set this False for speed.
DURABLE = True

_SHARD_RE = re.compile(r"^shard-(\d{6})-(\d+)\.npy$")
_HASH_CHUNK = 8 << 20


class StoreError(ValueError):
    """A store on disk cannot be used as asked (mismatch, missing, malformed)."""


class StoreMismatchError(StoreError):
    """An existing store was made by a different job (model, hook, corpus, dtype, ...)."""


class CorruptShardError(StoreError):
    """A shard's bytes do not match the checksum recorded in the manifest."""


def shard_name(index: int, rows: int) -> str:
    """File name of shard ``index`` holding ``rows`` rows."""
    return f"shard-{index:06d}-{rows}.npy"


@dataclass
class ShardInfo:
    """One shard file: its name, row count and the sha256 of the whole ``.npy`` file."""

    file: str
    rows: int
    sha256: str


@dataclass
class Manifest:
    """Contents of ``manifest.json``.

    ``rows`` is the number of activation rows (= kept tokens) in the listed shards, i.e. the
    tokens written; ``shape`` the trailing shape of one row (``[d]`` or e.g. ``[n_heads, d_head]``);
    ``complete`` is True once the cache job finished (``max_tokens`` reached or corpus exhausted).
    ``created`` records when/where/with what the store was first made; ``info`` is free-form
    (e.g. batch size, corpus spec).
    """

    model: str
    hook: str
    shape: list[int]
    dtype: str
    corpus_fingerprint: str
    context_size: int
    shard_rows: int
    format_version: int = FORMAT_VERSION
    rows: int = 0
    complete: bool = False
    corpus_exhausted: bool = False
    shards: list[ShardInfo] = field(default_factory=list)
    created: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def d(self) -> int:
        """Number of values per row (product of ``shape``)."""
        return int(np.prod(self.shape))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path) -> Manifest:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise StoreError(
                f"{path}: format_version {version!r} is not supported (this sparsecodes reads "
                f"{FORMAT_VERSION}); re-create the store with `sparsecodes cache`"
            )
        try:
            shards = [ShardInfo(**s) for s in data["shards"]]
            kwargs = {k: v for k, v in data.items() if k != "shards"}
            return cls(shards=shards, **kwargs)
        except (KeyError, TypeError) as e:
            raise StoreError(f"{path}: malformed manifest ({e})") from e


def read_manifest(store: str | Path) -> Manifest:
    """Read ``<store>/manifest.json``; :class:`StoreError` if missing or malformed."""
    path = Path(store) / MANIFEST
    if not path.is_file():
        raise StoreError(
            f"{path} does not exist: {store} is not an activation store "
            "(create one with `sparsecodes cache`)"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise StoreError(f"{path}: not valid JSON ({e})") from e
    return Manifest.from_dict(data, path)


# ---------------------------------------------------------------------------------------------
# shard files: writing (hashing the bytes as they are written), reading (hashing as they are read)


class _HashingWriter:
    """File-like object that writes through to ``f`` and hashes everything written."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.h = hashlib.sha256()

    def write(self, b: bytes | memoryview) -> int:
        self.h.update(b)
        return self.f.write(b)


def _npy_header(shape: Sequence[int], dtype: np.dtype) -> bytes:
    """The exact ``.npy`` (v1.0) header numpy writes for a C-order array of this shape/dtype."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf,
        {
            "descr": np.lib.format.dtype_to_descr(dtype),
            "fortran_order": False,
            "shape": tuple(shape),
        },
    )
    return buf.getvalue()


def _write_npy_atomic(path: Path, arr: np.ndarray) -> str:
    """Write ``arr`` as ``.npy`` to ``path`` atomically; return the file's sha256 (hex)."""
    arr = np.ascontiguousarray(arr)
    hashed: list[_HashingWriter] = []

    def write(f: Any) -> None:
        hw = _HashingWriter(f)
        hw.write(_npy_header(arr.shape, arr.dtype))
        hw.write(memoryview(arr.reshape(-1).view(np.uint8)))
        hashed.append(hw)

    atomic_write(path, write, durable=DURABLE)
    return hashed[0].h.hexdigest()


def write_shard(store: str | Path, index: int, rows: np.ndarray) -> ShardInfo:
    """Write rows (already in the stored dtype) as shard ``index`` of ``store``, atomically.

    For writers that own a set of shard indices (one rank of a distributed cache job); the
    caller records the returned entry in a manifest.
    """
    name = shard_name(index, int(rows.shape[0]))
    digest = _write_npy_atomic(Path(store) / name, rows)
    return ShardInfo(file=name, rows=int(rows.shape[0]), sha256=digest)


def shard_file_ok(store: str | Path, shard: ShardInfo, manifest: Manifest, verify: bool) -> bool:
    """Whether ``shard``'s file exists with the size its rows need (and, with ``verify``,
    its checksum)."""
    p = Path(store) / shard.file
    if not p.is_file():
        return False
    shape = (shard.rows, *manifest.shape)
    np_dtype = STORE_DTYPES[manifest.dtype]
    size = len(_npy_header(shape, np_dtype)) + int(np.prod(shape)) * np_dtype.itemsize
    if p.stat().st_size != size:
        return False
    return not verify or file_sha256(p) == shard.sha256


def created_info() -> dict[str, Any]:
    """When, where and with what a store is first made (``Manifest.created``)."""
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "sparsecodes": _package_version(),
    }


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def repair_command(store: str | Path, manifest: Manifest) -> str | None:
    """The ``sparsecodes cache`` command that re-checks ``store`` and rewrites its bad shards.

    It is the command that made the store (model, hook, corpus, sizes and dtype from the
    manifest; ``--out`` two levels above the store, as ``cache`` lays them out) plus
    ``--verify``, which checksums every shard, cuts the store back before the first bad or
    missing one and recomputes the rest. None when the manifest does not say how the store was
    made by a ``sparsecodes cache`` command (a store written with :class:`StoreWriter` directly,
    or by ``sparsecodes demo``, whose corpus is a slice such as ``embedded[train]``).
    """
    store = Path(store)
    info = manifest.info
    corpus = str(info.get("corpus") or "")
    cli_corpus = corpus == "embedded" or corpus.startswith("hf:") or Path(corpus).exists()
    if not corpus or not cli_corpus or "batch_size" not in info or store.name != manifest.hook:
        return None
    args = ["sparsecodes", "cache", "--model", manifest.model, "--hook", manifest.hook]
    args += ["--corpus", corpus]
    args += ["--context-size", str(manifest.context_size)]
    args += ["--batch-size", str(info["batch_size"])]
    if info.get("max_tokens") is not None:
        args += ["--max-tokens", str(info["max_tokens"])]
    args += ["--dtype", manifest.dtype, "--shard-rows", str(manifest.shard_rows)]
    args += ["--out", str(store.parent.parent), "--verify"]
    return shlex.join(args)


def corrupt_message(path: Path, reason: str, manifest: Manifest | None = None) -> str:
    """The error text for a bad shard: names the file and the command that repairs the store."""
    cmd = repair_command(path.parent, manifest) if manifest is not None else None
    if cmd is not None:
        fix = (
            f"Repair the store with\n  {cmd}\n(the command that made it, plus --verify: it "
            "checksums every shard and recomputes this one and those after it; add --text-field "
            "if you gave one)"
        )
    else:
        fix = (
            "Delete that file and re-run the job that wrote the store (`sparsecodes cache` or "
            "`sparsecodes demo` with the same arguments) to rewrite it; the shards after it are "
            "rewritten too"
        )
    return f"corrupt activation shard {path}: {reason}. {fix}"


#: identities ``(real path, sha256, size, mtime_ns, inode)`` of shard files whose bytes this
#: process has already checked against their manifest checksum
_VERIFIED: set[tuple[str, str, int, int, int]] = set()

#: numpy parses a ``.npy`` header with ``ast.literal_eval``; on CPython 3.11 two threads in the AST
#: constructor at once can fail with "SystemError: AST constructor recursion depth mismatch"
#: (python/cpython#106905; seen in CI with the reader's shard threads). The reader's threads parse
#: headers one at a time (a few microseconds each).
_NPY_HEADER_LOCK = threading.Lock()


def _file_key(path: Path, shard: ShardInfo, st: os.stat_result) -> tuple[str, str, int, int, int]:
    return (os.path.realpath(path), shard.sha256, st.st_size, st.st_mtime_ns, st.st_ino)


def read_shard(
    store: str | Path,
    shard: ShardInfo,
    manifest: Manifest,
    out: np.ndarray | None = None,
    *,
    verify: bool = True,
) -> np.ndarray | None:
    """Read one shard's rows in the stored dtype, checking its sha256 on the first read.

    The file is read once, in chunks of 8 MiB, straight into ``out`` (or, with ``out=None``,
    into a scratch chunk and dropped: a pure check); with ``verify`` the bytes are hashed as
    they arrive, so the checksum costs no second pass over the file and no extra memory. A file
    this process already verified (same path, size, mtime and inode) is not hashed again.

    Args:
        store: the store directory.
        shard: the manifest's entry for the shard.
        manifest: the store's manifest (row shape and dtype).
        out: C-contiguous array of ``rows * prod(shape)`` values of the stored dtype (e.g. a
            ``[rows, d]`` slice of a buffer), or None.
        verify: check the sha256 (every reader in sparsecodes does; False only to measure
            the checksum's cost).

    Returns ``out`` (None when ``out`` is None). Raises :class:`CorruptShardError` naming the
    file and the command that repairs the store if the file is missing, has another shape,
    dtype or size than the manifest says, or its bytes do not match the checksum; nothing is
    then returned from the bad shard.
    """
    path = Path(store) / shard.file
    np_dtype = STORE_DTYPES[manifest.dtype]
    want = (shard.rows, *manifest.shape)
    nbytes = int(np.prod(want)) * np_dtype.itemsize
    if out is not None and (
        out.dtype != np_dtype or out.nbytes != nbytes or not out.flags.c_contiguous
    ):
        raise ValueError(f"out must be C-contiguous {np_dtype} of {nbytes} bytes for {path}")
    try:
        f = open(path, "rb", buffering=0)  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        raise CorruptShardError(corrupt_message(path, "file is missing", manifest)) from None
    with f:
        st = os.fstat(f.fileno())
        key = _file_key(path, shard, st)
        check = verify and key not in _VERIFIED
        try:
            version = np.lib.format.read_magic(f)
            with _NPY_HEADER_LOCK:
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        except ValueError as e:
            raise CorruptShardError(
                corrupt_message(path, f"unreadable .npy header ({e})", manifest)
            ) from None
        if tuple(shape) != want or dtype != np_dtype or fortran:
            raise CorruptShardError(
                corrupt_message(path, f"holds {dtype}{list(shape)}, expected {want}", manifest)
            )
        offset = f.tell()
        if st.st_size != offset + nbytes:
            raise CorruptShardError(
                corrupt_message(
                    path, f"{st.st_size} bytes, expected {offset + nbytes} for {want}", manifest
                )
            )
        h = hashlib.sha256()
        if check:
            f.seek(0)
            h.update(f.read(offset))
        if out is not None:
            dst = memoryview(out.reshape(-1).view(np.uint8))
        elif check:
            scratch = bytearray(min(_HASH_CHUNK, max(nbytes, 1)))
        else:
            return None
        pos = 0
        while pos < nbytes:
            n = min(_HASH_CHUNK, nbytes - pos)
            chunk = dst[pos : pos + n] if out is not None else memoryview(scratch)[:n]
            got = f.readinto(chunk)
            if not got:
                raise CorruptShardError(corrupt_message(path, "file is truncated", manifest))
            if check:
                h.update(chunk[:got])
            pos += got
    if check:
        digest = h.hexdigest()
        if digest != shard.sha256:
            raise CorruptShardError(
                corrupt_message(
                    path, f"sha256 {digest[:12]}... != manifest {shard.sha256[:12]}...", manifest
                )
            )
        _VERIFIED.add(key)
    return out


def verify_shard(store: str | Path, shard: ShardInfo, manifest: Manifest) -> None:
    """Check one shard exists, has the manifest's shape, dtype and size, and its checksum.

    Always hashes the whole file (streaming, in chunks), even if this process checked it before.
    """
    path = Path(store) / shard.file
    with contextlib.suppress(FileNotFoundError):
        st = path.stat()
        _VERIFIED.discard(_file_key(path, shard, st))
    read_shard(store, shard, manifest)


def verify_store(store: str | Path) -> Manifest:
    """Verify every shard of a store (checksums, shapes); return its manifest."""
    manifest = read_manifest(store)
    for shard in manifest.shards:
        verify_shard(store, shard, manifest)
    if sum(s.rows for s in manifest.shards) != manifest.rows:
        raise StoreError(f"{Path(store) / MANIFEST}: rows does not equal the sum of shard rows")
    return manifest


# ---------------------------------------------------------------------------------------------
# dtype conversion


def _to_numpy(x: Any) -> np.ndarray:
    """A torch tensor or array-like -> numpy array (bf16 tensors -> float32)."""
    if hasattr(x, "detach"):  # torch tensor; avoid importing torch here
        x = x.detach()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)


def encode_rows(x: Any, dtype: str) -> np.ndarray:
    """Convert rows ``[n, *shape]`` (float array or torch tensor) to the store's on-disk dtype.

    bfloat16 rounds to nearest-even (like torch) and is returned as its raw ``uint16`` bits.
    float16 raises :class:`ValueError` when a finite value overflows to inf.
    """
    if dtype not in STORE_DTYPES:
        raise ValueError(f"dtype={dtype!r} is not a store dtype; use one of {sorted(STORE_DTYPES)}")
    if hasattr(x, "detach") and dtype == "bfloat16" and str(x.dtype) == "torch.bfloat16":
        import torch

        return x.detach().cpu().contiguous().view(torch.int16).numpy().view(np.uint16)
    a = _to_numpy(x)
    if dtype == "float32":
        return a.astype(np.float32, copy=False)
    if dtype == "float16":
        with np.errstate(over="ignore"):
            out = a.astype(np.float16)
        if not np.isfinite(out).all() and np.isfinite(a).all():
            raise ValueError(
                f"activations up to {np.abs(a).max():.4g} overflow float16 (max 65504); "
                "use dtype='bfloat16' or 'float32'"
            )
        return out
    # bfloat16: round-to-nearest-even on the float32 bits, NaN kept as NaN
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    out = (rounded >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def to_float32(a: np.ndarray, dtype: str) -> np.ndarray:
    """Decode stored rows (any store dtype) to a new float32 array of the same shape."""
    if dtype == "bfloat16":
        return (np.asarray(a, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)
    return np.asarray(a).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# writer


def check_identity(existing: Manifest, wanted: Manifest, path: Path) -> None:
    """Raise :class:`StoreMismatchError` naming the first identity field that differs."""
    for name in IDENTITY_FIELDS:
        old, new = getattr(existing, name), getattr(wanted, name)
        if old != new:
            raise StoreMismatchError(
                f"{path / MANIFEST}: existing store has {name}={old!r} but this job asks for "
                f"{name}={new!r}. Use a different --out directory, or delete {path} to re-cache"
            )


class StoreWriter:
    """Appends rows to a store, committing each full shard atomically (see module docstring).

    Rows are addressed by their global index: :meth:`append` takes ``start_row`` (the index of
    ``x[0]``) and silently drops rows the store already holds, so a resumed job can simply replay
    from any earlier point. Reopening an existing store checks that the identity fields
    (:data:`IDENTITY_FIELDS`) agree and raises :class:`StoreMismatchError` naming the field if not.

    On open, the manifest is cut back to the longest prefix of shards whose files exist with the
    right size (with ``verify=True``: the right checksum too), so deleting a corrupt shard and
    re-running the job rewrites it. A short last shard of a finished store is reloaded so that
    appending more rows extends it to ``shard_rows``.

    Args:
        path: store directory (created if needed).
        model, hook: names recorded in the manifest.
        shape: trailing shape of one row, e.g. ``(576,)``.
        dtype: ``"float16"``, ``"bfloat16"`` (stored as uint16 bits) or ``"float32"``.
        corpus_fingerprint: identifies the token stream; a resumed job must match it.
        context_size: tokens per window of the job.
        shard_rows: rows per shard file.
        info: free-form extra fields for the manifest (not checked on resume).
        verify: checksum every existing shard on open.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        model: str,
        hook: str,
        shape: Sequence[int],
        dtype: str = "float16",
        corpus_fingerprint: str,
        context_size: int,
        shard_rows: int = DEFAULT_SHARD_ROWS,
        info: dict[str, Any] | None = None,
        verify: bool = False,
    ) -> None:
        if dtype not in STORE_DTYPES:
            raise ValueError(
                f"dtype={dtype!r} is not a store dtype; use one of {sorted(STORE_DTYPES)}"
            )
        if shard_rows < 1:
            raise ValueError(f"shard_rows={shard_rows} must be >= 1")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        wanted = Manifest(
            model=model,
            hook=hook,
            shape=[int(s) for s in shape],
            dtype=dtype,
            corpus_fingerprint=corpus_fingerprint,
            context_size=int(context_size),
            shard_rows=int(shard_rows),
            info=dict(info or {}),
        )
        if (self.path / MANIFEST).exists():
            existing = read_manifest(self.path)
            check_identity(existing, wanted, self.path)
            existing.info.update(wanted.info)
            self.manifest = existing
        else:
            wanted.created = created_info()
            self.manifest = wanted
        self._np_dtype = STORE_DTYPES[dtype]
        self._row_shape = tuple(self.manifest.shape)
        self._repair(verify)
        # rows not yet in a full shard: the (reloaded) short last shard + new rows
        self._tail: list[np.ndarray] = []
        self._tail_rows = 0
        last = self.manifest.shards[-1] if self.manifest.shards else None
        if last is not None and last.rows < self.manifest.shard_rows:
            self._tail.append(np.load(self.path / last.file))
            self._tail_rows = last.rows
        self._write_manifest()

    # -- opening --------------------------------------------------------------------------

    def _repair(self, verify: bool) -> None:
        """Cut the manifest to its valid shard prefix and delete files it does not name."""
        good: list[ShardInfo] = []
        for i, shard in enumerate(self.manifest.shards):
            p = self.path / shard.file
            full = i < len(self.manifest.shards) - 1
            ok = p.is_file() and shard.file == shard_name(i, shard.rows)
            ok = ok and not (full and shard.rows != self.manifest.shard_rows)
            if ok:
                shape = (shard.rows, *self.manifest.shape)
                header = _npy_header(shape, self._np_dtype)
                ok = p.stat().st_size == len(header) + int(np.prod(shape)) * self._np_dtype.itemsize
            if ok and verify:
                ok = file_sha256(p) == shard.sha256
            if not ok:
                break
            good.append(shard)
        if len(good) < len(self.manifest.shards):
            self.manifest.shards = good
            self.manifest.complete = False
            self.manifest.corpus_exhausted = False
        self.manifest.rows = sum(s.rows for s in good)
        keep = {s.file for s in good} | {MANIFEST}
        for p in self.path.iterdir():
            if p.name in keep or not p.is_file():
                continue
            if p.name.endswith(".tmp") or _SHARD_RE.match(p.name):
                p.unlink()

    # -- state ----------------------------------------------------------------------------

    @property
    def rows(self) -> int:
        """Rows durably on disk (named in the manifest)."""
        return self.manifest.rows

    @property
    def total_rows(self) -> int:
        """Rows accepted so far: full shards on disk plus the buffered tail."""
        full = sum(1 for s in self.manifest.shards if s.rows == self.manifest.shard_rows)
        return full * self.manifest.shard_rows + self._tail_rows

    @property
    def complete(self) -> bool:
        return self.manifest.complete

    # -- writing --------------------------------------------------------------------------

    def append(self, x: Any, start_row: int | None = None) -> int:
        """Add rows ``x`` ``[n, *shape]`` whose first row has global index ``start_row``.

        Rows with index below :attr:`total_rows` (already held) are dropped; a ``start_row``
        beyond it would leave a gap and raises. Full shards are committed immediately.
        Returns the number of rows actually added.
        """
        n = int(x.shape[0])
        if tuple(x.shape[1:]) != self._row_shape:
            raise ValueError(
                f"rows of shape {tuple(x.shape[1:])} do not match the store's shape "
                f"{self._row_shape} ({self.path})"
            )
        have = self.total_rows
        start = have if start_row is None else int(start_row)
        if start > have:
            raise ValueError(
                f"start_row={start} would leave a gap: {self.path} holds {have} rows; "
                "append rows in order"
            )
        skip = have - start
        if skip >= n:
            return 0
        if self.manifest.complete:
            self.manifest.complete = False
            self.manifest.corpus_exhausted = False
        rows = encode_rows(x[skip:], self.manifest.dtype)
        self._tail.append(rows)
        self._tail_rows += rows.shape[0]
        if self._tail_rows >= self.manifest.shard_rows:
            self._commit_full_shards()
        return rows.shape[0]

    def _tail_array(self) -> np.ndarray:
        if len(self._tail) == 1:
            return self._tail[0]
        return np.concatenate(self._tail, axis=0)

    def _commit_full_shards(self) -> None:
        tail = self._tail_array()
        sr = self.manifest.shard_rows
        start = 0
        while tail.shape[0] - start >= sr:
            self._commit_shard(tail[start : start + sr])
            start += sr
        rest = tail[start:]
        self._tail = [rest.copy()] if rest.shape[0] else []
        self._tail_rows = rest.shape[0]

    def _commit_shard(self, rows: np.ndarray) -> None:
        """Write one shard at the next index, replacing a short last shard if there is one."""
        shards = self.manifest.shards
        replaced = None
        if shards and shards[-1].rows < self.manifest.shard_rows:
            replaced = shards.pop()
        index = len(shards)
        name = shard_name(index, rows.shape[0])
        digest = _write_npy_atomic(self.path / name, rows)
        shards.append(ShardInfo(file=name, rows=int(rows.shape[0]), sha256=digest))
        self.manifest.rows = sum(s.rows for s in shards)
        self._write_manifest()
        if replaced is not None and replaced.file != name:
            with contextlib.suppress(FileNotFoundError):
                (self.path / replaced.file).unlink()

    def _write_manifest(self) -> None:
        write_bytes(self.path / MANIFEST, self.manifest.to_json().encode(), durable=DURABLE)

    def close(self, *, complete: bool = True, corpus_exhausted: bool = False) -> Manifest:
        """Commit the buffered tail as a (short) last shard and mark the store ``complete``.

        With ``complete=False`` the tail is dropped instead (it is recomputed on resume), so
        every shard stays full.
        """
        if complete:
            if self._tail_rows and (
                not self.manifest.shards
                or self.manifest.shards[-1].rows == self.manifest.shard_rows
                or self._tail_rows != self.manifest.shards[-1].rows
            ):
                self._commit_shard(self._tail_array())
            self.manifest.complete = True
            self.manifest.corpus_exhausted = bool(corpus_exhausted)
            self._write_manifest()
        self._tail, self._tail_rows = [], 0
        return self.manifest


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("sparsecodes")
    except Exception:
        return "unknown"
