"""Steering and ablation through a coder's latents at its hook.

Three operations on the activation ``x`` ``[d_in]`` of every edited token, each a change of the
code followed by a decode, in the model's own units (the coder's input normaliser undone):

- **add** ``alpha * d_i``: ``x + alpha * d_i``, where ``d_i = W_dec[i] / s`` is atom ``i`` in raw
  units (``s`` the normaliser's scale, 1 without one). No encoding is needed.
- **clamp** latent ``i`` to ``v``: encode ``c = E(x)``, set ``c_i = v``, decode, and add the
  reconstruction error back: ``D(c') + (x - D(c)) = x + (v - c_i) * d_i``.
- **ablate** latent ``i``: clamp it to 0, ``x - c_i * d_i``.

Several latents and operations combine in one :class:`LatentEdit`. The reconstruction error is
kept, so only the named latents' share of ``x`` changes: ablating no latent (or adding
``alpha = 0``) returns ``x`` unchanged, bit for bit. The change is computed as
``delta = D(c') - D(c) = ((c' - c) @ W_dec) / s`` (the bias cancels) and added to ``x``.

- **scale** latent ``i`` by ``f``: clamp it to ``f * c_i``, ``x + (f - 1) * c_i * d_i``
  (``f = 0`` is ablating it, ``f = 1`` changes nothing, bit for bit).

A :class:`LatentEdit` is a function of the activation (``edit(act) -> act``), which is what the
model adapter's edit hooks take (:meth:`~sparsecodes.models.ModelAdapter.run_with_edit`,
:meth:`~sparsecodes.models.ModelAdapter.editing`). :meth:`LatentEdit.delta` gives the change
alone.

**Transcoders.** The same edit works through a coder that reads one hook and writes another (a
:class:`sparsecodes.transcoder.Transcoder`, or any object of the
:class:`sparsecodes.graphs.transcoder.Transcoder` protocol, e.g. a least-squares
``DenseTranscoder``): the codes are the transcoder's activations on what it reads
(``c = activate(encode_pre(x_in))``, e.g. ``blocks.{i}.mlp_in``) and the change
``(c' - c) @ W_dec_out`` (raw output units) is added to what it writes (``blocks.{i}.mlp_out``).
The MLP itself still runs, so its output keeps the transcoder's error: ``mlp_out + sum_i (new_i -
old_i) W_dec_out[i]``. :meth:`LatentEdit.hooks` gives the pair of hook functions (one reads the
input, one adds the change); :func:`steering` and :func:`intervening` attach them.

:func:`steering` is a context manager that keeps the edit on the model for every forward pass
inside it, ``generate`` included; :func:`compare` runs a prompt with and without an edit and
returns both generations and the change in next-token logits.
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sparsecodes.interp.annotate import TokenStrings
from sparsecodes.loading import check_width, source_of
from sparsecodes.models.hooks import translate_hook_name
from sparsecodes.seeding import derive_seed

logger = logging.getLogger(__name__)

__all__ = [
    "LatentEdit",
    "SteerResult",
    "compare",
    "compare_edits",
    "generate",
    "intervening",
    "is_transcoder",
    "next_token_logits",
    "resolve_hook",
    "resolve_hooks",
    "steering",
]


def is_transcoder(coder: Any) -> bool:
    """Whether ``coder`` reads one hook and writes another (has ``encode_pre``, ``activate``,
    ``W_dec_out``, ``in_hook`` and ``out_hook``), rather than reconstructing its input."""
    return all(
        hasattr(coder, a) for a in ("encode_pre", "activate", "W_dec_out", "in_hook", "out_hook")
    )


def _n_latents(coder: Any) -> int:
    return int(coder.W_dec_out.shape[0]) if is_transcoder(coder) else int(coder.n_latents)


def _widths(coder: Any) -> tuple[int | None, int]:
    """``(d_in or None if unknown, d_out)`` of what the coder reads and writes."""
    if is_transcoder(coder):
        d_in = getattr(coder, "d_in", None)
        if d_in is None and hasattr(coder, "W_enc"):
            d_in = int(coder.W_enc.shape[0])
        return d_in, int(coder.W_dec_out.shape[1])
    return int(coder.d_in), int(coder.d_in)


def _latent_ids(coder: Any, latents: Sequence[int], what: str) -> list[int]:
    out: list[int] = []
    for i in latents:
        try:
            if isinstance(i, bool):
                raise TypeError
            i = operator.index(i)
        except TypeError:
            raise ValueError(f"{what}: latent ids must be integers, got {i!r}") from None
        n = _n_latents(coder)
        if not 0 <= i < n:
            raise ValueError(
                f"{what}: latent {i} does not exist; this coder has {n} latents (ids 0..{n - 1})"
            )
        out.append(i)
    if len(set(out)) != len(out):
        raise ValueError(f"{what}: latent ids repeat ({out}); name each latent once")
    return out


def _finite(v: Any, what: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {v!r}") from None
    if not math.isfinite(f):
        raise ValueError(f"{what} must be finite, got {f}")
    return f


class LatentEdit:
    """Add atoms, clamp, scale and ablate latents of ``coder`` in an activation.

    Args:
        coder: a :class:`~sparsecodes.sparse_coder.SparseCoder` (``d_in`` = the hook's width),
            or a transcoder (:func:`is_transcoder`; see the module doc).
        add: ``{latent: alpha}``: add ``alpha * d_i`` (raw units).
        clamp: ``{latent: value}``: set the latent's code to ``value`` (error term kept).
        ablate: latents whose code is set to 0 (error term kept).
        scale: ``{latent: factor}``: multiply the latent's code by ``factor`` (error term kept).
        positions: ``None`` (every position) or a bool mask ``[T]`` or ``[B, T]`` of the
            positions to edit; it must match the activation's ``[B, T]`` (so it applies to full
            forward passes: in ``generate`` with a KV cache use ``positions=None``).

    A latent may be both added to and clamped/ablated/scaled (the add is applied on top); naming
    a latent in two of clamp, ablate and scale is refused. Call it on an activation
    ``[..., d_in]`` (or ``[B, T, n_heads, d_head]`` for ``attn.heads``): returns the edited
    activation, same shape and dtype. A transcoder's edit is not called on one activation: attach
    :meth:`hooks` (what :func:`steering` does).
    """

    def __init__(
        self,
        coder: Any,
        *,
        add: Mapping[int, float] | None = None,
        clamp: Mapping[int, float] | None = None,
        ablate: Sequence[int] = (),
        scale: Mapping[int, float] | None = None,
        positions: Tensor | None = None,
    ) -> None:
        self.coder = coder
        self.transcoder = is_transcoder(coder)
        self.d_in, self.d_out = _widths(coder)
        add, clamp, scale = dict(add or {}), dict(clamp or {}), dict(scale or {})
        self.add_ids = _latent_ids(coder, list(add), "add")
        self.alphas = [_finite(add[i], f"alpha of latent {i}") for i in self.add_ids]
        self.clamp_ids = _latent_ids(coder, list(clamp), "clamp")
        self.clamp_values = [_finite(clamp[i], f"clamp value of latent {i}") for i in clamp]
        self.ablate_ids = _latent_ids(coder, list(ablate), "ablate")
        self.scale_ids = _latent_ids(coder, list(scale), "scale")
        self.factors = [_finite(scale[i], f"scale factor of latent {i}") for i in self.scale_ids]
        for a, b, why in (
            (self.clamp_ids, self.ablate_ids, "clamped and ablated; ablating is clamping to 0"),
            (self.clamp_ids, self.scale_ids, "clamped and scaled"),
            (self.ablate_ids, self.scale_ids, "ablated and scaled; ablating is scaling by 0"),
        ):
            both = sorted(set(a) & set(b))
            if both:
                raise ValueError(f"latents {both} are both {why}, choose one")
        self._pending: Tensor | None = None
        if positions is not None:
            positions = torch.as_tensor(positions)
            if positions.dtype != torch.bool or positions.dim() not in (1, 2):
                raise ValueError(
                    "positions must be None (every position) or a bool mask [T] or [B, T], got "
                    f"dtype {positions.dtype} shape {tuple(positions.shape)}"
                )
        self.positions = positions

    @property
    def is_identity(self) -> bool:
        """Whether the edit names no latent at all (it then returns its input unchanged)."""
        return not (self.add_ids or self.clamp_ids or self.ablate_ids or self.scale_ids)

    def _decoder(self) -> Tensor:
        """``[n_latents, d_out]``: ``W_dec_out`` (raw) of a transcoder, ``W_dec`` otherwise."""
        return (self.coder.W_dec_out if self.transcoder else self.coder.W_dec).detach()

    def _raw(self, v: Tensor) -> Tensor:
        return v if self.transcoder else self.coder.normaliser.invert(v)

    def atoms(self, latents: Sequence[int]) -> Tensor:
        """Atoms ``[len(latents), d_out]`` in the model's raw units (``W_dec[i] / s``; a
        transcoder's ``W_dec_out[i]``)."""
        return self._raw(self._decoder()[list(latents)])

    def codes(self, x: Tensor) -> Tensor:
        """Dense codes ``[n, n_latents]`` of what the coder reads, ``x`` ``[n, d_in]``."""
        w = self._decoder()
        x = x.to(device=w.device, dtype=w.dtype)
        if self.transcoder:
            return self.coder.activate(self.coder.encode_pre(x))
        return self.coder.encode(x)

    @torch.no_grad()
    def delta(self, x: Tensor) -> Tensor:
        """The change ``[n, d_out]`` this edit makes, for inputs ``x`` ``[n, d_in]``.

        ``sum_i alpha_i d_i`` for the added latents plus ``((c' - c) @ W_dec) / s`` for the
        clamped, ablated and scaled ones (``c`` = :meth:`codes`, ``c'`` with those entries
        replaced). For a transcoder ``x`` is what it reads and the change is to what it writes.
        """
        w = self._decoder()
        out = torch.zeros(x.shape[0], w.shape[1], dtype=w.dtype, device=w.device)
        if self.add_ids:
            alphas = torch.tensor(self.alphas, dtype=w.dtype, device=w.device)
            out = out + alphas @ w[self.add_ids]
        ids = self.clamp_ids + self.ablate_ids + self.scale_ids
        if ids:
            old = self.codes(x)[:, ids].to(w.dtype)
            n_set = len(self.clamp_ids) + len(self.ablate_ids)
            set_to = torch.tensor(
                self.clamp_values + [0.0] * len(self.ablate_ids), dtype=w.dtype, device=w.device
            )
            factors = torch.tensor(self.factors, dtype=w.dtype, device=w.device)
            new = torch.cat([set_to.expand(len(old), -1), old[:, n_set:] * factors], 1)
            out = out + (new - old) @ w[ids]
        return self._raw(out)

    def apply(self, act_in: Tensor, act_out: Tensor) -> Tensor:
        """``act_out`` ``[B, T, ...]`` plus the change computed from ``act_in`` ``[B, T, ...]``
        (the same tensor for a coder that reads and writes one hook), at the chosen positions."""
        if self.is_identity:
            return act_out
        lead = act_out.shape[:2] if act_out.dim() >= 3 else act_out.shape[:1]
        for act, width, what in ((act_in, self.d_in, "d_in"), (act_out, self.d_out, "d_out")):
            got = math.prod(act.shape[len(lead) :])
            if width is not None and got != width:
                raise ValueError(
                    f"activation of shape {tuple(act.shape)} has width {got} per position but "
                    f"the coder has {what}={width}: it was trained on another hook or model"
                )
        flat = act_in.reshape(math.prod(lead), -1)
        d = self.delta(flat).to(device=act_out.device, dtype=act_out.dtype).reshape(act_out.shape)
        if self.positions is not None:
            d = d * self._mask(lead).to(d.device, d.dtype).reshape(
                *lead, *([1] * (act_out.dim() - len(lead)))
            )
        return act_out + d

    def __call__(self, act: Tensor) -> Tensor:
        """``act`` ``[B, T, ...]`` with the edit applied at the chosen positions."""
        if self.transcoder:
            raise ValueError(
                f"this edit is through a transcoder (reads {self.coder.in_hook}, writes "
                f"{self.coder.out_hook}); attach edit.hooks(read, write) or use steering()"
            )
        return self.apply(act, act)

    def hooks(self, read: str, write: str) -> dict[str, Callable[[Tensor], Tensor]]:
        """``{hook: fn}`` for :meth:`~sparsecodes.models.ModelAdapter.editing`.

        ``read == write``: ``{read: self}``. Otherwise (a transcoder) the function at ``read``
        keeps the activation it sees (unchanged) and the one at ``write`` adds the change
        computed from it; ``read`` must run before ``write`` in every forward pass (as an MLP's
        input does before its output).
        """
        if read == write:
            return {read: self}

        def keep(act: Tensor) -> Tensor:
            self._pending = act
            return act

        def add(act: Tensor) -> Tensor:
            act_in, self._pending = self._pending, None
            if act_in is None or act_in.shape[: act.dim() - 1] != act.shape[:-1]:
                raise RuntimeError(
                    f"the edit at {write!r} found no matching activation from {read!r}; "
                    f"{read!r} must run before {write!r} in the same forward pass"
                )
            return self.apply(act_in, act)

        return {read: keep, write: add}

    def _mask(self, lead: torch.Size) -> Tensor:
        m = self.positions
        assert m is not None
        if m.dim() == 1:
            m = m.expand(lead[0], -1) if len(lead) == 2 else m
        if tuple(m.shape) != tuple(lead):
            raise ValueError(
                f"positions mask has shape {tuple(self.positions.shape)} but the activation has "
                f"[B, T] = {list(lead)}; give a mask of the prompt's length (in generate with a "
                "KV cache each step sees only new positions: use positions=None)"
            )
        return m

    def describe(self) -> str:
        """One line naming the operations, e.g. ``add 8*#12, clamp #3=5, ablate #4,#7``."""
        parts = []
        if self.add_ids:
            parts.append(
                "add "
                + " + ".join(f"{a:g}*#{i}" for i, a in zip(self.add_ids, self.alphas, strict=True))
            )
        if self.clamp_ids:
            parts.append(
                "clamp "
                + ", ".join(
                    f"#{i}={v:g}" for i, v in zip(self.clamp_ids, self.clamp_values, strict=True)
                )
            )
        if self.ablate_ids:
            parts.append("ablate " + ",".join(f"#{i}" for i in self.ablate_ids))
        if self.scale_ids:
            parts.append(
                "scale "
                + ", ".join(
                    f"#{i}*{f:g}" for i, f in zip(self.scale_ids, self.factors, strict=True)
                )
            )
        return "; ".join(parts) or "no edit"


def resolve_hook(coder: Any, adapter: Any, hook: str | None = None) -> str:
    """The hook to edit: ``hook`` (any naming we translate) or the one the coder records.

    Raises ``ValueError`` when neither names one, when the model lacks the hook, or when the
    hook's width differs from ``coder.d_in``.
    """
    src = source_of(coder)
    name = translate_hook_name(hook) if hook is not None else src.hook_name
    if name is None:
        raise ValueError(
            f"the coder in {src.path} does not record its hook; pass hook= (e.g. "
            "'blocks.12.resid_post')"
        )
    check_width(coder, adapter, name)
    return name


def resolve_hooks(coder: Any, adapter: Any, hook: str | None = None) -> tuple[str, str]:
    """``(read, write)``: the hooks an edit through ``coder`` reads and writes.

    For a transcoder (:func:`is_transcoder`) its ``in_hook`` and ``out_hook`` (``hook`` must be
    None; both widths are checked against the model); otherwise ``(h, h)`` with
    ``h = resolve_hook(coder, adapter, hook)``.
    """
    if not is_transcoder(coder):
        name = resolve_hook(coder, adapter, hook)
        return name, name
    if hook is not None:
        raise ValueError(
            f"a transcoder reads {coder.in_hook!r} and writes {coder.out_hook!r}; do not pass hook="
        )
    if "+" in coder.in_hook or "+" in coder.out_hook or not coder.in_hook or not coder.out_hook:
        raise ValueError(
            f"interventions need a transcoder that reads one hook and writes one; this one reads "
            f"{coder.in_hook!r} and writes {coder.out_hook!r}"
        )
    read, write = translate_hook_name(coder.in_hook), translate_hook_name(coder.out_hook)
    d_in, d_out = _widths(coder)
    for name, width in ((read, d_in), (write, d_out)):
        if name not in adapter.hook_points():
            raise ValueError(
                f"hook {name!r} does not exist in {adapter.name} (layers 0..{adapter.n_layers - 1})"
                "; the transcoder was trained on another model"
            )
        got = math.prod(adapter.hook_shape(name))
        if width is not None and got != width:
            raise ValueError(
                f"the transcoder's {name} has width {width} but {adapter.name}'s has {got}: it "
                "was trained on a different model"
            )
    return read, write


@contextmanager
def intervening(
    adapter: Any, edits: Sequence[LatentEdit], hooks: Sequence[str | None] | None = None
) -> Iterator[list[LatentEdit]]:
    """Keep several :class:`LatentEdit` (e.g. one per layer's transcoder) on ``adapter`` inside
    the ``with`` block, each at the hooks :func:`resolve_hooks` gives for its coder (``hooks[j]``
    overrides the hook of a single-hook coder ``j``). Edits at the same hook add up (each one's
    change is computed from the activation it reads). Removed on exit, also on an exception."""
    hooks = list(hooks) if hooks is not None else [None] * len(edits)
    if len(hooks) != len(edits):
        raise ValueError(f"{len(edits)} edits but {len(hooks)} hooks; give one hook per edit")
    with ExitStack() as stack:
        for edit, hook in zip(edits, hooks, strict=True):
            read, write = resolve_hooks(edit.coder, adapter, hook)
            stack.enter_context(adapter.editing(edit.hooks(read, write)))
        yield list(edits)


@contextmanager
def steering(
    adapter: Any,
    coder: Any,
    hook: str | None = None,
    *,
    add: Mapping[int, float] | None = None,
    clamp: Mapping[int, float] | None = None,
    ablate: Sequence[int] = (),
    scale: Mapping[int, float] | None = None,
    positions: Tensor | None = None,
) -> Iterator[LatentEdit]:
    """Keep a :class:`LatentEdit` on ``adapter``'s ``hook`` inside the ``with`` block.

    Every forward pass of ``adapter.model`` in the block is edited: ``adapter.logits``,
    ``adapter.run``, and ``adapter.model.generate`` (or :func:`generate`). ``hook`` defaults to
    the one recorded with the coder (:func:`resolve_hook`); a transcoder reads its ``in_hook`` and
    changes its ``out_hook`` (:func:`resolve_hooks`). The hooks are removed on exit, also when
    the block raises. Yields the edit.

    >>> with steering(adapter, coder, add={123: 8.0}):
    ...     text = generate(adapter, "The weather today", max_new_tokens=20)
    """
    edit = LatentEdit(coder, add=add, clamp=clamp, ablate=ablate, scale=scale, positions=positions)
    with intervening(adapter, [edit], [hook]):
        yield edit


@torch.no_grad()
def generate(
    adapter: Any,
    prompt: str,
    *,
    max_new_tokens: int = 20,
    temperature: float = 0.0,
    seed: int = 0,
) -> str:
    """The continuation of ``prompt`` (new text only) by ``adapter.model.generate``.

    Greedy when ``temperature == 0``; otherwise sampled with a generator seeded from ``seed``
    (the global torch RNG is left as it was). Edits attached with :func:`steering` or
    :meth:`~sparsecodes.models.ModelAdapter.editing` act on every step.
    """
    if not adapter.is_causal:
        raise ValueError(f"{adapter.name} is not a causal language model; it cannot generate")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    temperature = _finite(temperature, "temperature")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    ids, mask = adapter.encode(prompt)
    tok = adapter.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "pad_token_id": pad if pad is not None else 0,
        "do_sample": temperature > 0,
    }
    if temperature > 0:
        kwargs["temperature"] = temperature
        kwargs["top_k"] = 0
        kwargs["top_p"] = 1.0
    devices = [adapter.device] if adapter.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derive_seed(seed, "generate"))
        out = adapter.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    new = out[0, ids.shape[1] :].tolist()
    return tok.decode(new, skip_special_tokens=False)


@dataclass
class SteerResult:
    """A prompt run with and without an edit.

    ``unsteered``/``steered``: the generated continuations; ``top_up``/``top_down``: the tokens
    whose next-token logit (after the whole prompt) rose/fell most, as ``(token, change,
    unsteered logit, steered logit)``; ``top_before``/``top_after``: the top next tokens
    ``(token, probability)`` without and with the edit; ``target``: ``(before, after)`` of the
    target logit (difference) when one was asked for.
    """

    prompt: str
    edit: str
    hook: str
    unsteered: str
    steered: str
    top_up: list[tuple[str, float, float, float]] = field(default_factory=list)
    top_down: list[tuple[str, float, float, float]] = field(default_factory=list)
    top_before: list[tuple[str, float]] = field(default_factory=list)
    top_after: list[tuple[str, float]] = field(default_factory=list)
    target: tuple[float, float] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "edit": self.edit,
            "hook": self.hook,
            "unsteered": self.unsteered,
            "steered": self.steered,
            "top_up": [list(r) for r in self.top_up],
            "top_down": [list(r) for r in self.top_down],
            "top_before": [list(r) for r in self.top_before],
            "top_after": [list(r) for r in self.top_after],
            "target": None if self.target is None else list(self.target),
        }


@torch.no_grad()
def next_token_logits(adapter: Any, prompt: str) -> Tensor:
    """Logits ``[vocab]`` (float32) for the token after ``prompt`` (with edits attached now)."""
    ids, mask = adapter.encode(prompt)
    return adapter.logits(ids, mask)[0, -1].float()


def compare(
    adapter: Any,
    coder: Any,
    prompt: str,
    hook: str | None = None,
    *,
    add: Mapping[int, float] | None = None,
    clamp: Mapping[int, float] | None = None,
    ablate: Sequence[int] = (),
    scale: Mapping[int, float] | None = None,
    **kwargs: Any,
) -> SteerResult:
    """Generate from ``prompt`` without and with one coder's edit; see :func:`compare_edits`
    (``kwargs`` are its options)."""
    edit = LatentEdit(coder, add=add, clamp=clamp, ablate=ablate, scale=scale)
    return compare_edits(adapter, [edit], prompt, [hook], **kwargs)


def compare_edits(
    adapter: Any,
    edits: Sequence[LatentEdit],
    prompt: str,
    hooks: Sequence[str | None] | None = None,
    *,
    max_new_tokens: int = 20,
    temperature: float = 0.0,
    seed: int = 0,
    top_n: int = 10,
    token_string: Any = None,
    target_id: int | None = None,
    contrast_id: int | None = None,
) -> SteerResult:
    """Generate from ``prompt`` without and with the edits (attached by :func:`intervening`);
    the change in next-token logits.

    ``token_string(id) -> str`` shows a token (default: :class:`~sparsecodes.interp.annotate.
    TokenStrings`, which escapes partial UTF-8 bytes). Both generations use the same ``seed``.
    With ``target_id`` the result's ``target`` holds the next-token logit of that token (minus
    that of ``contrast_id``) without and with the edits.
    """
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("prompt must be a non-empty string")
    if not isinstance(top_n, int) or top_n < 1:
        raise ValueError(f"top_n must be a positive integer, got {top_n!r}")
    hooks = list(hooks) if hooks is not None else [None] * len(edits)
    names = [resolve_hooks(e.coder, adapter, h) for e, h in zip(edits, hooks, strict=True)]
    show = token_string or TokenStrings(adapter.tokenizer)
    gen = {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
    base_logits = next_token_logits(adapter, prompt)
    base_text = generate(adapter, prompt, **gen)
    with intervening(adapter, edits, hooks):
        new_logits = next_token_logits(adapter, prompt)
        new_text = generate(adapter, prompt, **gen)
    change = new_logits - base_logits
    n = min(top_n, change.numel())

    def rows(ids: Tensor) -> list[tuple[str, float, float, float]]:
        return [
            (show(int(i)), float(change[i]), float(base_logits[i]), float(new_logits[i]))
            for i in ids.tolist()
        ]

    def tops(logits: Tensor) -> list[tuple[str, float]]:
        p = logits.softmax(-1)
        v, i = p.topk(n)
        return [(show(int(a)), float(b)) for a, b in zip(i.tolist(), v.tolist(), strict=True)]

    def value(logits: Tensor) -> float:
        assert target_id is not None
        c = float(logits[contrast_id]) if contrast_id is not None else 0.0
        return float(logits[target_id]) - c

    hook_names = [r if r == w else f"{r}->{w}" for r, w in names]
    return SteerResult(
        prompt=prompt,
        edit="; ".join(e.describe() for e in edits),
        hook=", ".join(dict.fromkeys(hook_names)),
        unsteered=base_text,
        steered=new_text,
        top_up=rows(change.topk(n).indices),
        top_down=rows(change.topk(n, largest=False).indices),
        top_before=tops(base_logits),
        top_after=tops(new_logits),
        target=None if target_id is None else (value(base_logits), value(new_logits)),
    )
