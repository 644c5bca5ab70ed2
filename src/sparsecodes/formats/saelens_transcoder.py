"""SAELens (v6) transcoder layout: ``cfg.json`` + ``sae_weights.safetensors``.

What we write loads with ``sae_lens.SAE.load_from_disk(path)`` as SAELens's ``Transcoder``,
``SkipTranscoder``, ``JumpReLUTranscoder`` or ``JumpReLUSkipTranscoder``, and its ``forward`` on
raw inputs gives :meth:`Transcoder.forward_out`. Reading takes those files back (ours or SAELens's).

Tensors: ``W_enc`` ``[d_in, d_sae]``, ``b_enc`` ``[d_sae]``, ``W_dec`` ``[d_sae, d_out]``,
``b_dec`` ``[d_out]``; jumprelu adds ``threshold`` ``[d_sae]``; skip transcoders add ``W_skip``
``[d_out, d_in]`` (SAELens's orientation: ``y += x @ W_skip.T``; ours is its transpose).
``cfg``: ``architecture``, ``d_in``, ``d_sae``, ``d_out``, ``apply_b_dec_to_input=False`` (a
transcoder never subtracts its output bias from its input), ``normalize_activations="none"``;
``metadata.hook_name`` is the input hook and ``metadata.hook_name_out`` the output hook.

Encoder <-> architecture: relu <-> ``transcoder`` / ``skip_transcoder``; jumprelu <->
``jumprelu_transcoder`` / ``jumprelu_skip_transcoder`` (``threshold = exp(log_threshold)``);
batchtopk and matryoshka_batchtopk -> ``jumprelu_*`` with their shared inference threshold.
SAELens has no TopK transcoder, so topk transcoders are refused (train batchtopk to export).
Crosscoders have no SAELens layout. Input/output scales are folded into the weights
(``W_enc * s_in``, ``W_dec / s_out``, ``b_dec / s_out``, ``W_skip * s_in / s_out``) and undone on
reading from ``metadata.sparsecodes``, as for SAEs (:mod:`sparsecodes.formats.saelens`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparsecodes.devices import resolve_device
from sparsecodes.formats._common import check_tensors, read_json, read_safetensors, require_files
from sparsecodes.formats.saelens import (
    CFG_NAME,
    METADATA_KEY,
    METADATA_VERSION,
    SAELENS_LAYOUT_VERSION,
    THRESHOLD_ENCODERS,
    WEIGHTS_NAME,
    exact_log,
    write_saelens_files,
)
from sparsecodes.models.hooks import translate_hook_name
from sparsecodes.transcoder import Transcoder, register_save_format

#: SAELens transcoder architectures -> (our encoder when the file has no metadata, skip path)
TRANSCODER_ARCHS: dict[str, tuple[str, bool]] = {
    "transcoder": ("relu", False),
    "skip_transcoder": ("relu", True),
    "jumprelu_transcoder": ("jumprelu", False),
    "jumprelu_skip_transcoder": ("jumprelu", True),
}


def is_saelens_transcoder(cfg: Mapping[str, Any]) -> bool:
    """Whether a SAELens ``cfg.json`` describes a transcoder."""
    return cfg.get("architecture") in TRANSCODER_ARCHS


def _arch(tc: Transcoder) -> str:
    name = tc.encoder.name
    skip = tc.skip is not None
    if name == "relu":
        return "skip_transcoder" if skip else "transcoder"
    if name == "jumprelu" or name in THRESHOLD_ENCODERS:
        return "jumprelu_skip_transcoder" if skip else "jumprelu_transcoder"
    raise ValueError(
        f"a {name!r} transcoder has no SAELens layout: SAELens transcoders are relu or jumprelu "
        "(batchtopk is written as jumprelu); save it with Transcoder.save instead"
    )


def save_saelens_transcoder(
    tc: Transcoder,
    path: str | os.PathLike[str],
    *,
    model_name: str | None = None,
    hook_name: str | None = None,
    hook_name_out: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``tc`` in SAELens's transcoder layout at directory ``path`` (files atomically).

    ``hook_name``/``hook_name_out`` default to ``tc.in_hook``/``tc.out_hook``; ``metadata``
    adds further SAELens metadata keys. Returns the directory.
    """
    if not isinstance(tc, Transcoder):
        raise TypeError(f"expected a Transcoder, got {type(tc).__name__}")
    if tc.is_crosscoder:
        raise ValueError("a crosscoder has no SAELens layout; save it with Transcoder.save")
    arch = _arch(tc)
    meta = dict(metadata or {})
    if METADATA_KEY in meta:
        raise ValueError(f"metadata key {METADATA_KEY!r} is reserved for sparsecodes' own fields")
    s_in, s_out = (float(n.scale) for n in (tc.normaliser, tc.normaliser_out))
    for s in (s_in, s_out):
        if not math.isfinite(s) or s <= 0:
            raise ValueError(f"the transcoder's normaliser scale is {s}; refit it first")
    enc: Any = tc.encoder

    def fold(t: Tensor, factor: float) -> Tensor:
        return (t.detach().cpu().double() * factor).float().contiguous()

    tensors = {
        "W_enc": fold(enc.W_enc, s_in),
        "b_enc": enc.b_enc.detach().cpu().float().clone(),
        "W_dec": fold(tc.dictionary.W_dec, 1 / s_out),
        "b_dec": fold(tc.dictionary.b_dec, 1 / s_out),
    }
    if tc.encoder.name == "jumprelu":
        tensors["threshold"] = enc.threshold.detach().cpu().float().clone()
    elif tc.encoder.name in THRESHOLD_ENCODERS:
        if int(enc.threshold_updates) == 0:
            raise ValueError(
                f"the {tc.encoder.name} encoder has no inference threshold yet; train it first"
            )
        tensors["threshold"] = (
            enc.threshold.detach().float().cpu().reshape(()).expand(tc.n_latents).clone()
        )
    if tc.skip is not None:
        tensors["W_skip"] = fold(tc.skip, s_in / s_out).T.contiguous()
    cfg_tc = tc.config()
    ours: dict[str, Any] = {
        "metadata_version": METADATA_VERSION,
        "encoder": tc.encoder.name,
        "encoder_config": cfg_tc["encoder_config"],
        "normalize": tc.normaliser.kind,
        "normaliser_scale": s_in,
        "normaliser_scale_out": s_out,
        "seed": tc.seed,
        "train_config": cfg_tc["train_config"],
    }
    if tc.encoder.name in THRESHOLD_ENCODERS:
        ours["threshold_updates"] = int(enc.threshold_updates)
    meta.update(
        {
            "sae_lens_version": meta.get("sae_lens_version", SAELENS_LAYOUT_VERSION),
            "model_name": model_name if model_name is not None else meta.get("model_name"),
            "hook_name": hook_name or meta.get("hook_name") or tc.in_hook or None,
            "hook_name_out": hook_name_out or meta.get("hook_name_out") or tc.out_hook or None,
            METADATA_KEY: ours,
        }
    )
    cfg: dict[str, Any] = {
        "architecture": arch,
        "d_in": tc.d_in,
        "d_sae": tc.n_latents,
        "d_out": tc.d_out,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": meta,
    }
    return write_saelens_files(path, tensors, cfg)


def load_saelens_transcoder(
    path: str | os.PathLike[str], *, device: str | None = None
) -> Transcoder:
    """Load a SAELens transcoder directory (ours or SAELens's ``save_model``) as a
    :class:`Transcoder` computing the same map on raw inputs; ``ValueError`` names a bad file."""
    path = Path(path)
    cfg_path, w_path = require_files(path, (CFG_NAME, WEIGHTS_NAME), "SAELens transcoder")
    cfg = read_json(cfg_path)
    arch = cfg.get("architecture")
    if arch not in TRANSCODER_ARCHS:
        raise ValueError(
            f"{cfg_path}: architecture {arch!r} is not a SAELens transcoder "
            f"({', '.join(TRANSCODER_ARCHS)})"
        )
    encoder, skip = TRANSCODER_ARCHS[arch]
    dims = {}
    for key in ("d_in", "d_sae", "d_out"):
        v = cfg.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{cfg_path}: {key} must be a positive integer, got {v!r}")
        dims[key] = v
    d_in, d_sae, d_out = dims["d_in"], dims["d_sae"], dims["d_out"]
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise ValueError(
            f"{cfg_path}: normalize_activations={cfg.get('normalize_activations')!r}; only "
            "'none' transcoders can be read (fold the scale into the weights first)"
        )
    raw = read_safetensors(w_path)
    shapes: dict[str, tuple[int, ...]] = {
        "W_enc": (d_in, d_sae),
        "b_enc": (d_sae,),
        "W_dec": (d_sae, d_out),
        "b_dec": (d_out,),
    }
    if encoder == "jumprelu":
        shapes["threshold"] = (d_sae,)
    if skip:
        shapes["W_skip"] = (d_out, d_in)
    check_tensors(raw, shapes, w_path, cfg_path)
    t = {k: v.detach().double() for k, v in raw.items()}
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), Mapping) else {}
    ours = meta.get(METADATA_KEY) if isinstance(meta, Mapping) else None
    encoder_config: dict[str, Any] = {}
    normalize, s_in, s_out, seed, train_config = "none", 1.0, 1.0, 0, {}
    if isinstance(ours, Mapping):
        encoder = ours.get("encoder", encoder)
        encoder_config = dict(ours.get("encoder_config") or {})
        normalize = ours.get("normalize", "none")
        s_in = float(ours.get("normaliser_scale", 1.0))
        s_out = float(ours.get("normaliser_scale_out", 1.0))
        seed = int(ours.get("seed", 0))
        train_config = dict(ours.get("train_config") or {})
    tc = Transcoder(
        d_in,
        d_sae,
        encoder,
        d_out=d_out,
        skip=skip,
        in_hooks=_hook(meta.get("hook_name")),
        out_hooks=_hook(meta.get("hook_name_out")),
        normalize=normalize,
        seed=seed,
        **encoder_config,
    )
    state = {
        "encoder.W_enc": t["W_enc"] / s_in,
        "encoder.b_enc": t["b_enc"],
        "dictionary.W_dec": t["W_dec"] * s_out,
        "dictionary.b_dec": t["b_dec"] * s_out,
        "normaliser.scale": torch.tensor(s_in, dtype=torch.float64),
        "normaliser_out.scale": torch.tensor(s_out, dtype=torch.float64),
    }
    if skip:
        state["skip"] = t["W_skip"].T * (s_out / s_in)
    if encoder == "jumprelu":
        state["encoder.log_threshold"] = exact_log(raw["threshold"].float())
    elif encoder in THRESHOLD_ENCODERS:
        thr = raw["threshold"].float()
        if not torch.all(thr == thr[0]):
            raise ValueError(f"{cfg_path}: a {encoder} transcoder needs one shared threshold")
        state["encoder.threshold"] = thr[0].clone()
        updates = int((ours or {}).get("threshold_updates", 1))
        state["encoder.threshold_updates"] = torch.tensor(updates, dtype=torch.long)
    expected = tc.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"{w_path}: cannot fill {missing} of a {encoder!r} transcoder")
    tc.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    tc.train_config = train_config
    tc.mark_fitted()
    tc.eval()
    return tc.to(resolve_device(device))


def _hook(name: Any) -> str | None:
    return translate_hook_name(name) if isinstance(name, str) and name else None


register_save_format("saelens", save_saelens_transcoder)
