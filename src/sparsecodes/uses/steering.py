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

A :class:`LatentEdit` is a function of the activation (``edit(act) -> act``), which is what the
model adapter's edit hooks take (:meth:`~sparsecodes.models.ModelAdapter.run_with_edit`,
:meth:`~sparsecodes.models.ModelAdapter.editing`). :meth:`LatentEdit.delta` gives the change
alone, so a coder that reads one hook and writes another (a transcoder) can compute it at one
hook and add it at the other.

:func:`steering` is a context manager that keeps the edit on the model for every forward pass
inside it, ``generate`` included; :func:`compare` runs a prompt with and without an edit and
returns both generations and the change in next-token logits.
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
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
    "generate",
    "next_token_logits",
    "resolve_hook",
    "steering",
]


def _latent_ids(coder: Any, latents: Sequence[int], what: str) -> list[int]:
    out: list[int] = []
    for i in latents:
        try:
            if isinstance(i, bool):
                raise TypeError
            i = operator.index(i)
        except TypeError:
            raise ValueError(f"{what}: latent ids must be integers, got {i!r}") from None
        if not 0 <= i < coder.n_latents:
            raise ValueError(
                f"{what}: latent {i} does not exist; this coder has {coder.n_latents} latents "
                f"(ids 0..{coder.n_latents - 1})"
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
    """Add atoms, clamp latents and ablate latents of ``coder`` in an activation.

    Args:
        coder: a :class:`~sparsecodes.sparse_coder.SparseCoder` (``d_in`` = the hook's width).
        add: ``{latent: alpha}``: add ``alpha * d_i`` (raw units).
        clamp: ``{latent: value}``: set the latent's code to ``value`` (error term kept).
        ablate: latents whose code is set to 0 (error term kept).
        positions: ``None`` (every position) or a bool mask ``[T]`` or ``[B, T]`` of the
            positions to edit; it must match the activation's ``[B, T]`` (so it applies to full
            forward passes: in ``generate`` with a KV cache use ``positions=None``).

    A latent may be both added to and clamped/ablated (the add is applied on top); clamping and
    ablating the same latent is refused. Call it on an activation ``[..., d_in]`` (or
    ``[B, T, n_heads, d_head]`` for ``attn.heads``): returns the edited activation, same shape
    and dtype.
    """

    def __init__(
        self,
        coder: Any,
        *,
        add: Mapping[int, float] | None = None,
        clamp: Mapping[int, float] | None = None,
        ablate: Sequence[int] = (),
        positions: Tensor | None = None,
    ) -> None:
        self.coder = coder
        add, clamp = dict(add or {}), dict(clamp or {})
        self.add_ids = _latent_ids(coder, list(add), "add")
        self.alphas = [_finite(add[i], f"alpha of latent {i}") for i in self.add_ids]
        self.clamp_ids = _latent_ids(coder, list(clamp), "clamp")
        self.clamp_values = [_finite(clamp[i], f"clamp value of latent {i}") for i in clamp]
        self.ablate_ids = _latent_ids(coder, list(ablate), "ablate")
        both = sorted(set(self.clamp_ids) & set(self.ablate_ids))
        if both:
            raise ValueError(
                f"latents {both} are both clamped and ablated; ablating is clamping to 0, "
                "choose one"
            )
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
        return not (self.add_ids or self.clamp_ids or self.ablate_ids)

    def atoms(self, latents: Sequence[int]) -> Tensor:
        """Atoms ``[len(latents), d_in]`` in the model's raw units (``W_dec[i] / s``)."""
        w = self.coder.W_dec.detach()[list(latents)]
        return self.coder.normaliser.invert(w)

    @torch.no_grad()
    def delta(self, x: Tensor) -> Tensor:
        """The change ``[n, d_in]`` this edit makes to activations ``x`` ``[n, d_in]``.

        ``sum_i alpha_i d_i`` for the added latents plus ``((c' - c) @ W_dec) / s`` for the
        clamped and ablated ones (``c = coder.encode(x)``, ``c'`` with those entries replaced).
        """
        coder = self.coder
        w = coder.W_dec.detach()
        out = torch.zeros(x.shape[0], coder.d_in, dtype=w.dtype, device=w.device)
        if self.add_ids:
            alphas = torch.tensor(self.alphas, dtype=w.dtype, device=w.device)
            out = out + alphas @ w[self.add_ids]
        ids = self.clamp_ids + self.ablate_ids
        if ids:
            codes = coder.encode(x.to(device=w.device, dtype=w.dtype))
            old = codes[:, ids].to(w.dtype)
            new = torch.tensor(
                self.clamp_values + [0.0] * len(self.ablate_ids), dtype=w.dtype, device=w.device
            ).expand_as(old)
            out = out + (new - old) @ w[ids]
        return coder.normaliser.invert(out)

    def __call__(self, act: Tensor) -> Tensor:
        """``act`` ``[B, T, ...]`` with the edit applied at the chosen positions."""
        if self.is_identity:
            return act
        lead = act.shape[:2] if act.dim() >= 3 else act.shape[:1]
        if math.prod(act.shape[len(lead) :]) != self.coder.d_in:
            raise ValueError(
                f"activation of shape {tuple(act.shape)} has width "
                f"{math.prod(act.shape[len(lead) :])} per position but the coder has "
                f"d_in={self.coder.d_in}: it was trained on another hook or model"
            )
        flat = act.reshape(-1, self.coder.d_in)
        d = self.delta(flat).to(device=act.device, dtype=act.dtype).reshape(act.shape)
        if self.positions is not None:
            d = d * self._mask(lead).to(d.device, d.dtype).reshape(
                *lead, *([1] * (act.dim() - len(lead)))
            )
        return act + d

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


@contextmanager
def steering(
    adapter: Any,
    coder: Any,
    hook: str | None = None,
    *,
    add: Mapping[int, float] | None = None,
    clamp: Mapping[int, float] | None = None,
    ablate: Sequence[int] = (),
    positions: Tensor | None = None,
) -> Iterator[LatentEdit]:
    """Keep a :class:`LatentEdit` on ``adapter``'s ``hook`` inside the ``with`` block.

    Every forward pass of ``adapter.model`` in the block is edited: ``adapter.logits``,
    ``adapter.run``, and ``adapter.model.generate`` (or :func:`generate`). ``hook`` defaults to
    the one recorded with the coder (:func:`resolve_hook`). The hook is removed on exit, also
    when the block raises. Yields the edit.

    >>> with steering(adapter, coder, add={123: 8.0}):
    ...     text = generate(adapter, "The weather today", max_new_tokens=20)
    """
    name = resolve_hook(coder, adapter, hook)
    edit = LatentEdit(coder, add=add, clamp=clamp, ablate=ablate, positions=positions)
    with adapter.editing({name: edit}):
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
    ``(token, probability)`` without and with the edit.
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
    max_new_tokens: int = 20,
    temperature: float = 0.0,
    seed: int = 0,
    top_n: int = 10,
    token_string: Any = None,
) -> SteerResult:
    """Generate from ``prompt`` without and with the edit; the change in next-token logits.

    ``token_string(id) -> str`` shows a token (default: :class:`~sparsecodes.interp.annotate.
    TokenStrings`, which escapes partial UTF-8 bytes). Both
    generations use the same ``seed``.
    """
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("prompt must be a non-empty string")
    if not isinstance(top_n, int) or top_n < 1:
        raise ValueError(f"top_n must be a positive integer, got {top_n!r}")
    name = resolve_hook(coder, adapter, hook)
    show = token_string or TokenStrings(adapter.tokenizer)
    gen = {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
    base_logits = next_token_logits(adapter, prompt)
    base_text = generate(adapter, prompt, **gen)
    with steering(adapter, coder, name, add=add, clamp=clamp, ablate=ablate) as edit:
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

    return SteerResult(
        prompt=prompt,
        edit=edit.describe(),
        hook=name,
        unsteered=base_text,
        steered=new_text,
        top_up=rows(change.topk(n).indices),
        top_down=rows(change.topk(n, largest=False).indices),
        top_before=tops(base_logits),
        top_after=tops(new_logits),
    )
