"""SAELens (v6) on-disk layout: ``cfg.json`` + ``sae_weights.safetensors``.

Writing needs no SAELens install; what we write loads with ``sae_lens.SAE.load_from_disk(path)``
and its ``encode``/``decode`` give our outputs on raw (un-normalised) inputs. Reading takes what
SAELens's ``sae.save_model(path)`` (and ``TrainingSAE.save_inference_model``) writes.

Tensors (SAELens names and orientations, the same as ours):
``W_enc`` ``[d_in, d_sae]``, ``b_enc`` ``[d_sae]``, ``W_dec`` ``[d_sae, d_in]``, ``b_dec``
``[d_in]``; jumprelu adds ``threshold`` ``[d_sae]``; gated replaces ``b_enc`` by ``b_gate``,
``r_mag``, ``b_mag`` ``[d_sae]``.

Encoder <-> architecture: relu <-> ``standard``, topk <-> ``topk`` (``k`` in cfg), jumprelu <->
``jumprelu`` (``threshold = exp(log_threshold)``), gated <-> ``gated``, batchtopk and
matryoshka_batchtopk -> ``jumprelu`` with their inference threshold (SAELens saves its own
BatchTopK and Matryoshka BatchTopK SAEs the same way), mp_sae <-> ``matching_pursuit`` (tied:
``W_dec`` and ``b_dec`` only; ``max_iterations = k``, ``residual_threshold``,
``stop_on_duplicate_support = stop_on_repeat``). SAELens's pursuit has non-negative codes, no
relative tolerance and no input scaling (its atoms must stay unit-norm), so only an mp_sae with
``nonneg=True``, ``tol=0`` and ``normalize="none"`` is written. One difference remains: SAELens
always takes the first step, so a row whose centred input is already within
``residual_threshold`` gets one atom there and none here.

Input scaling (``normalize="expected_norm"``): SAELens v6 applies *no* scaling at inference for
``normalize_activations="expected_average_only_in"`` (its trainer folds the factor into the weights
before saving). We do the same: with scale ``s``, ``W_enc * s``, ``W_dec / s``, ``b_dec / s`` are
written and ``normalize_activations="none"``, so SAELens reproduces ``SparseCoder.encode`` and
``SparseCoder.reconstruct`` on raw inputs. The scale and our encoder config go to
``cfg["metadata"]["sparsecodes"]``, and :func:`load_saelens` undoes the fold (exact to float32
rounding, one multiply and one divide per weight).

Attention-output coders: a coder on our ``blocks.{i}.attn.heads`` is written with
``hook_name="blocks.{i}.attn.hook_z"`` and ``reshape_activations="hook_z"``, so SAELens takes
``[..., n_heads, d_head]`` inputs and flattens them to our ``d_in = n_heads * d_head`` (head ``h`` in
columns ``h * d_head : (h + 1) * d_head``, the same order).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from sparsecodes.files import atomic_write, write_text
from sparsecodes.formats._common import (
    build_coder,
    check_tensors,
    exact_float32_config,
    read_json,
    read_safetensors,
    require_files,
    require_int,
)
from sparsecodes.models.hooks import translate_hook_name
from sparsecodes.sparse_coder import SparseCoder, register_save_format

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae_weights.safetensors"
#: ``metadata.sae_lens_version`` we write: the v6 layout (SAELens converts older configs on load)
SAELENS_LAYOUT_VERSION = "6.0.0"
#: key under ``cfg["metadata"]`` holding what SAELens has no field for
METADATA_KEY = "sparsecodes"
METADATA_VERSION = 1

#: our encoder -> SAELens inference architecture
ENCODER_TO_ARCH = {
    "relu": "standard",
    "topk": "topk",
    "jumprelu": "jumprelu",
    "gated": "gated",
    "batchtopk": "jumprelu",
    "matryoshka_batchtopk": "jumprelu",
    "mp_sae": "matching_pursuit",
}
#: encoders saved as ``jumprelu`` with one shared threshold (their BatchTopK inference rule)
THRESHOLD_ENCODERS = ("batchtopk", "matryoshka_batchtopk")
#: SAELens inference architecture -> our encoder (when the file has no sparsecodes metadata)
ARCH_TO_ENCODER = {
    "standard": "relu",
    "topk": "topk",
    "jumprelu": "jumprelu",
    "gated": "gated",
    "matching_pursuit": "mp_sae",
}
#: SAELens per-token normalisations that have no scalar equivalent
_RUNTIME_NORMS = ("constant_norm_rescale", "layer_norm", "covariance_whitening")


def _arch_tensors(arch: str, d_in: int, d_sae: int) -> dict[str, tuple[int, ...]]:
    """Expected SAELens tensor names and shapes of an architecture."""
    shapes: dict[str, tuple[int, ...]] = {"W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if arch == "matching_pursuit":  # tied: the encoder is W_dec itself
        return shapes
    shapes["W_enc"] = (d_in, d_sae)
    if arch == "gated":
        shapes.update(b_gate=(d_sae,), r_mag=(d_sae,), b_mag=(d_sae,))
    else:
        shapes["b_enc"] = (d_sae,)
    if arch == "jumprelu":
        shapes["threshold"] = (d_sae,)
    return shapes


# ---------------------------------------------------------------------------------- saving
def _batchtopk_threshold(model: SparseCoder) -> Tensor:
    """``[n_latents]`` JumpReLU threshold equal to the batchtopk encoder's eval-mode rule.

    Eval mode keeps ``pre > max(threshold, 0)`` and ReLUs it, which is SAELens's JumpReLU
    ``relu(pre) * (pre > threshold)`` for the same (scalar, broadcast) threshold.
    """
    enc = model.encoder
    if int(enc.threshold_updates) == 0:  # type: ignore[arg-type]
        raise ValueError(
            f"the {enc.name} encoder has no inference threshold yet (it falls back to per-row "
            "top-k until trained); train the model before saving it in SAELens layout"
        )
    thr = enc.threshold.detach().float().cpu()  # type: ignore[union-attr]
    return thr.reshape(()).expand(model.n_latents).clone()


def _saelens_tensors(model: SparseCoder, scale: float) -> dict[str, Tensor]:
    """Our parameters in SAELens names, with the input scale folded in (float64 then cast)."""
    enc = model.encoder
    name = enc.name
    dtype = model.W_dec.dtype

    def get(attr: str) -> Tensor:
        t = getattr(enc, attr, None)
        if not isinstance(t, Tensor):
            raise ValueError(
                f"encoder {name!r} has no parameter {attr!r}; cannot save it in SAELens layout"
            )
        return t.detach()

    def folded(t: Tensor, factor: float) -> Tensor:
        if factor == 1.0:
            return t.detach().cpu().clone()
        return (t.detach().cpu().double() * factor).to(dtype)

    out = {
        "W_dec": folded(model.dictionary.W_dec, 1.0 / scale),
        "b_dec": folded(model.dictionary.b_dec, 1.0 / scale),
    }
    if name == "mp_sae":
        return {k: v.contiguous() for k, v in out.items()}
    out["W_enc"] = folded(get("W_enc"), scale)
    if name == "gated":
        for p in ("b_gate", "r_mag", "b_mag"):
            out[p] = get(p).cpu().clone()
    else:
        out["b_enc"] = get("b_enc").cpu().clone()
    if name == "jumprelu":
        out["threshold"] = get("threshold").cpu().float().clone()
    elif name in THRESHOLD_ENCODERS:
        out["threshold"] = _batchtopk_threshold(model)
    return {k: v.contiguous() for k, v in out.items()}


def save_saelens(
    model: SparseCoder,
    path: str | os.PathLike[str],
    *,
    model_name: str | None = None,
    hook_name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` in SAELens's layout: ``path/cfg.json`` + ``path/sae_weights.safetensors``.

    Args:
        model: a :class:`SparseCoder` with a relu, topk, jumprelu, gated or batchtopk encoder.
        path: directory to write (created if needed); each file is replaced atomically.
        model_name, hook_name: SAELens metadata naming where the activations came from (e.g.
            ``"gpt2"``, ``"blocks.8.hook_resid_pre"``), used by SAELens's model hooks.
        metadata: further SAELens metadata keys (``context_size``, ``prepend_bos``,
            ``dataset_path``, ...), JSON-serialisable.

    Returns the directory. SAELens loads it with ``SAE.load_from_disk(path)``; see the module
    docstring for how the input scale is folded in.
    """
    if not isinstance(model, SparseCoder):
        raise TypeError(f"model must be a SparseCoder, got {type(model).__name__}")
    name = model.encoder.name
    if name not in ENCODER_TO_ARCH:
        raise ValueError(
            f"encoder {name!r} has no SAELens architecture; SAELens can hold "
            f"{', '.join(sorted(ENCODER_TO_ARCH))} encoders (use SparseCoder.save for the rest)"
        )
    arch = ENCODER_TO_ARCH[name]
    meta = dict(metadata or {})
    if METADATA_KEY in meta:
        raise ValueError(f"metadata key {METADATA_KEY!r} is reserved for sparsecodes' own fields")
    scale = float(model.normaliser.scale.item()) if model.normaliser.kind != "none" else 1.0
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"the model's normaliser scale is {scale}; refit the model first")
    if name == "mp_sae":
        _check_mp_sae_exportable(model, scale)
    tensors = _saelens_tensors(model, scale)

    cfg_model = model.config()
    hook, reshape = saelens_hook(hook_name if hook_name is not None else meta.get("hook_name"))
    meta.update(
        {
            "sae_lens_version": meta.get("sae_lens_version", SAELENS_LAYOUT_VERSION),
            "model_name": model_name if model_name is not None else meta.get("model_name"),
            "hook_name": hook,
            METADATA_KEY: {
                "metadata_version": METADATA_VERSION,
                "encoder": name,
                "encoder_config": cfg_model["encoder_config"],
                "normalize": model.normaliser.kind,
                "normaliser_scale": scale,
                "scale_folded": scale != 1.0,
                "seed": model.seed,
                "train_config": cfg_model["train_config"],
            },
        }
    )
    if name in THRESHOLD_ENCODERS:
        updates = int(model.encoder.threshold_updates)  # type: ignore[arg-type]
        meta[METADATA_KEY]["threshold_updates"] = updates
    cfg: dict[str, Any] = {
        "architecture": arch,
        "d_in": model.d_in,
        "d_sae": model.n_latents,
        "dtype": str(tensors["W_dec"].dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": reshape,
        "metadata": meta,
    }
    if arch == "topk":
        cfg["k"] = int(model.encoder.config.k)  # type: ignore[attr-defined]
        cfg["rescale_acts_by_decoder_norm"] = False
    if arch == "matching_pursuit":
        ec = model.encoder.config
        cfg["residual_threshold"] = float(ec.residual_threshold)  # type: ignore[attr-defined]
        cfg["max_iterations"] = int(ec.k)  # type: ignore[attr-defined]
        cfg["stop_on_duplicate_support"] = bool(ec.stop_on_repeat)  # type: ignore[attr-defined]
    return write_saelens_files(path, tensors, cfg)


def write_saelens_files(
    path: str | os.PathLike[str], tensors: dict[str, Tensor], cfg: dict[str, Any]
) -> Path:
    """Write SAELens's ``sae_weights.safetensors`` and ``cfg.json`` into directory ``path``,
    each atomically (the config last, so a directory with a config has its weights)."""
    try:
        text = json.dumps(cfg, indent=2)
    except TypeError as e:
        raise ValueError(f"metadata must be JSON-serialisable: {e}") from e
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / WEIGHTS_NAME, write_path=lambda t: save_file(tensors, t))
    write_text(path / CFG_NAME, text)
    return path


def saelens_hook(hook: str | None) -> tuple[str | None, str]:
    """SAELens's ``(hook_name, reshape_activations)`` for a hook name we record.

    Our ``blocks.{i}.attn.heads`` (per-head outputs ``[..., n_heads, d_head]``) is
    TransformerLens's ``blocks.{i}.attn.hook_z``; SAELens flattens it to ``n_heads * d_head``
    before encoding when ``reshape_activations="hook_z"``. Every other name is kept as given.
    """
    if isinstance(hook, str) and translate_hook_name(hook).endswith(".attn.heads"):
        layer = translate_hook_name(hook).split(".")[1]
        if layer.isdigit():
            return f"blocks.{layer}.attn.hook_z", "hook_z"
    return hook, "none"


def _check_mp_sae_exportable(model: SparseCoder, scale: float) -> None:
    """Refuse an mp_sae that SAELens's ``matching_pursuit`` would encode differently."""
    ec = model.encoder.config
    problems = []
    if not ec.nonneg:  # type: ignore[attr-defined]
        problems.append("nonneg=False (SAELens's pursuit keeps only positive coefficients)")
    if ec.tol != 0:  # type: ignore[attr-defined]
        problems.append(f"tol={ec.tol} (SAELens has only the absolute residual_threshold)")  # type: ignore[attr-defined]
    if scale != 1.0:
        problems.append(
            f"input scale {scale} (folding it would make the atoms non-unit, which SAELens's "
            "pursuit does not divide by); train with normalize='none'"
        )
    norms = model.dictionary.W_dec.detach().norm(dim=1)
    if not bool(((norms - 1).abs() < 1e-4).all()):
        problems.append("atoms that are not unit-norm")
    if problems:
        raise ValueError(
            "this mp_sae cannot be written as a SAELens matching_pursuit SAE: "
            + "; ".join(problems)
        )


# ---------------------------------------------------------------------------------- loading
def exact_log(threshold: Tensor) -> Tensor:
    """``log_threshold`` with ``exp(log_threshold) == threshold`` bit for bit (float32).

    ``log`` then ``exp`` can miss the original by an ulp, so the neighbours of ``log(t)`` are tried
    too. Thresholds ``<= 0`` become ``-inf`` (threshold 0): SAELens's ``relu(pre) * (pre > t)`` equals
    ``pre * (pre > 0)`` for every ``t <= 0``.
    """
    t = threshold.float()
    lt = torch.where(t > 0, t.clamp_min(torch.finfo(t.dtype).tiny).log(), float("-inf"))
    best = lt.clone()
    up, down = torch.tensor(float("inf")), torch.tensor(float("-inf"))
    for cand in (torch.nextafter(lt, up), torch.nextafter(lt, down)):
        fix = (best.exp() != t) & (cand.exp() == t)
        best = torch.where(fix, cand, best)
    return best


def _legacy_architecture(cfg: Mapping[str, Any]) -> str:
    """Architecture of a pre-v6 config, which had ``activation_fn(_str)`` instead."""
    act = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
    return "topk" if act == "topk" else "standard"


def load_saelens(path: str | os.PathLike[str], *, device: str | None = None) -> SparseCoder:
    """Load a SAELens-layout directory (ours or SAELens's own ``save_model`` output).

    The result encodes and reconstructs raw inputs exactly as SAELens's ``encode``/``decode``
    would (up to float32 rounding where a fold was needed): ``apply_b_dec_to_input=False`` is
    folded into the encoder bias, TopK's ``rescale_acts_by_decoder_norm=True`` into ``W_enc``,
    ``b_enc`` and ``W_dec`` (the atoms become unit-norm, the codes are unchanged). Files written by
    :func:`save_saelens` come back with their encoder config, normaliser and training config.

    Raises ``ValueError`` for architectures we cannot represent (transcoders, temporal, ...), for per-token input normalisations, and for corrupt files or tensors that do
    not match ``cfg.json`` (the error names the file).
    """
    path = Path(path)
    cfg_path, w_path = require_files(path, (CFG_NAME, WEIGHTS_NAME), "SAELens")
    cfg = read_json(cfg_path)
    arch = cfg.get("architecture") or _legacy_architecture(cfg)
    if arch not in ARCH_TO_ENCODER:
        hint = (
            " (a SAELens training checkpoint; save it with TrainingSAE.save_inference_model, "
            "which writes it as 'jumprelu')"
            if arch in ("batchtopk", "matryoshka_batchtopk")
            else " (a transcoder: open it with sparsecodes.load or load_saelens_transcoder)"
            if "transcoder" in str(arch)
            else ""
        )
        raise ValueError(
            f"{cfg_path}: SAELens architecture {arch!r} is not supported{hint}; sparsecodes "
            f"can load {', '.join(sorted(ARCH_TO_ENCODER))}"
        )
    d_in = require_int(cfg, "d_in", cfg_path)
    d_sae = require_int(cfg, "d_sae", cfg_path)
    norm = cfg.get("normalize_activations", "none")
    if isinstance(norm, bool):  # pre-v6 configs
        norm = "expected_average_only_in" if norm else "none"
    norm = norm or "none"
    if norm in _RUNTIME_NORMS:
        raise ValueError(
            f"{cfg_path}: normalize_activations={norm!r} rescales every token at run time; "
            "sparsecodes has only a fixed scalar scale, so it cannot load this SAE"
        )
    if norm not in ("none", "expected_average_only_in"):
        raise ValueError(f"{cfg_path}: unknown normalize_activations={norm!r}")
    raw = read_safetensors(w_path)
    if "scaling_factor" in raw:  # pre-v6 'finetuning scaling factor'
        if torch.allclose(raw["scaling_factor"].float(), torch.ones(())):
            raw.pop("scaling_factor")
        else:
            raise ValueError(
                f"{w_path}: holds a non-unit pre-v6 'scaling_factor' (finetuning scaling), which "
                "sparsecodes cannot represent"
            )
    check_tensors(raw, _arch_tensors(arch, d_in, d_sae), w_path, cfg_path)
    t = {k: v.detach().double() for k, v in raw.items()}  # convert in float64, cast once

    meta = cfg.get("metadata")
    ours = meta.get(METADATA_KEY) if isinstance(meta, Mapping) else None
    if norm == "expected_average_only_in" and not ours:
        warnings.warn(
            f"{cfg_path}: normalize_activations='expected_average_only_in' but the scale is not "
            "stored in the file; like SAELens, the loaded model applies no scaling, so scale the "
            "inputs yourself (or fold the factor in first)",
            stacklevel=2,
        )

    if arch == "matching_pursuit":
        return _load_matching_pursuit(cfg, cfg_path, t, ours, d_in, d_sae, path, device)

    # --- bring the SAELens computation to ours: pre = (x - b_dec) @ W_enc + b_enc
    if not cfg.get("apply_b_dec_to_input", True):
        shift = t["b_dec"] @ t["W_enc"]
        if arch == "gated":
            t["b_gate"] = t["b_gate"] + shift
            t["b_mag"] = t["b_mag"] + t["b_dec"] @ (t["W_enc"] * t["r_mag"].exp())
        else:
            t["b_enc"] = t["b_enc"] + shift
    if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm", False):
        norms = t["W_dec"].norm(dim=1).clamp_min(1e-8)  # SAELens's acts * ||W_dec_i|| folded in
        t["W_enc"] = t["W_enc"] * norms
        t["b_enc"] = t["b_enc"] * norms
        t["W_dec"] = t["W_dec"] / norms[:, None]

    encoder = ARCH_TO_ENCODER[arch]
    encoder_config: dict[str, Any] = {}
    normalize, scale, seed, train_config = "none", 1.0, 0, {}
    if arch == "topk":
        k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d_sae:
            raise ValueError(
                f"{cfg_path}: topk needs an integer k in [1, d_sae={d_sae}], got {k!r}"
            )
        encoder_config["k"] = k
        # SAELens computes in float32; our topk would otherwise pick bf16 matmuls where the CPU
        # or GPU has them ("auto"), and near-tied latents could then differ
        encoder_config.update(exact_float32_config("topk"))
    if ours:
        encoder, encoder_config, normalize, scale, seed, train_config = _our_metadata(
            ours, arch, encoder_config, cfg_path
        )
        if scale != 1.0 and ours.get("scale_folded", True):
            t["W_enc"] = t["W_enc"] / scale
            t["W_dec"] = t["W_dec"] * scale
            t["b_dec"] = t["b_dec"] * scale

    params = {
        "dictionary.W_dec": t["W_dec"],
        "dictionary.b_dec": t["b_dec"],
        "encoder.W_enc": t["W_enc"],
    }
    if arch == "gated":
        params.update({f"encoder.{p}": t[p] for p in ("b_gate", "r_mag", "b_mag")})
    else:
        params["encoder.b_enc"] = t["b_enc"]
    if encoder == "jumprelu":
        params["encoder.log_threshold"] = exact_log(raw["threshold"].float())
    elif encoder in THRESHOLD_ENCODERS:
        params.update(_batchtopk_threshold_params(raw["threshold"].float(), ours, cfg_path))
    return build_coder(
        d_in=d_in,
        n_latents=d_sae,
        encoder=encoder,
        encoder_config=encoder_config,
        params=params,
        normalize=normalize,
        scale=scale,
        seed=seed,
        train_config=train_config,
        device=device,
        source=path,
    )


def _load_matching_pursuit(
    cfg: Mapping[str, Any],
    cfg_path: Path,
    t: dict[str, Tensor],
    ours: Any,
    d_in: int,
    d_sae: int,
    path: Path,
    device: str | None,
) -> SparseCoder:
    """A SAELens ``matching_pursuit`` SAE as an ``mp_sae`` coder (see the module docstring)."""
    k = cfg.get("max_iterations")
    k = d_in if k is None else k
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d_sae:
        raise ValueError(
            f"{cfg_path}: matching_pursuit max_iterations={cfg.get('max_iterations')!r} gives "
            f"{k!r} steps; sparsecodes' mp_sae needs 1 <= k <= d_sae={d_sae} (a step budget "
            "above d_sae can re-pick atoms past d_sae, which mp_sae's k does not allow)"
        )
    thr = cfg.get("residual_threshold", 1e-2)
    if isinstance(thr, bool) or not isinstance(thr, int | float) or not thr >= 0:
        raise ValueError(f"{cfg_path}: bad residual_threshold={thr!r}")
    encoder_config: dict[str, Any] = {
        "k": k,
        "residual_threshold": float(thr),
        "stop_on_repeat": bool(cfg.get("stop_on_duplicate_support", True)),
        "nonneg": True,
        "tol": 0.0,
    }
    b_dec = t["b_dec"] if cfg.get("apply_b_dec_to_input", True) else torch.zeros_like(t["b_dec"])
    seed, train_config = 0, {}
    if ours:
        _enc, cfg_enc, _norm, _scale, seed, train_config = _our_metadata(
            ours, "matching_pursuit", {"k": k}, cfg_path
        )
        encoder_config = {**cfg_enc, **encoder_config}
    return build_coder(
        d_in=d_in,
        n_latents=d_sae,
        encoder="mp_sae",
        encoder_config=encoder_config,
        params={"dictionary.W_dec": t["W_dec"], "dictionary.b_dec": b_dec},
        normalize="none",
        scale=1.0,
        seed=seed,
        train_config=train_config,
        device=device,
        source=path,
    )


def _our_metadata(
    ours: Any, arch: str, encoder_config: dict[str, Any], cfg_path: Path
) -> tuple[str, dict[str, Any], str, float, int, dict[str, Any]]:
    """Validate ``metadata.sparsecodes``: encoder, its config, normaliser, seed, train config."""
    if not isinstance(ours, Mapping):
        raise ValueError(f"{cfg_path}: metadata.{METADATA_KEY} must be an object")
    encoder = ours.get("encoder")
    if ENCODER_TO_ARCH.get(encoder) != arch:  # type: ignore[arg-type]
        raise ValueError(
            f"{cfg_path}: metadata.{METADATA_KEY}.encoder={encoder!r} does not match "
            f"architecture {arch!r} (was the file edited?)"
        )
    cfg_enc = dict(ours.get("encoder_config") or {})
    if "k" in encoder_config and cfg_enc.get("k", encoder_config["k"]) != encoder_config["k"]:
        raise ValueError(
            f"{cfg_path}: k={encoder_config['k']} but metadata.{METADATA_KEY}.encoder_config "
            f"has k={cfg_enc['k']}"
        )
    normalize = ours.get("normalize", "none")
    scale = float(ours.get("normaliser_scale", 1.0))
    if normalize not in ("none", "expected_norm") or not math.isfinite(scale) or scale <= 0:
        raise ValueError(
            f"{cfg_path}: bad normaliser in metadata.{METADATA_KEY}: normalize={normalize!r}, "
            f"normaliser_scale={scale!r}"
        )
    seed = int(ours.get("seed", 0))
    return encoder, cfg_enc, normalize, scale, seed, dict(ours.get("train_config") or {})


def _batchtopk_threshold_params(
    threshold: Tensor, ours: Mapping[str, Any], cfg_path: Path
) -> dict[str, Tensor]:
    """The batchtopk encoder's buffers from a saved (broadcast) JumpReLU threshold."""
    if not torch.all(threshold == threshold[0]):
        raise ValueError(
            f"{cfg_path}: a batchtopk model needs one shared threshold, but the saved "
            "thresholds differ across latents"
        )
    updates = ours.get("threshold_updates", 1)
    if isinstance(updates, bool) or not isinstance(updates, int) or updates < 1:
        raise ValueError(f"{cfg_path}: bad metadata.{METADATA_KEY}.threshold_updates={updates!r}")
    return {
        "encoder.threshold": threshold[0].clone(),
        "encoder.threshold_updates": torch.tensor(updates, dtype=torch.long),
    }


register_save_format("saelens", save_saelens)
