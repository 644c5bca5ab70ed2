"""The training loop: one :class:`Trainer` for every encoder and every activation source.

Per step: the encoder's ``train_step`` gives the loss; backward; the gradient component parallel
to each atom is removed; Adam steps; atoms are projected back to unit norm; the encoder's
``after_step`` runs. Dead latents (no activation for ``dead_after_tokens`` tokens) are tracked
and handed to the encoder (TopK uses them for AuxK). With ``resample_every`` set, latents silent
for the last ``resample_window`` steps are resampled toward high-loss inputs every
``resample_every`` steps (:meth:`Trainer.resample_dead`). The Trainer holds no global state.

Under ``torchrun`` (a process group is initialised) the trainer is data-parallel by default:
``config.batch_size`` is the global batch, each rank steps on its share, gradients are averaged,
the firing that decides dead latents is OR-reduced, float encoder buffers (running thresholds)
and logged scalars are averaged, and only rank 0 writes checkpoints. With ``latent_group`` it
is latent-parallel instead (:mod:`sparsecodes.distributed.latent`). See docs/distributed.md.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

from sparsecodes import distributed as dist_ctx
from sparsecodes.codes import SparseCodes
from sparsecodes.distributed import reduce as dist_reduce
from sparsecodes.encoders.base import Encoder, TrainStepInput
from sparsecodes.files import atomic_write
from sparsecodes.seeding import derive_seed

if TYPE_CHECKING:
    from sparsecodes.activations.source import ActivationSource
    from sparsecodes.sparse_coder import SparseCoder

Callback = Callable[[int, "SparseCoder"], "dict[str, float] | None"]
"""``callback(step, coder)`` -> extra scalars for that step's history row (or None)."""
Logger = Callable[[dict[str, float]], None]
"""Receives every logged history row (a dict of floats with ``"step"``)."""


@dataclass
class TrainConfig:
    """Hyperparameters of a training run.

    ``decay_fraction``: the lr decays linearly to 0 over this final fraction of the steps.
    ``dead_after_tokens``: a latent is dead once it has not fired for this many tokens.
    ``b_dec_init``: ``"mean"`` sets the decoder bias to the first batch's mean before the first
    step of a fresh run with a trained dictionary (as SAELens's ``b_dec_init_method="mean"``);
    ``"zeros"`` leaves it (the synthetic model ``x = s D`` has no offset).
    ``resample_every``: every this many steps (0 = never), latents that have not fired in the last
    ``resample_window`` steps (None = ``resample_every``) are re-initialised toward high-loss
    inputs of that step's batch, their encoder weights at ``resample_scale`` times the mean norm
    of the others' (Anthropic's dead-neuron resampling; docs/training.md).
    ``autocast``: ``"bf16"`` runs each step's forward under ``torch.autocast`` in bfloat16 (the
    parameters, gradients and Adam state stay fp32: fp32 master weights); ``"off"`` runs it in
    fp32; ``"auto"`` is bf16 on CUDA devices with bf16 support and off elsewhere.
    """

    steps: int = 1000
    lr: float = 1e-3
    batch_size: int = 256
    warmup_steps: int = 0
    decay_fraction: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    dead_after_tokens: int = 100_000
    seed: int = 0
    log_every: int = 50
    progress: bool = False
    b_dec_init: str = "mean"
    resample_every: int = 0
    resample_window: int | None = None
    resample_scale: float = 0.2
    autocast: str = "auto"

    def validate(self) -> None:
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")
        if self.b_dec_init not in ("mean", "zeros"):
            raise ValueError(f"b_dec_init must be 'mean' or 'zeros', got {self.b_dec_init!r}")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise ValueError(f"decay_fraction must be in [0, 1], got {self.decay_fraction!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps!r}")
        if not isinstance(self.resample_every, int) or self.resample_every < 0:
            raise ValueError(
                f"resample_every must be an integer >= 0 (0 = off), got {self.resample_every!r}"
            )
        w = self.resample_window
        if w is not None and (not isinstance(w, int) or w < 1):
            raise ValueError(f"resample_window must be a positive integer or None, got {w!r}")
        if not (self.resample_scale > 0 and math.isfinite(self.resample_scale)):
            raise ValueError(f"resample_scale must be positive, got {self.resample_scale!r}")
        if self.autocast not in AUTOCAST_MODES:
            raise ValueError(
                f"autocast must be one of {', '.join(AUTOCAST_MODES)}, got {self.autocast!r}"
            )


AUTOCAST_MODES = ("auto", "bf16", "off")


def fit_config(
    seed: int,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    warmup_steps: int,
    decay_fraction: float,
    dead_after_tokens: int,
    progress: bool,
    log_every: int,
    b_dec_init: str = "mean",
) -> TrainConfig:
    """The :class:`TrainConfig` of an in-memory ``fit`` (``SparseCoder.fit``,
    ``Transcoder.fit``): their keyword options, the coder's ``seed`` (which fixes every draw of
    the run) and the decoder-bias start (``"zeros"`` for an autoencoder fitted to synthetic
    ``x = s D``, which has no offset); every other field keeps its default."""
    return TrainConfig(
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        warmup_steps=warmup_steps,
        decay_fraction=decay_fraction,
        dead_after_tokens=dead_after_tokens,
        seed=seed,
        log_every=log_every,
        progress=progress,
        b_dec_init=b_dec_init,
    )


def resolve_autocast(mode: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of a training step on ``device`` (None: no autocast, plain fp32)."""
    device = torch.device(device)
    if mode == "bf16":
        return torch.bfloat16
    if mode == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` at ``step``: linear warm-up, constant, linear decay to 0."""
    f = 1.0
    if cfg.warmup_steps and step < cfg.warmup_steps:
        f = (step + 1) / cfg.warmup_steps
    decay_start = int(cfg.steps * (1 - cfg.decay_fraction))
    if cfg.decay_fraction > 0 and step >= decay_start:
        f *= max(0.0, (cfg.steps - step) / max(1, cfg.steps - decay_start))
    return f


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """Fits a :class:`~sparsecodes.sparse_coder.SparseCoder` on an activation source.

    Args:
        coder: the model to train (its dictionary is trained unless ``freeze_dictionary``).
        config: run hyperparameters.
        freeze_dictionary: keep the dictionary fixed (known-dictionary setting).
        data_parallel: average over the ranks of ``data_group`` (None: whenever a process group
            is initialised and there is no ``latent_group``).
        data_group: the data-parallel process group (None = all ranks).
        latent_group: the group whose ranks each hold a slice of the latents (``coder`` is this
            rank's slice, see :func:`sparsecodes.distributed.latent.shard_coder`); None = off.
        writer: True: this coder is this process's alone (coders spread over ranks): no data
            parallelism, and this process writes its checkpoints without waiting for others.
            None: rank 0 writes, the others wait.
    """

    def __init__(
        self,
        coder: SparseCoder,
        config: TrainConfig,
        *,
        freeze_dictionary: bool = False,
        data_parallel: bool | None = None,
        data_group: Any = None,
        latent_group: Any = None,
        writer: bool | None = None,
    ):
        config.validate()
        self.writer = writer
        if writer:
            data_parallel = False
        self.coder = coder
        self.config = config
        self.freeze_dictionary = freeze_dictionary
        self.latent_group = latent_group
        if data_parallel is None:
            data_parallel = dist_ctx.active() and latent_group is None
        self.data_group = data_group
        self.data_ranks = dist_reduce.group_size(data_group) if data_parallel else 1
        if config.batch_size % self.data_ranks:
            raise ValueError(
                f"batch_size={config.batch_size} (the global batch) must be divisible by the "
                f"{self.data_ranks} data-parallel ranks"
            )
        if (self.data_ranks > 1 or latent_group is not None) and config.resample_every:
            raise ValueError(
                "resample_every > 0 is not supported with several processes (it draws rows of "
                "one rank's batch); set resample_every=0 or use AuxK (topk/batchtopk)"
            )
        for p in coder.dictionary.parameters():
            p.requires_grad_(not freeze_dictionary)
        params = [p for p in coder.parameters() if p.requires_grad]
        self.params = params
        if self.data_ranks > 1:  # every rank starts from rank 0's weights and normaliser
            dist_reduce.broadcast_module_(coder, group=data_group)
        if not params:
            raise ValueError(
                f"nothing to train: encoder {coder.encoder.name!r} has no parameters and the "
                "dictionary is frozen; use encode() directly for inference on a fixed dictionary"
            )
        # fused Adam (one kernel for all parameters) where torch has it, else the default
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
        self.optimizer = torch.optim.Adam(
            params, lr=config.lr, betas=config.betas, fused=fused or None
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, config)
        )
        if config.resample_every and coder.encoder.kind == "amortised":
            enc = type(coder.encoder)
            if enc.resample_latents is Encoder.resample_latents:
                raise ValueError(
                    f"encoder {coder.encoder.name!r} does not support dead-latent resampling "
                    "(resample_every > 0); set resample_every=0 or use AuxK (topk/batchtopk)"
                )
        n = coder.n_latents
        #: ``[n_latents]`` int64 on the coder's device: tokens since each latent last fired.
        self.tokens_since_fired = torch.zeros(n, dtype=torch.long, device=coder.device)
        self.state = TrainState()
        self.autocast_dtype = resolve_autocast(config.autocast, coder.device)
        # host-side bound: no latent can be dead before this many tokens (see _step_dead_mask)
        self._no_dead_before = 0
        # first step whose loss was not finite (-1: none), checked on host-scalar steps only
        self._bad_step = torch.full((), -1, dtype=torch.long, device=coder.device)

    @property
    def local_batch_size(self) -> int:
        """Rows this rank steps on: the global ``batch_size`` over the data-parallel ranks."""
        return self.config.batch_size // self.data_ranks

    def dead_mask(self) -> Tensor:
        """``[n_latents]`` bool: latents that have not fired for ``dead_after_tokens`` tokens."""
        return self.tokens_since_fired >= self.config.dead_after_tokens

    def recount_dead(self) -> None:
        """Forget the cached "no latent can be dead yet" bound; call after editing
        ``tokens_since_fired`` by hand (the next step looks at the counters again)."""
        self._no_dead_before = 0

    def _step_dead_mask(self) -> Tensor | None:
        """The dead mask for this step, or None while no latent can be dead yet.

        Every step adds the same number of tokens to every counter, so after one look at the
        largest counter ``m`` (a host sync) no latent can be dead for ``dead_after_tokens - m``
        more tokens; until then the step hands the encoder None and syncs nothing. While some
        latents are dead the mask is handed over every step (AuxK needs their number anyway).
        """
        limit = self.config.dead_after_tokens
        if self.state.tokens < self._no_dead_before:
            return None
        m = int(self.tokens_since_fired.max()) if self.tokens_since_fired.numel() else 0
        if m >= limit:
            return self.dead_mask()
        self._no_dead_before = self.state.tokens + limit - m
        return None

    def _update_firing(self, codes: Any, batch: int) -> Tensor:
        """Reset the counters of latents that fired in this batch (on device, no host sync);
        returns the mean L0 as a 0-dim tensor."""
        n = self.coder.n_latents
        if isinstance(codes, SparseCodes):
            nz = codes.values != 0
            hits = torch.zeros(n, dtype=torch.float32, device=nz.device)
            hits.index_add_(0, codes.indices.reshape(-1), nz.reshape(-1).float())
            fired = hits > 0
            l0 = nz.sum(dim=1).float().mean()
        else:
            nz = codes != 0
            fired = nz.any(dim=0)
            l0 = nz.sum(dim=1).float().mean()
        fired = fired.to(self.tokens_since_fired.device)
        if self.data_ranks > 1:  # fired on any rank; the tokens of the global batch
            fired = dist_reduce.any_(fired, self.data_group)
            batch *= self.data_ranks
        self.tokens_since_fired.add_(batch).masked_fill_(fired, 0)
        return l0

    def check_finite(self) -> None:
        """Raise :class:`FloatingPointError` if a step since the last check had a non-finite
        loss (a host sync; steps without host scalars record it on device only)."""
        bad = int(self._bad_step)
        if self.data_ranks > 1:  # every rank raises together
            bad = int(max(dist_reduce.gather_objects(bad, self.data_group)))
        if bad >= 0:
            raise FloatingPointError(
                f"loss became non-finite at step {bad}; lower lr (now {self.config.lr}) or check "
                "the inputs for extreme values"
            )

    def step(
        self,
        x: Tensor,
        target: Tensor | None = None,
        *,
        y: Tensor | None = None,
        host_scalars: bool = True,
    ) -> dict[str, float]:
        """One optimisation step on ``x`` ``[batch, d_in]`` (raw scale); returns its scalars.

        ``target``: ``[batch, n_latents]`` true codes for the known-codes setting, or None.
        ``y``: ``[batch, d_out]`` raw output activations a transcoder reconstructs from ``x``
        (scaled by ``coder.normaliser_out``, minus the coder's skip path,
        ``coder.dictionary_target``), or None for an autoencoder.
        ``host_scalars=False`` (what :func:`train_lockstep` passes on steps it does not log):
        nothing is copied to the host, so on CUDA the step queues its kernels without waiting;
        only ``step`` and ``tokens`` are returned, and a non-finite loss is recorded on device and
        raised by the next step with ``host_scalars=True`` (or :meth:`check_finite`). The encoder
        itself may still sync (BatchTopK's batch-wide selection; AuxK while latents are dead).
        Distributed steps (data or latent parallel) always take the host path: their finite
        check is a collective every rank must reach.
        """
        cfg = self.config
        coder = self.coder
        device = coder.dictionary.W_dec.device
        if self.data_ranks > 1 or self.latent_group is not None:
            # distributed: the finite check and the scalars are reduced on every step, so that
            # all ranks stop together and none is left waiting in a collective
            host_scalars = True
        coder.train()
        x = coder.normaliser(x.to(device, non_blocking=True).float())
        if target is not None:
            target = target.to(device).float() * coder.normaliser.scale
        if y is not None:
            y = coder.normaliser_out(y.to(device, non_blocking=True).float())
            y = coder.dictionary_target(x, y)
        step = self.state.step
        if step == 0 and cfg.b_dec_init == "mean" and not self.freeze_dictionary:
            with torch.no_grad():
                mean = (x if y is None else y).mean(dim=0)
                if self.data_ranks > 1:
                    dist_reduce.mean_([mean], self.data_group)
                coder.dictionary.b_dec.copy_(mean)
        dead = self._step_dead_mask()
        inp = TrainStepInput(x, coder.dictionary, step, dead, target, y)
        with torch.autocast(
            device.type,
            dtype=self.autocast_dtype or torch.bfloat16,
            enabled=self.autocast_dtype is not None,
        ):
            if self.latent_group is not None:
                from sparsecodes.distributed.latent import latent_train_step

                out = latent_train_step(coder.encoder, inp, self.latent_group)
            else:
                out = coder.encoder.train_step(inp)
        if host_scalars:
            self.check_finite()  # an earlier step's, recorded on device
            finite = bool(torch.isfinite(out.loss))
            if self.data_ranks > 1:  # every rank stops together, none waits in a collective
                finite = dist_reduce.mean_floats([float(finite)], self.data_group)[0] == 1.0
            if not finite:
                parts = {k: float(v.detach()) for k, v in out.losses.items()}
                raise FloatingPointError(
                    f"loss became {out.loss.item()} at step {step} (parts: {parts}); lower lr "
                    f"(now {cfg.lr}) or check the inputs for extreme values"
                )
        else:
            bad = ~torch.isfinite(out.loss.detach()) & (self._bad_step < 0)
            self._bad_step = torch.where(bad, step, self._bad_step)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.data_ranks > 1:
            dist_reduce.average_gradients_(self.params, self.data_group)
        if not self.freeze_dictionary:
            coder.dictionary.remove_parallel_grad_()
        self.optimizer.step()
        self.scheduler.step()
        if not self.freeze_dictionary:
            coder.dictionary.project_()
        coder.encoder.after_step()
        if self.data_ranks > 1:  # running thresholds and other float state: the ranks' mean
            floats = [b for b in coder.encoder.buffers() if b.is_floating_point()]
            dist_reduce.mean_(floats, self.data_group)
        codes = out.codes.detach()
        l0 = self._update_firing(codes, x.shape[0])
        self.state.step += 1
        self.state.tokens += x.shape[0] * self.data_ranks
        resampled = {}
        if cfg.resample_every and self.state.step % cfg.resample_every == 0:
            n_res = self.resample_dead(x, out.x_hat.detach())
            resampled = {"resampled": float(n_res)}
        if not host_scalars:
            return {"step": float(self.state.step), "tokens": float(self.state.tokens)}
        if self.latent_group is not None:  # each rank counted its own slice's active latents
            l0 = sum(dist_reduce.gather_objects(float(l0), self.latent_group))
        names = ["loss", "l0", *out.losses]
        values = [float(out.loss.detach()), float(l0)]
        values += [float(v.detach()) for v in out.losses.values()]
        if self.data_ranks > 1:
            values = dist_reduce.mean_floats(values, self.data_group)
        dead_frac = float(self.dead_mask().float().mean())
        if self.latent_group is not None:  # equal slices: the mean of the slices' fractions
            dead_frac = dist_reduce.mean_floats([dead_frac], self.latent_group)[0]
        return {
            "step": float(self.state.step),
            "tokens": float(self.state.tokens),
            **dict(zip(names[:2], values[:2], strict=True)),
            "dead_frac": dead_frac,
            "lr": float(self.scheduler.get_last_lr()[0]),
            **dict(zip(names[2:], values[2:], strict=True)),
            **resampled,
        }

    def resample_window_dead(self) -> Tensor:
        """``[n_latents]`` bool: latents that have not fired in the last ``resample_window``
        steps (``resample_every`` when None) at this run's batch size."""
        cfg = self.config
        window = cfg.resample_window or cfg.resample_every
        return self.tokens_since_fired >= window * cfg.batch_size

    @torch.no_grad()
    def resample_dead(self, x: Tensor, x_hat: Tensor) -> int:
        """Resample the latents dead for the window toward high-loss inputs; returns how many.

        ``x``, ``x_hat`` ``[batch, d_in]``: a (normalised) batch and its reconstruction. Each dead
        latent draws one row ``j`` (with replacement) with probability proportional to
        ``||x_j - x_hat_j||^2``; its atom becomes ``(x_j - b_dec) / ||x_j - b_dec||``, its encoder
        side is re-initialised by ``encoder.resample_latents`` (encoder weights along the same
        direction at ``resample_scale`` times the other latents' mean norm, encoder bias 0), the
        Adam moments of those rows are zeroed and their dead counters restart. The draw uses a
        generator seeded from ``(seed, "resample", step)``, so a resumed run draws the same rows.
        """
        coder = self.coder
        dead = self.resample_window_dead()
        idx = dead.nonzero().squeeze(1)
        if idx.numel() == 0:
            return 0
        device = coder.dictionary.W_dec.device
        err = (x - x_hat).pow(2).sum(dim=1).double().cpu()
        if not bool(err.sum() > 0):
            return 0
        g = torch.Generator().manual_seed(
            derive_seed(self.config.seed, f"resample:{self.state.step}")
        )
        rows = torch.multinomial(err, idx.numel(), replacement=True, generator=g)
        centred = x[rows.to(x.device)] - coder.dictionary.b_dec
        directions = centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-12)
        idx_d = idx.to(device)
        touched: list[tuple[Tensor, int]] = []
        if not self.freeze_dictionary:
            coder.dictionary.W_dec[idx_d] = directions.to(coder.dictionary.W_dec.dtype)
            touched.append((coder.dictionary.W_dec, 0))
        touched += coder.encoder.resample_latents(idx_d, directions, self.config.resample_scale)
        for p, dim in touched:
            state = self.optimizer.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key].index_fill_(dim, idx_d, 0.0)
        self.tokens_since_fired[idx] = 0
        return int(idx.numel())

    def fit(
        self,
        source: ActivationSource,
        *,
        callback: Callback | None = None,
        callback_every: int | None = None,
    ) -> list[dict[str, float]]:
        """Run until ``config.steps``; returns the logged history (one dict per log point).

        ``callback(step, coder)`` runs every ``callback_every`` steps (default ``log_every``) and
        after the last; a dict it returns is merged into that history row. The loop is
        :func:`train_lockstep` with this one trainer.
        """
        train_lockstep([self], [source], callback=callback, callback_every=callback_every)
        return self.state.history

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: str | Path, source: ActivationSource | None = None) -> Path:
        """Write a resumable checkpoint to directory ``path`` atomically (old one kept until done).

        Layout: ``path/model`` (SparseCoder.save) and ``path/trainer.pt`` (optimiser, schedule,
        counters, history, the source's state). Under data parallelism every rank calls it (the
        source's state may gather every rank's position) and rank 0 alone writes. Under latent
        parallelism every rank calls it too: the slices (weights, Adam moments, dead counters)
        are gathered and rank 0 writes the *full* coder's checkpoint, the same files one process
        holding every latent writes, so any number of latent ranks (or one process) resumes it.
        """
        self.check_finite()  # never write weights a non-finite step has touched
        source_state = source.state_dict() if source is not None else None
        path = Path(path)
        self.coder.train_config = {**self.coder.train_config, **self.config_dict()}
        coder, optim_state, fired = self.coder, self.optimizer.state_dict(), self.tokens_since_fired
        if self.latent_group is not None:  # collectives on every rank: the full coder's state
            coder, optim_state, fired = self._gather_latent_state(optim_state)
        if not (self.writer or dist_ctx.world().main):
            dist_ctx.barrier()  # rank 0 is writing; nobody reads it before it is whole
            return path
        tmp = path.with_name(f".{path.name}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        coder.save(tmp / "model")
        blob = {
            "optimizer": optim_state,
            "scheduler": self.scheduler.state_dict(),
            "tokens_since_fired": fired.cpu(),
            "state": asdict(self.state),
            "source": source_state,
            "config": self.config_dict(),
        }
        atomic_write(tmp / "trainer.pt", lambda f: torch.save(blob, f))
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        if old.exists():
            shutil.rmtree(old)
        if not self.writer:
            dist_ctx.barrier()
        return path

    def load_checkpoint(self, path: str | Path, source: ActivationSource | None = None) -> None:
        """Restore model, optimiser, schedule, counters and (if given) the source's position."""
        path = Path(path)
        if not (path / "trainer.pt").is_file():
            old = path.with_name(f".{path.name}.old")  # killed between the two renames
            if (old / "trainer.pt").is_file():
                path = old
            else:
                raise FileNotFoundError(f"no checkpoint at {path} (expected {path}/trainer.pt)")
        # type(coder).load, not an import of sparse_coder: training never imports the coder
        # module at run time (sparse_coder imports training; see docs/architecture.md)
        saved = type(self.coder).load(path / "model", device=str(self.coder.device))
        full_latents = saved.n_latents
        if self.latent_group is not None:  # this rank's slice of the full checkpoint
            from sparsecodes.distributed import latent

            saved = latent.shard_coder(saved, self.latent_group)
        mine, theirs = self.coder.config(), saved.config()
        for key in ("d_in", "n_latents", "encoder", "encoder_config", "normalize"):
            if mine[key] != theirs[key]:
                raise ValueError(
                    f"checkpoint {path} was made with {key}={theirs[key]!r} but this run has "
                    f"{key}={mine[key]!r}; resume with the same settings or use a new run dir"
                )
        self.coder.load_state_dict(saved.state_dict())
        self.coder.mark_fitted()
        blob = torch.load(path / "trainer.pt", weights_only=False)
        optim_state, fired = blob["optimizer"], blob["tokens_since_fired"]
        if self.latent_group is not None:
            optim_state, fired = self._shard_latent_state(optim_state, fired, full_latents)
        self.optimizer.load_state_dict(optim_state)
        self.scheduler.load_state_dict(blob["scheduler"])
        self.tokens_since_fired = fired.to(self.coder.device)
        self.recount_dead()
        self.state = TrainState(**blob["state"])
        if source is not None and blob["source"] is not None:
            source.load_state_dict(blob["source"])

    def config_dict(self) -> dict[str, Any]:
        return {**asdict(self.config), "freeze_dictionary": self.freeze_dictionary}

    def _param_names(self) -> list[str]:
        ids = {id(p): name for name, p in self.coder.named_parameters()}
        return [ids[id(p)] for p in self.params]

    def _gather_latent_state(self, optim_state: dict[str, Any]) -> tuple[Any, Any, Tensor]:
        """The full coder, optimiser state and dead counters from every latent rank's slice."""
        from sparsecodes.distributed import latent

        group = self.latent_group
        full = latent.gather_coder(self.coder, group)
        optim = latent.gather_optimizer_state(optim_state, self._param_names(), self.params, group)
        fired = latent.gather_along(self.tokens_since_fired, 0, group)
        return full, optim, fired

    def _shard_latent_state(
        self, optim_state: dict[str, Any], fired: Tensor, n_latents: int
    ) -> tuple[dict[str, Any], Tensor]:
        """This rank's slices of a full checkpoint's optimiser state and dead counters."""
        from sparsecodes.distributed import latent

        group = self.latent_group
        names = self._param_names()
        optim = latent.shard_optimizer_state(optim_state, names, n_latents, group)
        sl = latent.latent_slice(n_latents, dist.get_rank(group), dist.get_world_size(group))
        return optim, fired[sl].clone()


class TranscoderTrainer(Trainer):
    """Trains a :class:`~sparsecodes.transcoder.Transcoder`: its sources yield ``(x_in, y_out)``
    pairs, so the second element of each batch is the output activations ``y`` (not known codes).

    Dead-latent resampling is refused (its new atoms would be input-space directions).
    """

    def __init__(
        self,
        coder: Any,
        config: TrainConfig,
        *,
        freeze_dictionary: bool = False,
        writer: bool | None = None,
    ):
        if config.resample_every:
            raise ValueError(
                "dead-latent resampling (resample_every > 0) is not available for transcoders; "
                "set resample_every=0 and use AuxK (topk/batchtopk) against dead latents"
            )
        super().__init__(coder, config, freeze_dictionary=freeze_dictionary, writer=writer)

    def step(
        self,
        x: Tensor,
        target: Tensor | None = None,
        *,
        y: Tensor | None = None,
        host_scalars: bool = True,
    ) -> dict[str, float]:
        """One step on ``x`` ``[batch, d_in]`` toward ``y`` ``[batch, d_out]`` (``target`` is
        taken as ``y`` when given positionally, as :func:`train_lockstep` does)."""
        y = target if y is None else y
        if y is None:
            raise ValueError("a transcoder step needs the output activations y [batch, d_out]")
        return super().step(x, y=y, host_scalars=host_scalars)


def train_lockstep(
    trainers: Sequence[Trainer],
    sources: Sequence[ActivationSource],
    *,
    loggers: Sequence[Sequence[Logger]] | None = None,
    callback: Callback | None = None,
    callback_every: int | None = None,
    after_step: Callable[[int], None] | None = None,
) -> None:
    """The training loop: step every trainer on its source until ``config.steps``, in lockstep.

    All trainers share one config's ``steps``, ``batch_size``, ``log_every`` and ``progress``.
    Each starts where its state is (0, or a loaded checkpoint's step); at loop step ``s`` a
    trainer already past ``s`` sits out, so resumed trainers line up again. A history row is
    logged (appended to ``trainer.state.history`` and handed to ``loggers[i]`` in order) every
    ``log_every`` steps, after the last step and whenever the callback runs;
    ``row["tokens_per_s"]`` is the loop's throughput over all trainers divided by their number.
    ``callback(step, coder)`` runs (coder in eval mode) every ``callback_every`` steps (default
    ``log_every``) and after the last; a dict it returns is merged into that row.
    ``after_step(n)`` runs after loop step ``n`` (1-based) of every trainer, e.g. to write
    checkpoints. Every coder is left in eval mode.
    """
    if len(trainers) != len(sources) or not trainers:
        raise ValueError(f"need one source per trainer, got {len(trainers)} and {len(sources)}")
    cfg = trainers[0].config
    for t in trainers[1:]:
        for key in ("steps", "batch_size", "log_every", "progress"):
            if getattr(t.config, key) != getattr(cfg, key):
                raise ValueError(
                    f"trainers stepped in lockstep need the same {key}: "
                    f"{getattr(t.config, key)!r} != {getattr(cfg, key)!r}"
                )
    sinks = [list(lg) for lg in loggers] if loggers is not None else [[] for _ in trainers]
    if len(sinks) != len(trainers):
        raise ValueError(f"need one logger list per trainer, got {len(sinks)}")
    every = callback_every or cfg.log_every
    start = min(t.state.step for t in trainers)
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, unit="step", dynamic_ncols=True)
    for s, t in zip(sources, trainers, strict=True):
        if t.data_ranks > 1 and getattr(s, "world_size", 1) != t.data_ranks:
            raise ValueError(
                f"data-parallel training over {t.data_ranks} ranks needs a source that gives "
                "each rank its own rows (StoreSource(rank=, world_size=), LiveModelSource(rank=, "
                "world_size=) or sparsecodes.distributed.RankSlice); this one would feed every "
                "rank the same rows"
            )
    batch_iters = [s.batches(t.local_batch_size) for s, t in zip(sources, trainers, strict=True)]
    t0, tokens0 = time.perf_counter(), sum(t.state.tokens for t in trainers)
    for step in range(start, cfg.steps):
        rows: dict[int, dict[str, float]] = {}
        n = step + 1
        last = n == cfg.steps
        want_cb = callback is not None and (n % every == 0 or last)
        log = n % cfg.log_every == 0 or last or want_cb  # only these steps copy scalars to host
        for i, (trainer, batches) in enumerate(zip(trainers, batch_iters, strict=True)):
            if trainer.state.step > step:  # this one had a later checkpoint
                continue
            x, target = next(batches)
            rows[i] = trainer.step(x, target, host_scalars=log)
        if rows and log:
            rate = (sum(t.state.tokens for t in trainers) - tokens0) / max(
                time.perf_counter() - t0, 1e-9
            )
            for i, row in rows.items():
                row["tokens_per_s"] = rate / len(trainers)
                if want_cb:
                    trainers[i].coder.eval()
                    extra = callback(n, trainers[i].coder)  # type: ignore[misc]
                    if extra:
                        row.update(extra)
                trainers[i].state.history.append(row)
                for sink in sinks[i]:
                    sink(row)
            if bar is not None:
                r = next(iter(rows.values()))
                bar.set_postfix(
                    loss=f"{r['loss']:.4g}",
                    l0=f"{r['l0']:.1f}",
                    dead=f"{100 * r['dead_frac']:.1f}%",
                    tok_s=f"{rate:,.0f}",
                )
        if after_step is not None:
            after_step(n)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    for t in trainers:
        t.coder.eval()
