"""Train coders on activation stores or a live model: one call builds the jobs and runs them.

:func:`train_coders` is what ``sparsecodes train`` calls; it raises :class:`JobSpecError` for
choices that do not fit together (naming the parameter) and returns one :class:`TrainedRun` per
coder. Notes go to the ``sparsecodes.training.jobs`` logger.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from pathlib import Path
from typing import Any

from sparsecodes import distributed as dist_ctx
from sparsecodes.devices import resolve_device
from sparsecodes.sparse_coder import SparseCoder
from sparsecodes.training.log import WandbLogger, require_tensorboard
from sparsecodes.training.run import RunJob, train_runs
from sparsecodes.training.trainer import AUTOCAST_MODES, TrainConfig

NORMALISER_SAMPLE_ROWS = 16384

log = logging.getLogger(__name__)


#: how ``train_coders`` spreads training over ``torchrun``'s processes (docs/distributed.md)
PARALLEL_MODES = ("data", "latent", "modules", "data,latent")


class JobSpecError(ValueError):
    """Choices that do not fit together; ``param`` names the :func:`train_coders` argument."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """One trained coder: its run directory (``final/`` inside), its last logged row
    (``step``, ``mse``, ``l0``, ``dead_frac``, ...), and its SAELens export (``final_saelens/``)
    or why there is none."""

    run_dir: Path
    last_row: dict[str, float]
    saelens_dir: Path | None = None
    saelens_error: str | None = None


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def _samples(sources: list[Any], rows: int) -> list[tuple[Any, Any]]:
    """``(x, y)``: the first ``rows`` rows of each source, drawn in lockstep (live views share
    passes); ``y`` the paired outputs of a pair source, else None."""
    import torch

    iters = [s.batches(min(rows, 4096)) for s in sources]
    parts: list[list[Any]] = [[] for _ in sources]
    got = 0
    while sources and got < rows:
        for part, it in zip(parts, iters, strict=True):
            part.append(next(it))
        got += parts[0][-1][0].shape[0]
    out = []
    for p in parts:
        x = torch.cat([b[0] for b in p])[:rows]
        y = None if p[0][1] is None else torch.cat([b[1] for b in p])[:rows]
        out.append((x, y))
    return out


def train_coders(
    *,
    stores: tuple[Path, ...],
    model: str | None,
    hooks: tuple[str, ...],
    corpus: str | None,
    context_size: int,
    encoders: tuple[str, ...],
    encoder_params: dict[str, Any],
    n_latents: int | None,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    decay_fraction: float,
    normalize: str,
    seed: int,
    checkpoint_every: int,
    no_resume: bool,
    device: str,
    saelens: bool,
    wandb_project: str | None,
    out: Path,
    tensorboard_dir: Path | None = None,
    progress: bool = True,
    transcoders: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (),
    skip: bool = False,
    resample_every: int = 0,
    resample_window: int | None = None,
    resample_scale: float = 0.2,
    parallel: str = "data",
    latent_ranks: int | None = None,
    eval_every: int = 0,
    eval_tokens: int = 2048,
    eval_corpus: str | None = None,
    autocast: str = "auto",
) -> list[TrainedRun]:
    """Train one coder per (source, encoder): activation ``stores``, or ``model`` at ``hooks``
    streamed over ``corpus`` (one forward pass feeds every coder).

    With one coder its run directory is ``out``; with several, ``out/<hook>/<encoder>``.
    ``encoder_params`` go to each encoder that has a field of that name.
    ``tensorboard_dir``: TensorBoard event files there, or with several coders in
    ``tensorboard_dir/<hook>-<encoder>`` (the wandb run name), one subdirectory per run.
    ``saelens``: also write ``final_saelens/`` where the encoder has a SAELens architecture.
    ``resample_every``, ``resample_window``, ``resample_scale``: dead-latent resampling, as
    :class:`~sparsecodes.training.trainer.TrainConfig`'s fields of those names (0 = off).

    ``autocast``: the precision of each step's forward, as
    :class:`~sparsecodes.training.trainer.TrainConfig`'s field (``"auto"``, ``"bf16"``, ``"off"``).

    ``transcoders``: ``(in_hooks, out_hooks)`` pairs streamed from ``model`` beside ``hooks``:
    one :class:`~sparsecodes.transcoder.Transcoder` per pair and encoder (a crosscoder when a side
    has several hooks), run directory label ``<in>__<out>``; ``skip`` gives them a skip path.

    ``eval_every`` > 0: every that many steps (and after the last), the CE-loss and KL scores of
    each SAE spliced into its model on ``eval_tokens`` held-out tokens (``eval_corpus``, else the
    embedded corpus's held-out split) join the history row (columns ``ce_loss_score``,
    ``kl_score``; :class:`~sparsecodes.evaluation.during_training.SpliceMonitor`). The model is
    the live one, or the one a store records (loaded once per model); transcoders are skipped
    with a warning.

    Raises :class:`JobSpecError` (a ``ValueError``) before any model is loaded when the choices
    do not fit together.

    Under ``torchrun`` (a process group initialised, see :mod:`sparsecodes.distributed`) every
    rank calls this with the same arguments: training is data-parallel with ``batch_size`` as
    the global batch, each rank reading its own shards of each store or its own forward passes
    of the corpus; rank 0 writes the run directories. With ``parallel="latent"`` every rank
    reads the same rows (all of each store, every forward pass) and holds ``1 / world_size`` of
    each coder's latents (topk and batchtopk); checkpoints and ``final/`` hold the full coders.
    With ``parallel="modules"`` the stores (or hooks, then transcoder pairs) are dealt to the
    ranks in turn (unit ``i`` to rank ``i mod world_size``); each rank streams every forward pass
    (recording only its hooks) or reads its stores whole, trains its coders alone as one process
    would, writes their run directories and returns only its runs.
    With ``parallel="data,latent"`` the ranks form a grid (:func:`sparsecodes.distributed.
    make_grid`): groups of ``latent_ranks`` consecutive ranks each hold one coder's latents
    split between them and read their own rows (``world_size / latent_ranks`` data-parallel
    groups), and gradients are averaged over the ranks holding the same slice.
    """
    w = dist_ctx.world()
    if parallel not in PARALLEL_MODES:
        raise JobSpecError(
            "parallel", f"parallel must be one of {', '.join(PARALLEL_MODES)}, got {parallel!r}"
        )
    if parallel == "data,latent":
        if latent_ranks is None or latent_ranks < 1:
            raise JobSpecError(
                "latent_ranks",
                "--parallel data,latent needs the number of ranks sharing one coder's latents, "
                "e.g. --latent-ranks 2 (the processes per node at most)",
            )
        if w.size > 1 and w.size % latent_ranks:
            raise JobSpecError(
                "latent_ranks",
                f"{w.size} processes cannot form latent groups of {latent_ranks}; the number "
                "of processes must be a multiple of --latent-ranks",
            )
    elif latent_ranks is not None:
        raise JobSpecError("latent_ranks", "--latent-ranks is for --parallel data,latent")
    grid = None
    if parallel == "data,latent" and w.size > 1:
        from sparsecodes.distributed import make_grid

        grid = make_grid(latent_ranks or 1)
    latent = (parallel == "latent" or grid is not None) and w.size > 1
    latent_size = grid.latent_size if grid is not None else w.size
    modules = parallel == "modules" and w.size > 1
    n_units = len(stores) if stores else len(hooks) + len(transcoders)
    if modules:  # unit i (store, or hook then transcoder pair) is trained by rank i mod size
        if n_units < w.size:
            raise JobSpecError(
                "parallel",
                f"--parallel modules spreads {n_units} stores/hooks/transcoders over {w.size} "
                "ranks: give at least one per rank, or use data parallelism",
            )
        stores = tuple(s for i, s in enumerate(stores) if i % w.size == w.rank)
        hooks_all = hooks
        hooks = tuple(h for i, h in enumerate(hooks) if i % w.size == w.rank)
        transcoders = tuple(
            t for j, t in enumerate(transcoders) if (len(hooks_all) + j) % w.size == w.rank
        )
    if latent:
        from sparsecodes.distributed.latent import LATENT_ENCODERS

        bad = [e for e in encoders if e not in LATENT_ENCODERS]
        if bad:
            raise JobSpecError(
                "parallel",
                f"latent parallelism trains {' and '.join(LATENT_ENCODERS)} coders, not "
                f"{', '.join(bad)}; use data parallelism (the default) for those",
            )
        if transcoders:
            raise JobSpecError("parallel", "latent parallelism does not train transcoders yet")
        if n_latents is not None and n_latents % latent_size:
            raise JobSpecError(
                "parallel",
                f"--n-latents {n_latents} must be divisible by the {latent_size} "
                "latent-parallel ranks",
            )
    # data parallel: each rank its own rows; latent parallel: every rank the same rows
    # (modules: every rank runs every forward pass, or reads its whole stores, for its coders;
    # data x latent: each latent group its own rows, the same on every rank of the group)
    src_rank, src_size = (0, 1) if latent or modules else (w.rank, w.size)
    if grid is not None:
        src_rank, src_size = grid.data_rank, grid.data_size
    if bool(stores) == bool(model):
        raise JobSpecError("stores", "give either activation stores or a model with hooks")
    if transcoders and stores:
        raise JobSpecError(
            "transcoders", "transcoders stream (input, output) pairs from --model, not stores"
        )
    if model and not hooks and not transcoders and not modules:
        raise JobSpecError("hooks", "streaming from a model needs at least one hook")
    if skip and not transcoders:
        raise JobSpecError("skip", "a skip path is for transcoders; add --transcoder")
    if transcoders:
        from sparsecodes.transcoder import TRANSCODER_ENCODERS

        bad = [e for e in encoders if e not in TRANSCODER_ENCODERS]
        if bad:
            raise JobSpecError(
                "encoders",
                f"{', '.join(bad)} cannot train a transcoder; use {', '.join(TRANSCODER_ENCODERS)}",
            )
    if autocast not in AUTOCAST_MODES:
        raise JobSpecError(
            "autocast", f"autocast must be one of {', '.join(AUTOCAST_MODES)}, got {autocast!r}"
        )
    if eval_every < 0 or (eval_every and eval_tokens < 1):
        raise JobSpecError("eval_every", "--eval-every and --eval-tokens must be positive")
    if tensorboard_dir is not None:
        try:  # before loading any model: fail fast
            require_tensorboard()
        except RuntimeError as e:
            raise JobSpecError("tensorboard_dir", str(e)) from e
    # (label, new source, sampler, meta): every coder gets its own source (the same rows in the
    # same order), so coders of one hook never split its batches between them
    sources: list[tuple[str, Any, Any, dict[str, Any]]] = []
    if stores:
        from sparsecodes.activations.reader import StoreSource
        from sparsecodes.activations.store import read_manifest

        for path in stores:
            m = read_manifest(path)
            meta = {
                "model_name": m.model,
                "hook_name": m.hook,
                "store": str(path),
                "context_size": m.context_size,
            }
            sampler = StoreSource(path, seed=seed + 1)
            new_src = functools.partial(
                StoreSource,
                path,
                seed=seed,
                rank=src_rank,
                world_size=src_size,
                group=grid.data_group if grid is not None else None,
            )
            sources.append((slug(m.hook), new_src, sampler, meta))
    else:
        from sparsecodes.activations.live import LiveModelSource
        from sparsecodes.data import load_texts
        from sparsecodes.models import load_model

        adapter = load_model(model, device=device)
        texts = list(load_texts(corpus))
        streamed = list(dict.fromkeys([*hooks, *(h for i, o in transcoders for h in (*i, *o))]))
        for h in streamed:
            try:
                adapter.hook_shape(h)
            except ValueError as e:
                raise JobSpecError("transcoders" if h not in hooks else "hooks", str(e)) from e
        live = LiveModelSource(
            adapter,
            texts,
            streamed,
            context_size=context_size,
            seed=seed,
            rank=src_rank,
            world_size=src_size,
        )
        sampler_live = LiveModelSource(
            adapter, texts, streamed, context_size=context_size, seed=seed + 1
        )
        for h in hooks:
            meta = {
                "model_name": adapter.name,
                "hook_name": h,
                "corpus": corpus or "embedded",
                "context_size": context_size,
            }
            new_view = functools.partial(live.hook_source, h)  # views in lockstep share passes
            sources.append((slug(h), new_view, sampler_live.hook_source(h), meta))
        for ins, outs in transcoders:
            meta = {
                "model_name": adapter.name,
                "hook_name": "+".join(ins),
                "hook_name_out": "+".join(outs),
                "in_hooks": list(ins),
                "out_hooks": list(outs),
                "in_widths": [live.d_in[h] for h in ins],
                "out_widths": [live.d_in[h] for h in outs],
                "corpus": corpus or "embedded",
                "context_size": context_size,
            }
            new_view = functools.partial(live.pair_source, ins, outs)
            label = slug(f"{'+'.join(ins)}__{'+'.join(outs)}")
            sources.append((label, new_view, sampler_live.pair_source(ins, outs), meta))

    from sparsecodes.encoders import get_encoder_class

    per_encoder: dict[str, dict[str, Any]] = {}
    used: set[str] = set()
    for enc in encoders:
        fields = {f.name for f in dataclasses.fields(get_encoder_class(enc).config_cls)}
        per_encoder[enc] = {k: v for k, v in encoder_params.items() if k in fields}
        used |= set(per_encoder[enc])
    unused = sorted(set(encoder_params) - used)
    if unused:
        raise JobSpecError(
            "encoder_params",
            f"{', '.join(unused)} fits none of the encoders {list(encoders)}; "
            "see `sparsecodes encoders` for their parameters",
        )

    adapters: dict[str, Any] = {} if stores else {adapter.name: adapter}
    monitors: dict[tuple[str, str], Any] = {}  # (model, hook) -> SpliceMonitor, shared

    def monitor_for(meta: dict[str, Any]) -> Any:
        from sparsecodes.evaluation.during_training import splice_monitor

        hook, name = meta["hook_name"], meta["model_name"]
        if (name, hook) not in monitors:
            if name not in adapters:
                from sparsecodes.models import load_model

                try:
                    adapters[name] = load_model(name, device=device)
                except ValueError as e:
                    raise JobSpecError(
                        "eval_every",
                        f"the store of {hook} records model {name!r}, which cannot be loaded "
                        f"for the CE/KL scores ({e}); drop --eval-every",
                    ) from e
            monitors[name, hook] = splice_monitor(
                adapters[name],
                hook,
                eval_tokens=eval_tokens,
                context_size=int(meta.get("context_size") or context_size),
                corpus=eval_corpus,
            )
        return monitors[name, hook]

    jobs = []
    samples = _samples([sampler for _, _, sampler, _ in sources], NORMALISER_SAMPLE_ROWS)
    for (label, new_src, sampler, meta), (sample, sample_y) in zip(sources, samples, strict=True):
        d_in = sampler.d_in
        for enc in encoders:
            src = new_src()
            coder: Any
            if sample_y is not None:
                from sparsecodes.transcoder import Transcoder

                coder = Transcoder(
                    d_in,
                    n_latents or 8 * d_in,
                    enc,
                    d_out=sampler.d_out,
                    skip=skip,
                    in_hooks=meta["in_hooks"],
                    out_hooks=meta["out_hooks"],
                    in_widths=meta["in_widths"],
                    out_widths=meta["out_widths"],
                    normalize=normalize,
                    seed=seed,
                    device=resolve_device(device),
                    **per_encoder[enc],
                )
                coder.normaliser_out.fit(sample_y)
            else:
                coder = SparseCoder(
                    d_in,
                    n_latents or 8 * d_in,
                    enc,
                    normalize=normalize,
                    seed=seed,
                    device=resolve_device(device),
                    **per_encoder[enc],
                )
            coder.normaliser.fit(sample)
            several = len(encoders) > 1 or n_units > 1
            run_dir = out / label / enc if several else out
            tb_dir = None
            if tensorboard_dir is not None:
                tb_dir = tensorboard_dir / f"{label}-{enc}" if several else tensorboard_dir
            loggers = []
            if wandb_project and (w.main or modules):
                loggers.append(
                    WandbLogger(wandb_project, {**meta, **coder.config()}, f"{label}-{enc}")
                )
            pairs = sample_y is not None
            extra: dict[str, Any] = {"source": meta}
            if w.size > 1:  # how this run was spread: recorded in run.json
                extra["parallel"] = {"mode": parallel, "world_size": w.size}
                if grid is not None:
                    extra["parallel"]["latent_ranks"] = grid.latent_size
                if modules:
                    extra["parallel"]["rank"] = w.rank
            job = RunJob(coder, src, run_dir, extra, loggers, tb_dir, pairs)
            if eval_every and pairs:
                log.warning(
                    "--eval-every: no CE/KL scores for the transcoder %s (only SAEs are spliced "
                    "during training; evaluate it afterwards with sparsecodes graph)",
                    run_dir,
                )
            elif eval_every:
                from sparsecodes.evaluation.during_training import COLUMNS

                job.callback, job.callback_columns = monitor_for(meta), COLUMNS
            jobs.append(job)
    cfg = TrainConfig(
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        warmup_steps=warmup_steps,
        decay_fraction=decay_fraction,
        seed=seed,
        progress=progress and w.main,
        log_every=max(1, min(50, steps // 20)),
        resample_every=resample_every,
        resample_window=resample_window,
        resample_scale=resample_scale,
        autocast=autocast,
    )
    latent_group = data_group = None
    if grid is not None:
        latent_group, data_group = grid.latent_group, grid.data_group
    elif latent:
        import torch.distributed as dist

        latent_group = dist.group.WORLD
    coders = train_runs(
        jobs,
        cfg,
        checkpoint_every=checkpoint_every,
        resume=not no_resume,
        latent_group=latent_group,
        data_group=data_group,
        own_runs=modules,
        callback_every=eval_every or None,
    )
    results = []
    for job, coder in zip(jobs, coders, strict=True):
        sl_dir, sl_error = None, None
        if saelens and (w.main or modules):
            meta = job.extra_config["source"]
            try:
                sl_dir = coder.save(
                    job.run_dir / "final_saelens",
                    format="saelens",
                    model_name=meta.get("model_name"),
                    hook_name=meta.get("hook_name"),
                    **({"hook_name_out": meta["hook_name_out"]} if job.pairs else {}),
                )
            except ValueError as e:  # an encoder SAELens has no architecture for, ...
                sl_error = str(e)
                log.info("no SAELens export for %s: %s", job.run_dir, e)
        last = dict(coder.history[-1]) if coder.history else {}
        results.append(TrainedRun(job.run_dir, last, sl_dir, sl_error))
    return results
