"""``Transcoder``: a sparse coder that reads one activation and reconstructs another.

A transcoder encodes ``x`` ``[n, d_in]`` read at ``in_hook`` (e.g. ``blocks.3.mlp_in``) into
sparse codes and decodes them into ``y_hat`` ``[n, d_out]`` at ``out_hook`` (``blocks.3.mlp_out``),
so that the MLP can be replaced by a sparse, interpretable map. It shares every part with
:class:`~sparsecodes.sparse_coder.SparseCoder`: the amortised encoders (relu, topk, batchtopk,
matryoshka_batchtopk, jumprelu, gated, mlp), the unit-norm :class:`~sparsecodes.dictionary.Dictionary`
(here over the *output* space) and the training loop. Differences:

- the encoder does not subtract the (output-space) ``b_dec`` from its input
  (:attr:`TranscoderDictionary.input_bias` is zero);
- ``skip=True`` adds a trained linear path ``x @ W_skip`` (``W_skip`` ``[d_in, d_out]``, starts at
  0), a *skip transcoder*;
- input and output have their own scalar normalisers (``normalize="expected_norm"`` scales each to
  mean norm ``sqrt(d)``); the raw-scale views ``W_dec_out``, ``b_dec_out``, ``W_skip`` and
  :meth:`encode_pre` fold them in.

A **crosscoder** is a transcoder whose input and output are several hooks concatenated
(``in_hooks``/``out_hooks``): its pre-activations ``sum_l x_l @ W_enc[l]`` sum per-layer encoders
and its decoder ``W_dec`` ``[n_latents, sum d_out_l]`` has one block per output layer
(:meth:`Transcoder.split_out`).

Iterative inference (FISTA, MP, OMP, ...) runs on the decoder: given the true output ``y``,
``encode(x, inference="fista", y=y)`` solves for the codes that best reconstruct
``y - skip(x)`` with the trained atoms (the amortisation gap of a transcoder).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sparsecodes.coder_files import (
    SaveFormats,
    load_state_checked,
    read_coder_files,
    write_coder_files,
)
from sparsecodes.codes import Codes, to_dense
from sparsecodes.devices import resolve_device
from sparsecodes.dictionary import Dictionary
from sparsecodes.encoders import get_encoder_class, make_encoder
from sparsecodes.encoders.base import Encoder
from sparsecodes.encoders.jumprelu import jumprelu
from sparsecodes.encoders.relu import LinearEncoderParams
from sparsecodes.normalise import NormaliseKind, Normaliser
from sparsecodes.provenance import CoderSource
from sparsecodes.seeding import derive_seed
from sparsecodes.validation import as_activations

FORMAT = "sparsecodes_transcoder"
FORMAT_VERSION = 1

#: encoders a transcoder can be trained with (amortised; their input is not the output space)
TRANSCODER_ENCODERS = (
    "relu",
    "topk",
    "batchtopk",
    "matryoshka_batchtopk",
    "jumprelu",
    "gated",
    "mlp",
)
#: encoders whose codes are ``activate(affine pre-activations)`` (what attribution graphs need)
AFFINE_ENCODERS = ("relu", "topk", "batchtopk", "matryoshka_batchtopk", "jumprelu")

#: Other on-disk formats :meth:`Transcoder.save` can write (``"saelens"``, registered by
#: ``sparsecodes.formats``): name -> ``writer(transcoder, path, **kw)``.
SAVE_FORMATS = SaveFormats("Transcoder")


def register_save_format(name: str, writer: Callable[..., Path]) -> None:
    """Make ``Transcoder.save(path, format=name, **kw)`` call ``writer(transcoder, path, **kw)``."""
    SAVE_FORMATS.register(name, writer)


class TranscoderDictionary(Dictionary):
    """Output-space atoms ``W_dec`` ``[n_latents, d_out]`` and bias ``b_dec`` ``[d_out]`` of a
    transcoder reading ``d_in``-wide inputs: :attr:`input_bias` is zeros ``[d_in]``, so the
    encoders leave their input uncentred."""

    def __init__(
        self, d_in: int, d_out: int, n_latents: int, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(d_out, n_latents, generator=generator)
        self.d_enc = d_in
        self.register_buffer("zero_in", torch.zeros(d_in), persistent=False)

    @property
    def input_bias(self) -> Tensor:
        return self.zero_in

    def extra_repr(self) -> str:
        return f"n_latents={self.n_latents}, d_in={self.d_enc}, d_out={self.d_in}"


def _hooks(name: str, hooks: str | Sequence[str] | None) -> tuple[str, ...]:
    if hooks is None:
        return ()
    out = (hooks,) if isinstance(hooks, str) else tuple(hooks)
    if not all(isinstance(h, str) and h for h in out):
        raise ValueError(f"{name} must be hook names (strings), got {hooks!r}")
    return out


class Transcoder(nn.Module):
    """Sparse map from ``x`` ``[n, d_in]`` (at ``in_hook``) to ``y`` ``[n, d_out]`` (at ``out_hook``).

    Args:
        d_in: input width (the sum of the widths for several ``in_hooks``).
        n_latents: number of latents.
        encoder: one of :data:`TRANSCODER_ENCODERS`.
        d_out: output width (default ``d_in``).
        skip: add a trained linear skip path ``W_skip`` ``[d_in, d_out]`` (starts at 0).
        in_hooks, out_hooks: hook name(s) read and written (one each for a transcoder, several for
            a crosscoder, whose ``in_widths``/``out_widths`` give each hook's width in order).
        normalize: ``"none"`` or ``"expected_norm"``, for input and output separately.
        seed, device: as for :class:`~sparsecodes.sparse_coder.SparseCoder`.
        **encoder_params: the encoder's config fields (``k=32``, ``l1=...``).
    """

    #: what the files it was loaded from record (model, context size, ...); set by the loader
    source: CoderSource | None = None

    def __init__(
        self,
        d_in: int,
        n_latents: int,
        encoder: str = "relu",
        *,
        d_out: int | None = None,
        skip: bool = False,
        in_hooks: str | Sequence[str] | None = None,
        out_hooks: str | Sequence[str] | None = None,
        in_widths: Sequence[int] | None = None,
        out_widths: Sequence[int] | None = None,
        normalize: NormaliseKind = "none",
        seed: int = 0,
        device: str | torch.device | None = None,
        **encoder_params: Any,
    ) -> None:
        super().__init__()
        d_out = d_in if d_out is None else d_out
        for name, v in (("d_in", d_in), ("d_out", d_out), ("n_latents", n_latents)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if encoder not in TRANSCODER_ENCODERS:
            get_encoder_class(encoder)  # unknown names get the registry's error
            raise ValueError(
                f"encoder {encoder!r} cannot be a transcoder's encoder: its encoding reads the "
                f"dictionary in the input space; use one of {', '.join(TRANSCODER_ENCODERS)} "
                "(iterative encoders run on a trained transcoder's decoder through "
                "encode(x, inference=..., y=...))"
            )
        self.d_in, self.d_out, self.n_latents = d_in, d_out, n_latents
        self.in_hooks = _hooks("in_hooks", in_hooks)
        self.out_hooks = _hooks("out_hooks", out_hooks)
        self.in_widths = self._widths("in", in_widths, self.in_hooks, d_in)
        self.out_widths = self._widths("out", out_widths, self.out_hooks, d_out)
        self.seed = seed
        g = torch.Generator().manual_seed(derive_seed(seed, "init"))
        self.normaliser = Normaliser(normalize)
        self.normaliser_out = Normaliser(normalize)
        self.dictionary = TranscoderDictionary(d_in, d_out, n_latents, generator=g)
        self.encoder: Encoder = make_encoder(
            encoder, d_in, n_latents, generator=g, **encoder_params
        )
        # no init_from_dictionary: the atoms live in the output space, not the input's
        self.skip = nn.Parameter(torch.zeros(d_in, d_out)) if skip else None
        self.history: list[dict[str, float]] = []
        self.train_config: dict[str, Any] = {}
        self._fitted = False
        self.to(resolve_device(device))

    @staticmethod
    def _widths(
        side: str, widths: Sequence[int] | None, hooks: tuple[str, ...], total: int
    ) -> tuple[int, ...]:
        if widths is None:
            if len(hooks) > 1:
                if total % len(hooks):
                    raise ValueError(
                        f"{len(hooks)} {side}_hooks cannot split d_{side}={total} evenly; pass "
                        f"{side}_widths"
                    )
                return (total // len(hooks),) * len(hooks)
            return (total,)
        widths = tuple(int(w) for w in widths)
        if sum(widths) != total or (hooks and len(widths) != len(hooks)):
            raise ValueError(
                f"{side}_widths {widths} must sum to d_{side}={total} with one width per hook "
                f"({len(hooks)} {side}_hooks)"
            )
        return widths

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.dictionary.W_dec.device

    @property
    def fitted(self) -> bool:
        return self._fitted

    def mark_fitted(self) -> None:
        """Record that training finished (trainers and loaders call this)."""
        self._fitted = True

    @property
    def in_hook(self) -> str:
        """The hook read (``in_hooks`` joined by ``+`` for a crosscoder; ``""`` if unknown)."""
        return "+".join(self.in_hooks)

    @property
    def out_hook(self) -> str:
        """The hook reconstructed (``out_hooks`` joined by ``+`` for a crosscoder)."""
        return "+".join(self.out_hooks)

    @property
    def is_crosscoder(self) -> bool:
        return len(self.in_hooks) > 1 or len(self.out_hooks) > 1

    def _scales(self) -> tuple[float, float]:
        return float(self.normaliser.scale), float(self.normaliser_out.scale)

    @property
    def W_dec(self) -> Tensor:
        """``[n_latents, d_out]`` unit-norm atoms (normalised output space)."""
        return self.dictionary.W_dec

    @property
    def W_dec_out(self) -> Tensor:
        """``[n_latents, d_out]`` decoder in raw output scale (``W_dec / s_out``)."""
        return self.normaliser_out.invert(self.dictionary.W_dec)

    @property
    def b_dec_out(self) -> Tensor:
        """``[d_out]`` decoder bias in raw output scale."""
        return self.normaliser_out.invert(self.dictionary.b_dec)

    @property
    def W_skip(self) -> Tensor | None:
        """``[d_in, d_out]`` skip path in raw scale (``y += x @ W_skip``), or None."""
        if self.skip is None:
            return None
        return self.normaliser_out.invert(self.normaliser(self.skip))

    # ------------------------------------------------------------------ the map
    def dictionary_target(self, x: Tensor, y: Tensor) -> Tensor:
        """What the dictionary reconstructs, ``[batch, d_out]``: ``y`` minus the skip path
        ``x @ skip`` (both normalised); ``y`` itself without one. Differentiable in ``skip``."""
        return y if self.skip is None else y - x @ self.skip

    def encode_pre(self, x_in: Tensor) -> Tensor:
        """``[..., n_latents]`` affine pre-activations of raw inputs ``x_in`` ``[..., d_in]``
        (``s_in x @ W_enc + b_enc``), in float32 (the encoder's ``matmul_dtype`` is not used)."""
        enc = self.encoder
        if self.encoder.name not in AFFINE_ENCODERS or not isinstance(enc, LinearEncoderParams):
            raise ValueError(
                f"encoder {self.encoder.name!r} has no single affine pre-activation; "
                f"encode_pre/activate need one of {', '.join(AFFINE_ENCODERS)}"
            )
        x = self.normaliser(x_in.to(self.device, enc.W_enc.dtype))
        return x @ enc.W_enc + enc.b_enc

    def activate(self, pre: Tensor) -> Tensor:
        """Dense codes ``[..., n_latents]`` from pre-activations, as the encoder's inference
        does: relu; topk: ReLU of each row's ``k`` largest; batchtopk (trained): entries above
        its threshold (before training: per-row top-k); jumprelu: ``pre * (pre > theta)``."""
        name = self.encoder.name
        enc: Any = self.encoder
        if name == "relu":
            return torch.relu(pre)
        if name == "jumprelu":
            return jumprelu(pre, enc.threshold.to(pre.dtype), enc.config.bandwidth)
        if name in ("batchtopk", "matryoshka_batchtopk") and int(enc.threshold_updates) > 0:
            thr = max(float(enc.threshold), 0.0)
            return pre * (pre > thr)
        if name in ("topk", "batchtopk", "matryoshka_batchtopk"):
            vals, idx = pre.topk(enc.config.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
        raise ValueError(f"encoder {name!r} has no activate(pre); see encode_pre")

    def forward_out(self, x_in: Tensor) -> Tensor:
        """``[..., d_out]`` raw output for raw ``x_in`` ``[..., d_in]``:
        ``activate(encode_pre(x)) @ W_dec_out + b_dec_out (+ x @ W_skip)`` for affine encoders,
        ``decode(encode(x)) (+ x @ W_skip)`` for the others. Differentiable."""
        if self.encoder.name in AFFINE_ENCODERS:
            out = self.activate(self.encode_pre(x_in)) @ self.W_dec_out + self.b_dec_out
        else:
            lead = x_in.shape[:-1]
            xn = self.normaliser(x_in.reshape(-1, self.d_in).to(self.device).float())
            codes = to_dense(self.encoder.encode(xn, self.dictionary))
            out = self.normaliser_out.invert(self.dictionary.decode(codes)).reshape(*lead, -1)
        W_skip = self.W_skip
        if W_skip is not None:
            out = out + x_in.to(W_skip.dtype) @ W_skip
        return out

    def forward(self, x_in: Tensor) -> Tensor:
        return self.forward_out(x_in)

    def split_out(self, y: Tensor) -> dict[str, Tensor]:
        """A crosscoder's output ``[..., d_out]`` cut into its hooks' blocks (hook -> tensor)."""
        hooks = self.out_hooks or tuple(f"out{i}" for i in range(len(self.out_widths)))
        return dict(zip(hooks, y.split(list(self.out_widths), dim=-1), strict=True))

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        x: Any,
        y: Any,
        *,
        steps: int = 1000,
        lr: float = 1e-3,
        batch_size: int = 256,
        warmup_steps: int = 0,
        decay_fraction: float = 0.0,
        dead_after_tokens: int = 100_000,
        progress: bool = False,
        log_every: int = 50,
        callback: Callable[[int, Any], dict[str, float] | None] | None = None,
        callback_every: int | None = None,
    ) -> Transcoder:
        """Train to map ``x`` ``[n, d_in]`` to ``y`` ``[n, d_out]`` (raw activations, row-aligned)."""
        from sparsecodes.activations.source import TensorSource
        from sparsecodes.training.trainer import TranscoderTrainer, fit_config

        x = as_activations(x, "x", self.d_in)
        y = as_activations(y, "y", self.d_out)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}; they must align")
        if not self._fitted:
            self.normaliser.fit(x)
            self.normaliser_out.fit(y)
        cfg = fit_config(
            self.seed,
            steps=steps,
            lr=lr,
            batch_size=batch_size,
            warmup_steps=warmup_steps,
            decay_fraction=decay_fraction,
            dead_after_tokens=dead_after_tokens,
            log_every=log_every,
            progress=progress,
        )
        trainer = TranscoderTrainer(self, cfg)
        source = TensorSource(x, y, seed=self.seed)
        self.history = trainer.fit(source, callback=callback, callback_every=callback_every)
        self.train_config = {**trainer.config_dict(), "n_samples": x.shape[0]}
        self.mark_fitted()
        return self

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def encode(
        self,
        x: Any,
        *,
        inference: str | None = None,
        y: Any = None,
        warm_start: bool = False,
        batch_size: int = 8192,
        **inference_params: Any,
    ) -> Tensor:
        """Dense codes ``[n, n_latents]`` for raw inputs ``x`` ``[n, d_in]``.

        ``inference``: an iterative encoder (``"fista"``, ``"omp"``, ...; its config fields as
        keyword arguments) run on the decoder to reconstruct the true outputs ``y`` ``[n, d_out]``
        (required then) minus the skip path; ``warm_start=True`` starts it from the trained
        encoder's codes.
        """
        x = as_activations(x, "x", self.d_in).to(self.device)
        it = None
        if inference is not None:
            if get_encoder_class(inference).kind != "iterative":
                raise ValueError(
                    f"inference={inference!r} is not an iterative encoder; only those run on a "
                    "trained decoder (e.g. 'fista', 'mp', 'omp')"
                )
            if y is None:
                raise ValueError(
                    "iterative inference on a transcoder's decoder needs the true outputs: "
                    "pass y=[n, d_out]"
                )
            y = as_activations(y, "y", self.d_out).to(self.device)
            it = make_encoder(inference, self.d_out, self.n_latents, **inference_params)
            it = it.to(self.device)
        elif inference_params or warm_start:
            raise ValueError("inference parameters and warm_start need inference=<iterative>")
        was = self.training
        self.eval()
        outs = []
        for i in range(0, x.shape[0], batch_size):
            xb = self.normaliser(x[i : i + batch_size])
            codes: Codes = self.encoder.encode(xb, self.dictionary)
            if it is not None:
                yb = self.dictionary_target(xb, self.normaliser_out(y[i : i + batch_size]))
                codes = it.encode(yb, self.dictionary, init=codes if warm_start else None)
            outs.append(to_dense(codes))
        self.train(was)
        return torch.cat(outs)

    @torch.no_grad()
    def decode(self, codes: Codes) -> Tensor:
        """``[n, d_out]`` raw output of the dictionary alone (no skip path: it needs ``x``)."""
        return self.normaliser_out.invert(self.dictionary.decode(codes))

    @torch.no_grad()
    def reconstruct(self, x: Any, **encode_kwargs: Any) -> Tensor:
        """``[n, d_out]`` predicted raw outputs for raw inputs ``x`` ``[n, d_in]``, skip included."""
        x = as_activations(x, "x", self.d_in).to(self.device)
        out = self.decode(self.encode(x, **encode_kwargs))
        W_skip = self.W_skip
        return out if W_skip is None else out + x @ W_skip

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this model, plus how it was trained."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "d_in": self.d_in,
            "d_out": self.d_out,
            "n_latents": self.n_latents,
            "skip": self.skip is not None,
            "in_hooks": list(self.in_hooks),
            "out_hooks": list(self.out_hooks),
            "in_widths": list(self.in_widths),
            "out_widths": list(self.out_widths),
            "encoder": self.encoder.name,
            "encoder_config": self.encoder.config.to_dict(),
            "normalize": self.normaliser.kind,
            "seed": self.seed,
            "fitted": self._fitted,
            "train_config": self.train_config,
        }

    def save(
        self, path: str | os.PathLike[str], format: str = "sparsecodes", **kwargs: Any
    ) -> Path:
        """Write to directory ``path`` (``sparsecodes.json`` + ``model.safetensors``, each file
        atomically); ``format="saelens"`` writes SAELens's transcoder layout
        (:func:`sparsecodes.formats.save_saelens_transcoder`). ``sparsecodes.load`` reads both."""
        if format != "sparsecodes":
            return SAVE_FORMATS.writer(format)(self, path, **kwargs)
        if kwargs:
            raise TypeError(f"format='sparsecodes' takes no options, got {sorted(kwargs)}")
        return write_coder_files(path, self, self.config())

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Transcoder:
        """An untrained transcoder with the architecture ``cfg`` (a :meth:`config` dict) names."""
        return cls(
            cfg["d_in"],
            cfg["n_latents"],
            cfg["encoder"],
            d_out=cfg["d_out"],
            skip=cfg["skip"],
            in_hooks=cfg.get("in_hooks") or None,
            out_hooks=cfg.get("out_hooks") or None,
            in_widths=cfg.get("in_widths"),
            out_widths=cfg.get("out_widths"),
            normalize=cfg["normalize"],
            seed=cfg["seed"],
            **cfg["encoder_config"],
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, device: str | None = None) -> Transcoder:
        """Load a transcoder written by :meth:`save`; a missing or corrupt file is named."""
        cfg, state, cfg_path, w_path = read_coder_files(path, format=FORMAT, what="Transcoder")
        model = cls.from_config(cfg)
        load_state_checked(model, state, w_path, cfg_path)
        model.train_config = cfg.get("train_config", {})
        if cfg.get("fitted"):
            model.mark_fitted()
        model.eval()
        return model.to(resolve_device(device))

    def extra_repr(self) -> str:
        return (
            f"encoder={self.encoder.name!r}, d_in={self.d_in}, d_out={self.d_out}, "
            f"n_latents={self.n_latents}, skip={self.skip is not None}, "
            f"{self.in_hook or '?'} -> {self.out_hook or '?'}"
        )
