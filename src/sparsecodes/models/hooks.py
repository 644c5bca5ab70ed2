"""Hook-point names: one scheme for every architecture.

A hook point is ``blocks.{i}.{kind}`` with ``kind`` one of :data:`HOOK_KINDS`:

- ``resid_pre``   the residual stream entering block ``i``           ``[B, T, d_model]``
- ``attn.heads``  per-head attention outputs before the output projection
                  (per *query* head, also with grouped-query attention) ``[B, T, n_heads, d_head]``
- ``attn_out``    the attention sub-layer's output (after the output projection) ``[B, T, d_model]``
- ``mlp_in``      the MLP's input (after the norm before it in pre-norm models; BERT: the
                  attention block's normalised output)                ``[B, T, d_model]``
- ``mlp_out``     the MLP sub-layer's output                          ``[B, T, d_model]``
- ``resid_post``  the residual stream leaving block ``i``            ``[B, T, d_model]``

The kinds are listed in the order they are computed inside a block; :func:`hook_order` gives a
sort key over all hook points of a model so that "the deepest requested hook" is well defined.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HOOK_KINDS: tuple[str, ...] = (
    "resid_pre",
    "attn.heads",
    "attn_out",
    "mlp_in",
    "mlp_out",
    "resid_post",
)
"""Hook kinds in the order they are computed within one block."""

HOOK_PATTERN = "blocks.{i}.{" + ",".join(HOOK_KINDS) + "}"
"""Human-readable pattern of every hook-point name."""

_NAME_RE = re.compile(
    r"^blocks\.(\d+)\.(resid_pre|resid_post|attn_out|mlp_in|mlp_out|attn\.heads)$"
)


class StopForward(Exception):
    """Raised from a hook after the deepest requested activation; caught by the adapter."""


@dataclass(frozen=True, order=True)
class HookPoint:
    """A parsed hook name: ``layer`` index and ``kind`` (one of :data:`HOOK_KINDS`)."""

    layer: int
    kind: str

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.{self.kind}"

    @property
    def order(self) -> tuple[int, int]:
        """Sort key: position of this activation in the forward pass."""
        return (self.layer, HOOK_KINDS.index(self.kind))


def hook_name(layer: int, kind: str) -> str:
    """The hook-point name for ``layer`` and ``kind``; e.g. ``hook_name(3, "resid_post")``."""
    if kind not in HOOK_KINDS:
        raise ValueError(f"unknown hook kind {kind!r}; valid kinds: {', '.join(HOOK_KINDS)}")
    return f"blocks.{layer}.{kind}"


def all_hook_names(n_layers: int) -> list[str]:
    """Every hook-point name of an ``n_layers``-block model, in forward order."""
    return [f"blocks.{i}.{k}" for i in range(n_layers) for k in HOOK_KINDS]


def parse_hook(name: str, n_layers: int) -> HookPoint:
    """Parse and validate a hook name against a model with ``n_layers`` blocks.

    Raises ``ValueError`` naming the valid pattern and layer range when ``name`` is not one.
    """
    m = _NAME_RE.match(name) if isinstance(name, str) else None
    if m is None:
        raise ValueError(
            f"unknown hook point {name!r}; valid hook points are {HOOK_PATTERN} with "
            f"i in 0..{n_layers - 1}, e.g. 'blocks.0.resid_post' "
            "(list them all with ModelAdapter.hook_points() or `sparsecodes models NAME`)"
        )
    layer = int(m.group(1))
    if layer >= n_layers:
        raise ValueError(
            f"unknown hook point {name!r}: layer {layer} is out of range; this model has "
            f"{n_layers} blocks, so i must be in 0..{n_layers - 1} in {HOOK_PATTERN}"
        )
    return HookPoint(layer, m.group(2))


def hook_order(name: str, n_layers: int) -> tuple[int, int]:
    """Sort key of a hook name in forward-pass order."""
    return parse_hook(name, n_layers).order


# ------------------------------------------------------------------ other tools' hook names
#: TransformerLens / SAELens hook suffix -> our kind (``blocks.{i}.{suffix}``)
_TL_SUFFIXES: dict[str, str] = {
    "hook_resid_pre": "resid_pre",
    "hook_resid_post": "resid_post",
    "hook_attn_out": "attn_out",
    "hook_mlp_in": "mlp_in",
    "ln2.hook_normalized": "mlp_in",
    "hook_mlp_out": "mlp_out",
    "attn.hook_z": "attn.heads",
}
#: sparsify (a Hugging Face module path relative to the base model) suffix -> our kind
_HF_SUFFIXES: dict[str, str] = {
    "": "resid_post",  # the decoder layer's output: the residual stream leaving it
    ".mlp": "mlp_out",
    ".self_attn": "attn_out",  # llama, mistral, qwen, ...
    ".attn": "attn_out",  # gpt2
    ".attention": "attn_out",  # gpt-neox / pythia
}
_TL_RE = re.compile(r"^blocks\.(\d+)\.(" + "|".join(re.escape(s) for s in _TL_SUFFIXES) + r")$")
# optional wrapper prefixes (a path from the causal-LM wrapper rather than the base model)
_HF_RE = re.compile(
    r"^(?:model\.|transformer\.|gpt_neox\.)?(?:layers|h)\.(\d+)("
    + "|".join(re.escape(s) for s in _HF_SUFFIXES if s)
    + r")?$"
)


def translate_hook_name(name: str) -> str:
    """Our hook-point name for a TransformerLens/SAELens or sparsify hook name.

    ``blocks.8.hook_resid_pre`` -> ``blocks.8.resid_pre``, ``blocks.3.attn.hook_z`` ->
    ``blocks.3.attn.heads``, ``blocks.2.hook_mlp_in`` / ``blocks.2.ln2.hook_normalized`` ->
    ``blocks.2.mlp_in``, sparsify's ``layers.8`` (a decoder layer's output) ->
    ``blocks.8.resid_post``, ``layers.8.mlp`` -> ``blocks.8.mlp_out``, ``layers.8.self_attn`` /
    ``h.8.attn`` / ``layers.8.attention`` -> ``blocks.8.attn_out``. Our own names and names with
    no equivalent (e.g. ``blocks.8.hook_resid_mid``) are returned unchanged, so the caller's
    hook-point validation reports them.
    """
    m = _TL_RE.match(name)
    if m:
        return f"blocks.{m.group(1)}.{_TL_SUFFIXES[m.group(2)]}"
    m = _HF_RE.match(name)
    if m:
        return f"blocks.{m.group(1)}.{_HF_SUFFIXES[m.group(2) or '']}"
    return name


def is_hook_name(name: str) -> bool:
    """Whether ``name`` is a hook-point name in our scheme (any layer index)."""
    return bool(_NAME_RE.match(name))
