"""One loader for a trained coder: :func:`load` reads every layout we know into a SparseCoder.

``load(path)`` accepts

- our format: a directory with ``sparsecodes.json`` + ``model.safetensors``
  (:meth:`SparseCoder.save`);
- a ``sparsecodes train`` run directory: its ``final/``, else its ``final_saelens/``;
- SAELens's layout: ``cfg.json`` + ``sae_weights.safetensors`` (v6 and pre-v6 configs,
  ours or SAELens's own ``save_model``);
- transcoders, skip transcoders and crosscoders (:class:`~sparsecodes.transcoder.Transcoder`) in
  our format or SAELens's transcoder layouts: ``load`` returns a ``Transcoder`` then, whose
  ``source.hook_name`` is the hook it reads (``in_hook``; ``out_hook`` is on the transcoder);
- EleutherAI sparsify's layout: ``cfg.json`` + ``sae.safetensors`` (one hookpoint), or a
  sparsify run/checkpoint directory holding one such sub-directory per hookpoint (with one
  hookpoint it is used; with several the error lists them).

The coder comes back in eval mode with :attr:`SparseCoder.source` set to a
:class:`~sparsecodes.provenance.CoderSource`: the model, hook (translated to our hook names by
:func:`sparsecodes.models.hooks.translate_hook_name`), context size, corpus and normalisation the
files record. :func:`resolve_target` and :func:`check_width` check a coder against the model and
hook a caller wants to run it on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sparsecodes.coder_files import CONFIG_NAME, WEIGHTS_NAME
from sparsecodes.formats import (
    is_saelens_transcoder,
    load_saelens,
    load_saelens_transcoder,
    load_sparsify,
    read_json,
)
from sparsecodes.formats.saelens import CFG_NAME as SAELENS_CFG
from sparsecodes.formats.saelens import WEIGHTS_NAME as SAELENS_WEIGHTS
from sparsecodes.formats.sparsify import CFG_NAME as SPARSIFY_CFG
from sparsecodes.formats.sparsify import WEIGHTS_NAME as SPARSIFY_WEIGHTS
from sparsecodes.models.hooks import is_hook_name, translate_hook_name
from sparsecodes.provenance import CoderFormat, CoderSource
from sparsecodes.sparse_coder import SparseCoder
from sparsecodes.transcoder import FORMAT as TRANSCODER_FORMAT
from sparsecodes.transcoder import Transcoder

__all__ = [
    "CoderSource",
    "check_width",
    "load",
    "load_with_model",
    "locate",
    "resolve_target",
    "source_of",
]

#: a sparsify run directory's training config (``TrainConfig``/``RunConfig.save_json``)
SPARSIFY_RUN_CONFIG = "config.json"


def _is_ours(d: Path) -> bool:
    return (d / CONFIG_NAME).is_file()


def _is_saelens(d: Path) -> bool:
    return (d / SAELENS_CFG).is_file() and (d / SAELENS_WEIGHTS).is_file()


def _is_sparsify(d: Path) -> bool:
    return (d / SPARSIFY_CFG).is_file() and (d / SPARSIFY_WEIGHTS).is_file()


def locate(path: str | os.PathLike[str]) -> tuple[Path, CoderFormat]:
    """The directory holding the weights under ``path`` and its format (see the module docstring).

    Raises ``FileNotFoundError`` when ``path`` does not exist or holds no coder, ``ValueError``
    when it is a file or a sparsify run with several hookpoints (naming them).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"coder directory {p} does not exist")
    if not p.is_dir():
        raise ValueError(f"a coder is a directory, got the file {p}; pass its directory")
    for d in (p, p / "final", p / "final_saelens"):
        if _is_ours(d):
            return d, "sparsecodes"
        if _is_saelens(d):
            return d, "saelens"
        if _is_sparsify(d):
            return d, "sparsify"
        if (d / SAELENS_CFG).is_file():  # a cfg.json without weights: let the reader name it
            return d, "sparsify" if "expansion_factor" in read_json(d / SAELENS_CFG) else "saelens"
    hookpoints = sorted(c.name for c in p.iterdir() if c.is_dir() and _is_sparsify(c))
    if len(hookpoints) == 1:
        return p / hookpoints[0], "sparsify"
    if hookpoints:
        raise ValueError(
            f"{p} is a sparsify run with {len(hookpoints)} hookpoints; pass one of them, e.g. "
            f"{p / hookpoints[0]} (hookpoints: {', '.join(hookpoints[:8])})"
        )
    raise FileNotFoundError(
        f"{p} holds no coder: expected {CONFIG_NAME} + {WEIGHTS_NAME} (sparsecodes), "
        f"{SAELENS_CFG} + {SAELENS_WEIGHTS} (SAELens), {SPARSIFY_CFG} + {SPARSIFY_WEIGHTS} "
        "(sparsify), or a run directory with final/ (or one sub-directory per sparsify hookpoint)"
    )


def _positive_int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _from_train_config(tc: Mapping[str, Any]) -> dict[str, Any]:
    """``model_name``, ``hook_name``, ``context_size``, ``corpus`` from our ``train_config``."""
    src = tc.get("source")
    if isinstance(src, Mapping):
        ctx = _positive_int(src.get("context_size"))
        store = src.get("store")
        if ctx is None and store:
            from sparsecodes.activations.store import read_manifest

            try:
                ctx = _positive_int(read_manifest(Path(store)).context_size)
            except (OSError, ValueError, KeyError):  # the store may have moved; not essential
                ctx = None
        return {
            "model_name": src.get("model_name"),
            "hook_name": src.get("hook_name"),
            "context_size": ctx,
            "corpus": src.get("corpus"),
        }
    demo = tc.get("demo")
    if isinstance(demo, Mapping):
        return {
            "model_name": demo.get("model"),
            "hook_name": demo.get("hook"),
            "context_size": demo.get("context_size"),
            "corpus": demo.get("corpus"),
        }
    return {}


def _saelens_record(d: Path) -> dict[str, Any]:
    """What a SAELens ``cfg.json`` records: ``metadata.*`` (v6) or top-level keys (pre-v6)."""
    cfg = read_json(d / SAELENS_CFG)
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), Mapping) else {}
    out = {k: meta.get(k, cfg.get(k)) for k in ("model_name", "hook_name", "context_size")}
    out["corpus"] = meta.get("dataset_path", cfg.get("dataset_path"))
    return out


def _sparsify_record(d: Path) -> dict[str, Any]:
    """A sparsify hookpoint directory records nothing itself: its name is the hookpoint (when it
    is one, or the run's ``config.json`` lists it), and that config (sparsify's ``RunConfig``)
    may name the model, context size and dataset."""
    name_is_hook = is_hook_name(translate_hook_name(d.name))
    out: dict[str, Any] = {}
    run_cfg = d.parent / SPARSIFY_RUN_CONFIG
    if run_cfg.is_file():
        cfg = read_json(run_cfg)
        hookpoints = cfg.get("hookpoints")
        if isinstance(hookpoints, list) and hookpoints:
            name_is_hook = d.name in hookpoints
        out.update(
            model_name=cfg.get("model"), context_size=cfg.get("ctx_len"), corpus=cfg.get("dataset")
        )
    out["hook_name"] = d.name if name_is_hook else None
    return out


def load(path: str | os.PathLike[str], *, device: str | None = None) -> Any:
    """Load the coder in ``path`` (any layout in the module docstring), in eval mode: a
    :class:`SparseCoder`, or a :class:`~sparsecodes.transcoder.Transcoder` for transcoder files.

    ``coder.source`` (a :class:`CoderSource`) says what the files record about it. Raises
    ``FileNotFoundError``/``ValueError`` naming the file and the problem for missing, corrupt or
    unsupported files.
    """
    d, fmt = locate(path)
    coder: Any
    if fmt == "sparsecodes":
        is_tc = read_json(d / CONFIG_NAME).get("format") == TRANSCODER_FORMAT
        coder = (Transcoder if is_tc else SparseCoder).load(d, device=device)
        rec = _from_train_config(coder.train_config or {})
    elif fmt == "saelens":
        is_tc = is_saelens_transcoder(read_json(d / SAELENS_CFG))
        coder = (load_saelens_transcoder if is_tc else load_saelens)(d, device=device)
        rec = _saelens_record(d)
        ours = _from_train_config(coder.train_config or {})  # our files also carry train_config
        rec = {k: rec.get(k) if rec.get(k) is not None else ours.get(k) for k in {*rec, *ours}}
    else:
        coder = load_sparsify(d, device=device)
        rec = _sparsify_record(d)
    coder.eval()
    if isinstance(coder, Transcoder) and coder.in_hook:
        rec["hook_name"] = coder.in_hook
    recorded_hook = _text(rec.get("hook_name"))
    coder.source = CoderSource(
        path=d,
        format=fmt,
        model_name=_text(rec.get("model_name")),
        hook_name=translate_hook_name(recorded_hook) if recorded_hook else None,
        recorded_hook_name=recorded_hook,
        context_size=_positive_int(rec.get("context_size")),
        corpus=_text(rec.get("corpus")),
        normalize=coder.normaliser.kind,
        scale=float(coder.normaliser.scale.item()),
    )
    return coder


def source_of(coder: SparseCoder) -> CoderSource:
    """``coder.source``, or an empty record for a coder not made by :func:`load`."""
    if coder.source is not None:
        return coder.source
    return CoderSource(
        path=Path("<in memory>"),
        format="sparsecodes",
        normalize=coder.normaliser.kind,
        scale=float(coder.normaliser.scale.item()),
    )


def _same_model(a: str, b: str) -> bool:
    def norm(s: str) -> str:
        return os.path.normpath(s).rstrip("/").lower()

    return norm(a) == norm(b) or Path(a).name.lower() == Path(b).name.lower() != ""


def resolve_target(
    coder: SparseCoder, model: str | None = None, hook: str | None = None
) -> tuple[str, str]:
    """``(model, hook)`` to run ``coder`` on: the caller's choice, checked against the record.

    ``model``/``hook`` (e.g. ``--model``/``--hook``) default to what the coder's files record;
    ``hook`` may use any naming :func:`~sparsecodes.models.hooks.translate_hook_name` knows.
    Raises ``ValueError`` when a choice contradicts the record (a coder trained on another model
    or hook) or when neither names one. A recorded hook with no equivalent in our scheme does not
    block an explicit ``hook``.
    """
    src = source_of(coder)
    hook = translate_hook_name(hook) if hook is not None else None
    if model is not None and src.model_name is not None and not _same_model(model, src.model_name):
        raise ValueError(
            f"the coder in {src.path} was trained on model {src.model_name!r}, not --model "
            f"{model!r}; run it on its own model (omit --model) or pick a coder for {model!r}"
        )
    recorded_hook = src.hook_name if src.hook_name and is_hook_name(src.hook_name) else None
    if hook is not None and recorded_hook is not None and hook != recorded_hook:
        raise ValueError(
            f"the coder in {src.path} was trained on hook {recorded_hook!r}"
            + (
                f" (recorded as {src.recorded_hook_name!r})"
                if src.recorded_hook_name != recorded_hook
                else ""
            )
            + f", not --hook {hook!r}; omit --hook to use the recorded one, or pick a coder "
            "trained on that hook"
        )
    model = model or src.model_name
    hook = hook or src.hook_name
    missing = [opt for opt, v in (("--model", model), ("--hook", hook)) if v is None]
    if missing:
        raise ValueError(
            f"the coder in {src.path} does not record which "
            f"{' and '.join(m.removeprefix('--') for m in missing)} its activations came from; "
            f"pass {' and '.join(missing)} (e.g. --model smollm2-135m --hook blocks.12.resid_post)"
        )
    return model, hook  # type: ignore[return-value]


def check_width(coder: SparseCoder, adapter: Any, hook: str) -> None:
    """Raise ``ValueError`` unless ``hook`` exists in ``adapter`` with width ``coder.d_in``.

    ``adapter`` is a :class:`~sparsecodes.models.ModelAdapter`; the width is the product of the
    hook's per-token shape (``[n_heads, d_head]`` for ``attn.heads``).
    """
    src = source_of(coder)
    if hook not in adapter.hook_points():
        raise ValueError(
            f"hook {hook!r} does not exist in {adapter.name} (layers 0..{adapter.n_layers - 1}); "
            "see `sparsecodes models` for its hook points"
        )
    width = math.prod(adapter.hook_shape(hook))
    if width != coder.d_in:
        raise ValueError(
            f"the coder in {src.path} has d_in={coder.d_in} but {adapter.name}'s {hook} has "
            f"width {width}: it was trained on a different model or hook"
        )


def load_with_model(
    path: str | os.PathLike[str],
    *,
    model: str | None = None,
    hook: str | None = None,
    device: str | None = "auto",
) -> tuple[SparseCoder, Any, str]:
    """``(coder, adapter, hook)``: the coder in ``path``, the model it reads and the hook name.

    ``model``/``hook`` default to the recorded ones (:func:`resolve_target`); the hook's width is
    checked (:func:`check_width`) and the coder moved to the model's device.
    """
    from sparsecodes.models import load_model

    coder = load(path)
    model_name, hook_name = resolve_target(coder, model, hook)
    adapter = load_model(model_name, device=device)
    check_width(coder, adapter, hook_name)
    coder.to(adapter.device)
    return coder, adapter, hook_name
