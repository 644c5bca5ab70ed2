"""Cache a model's activations at hook points into on-disk stores, resumably.

:func:`cache_activations` tokenises texts into fixed windows, runs the model once per batch of
windows for all requested hooks (the adapter stops after the deepest one), drops the positions
whose keep-mask is False (BOS / special tokens) and appends the remaining rows, in order, to one
:class:`~sparsecodes.activations.store.StoreWriter` per hook.

Exact resume: batch ``b`` is always windows ``[b * batch_size, (b + 1) * batch_size)`` of the
deterministic window stream, and rows are addressed by their global index. A restarted job
re-tokenises (cheap), skips without running the model every batch whose rows are all on disk
already, recomputes the batch that straddles the durable end (same windows, same batch shape, so
the same numbers) and lets each writer drop the rows it already holds. A job killed at any moment
and restarted with the same arguments therefore writes byte-identical shards.

Several processes (``torchrun ... -m sparsecodes cache``): shard ``j`` (global rows
``[j * shard_rows, (j + 1) * shard_rows)``) belongs to rank ``j % world_size``. Every rank
tokenises the whole stream (cheap) to know each batch's rows, runs the model only on the batches
that overlap its own shards (the same batches, so the same numbers, as one process) and writes
those shards straight into the store, recording each in ``parts/<world>-<rank>.json``. When all
ranks are done, rank 0 writes the one ``manifest.json`` (shards in order) and removes ``parts/``:
the store is byte-identical to one written by a single process. A killed job restarted with the
same arguments (any number of ranks) skips every shard recorded in any part file.

On the CPU each batch's forward is split into ``forward_workers`` slices of windows run at once
in as many threads of one torch thread each (``ModelAdapter.run(..., workers=n)``; default: the
process's torch thread count), and, where the process's GEMM backend is OpenBLAS
(:mod:`sparsecodes.kernels.gemm`, AMD CPUs), the model's ``nn.Linear`` layers multiply through
it (:func:`caching_forward`). Each worker computes its slice without waiting on torch's thread
pool inside every operation. Llama-style layers run fused (:mod:`sparsecodes.models.fused`: one
product for q|k|v, one for gate|up, element-wise work in place). Rows equal an unsplit eager
forward to float32 rounding. Measured by ``benchmarks/bench_cache.py``.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparsecodes import distributed as dist_ctx
from sparsecodes.activations.store import (
    DEFAULT_SHARD_ROWS,
    MANIFEST,
    Manifest,
    ShardInfo,
    StoreMismatchError,
    StoreWriter,
    check_identity,
    created_info,
    encode_rows,
    read_manifest,
    shard_file_ok,
    write_shard,
)
from sparsecodes.files import write_bytes, write_json
from sparsecodes.kernels import gemm
from sparsecodes.models.adapter import ModelAdapter
from sparsecodes.models.fused import FusedWeights, fused_layers
from sparsecodes.models.linear import gemm_linears


@dataclass
class CacheResult:
    """What a :func:`cache_activations` call did.

    ``rows`` is the number of rows (kept tokens) in each store afterwards, ``new_rows`` how many
    this call computed; ``seconds_model`` is time inside the model's forward, ``seconds_store``
    the time spent after it (gather of kept rows, device->CPU copy, dtype conversion, writes,
    fsyncs, checksums).
    """

    stores: dict[str, Path]
    rows: int
    new_rows: int = 0
    batches_run: int = 0
    batches_skipped: int = 0
    complete: bool = False
    corpus_exhausted: bool = False
    seconds_model: float = 0.0
    seconds_store: float = 0.0
    seconds_total: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def store_overhead(self) -> float:
        """Store time as a fraction of model forward time (goal: < 0.1)."""
        return self.seconds_store / self.seconds_model if self.seconds_model > 0 else 0.0


def model_slug(name: str) -> str:
    """A directory-safe name for a model name or path."""
    base = Path(name).name if ("/" in name or "\\" in name) else name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base) or "model"


def store_path(out_dir: str | Path, model: str, hook: str) -> Path:
    """Where :func:`cache_activations` puts the store of ``hook``: ``out_dir/<model>/<hook>``."""
    return Path(out_dir) / model_slug(model) / hook


def _window_parts(w: Any) -> tuple[Tensor, Tensor]:
    """``(input_ids [T] int64, keep [T] bool)`` from a ``sparsecodes.data.Window`` (or a pair)."""
    if isinstance(w, tuple):
        ids, keep = w
    else:
        ids = w.input_ids
        keep = getattr(w, "keep", None)
        if keep is None:
            keep = w.keep_mask
    return torch.as_tensor(ids, dtype=torch.long), torch.as_tensor(keep, dtype=torch.bool)


def _collate(
    windows: Sequence[tuple[Tensor, Tensor]], pad_id: int
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Stack windows into ``ids [B, T]``, ``attention_mask [B, T] | None`` and ``keep [B, T]``.

    Windows shorter than the longest are right-padded (mask 0, keep False).
    """
    lengths = [ids.shape[0] for ids, _ in windows]
    t = max(lengths)
    if all(n == t for n in lengths):
        return (
            torch.stack([ids for ids, _ in windows]),
            None,
            torch.stack([k for _, k in windows]),
        )
    b = len(windows)
    ids = torch.full((b, t), pad_id, dtype=torch.long)
    attn = torch.zeros((b, t), dtype=torch.long)
    keep = torch.zeros((b, t), dtype=torch.bool)
    for i, (w_ids, w_keep) in enumerate(windows):
        n = w_ids.shape[0]
        ids[i, :n], attn[i, :n], keep[i, :n] = w_ids, 1, w_keep
    return ids, attn, keep


def resolve_forward_workers(model_adapter: Any, requested: int | None = None) -> int:
    """How many threads :func:`cache_activations` splits each batch's forward over.

    ``requested`` when given (>= 1); otherwise ``torch.get_num_threads()`` for a
    :class:`~sparsecodes.models.ModelAdapter` on the CPU, and 1 on a GPU or for any other
    adapter (whose ``run`` may not take ``workers``).
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"forward_workers={requested} must be >= 1 (or None for auto)")
        return requested
    if isinstance(model_adapter, ModelAdapter) and model_adapter.device.type == "cpu":
        return torch.get_num_threads()
    return 1


def caching_forward(
    model_adapter: Any, forward_workers: int | None = None, *, fused: bool = True
) -> Callable[[Tensor, Tensor | None, list[str]], dict[str, Tensor]]:
    """The forward :func:`cache_activations` (and ``LiveModelSource``) runs:
    ``forward(ids [B, T], attention_mask [B, T] | None, hooks) -> {hook: [B, T, *shape]}``.

    ``model_adapter.run`` split over :func:`resolve_forward_workers` threads; when each thread
    then runs one torch thread (``workers > 1``, or a process with one torch thread) and the
    process's GEMM backend is ``"openblas"`` (``sparsecodes.kernels.gemm``; ``SPARSECODES_GEMM``),
    the model's ``nn.Linear`` layers multiply through OpenBLAS for the call
    (``sparsecodes.models.linear.gemm_linears``; float32 rounding of torch's values). With
    ``fused`` (default) a float32 llama-style model on the CPU also runs its attention, MLP and
    RMSNorm layers fused (``sparsecodes.models.fused.fused_layers``: one product for ``q/k/v``,
    one for ``gate/up``, element-wise work in place, through OpenBLAS under the same condition;
    float32 rounding of the eager values; the concatenated weights are built once and kept with
    the returned function). ``fused=False`` runs the model's own layers.
    """
    workers = resolve_forward_workers(model_adapter, forward_workers)
    kw: dict[str, Any] = {"workers": workers} if workers > 1 else {}
    ours = isinstance(model_adapter, ModelAdapter) and model_adapter.device.type == "cpu"
    weights = FusedWeights()

    def forward(ids: Tensor, attention_mask: Tensor | None, hooks: list[str]) -> dict[str, Tensor]:
        one_thread_each = workers > 1 or torch.get_num_threads() == 1
        openblas = ours and one_thread_each and gemm.gemm_backend() == "openblas"
        linears: Any = gemm_linears(model_adapter.model) if openblas else nullcontext()
        layers: Any = nullcontext()
        if ours and fused:
            layers = fused_layers(model_adapter.model, weights, gemm_products=openblas)
        with linears, layers:
            return model_adapter.run(ids, attention_mask=attention_mask, hooks=hooks, **kw)

    return forward


def _chunks(it: Iterator[Any], n: int) -> Iterator[list[Any]]:
    while chunk := list(islice(it, n)):
        yield chunk


def cache_activations(
    model_adapter: Any,
    texts: Iterable[str],
    hooks: Sequence[str],
    out_dir: str | Path,
    *,
    context_size: int = 128,
    batch_size: int = 16,
    max_tokens: int | None = None,
    dtype: str = "float16",
    shard_rows: int = DEFAULT_SHARD_ROWS,
    corpus_fingerprint: str | None = None,
    model_name: str | None = None,
    corpus_spec: str | None = None,
    windows: Iterable[Any] | None = None,
    verify: bool = False,
    progress: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
    forward_dtype: str | None = None,
    forward_workers: int | None = None,
) -> CacheResult:
    """Cache activations at ``hooks`` for the token windows of ``texts`` into ``out_dir``.

    One store per hook at :func:`store_path` ``(out_dir, model_name, hook)``; rows are the kept
    positions of each window (``[rows, *adapter.hook_shape(hook)]``) in window order. Re-running
    with the same arguments resumes (see module docstring); a store made by a different model,
    hook, corpus, dtype, context size or shard size is refused (``StoreMismatchError``).

    Args:
        model_adapter: a ``sparsecodes.models.ModelAdapter`` (``.name``, ``.tokenizer``,
            ``.hook_shape(hook)``, ``.run(ids, attention_mask=, hooks=)``).
        texts: the corpus (e.g. ``sparsecodes.data.load_texts(spec)``).
        hooks: hook names, e.g. ``["blocks.12.resid_post"]``.
        out_dir: root directory of the stores.
        context_size: tokens per window.
        batch_size: windows per forward pass. Keep it fixed across a resume for
            byte-identical results (it is recorded in the manifest's ``info``).
        max_tokens: stop after this many rows (kept tokens) per store; None = whole corpus.
        dtype: ``"float16"``, ``"bfloat16"`` or ``"float32"``.
        shard_rows: rows per shard file.
        corpus_fingerprint: identifies the corpus; None hashes ``corpus_spec`` and ``texts``
            with ``sparsecodes.data.corpus_fingerprint`` (materialising the texts as a list;
            pass a fingerprint for a very large stream).
        model_name: name recorded in the manifest (default ``model_adapter.name``).
        corpus_spec: how the corpus was specified (recorded for information).
        windows: precomputed windows to use instead of tokenising ``texts`` (tests, custom
            windowing); each has ``input_ids`` [T] and ``keep`` [T] or is an ``(ids, keep)`` pair.
        verify: checksum existing shards when reopening a store.
        progress: show a tqdm progress bar (tokens/s and the store's share of time).
        rank, world_size: this process's share of the shards (module docstring); None = from
            the process group ``torchrun`` started (rank 0 of 1 without one). Every rank calls
            this with the same arguments.
        forward_dtype: the dtype the model's forward runs in (``"float32"``, ``"bfloat16"``);
            None = the adapter's parameter dtype (``model_adapter.dtype``) when it has one.
            Recorded in the manifest's ``info`` (and in each rank's part file); resuming a store
            begun with another forward dtype is refused (``StoreMismatchError``), since one store
            must not mix the two roundings. A store that records none (older) resumes as before.
        forward_workers: threads each batch's forward is split over (module docstring);
            None = :func:`resolve_forward_workers` (the torch thread count on a CPU, else 1).
    """
    if not hooks:
        raise ValueError("hooks is empty; give at least one hook, e.g. blocks.12.resid_post")
    hooks = list(dict.fromkeys(hooks))
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens} must be >= 1 (or None for the whole corpus)")
    known = getattr(model_adapter, "hook_points", None)
    if callable(known):
        valid = set(known())
        bad = [h for h in hooks if h not in valid]
        if bad:
            raise ValueError(
                f"unknown hook(s) {bad} for {getattr(model_adapter, 'name', 'this model')}; "
                "list them with `sparsecodes models`"
            )
    name = model_name or getattr(model_adapter, "name", None) or "model"
    if corpus_fingerprint is None:
        from sparsecodes.data import corpus_fingerprint as fingerprint

        texts = list(texts)
        corpus_fingerprint = fingerprint(corpus_spec, texts)
    t_start = time.perf_counter()
    info: dict[str, Any] = {
        "batch_size": batch_size,
        "max_tokens": max_tokens,
        "corpus": corpus_spec,
    }
    if forward_dtype is None and isinstance(getattr(model_adapter, "dtype", None), torch.dtype):
        forward_dtype = str(model_adapter.dtype).removeprefix("torch.")
    if forward_dtype is not None:
        info["forward_dtype"] = forward_dtype
        for h in hooks:  # before any writer opens the store: a refusal changes nothing
            check_forward_dtype(store_path(out_dir, name, h), forward_dtype)
    forward = caching_forward(model_adapter, forward_workers)
    if world_size is None or rank is None:
        w = dist_ctx.world()
        rank, world_size = w.rank, w.size
    if world_size > 1:
        wanted = {
            h: Manifest(
                model=name,
                hook=h,
                shape=[int(v) for v in model_adapter.hook_shape(h)],
                dtype=dtype,
                corpus_fingerprint=corpus_fingerprint,
                context_size=int(context_size),
                shard_rows=int(shard_rows),
                info=dict(info),
            )
            for h in hooks
        }
        return _cache_ranked(
            model_adapter,
            texts,
            wanted,
            out_dir,
            batch_size=batch_size,
            max_tokens=max_tokens,
            windows=windows,
            verify=verify,
            rank=rank,
            world_size=world_size,
            t_start=t_start,
            forward=forward,
        )
    writers = {
        h: StoreWriter(
            store_path(out_dir, name, h),
            model=name,
            hook=h,
            shape=tuple(model_adapter.hook_shape(h)),
            dtype=dtype,
            corpus_fingerprint=corpus_fingerprint,
            context_size=context_size,
            shard_rows=shard_rows,
            info=info,
            verify=verify,
        )
        for h in hooks
    }
    stores = {h: w.path for h, w in writers.items()}
    resume_row = min(w.rows for w in writers.values())
    result = CacheResult(stores=stores, rows=resume_row)
    done_before = all(w.complete for w in writers.values()) and (
        all(w.manifest.corpus_exhausted for w in writers.values())
        or (max_tokens is not None and resume_row >= max_tokens)
    )
    if done_before or (max_tokens is not None and resume_row >= max_tokens):
        for w in writers.values():
            if not w.complete:
                w.close(complete=True)
        result.complete = True
        result.corpus_exhausted = all(w.manifest.corpus_exhausted for w in writers.values())
        result.seconds_total = time.perf_counter() - t_start
        return result

    if windows is None:
        from sparsecodes.data import token_windows

        windows = token_windows(texts, model_adapter.tokenizer, context_size)
    tokenizer = getattr(model_adapter, "tokenizer", None)
    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    device = torch.device(getattr(model_adapter, "device", None) or "cpu")

    from tqdm.auto import tqdm

    bar = tqdm(
        total=max_tokens,
        initial=resume_row,
        unit="tok",
        unit_scale=True,
        desc=f"cache {name}",
        disable=not progress,
    )
    row = 0
    exhausted = True
    try:
        for batch in _chunks(iter(windows), batch_size):
            parts = [_window_parts(w) for w in batch]
            n_keep = sum(int(k.sum()) for _, k in parts)
            if row + n_keep <= resume_row:
                row += n_keep
                result.batches_skipped += 1
                continue
            ids, attn, keep = _collate(parts, pad_id)
            t0 = time.perf_counter()
            with torch.inference_mode():
                acts = forward(ids.to(device), attn, hooks)
            t1 = time.perf_counter()
            limit = n_keep if max_tokens is None else min(n_keep, max_tokens - row)
            keep_dev = keep.to(device)
            for h, w in writers.items():
                a = acts[h][keep_dev][:limit]
                w.append(a.cpu(), start_row=row)
            t2 = time.perf_counter()
            result.seconds_model += t1 - t0
            result.seconds_store += t2 - t1
            result.batches_run += 1
            new = max(0, row + limit - max(row, resume_row))
            result.new_rows += new
            bar.update(new)
            bar.set_postfix(store=f"{result.store_overhead:.1%}", refresh=False)
            row += limit
            if max_tokens is not None and row >= max_tokens:
                exhausted = False
                break
    finally:
        bar.close()
    manifests = [w.close(complete=True, corpus_exhausted=exhausted) for w in writers.values()]
    result.rows = min(m.rows for m in manifests)
    result.complete = True
    result.corpus_exhausted = exhausted
    result.seconds_total = time.perf_counter() - t_start
    return result


def check_forward_dtype(store: Path, forward_dtype: str) -> None:
    """Raise :class:`StoreMismatchError` if ``store`` (its manifest, or a rank's part file of an
    unfinished distributed run) records a forward dtype other than ``forward_dtype``.

    A store that records none (written before the field existed) passes.
    """
    recorded: dict[str, Path] = {}
    if (store / MANIFEST).exists():
        old = read_manifest(store).info.get("forward_dtype")
        if old is not None:
            recorded[old] = store / MANIFEST
    for f in sorted((store / "parts").glob("*.json")) if (store / "parts").is_dir() else []:
        old = json.loads(f.read_text()).get("forward_dtype")
        if old is not None:
            recorded.setdefault(old, f)
    for old, where in recorded.items():
        if old != forward_dtype:
            raise StoreMismatchError(
                f"{where}: this store was started with forward dtype {old} but this run asks "
                f"for {forward_dtype}; one store cannot mix activations of the two. Resume with "
                f"--forward-dtype {old}, or cache with {forward_dtype} into a different --out "
                f"directory (or delete {store} to start it over)"
            )


def _part_file(store: Path, world_size: int, rank: int) -> Path:
    return store / "parts" / f"{world_size}-{rank}.json"


def _done_shards(store: Path, wanted: Manifest, verify: bool) -> dict[int, ShardInfo]:
    """Shards already on disk: those of an existing manifest and of every rank's part file."""
    done: dict[int, ShardInfo] = {}
    if (store / MANIFEST).exists():
        existing = read_manifest(store)
        check_identity(existing, wanted, store)
        for j, sh in enumerate(existing.shards):
            if sh.rows == wanted.shard_rows or existing.complete:
                done[j] = sh
    parts = store / "parts"
    if parts.is_dir():
        import json

        for f in sorted(parts.glob("*.json")):
            for j, sh in json.loads(f.read_text())["shards"].items():
                done[int(j)] = ShardInfo(**sh)
    return {j: sh for j, sh in done.items() if shard_file_ok(store, sh, wanted, verify)}


def _cache_ranked(
    model_adapter: Any,
    texts: Iterable[str],
    wanted: dict[str, Manifest],
    out_dir: str | Path,
    *,
    batch_size: int,
    max_tokens: int | None,
    windows: Iterable[Any] | None,
    verify: bool,
    rank: int,
    world_size: int,
    t_start: float,
    forward: Callable[[Tensor, Tensor | None, list[str]], dict[str, Tensor]],
) -> CacheResult:
    """This rank's shards of every hook's store, then (rank 0) the manifests; module docstring."""
    hooks = list(wanted)
    m0 = wanted[hooks[0]]
    sr = m0.shard_rows
    stores = {h: store_path(out_dir, m.model, h) for h, m in wanted.items()}
    result = CacheResult(stores=stores, rows=0, extra={"rank": rank, "world_size": world_size})
    for path in stores.values():
        path.mkdir(parents=True, exist_ok=True)
    finished = [read_manifest(p) for p in stores.values() if (p / MANIFEST).exists()]
    if len(finished) == len(hooks) and all(m.complete for m in finished):
        for h, m in zip(hooks, finished, strict=True):
            check_identity(m, wanted[h], stores[h])
        result.rows = min(m.rows for m in finished)
        result.complete = True
        result.corpus_exhausted = all(m.corpus_exhausted for m in finished)
        result.seconds_total = time.perf_counter() - t_start
        return result
    done_per_hook = [_done_shards(stores[h], wanted[h], verify) for h in hooks]
    done = set.intersection(*(set(d) for d in done_per_hook))
    mine_done = {
        h: {j: d[j] for j in d if j % world_size == rank and j in done}
        for h, d in zip(hooks, done_per_hook, strict=True)
    }
    part_files = {h: _part_file(stores[h], world_size, rank) for h in hooks}

    def record(h: str, j: int, rows: Any) -> None:
        mine_done[h][j] = write_shard(stores[h], j, encode_rows(rows, wanted[h].dtype))
        entries = {str(i): asdict(sh) for i, sh in sorted(mine_done[h].items())}
        part: dict[str, Any] = {"shards": entries}
        if "forward_dtype" in wanted[h].info:
            part["forward_dtype"] = wanted[h].info["forward_dtype"]
        write_json(part_files[h], part)

    if windows is None:
        from sparsecodes.data import token_windows

        windows = token_windows(texts, model_adapter.tokenizer, m0.context_size)
    tokenizer = getattr(model_adapter, "tokenizer", None)
    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    device = torch.device(getattr(model_adapter, "device", None) or "cpu")
    pending: dict[int, dict[str, list[Tensor]]] = {}
    row = 0
    exhausted = True
    for batch in _chunks(iter(windows), batch_size):
        parts = [_window_parts(w) for w in batch]
        n_keep = sum(int(k.sum()) for _, k in parts)
        limit = n_keep if max_tokens is None else min(n_keep, max_tokens - row)
        lo, hi = row, row + limit
        touched = range(lo // sr, (hi - 1) // sr + 1) if hi > lo else range(0)
        mine = [j for j in touched if j % world_size == rank and j not in done]
        if mine:
            ids, attn, keep = _collate(parts, pad_id)
            t0 = time.perf_counter()
            with torch.inference_mode():
                acts = forward(ids.to(device), attn, hooks)
            t1 = time.perf_counter()
            keep_dev = keep.to(device)
            rows_h = {h: acts[h][keep_dev][:limit].cpu() for h in hooks}
            for j in mine:
                s0, s1 = max(lo, j * sr), min(hi, (j + 1) * sr)
                for h in hooks:
                    pending.setdefault(j, {}).setdefault(h, []).append(rows_h[h][s0 - lo : s1 - lo])
                result.new_rows += s1 - s0
                if s1 == (j + 1) * sr:  # shard j is whole
                    for h in hooks:
                        record(h, j, torch.cat(pending[j][h]))
                    del pending[j]
            result.seconds_model += t1 - t0
            result.seconds_store += time.perf_counter() - t1
            result.batches_run += 1
        else:
            result.batches_skipped += 1
        row = hi
        if max_tokens is not None and row >= max_tokens:
            exhausted = False
            break
    for j, per_hook in pending.items():  # the short last shard (only at the end of the rows)
        for h in hooks:
            record(h, j, torch.cat(per_hook[h]))
    dist_ctx.barrier()  # every rank's shards are on disk
    if rank == 0:
        for h, path in stores.items():
            shards = _done_shards(path, wanted[h], False)
            n_shards = -(-row // sr)
            missing = [j for j in range(n_shards) if j not in shards]
            if missing:
                raise RuntimeError(
                    f"{path}: shards {missing[:5]} of {n_shards} were not written by any rank; "
                    "run the same command again to compute them"
                )
            m = read_manifest(path) if (path / MANIFEST).exists() else wanted[h]
            if not m.created:
                m.created = created_info()
            m.info.update(wanted[h].info)
            m.shards = [shards[j] for j in range(n_shards)]
            m.rows = sum(sh.rows for sh in m.shards)
            m.complete = True
            m.corpus_exhausted = exhausted
            write_bytes(path / MANIFEST, m.to_json().encode())
            shutil.rmtree(path / "parts", ignore_errors=True)
    dist_ctx.barrier()  # the manifests exist before any rank returns
    result.rows = row
    result.complete = True
    result.corpus_exhausted = exhausted
    result.seconds_total = time.perf_counter() - t_start
    return result
