"""Load the SAE to evaluate from a directory and check it fits the model and hook.

``load_sae(path)`` accepts:

- a sparsecodes model directory (``sparsecodes.json`` + ``model.safetensors``, e.g. a run's
  ``final/``);
- a training run directory holding ``final/`` (ours) or only ``final_saelens/``;
- a SAELens-layout directory (``cfg.json`` + ``sae_weights.safetensors``), ours or SAELens's own.

Where the activations came from is read from what the SAE recorded: our ``train_config.source``
(``model_name``, ``hook_name``, ``context_size`` or the store's manifest), the demo's
``train_config.demo`` (``model``, ``hook``, ``context_size``), or SAELens's
``metadata.model_name`` / ``hook_name`` / ``context_size`` (TransformerLens hook names such as
``blocks.8.hook_resid_pre`` are translated to ours, ``blocks.8.resid_pre``).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsecodes.sparse_coder import CONFIG_NAME, SparseCoder

SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"

#: TransformerLens hook suffixes -> our hook kinds
_TL_KINDS = {
    "hook_resid_pre": "resid_pre",
    "hook_resid_post": "resid_post",
    "hook_attn_out": "attn_out",
    "hook_mlp_out": "mlp_out",
    "attn.hook_z": "attn.heads",
}
_TL_HOOK = re.compile(r"^blocks\.(\d+)\.(" + "|".join(re.escape(k) for k in _TL_KINDS) + r")$")


@dataclass
class LoadedSAE:
    """An SAE ready to evaluate and what it says about its origin.

    Attributes:
        coder: the :class:`SparseCoder` (eval mode).
        path: the directory the weights were read from.
        format: ``"sparsecodes"`` or ``"saelens"``.
        model_name, hook_name: recorded origin of the training activations (None if unknown).
        context_size: recorded training window length (None if unknown).
    """

    coder: SparseCoder
    path: Path
    format: str
    model_name: str | None = None
    hook_name: str | None = None
    context_size: int | None = None


def normalise_hook_name(hook: str | None) -> str | None:
    """Our hook name for ``hook``; TransformerLens names (``blocks.3.hook_resid_post``) are mapped."""
    if hook is None:
        return None
    m = _TL_HOOK.match(hook)
    if m:
        return f"blocks.{m.group(1)}.{_TL_KINDS[m.group(2)]}"
    return hook


def _positive_int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def _origin_from_train_config(tc: Mapping[str, Any]) -> tuple[str | None, str | None, int | None]:
    src = tc.get("source")
    if isinstance(src, Mapping):
        ctx = _positive_int(src.get("context_size"))
        store = src.get("store")
        if ctx is None and store:
            try:
                from sparsecodes.activations.store import read_manifest

                ctx = _positive_int(read_manifest(Path(store)).context_size)
            except (OSError, ValueError, KeyError):  # the store may have moved; not essential
                ctx = None
        return src.get("model_name"), src.get("hook_name"), ctx
    demo = tc.get("demo")
    if isinstance(demo, Mapping):
        return demo.get("model"), demo.get("hook"), _positive_int(demo.get("context_size"))
    return None, None, None


def _resolve_dir(path: Path) -> tuple[Path, str]:
    if not path.exists():
        raise FileNotFoundError(f"SAE directory {path} does not exist")
    if not path.is_dir():
        raise ValueError(f"SAE_DIR must be a directory, got the file {path}")
    if (path / CONFIG_NAME).is_file():
        return path, "sparsecodes"
    if (path / SAELENS_CFG).is_file():
        return path, "saelens"
    if (path / "final" / CONFIG_NAME).is_file():
        return path / "final", "sparsecodes"
    if (path / "final_saelens" / SAELENS_CFG).is_file():
        return path / "final_saelens", "saelens"
    raise ValueError(
        f"{path} holds no SAE: expected {CONFIG_NAME} (a sparsecodes model, e.g. a run's final/), "
        f"{SAELENS_CFG} + {SAELENS_WEIGHTS} (SAELens layout), or a run directory with final/"
    )


def load_sae(path: str | os.PathLike[str], *, device: str | None = None) -> LoadedSAE:
    """Load the SAE in ``path`` (see the module docstring for the layouts understood)."""
    root, fmt = _resolve_dir(Path(path))
    if fmt == "sparsecodes":
        coder = SparseCoder.load(root, device=device)
        model_name, hook_name, ctx = _origin_from_train_config(coder.train_config or {})
    else:
        from sparsecodes.formats import load_saelens

        coder = load_saelens(root, device=device)
        try:
            cfg = json.loads((root / SAELENS_CFG).read_text())
        except json.JSONDecodeError as e:  # load_saelens already read it; defensive
            raise ValueError(f"{root / SAELENS_CFG} is not valid JSON: {e}") from e
        meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), Mapping) else {}
        model_name = meta.get("model_name", cfg.get("model_name"))
        hook_name = meta.get("hook_name", cfg.get("hook_name"))
        ctx = _positive_int(meta.get("context_size", cfg.get("context_size")))
        if ctx is None or hook_name is None:
            m2, h2, c2 = _origin_from_train_config(coder.train_config or {})
            model_name, hook_name, ctx = model_name or m2, hook_name or h2, ctx or c2
    coder.eval()
    return LoadedSAE(
        coder=coder,
        path=root,
        format=fmt,
        model_name=model_name if isinstance(model_name, str) and model_name else None,
        hook_name=normalise_hook_name(hook_name) if isinstance(hook_name, str) else None,
        context_size=ctx,
    )


def _same_model(a: str, b: str) -> bool:
    def norm(s: str) -> str:
        return os.path.normpath(s).rstrip("/").lower()

    return norm(a) == norm(b) or Path(a).name.lower() == Path(b).name.lower() != ""


def resolve_target(sae: LoadedSAE, model: str | None, hook: str | None) -> tuple[str, str]:
    """The model and hook to evaluate on: the user's choice, checked against what the SAE recorded.

    Raises ``ValueError`` when they disagree (an SAE trained on another model or hook) or when
    neither names one.
    """
    hook = normalise_hook_name(hook)
    if model is not None and sae.model_name is not None and not _same_model(model, sae.model_name):
        raise ValueError(
            f"the SAE in {sae.path} was trained on model {sae.model_name!r}, not --model "
            f"{model!r}; evaluate it on its own model (omit --model) or pick an SAE for {model!r}"
        )
    if hook is not None and sae.hook_name is not None and hook != sae.hook_name:
        raise ValueError(
            f"the SAE in {sae.path} was trained on hook {sae.hook_name!r}, not --hook {hook!r}; "
            "omit --hook to use the recorded one, or pick an SAE trained on that hook"
        )
    model = model or sae.model_name
    hook = hook or sae.hook_name
    if model is None:
        raise ValueError(
            f"the SAE in {sae.path} does not record which model it was trained on; pass --model"
        )
    if hook is None:
        raise ValueError(
            f"the SAE in {sae.path} does not record which hook it was trained on; pass --hook"
        )
    return model, hook


def check_width(sae: LoadedSAE, adapter: Any, hook: str) -> None:
    """Raise ``ValueError`` unless ``hook``'s activation width equals the SAE's ``d_in``."""
    if hook not in adapter.hook_points():
        raise ValueError(
            f"hook {hook!r} does not exist in {adapter.name} (layers 0..{adapter.n_layers - 1}); "
            "see `sparsecodes models` for its hook points"
        )
    width = math.prod(adapter.hook_shape(hook))
    if width != sae.coder.d_in:
        raise ValueError(
            f"the SAE in {sae.path} has d_in={sae.coder.d_in} but {adapter.name}'s {hook} has "
            f"width {width}: this SAE was trained on a different model or hook"
        )
