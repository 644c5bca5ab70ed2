"""``SparseCoder``: input normaliser + :class:`Dictionary` + :class:`Encoder`.

What users fit, save, load and encode with. The encoder it is trained with is only the default
inference: ``encode(x, inference="fista", warm_start=True)`` runs any registered iterative encoder
on the same dictionary, warm-started from the trained encoder's codes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
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
from sparsecodes.codes import Codes, SparseCodes, to_dense
from sparsecodes.devices import resolve_device
from sparsecodes.dictionary import Dictionary
from sparsecodes.encoders import get_encoder_class, make_encoder
from sparsecodes.encoders.base import Encoder
from sparsecodes.normalise import NormaliseKind, Normaliser
from sparsecodes.provenance import CoderSource
from sparsecodes.seeding import derive_seed
from sparsecodes.validation import as_activations

FORMAT_VERSION = 1

#: Other on-disk formats :meth:`SparseCoder.save` can write: name -> ``writer(coder, path, **kw)``.
#: Filled by the format modules (``sparsecodes.formats`` registers ``"saelens"`` when the package
#: is imported), so that this module does not import them.
SAVE_FORMATS = SaveFormats("SparseCoder")


def register_save_format(name: str, writer: Callable[..., Path]) -> None:
    """Make ``SparseCoder.save(path, format=name, **kw)`` call ``writer(coder, path, **kw)``."""
    SAVE_FORMATS.register(name, writer)


class SparseCoder(nn.Module):
    """A dictionary with an encoder, sklearn-style.

    Args:
        d_in: activation width M.
        n_latents: number of atoms N.
        encoder: registered encoder name (``sparsecodes.encoders.available_encoders()``).
        normalize: ``"none"`` or ``"expected_norm"`` input scaling (fitted in :meth:`fit`).
        seed: fixes every random draw (initialisation and batch order).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ... or None for CPU.
        **encoder_params: the encoder's config fields (e.g. ``l1=0.01``, ``k=32``).
    """

    #: what the files it was loaded from record (model, hook, ...); set by ``sparsecodes.load``
    source: CoderSource | None = None

    def __init__(
        self,
        d_in: int,
        n_latents: int,
        encoder: str = "relu",
        *,
        normalize: NormaliseKind = "none",
        seed: int = 0,
        device: str | torch.device | None = None,
        **encoder_params: Any,
    ) -> None:
        super().__init__()
        for name, v in (("d_in", d_in), ("n_latents", n_latents)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.d_in = d_in
        self.n_latents = n_latents
        self.seed = seed
        # a derived seed, so that the init never equals data drawn with the same user seed
        g = torch.Generator().manual_seed(derive_seed(seed, "init"))
        self.normaliser = Normaliser(normalize)
        self.dictionary = Dictionary(d_in, n_latents, generator=g)
        self.encoder: Encoder = make_encoder(
            encoder, d_in, n_latents, generator=g, **encoder_params
        )
        self.encoder.init_from_dictionary(self.dictionary)
        self.history: list[dict[str, float]] = []
        self.train_config: dict[str, Any] = {}
        self._fitted = False
        self.to(resolve_device(device))

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.dictionary.W_dec.device

    @property
    def fitted(self) -> bool:
        """Whether the coder has been trained (or loaded trained): the normaliser stays as fitted
        and :meth:`set_dictionary` no longer re-initialises the encoder from the atoms."""
        return self._fitted

    def mark_fitted(self) -> None:
        """Record that training finished (trainers and loaders call this, never ``_fitted``)."""
        self._fitted = True

    @property
    def W_dec(self) -> Tensor:
        """``[n_latents, d_in]`` atoms."""
        return self.dictionary.W_dec

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        x: Any,
        *,
        dictionary: Any = None,
        codes: Any = None,
        steps: int = 1000,
        lr: float = 1e-3,
        batch_size: int = 256,
        warmup_steps: int = 0,
        decay_fraction: float = 0.0,
        dead_after_tokens: int = 100_000,
        progress: bool = False,
        log_every: int = 50,
        callback: Callable[[int, SparseCoder], dict[str, float] | None] | None = None,
        callback_every: int | None = None,
    ) -> SparseCoder:
        """Train on ``x`` ``[n_samples, d_in]``.

        - no ``dictionary``, no ``codes``: dictionary and encoder learned jointly (unknown setting;
          with an iterative encoder this is classic sparse coding by alternating minimisation).
        - ``dictionary=D`` ``[n_latents, d_in]``: the dictionary is set to ``D`` and frozen; only the
          encoder learns (known-dictionary setting).
        - ``codes=S`` ``[n_samples, n_latents]``: the encoder is fitted to the true codes and the
          dictionary to ``x`` given them (known-codes setting).
        """
        from sparsecodes.activations.source import TensorSource
        from sparsecodes.training.trainer import Trainer, fit_config

        x = as_activations(x, "x", self.d_in)
        target = None
        if codes is not None:
            target = as_activations(codes, "codes", self.n_latents)
        if dictionary is not None:
            self.set_dictionary(dictionary)
        if not self._fitted:
            self.normaliser.fit(x)
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
            b_dec_init="zeros",
        )
        trainer = Trainer(self, cfg, freeze_dictionary=dictionary is not None)
        source = TensorSource(x, target, seed=self.seed)
        self.history = trainer.fit(source, callback=callback, callback_every=callback_every)
        self.train_config = {
            **trainer.config_dict(),
            "setting": "known_dictionary"
            if dictionary is not None
            else "known_codes"
            if codes is not None
            else "unknown",
            "n_samples": x.shape[0],
        }
        self.mark_fitted()
        return self

    def set_dictionary(self, atoms: Any, bias: Any = None) -> None:
        """Replace the dictionary by ``atoms`` ``[n_latents, d_in]`` (unit-normalised rows)."""
        if isinstance(atoms, Dictionary):
            atoms, bias = atoms.W_dec.detach(), atoms.b_dec.detach() if bias is None else bias
        atoms = torch.as_tensor(atoms)
        if tuple(atoms.shape) != (self.n_latents, self.d_in):
            raise ValueError(
                f"dictionary must have shape [n_latents, d_in] = [{self.n_latents}, {self.d_in}], "
                f"got {tuple(atoms.shape)}"
            )
        new = Dictionary.from_atoms(atoms, bias).to(self.device)
        with torch.no_grad():
            self.dictionary.W_dec.copy_(new.W_dec)
            self.dictionary.b_dec.copy_(new.b_dec)
        if not self._fitted:
            self.encoder.init_from_dictionary(self.dictionary)

    # ------------------------------------------------------------------ inference
    def _inference_encoder(self, inference: str | None, params: dict[str, Any]) -> Encoder:
        if inference is None or (inference == self.encoder.name and not params):
            if params:
                raise ValueError(
                    f"inference parameters {sorted(params)} need inference=<iterative encoder>"
                )
            return self.encoder
        if get_encoder_class(inference).kind != "iterative":  # before its config is checked
            raise ValueError(
                f"inference={inference!r} is an amortised encoder with its own parameters; only "
                "iterative encoders can run on a trained dictionary (e.g. 'fista', 'mp', 'omp')"
            )
        return make_encoder(inference, self.d_in, self.n_latents, **params).to(self.device)

    @torch.no_grad()
    def encode(
        self,
        x: Any,
        *,
        inference: str | None = None,
        warm_start: bool = False,
        sparse: bool = False,
        batch_size: int = 8192,
        **inference_params: Any,
    ) -> Tensor | SparseCodes:
        """Codes ``[n, n_latents]`` for ``x`` ``[n, d_in]``.

        ``inference``: an iterative encoder to run on this dictionary instead of the trained one
        (its config fields as keyword arguments, e.g. ``iters=100``). ``warm_start=True`` starts it
        from the trained encoder's codes. ``sparse=True`` returns :class:`SparseCodes`.
        """
        x = as_activations(x, "x", self.d_in).to(self.device)
        enc = self._inference_encoder(inference, inference_params)
        if warm_start and enc is self.encoder:
            raise ValueError("warm_start=True needs inference=<iterative encoder> to warm-start")
        if warm_start and self.encoder.kind != "amortised":
            raise ValueError(
                f"warm_start=True starts from the trained encoder's codes, but {self.encoder.name!r}"
                " is itself iterative; use warm_start=False"
            )
        was_training = self.training
        self.eval()
        outs: list[Codes] = []
        for i in range(0, x.shape[0], batch_size):
            xb = self.normaliser(x[i : i + batch_size])
            init = self.encoder.encode(xb, self.dictionary) if warm_start else None
            outs.append(enc.encode(xb, self.dictionary, init=init))
        self.train(was_training)
        if sparse:
            from sparsecodes.codes import to_sparse

            parts = [c if isinstance(c, SparseCodes) else to_sparse(c) for c in outs]
            k = max(p.indices.shape[1] for p in parts)
            if any(p.indices.shape[1] != k for p in parts):
                parts = [to_sparse(p.to_dense(), k) for p in parts]
            return SparseCodes(
                torch.cat([p.indices for p in parts]),
                torch.cat([p.values for p in parts]),
                self.n_latents,
            )
        return torch.cat([to_dense(c) for c in outs])

    transform = encode

    @torch.no_grad()
    def decode(self, codes: Codes) -> Tensor:
        """``[n, d_in]`` reconstruction (in the input's original scale)."""
        return self.normaliser.invert(self.dictionary.decode(codes))

    @torch.no_grad()
    def reconstruct(self, x: Any, **encode_kwargs: Any) -> Tensor:
        return self.decode(self.encode(x, **encode_kwargs))

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this model, plus how it was trained."""
        return {
            "format": "sparsecodes",
            "format_version": FORMAT_VERSION,
            "d_in": self.d_in,
            "n_latents": self.n_latents,
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
        """Write the model to the directory ``path``; returns it. Each file is written atomically.

        ``format="sparsecodes"`` (default) writes ``sparsecodes.json`` + ``model.safetensors``;
        ``format="saelens"`` writes SAELens's layout through
        :func:`sparsecodes.formats.save_saelens` (``kwargs``: ``model_name``, ``hook_name``,
        ``metadata``). :func:`sparsecodes.load` reads either back.
        """
        if format != "sparsecodes":
            return SAVE_FORMATS.writer(format)(self, path, **kwargs)
        if kwargs:
            raise TypeError(
                f"format='sparsecodes' takes no options, got {sorted(kwargs)} (they are for "
                "format='saelens')"
            )
        return write_coder_files(path, self, self.config())

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, device: str | None = None) -> SparseCoder:
        """Load a model written by :meth:`save`; a missing or corrupt file is named in the error."""
        cfg, state, cfg_path, w_path = read_coder_files(
            path, format="sparsecodes", what="SparseCoder"
        )
        model = cls(
            cfg["d_in"],
            cfg["n_latents"],
            cfg["encoder"],
            normalize=cfg["normalize"],
            seed=cfg["seed"],
            **cfg["encoder_config"],
        )
        load_state_checked(model, state, w_path, cfg_path)
        model.train_config = cfg.get("train_config", {})
        model._fitted = cfg.get("fitted", True)
        model.eval()
        return model.to(resolve_device(device))

    def extra_repr(self) -> str:
        return f"encoder={self.encoder.name!r}, d_in={self.d_in}, n_latents={self.n_latents}"
