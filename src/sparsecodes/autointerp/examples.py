"""The inputs of auto-interpretability: per latent, activating and non-activating contexts.

A :class:`Context` is a short run of tokens (as display strings) with one latent's activation at
each token. :class:`LatentExamples` holds, for one latent, the contexts its explanation is written
from (``top``), held-out activating contexts the explanation is tested on
(``held_out_activating``) and contexts where the latent is zero everywhere (``non_activating``).
These are plain data: any source (for example feature statistics) can build them.

:func:`collect_examples` builds them from a :class:`~sparsecodes.SparseCoder`, a model adapter and
texts: it runs the model over fixed-length token windows, encodes the hook's activations and keeps,
per latent, each window's activations. Windows whose maximum activation is positive are
activating: the ``n_top`` strongest explain the latent and ``n_held_out`` others, drawn (seeded)
from the remaining activating windows, are held out for detection, so detection is never scored on
the contexts the explanation was written from. Non-activating contexts are drawn (seeded) from the
windows where the latent is zero at every kept position. BOS and other special tokens are dropped
from the contexts (their activations are excluded, as everywhere in sparsecodes).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class Context:
    """Tokens (display strings, e.g. ``" the"``) and one latent's activation at each of them."""

    tokens: list[str]
    acts: list[float]

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.acts):
            raise ValueError(
                f"Context needs one activation per token, got {len(self.tokens)} tokens and "
                f"{len(self.acts)} activations"
            )

    @property
    def max_act(self) -> float:
        return max(self.acts, default=0.0)

    @property
    def text(self) -> str:
        """The tokens joined, unmarked."""
        return "".join(self.tokens)

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": list(self.tokens), "acts": [float(a) for a in self.acts]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Context:
        return cls(list(d["tokens"]), [float(a) for a in d["acts"]])


@dataclass
class LatentExamples:
    """Contexts for one latent: ``top`` (explain), ``held_out_activating`` and ``non_activating``
    (detection)."""

    latent: int
    top: list[Context] = field(default_factory=list)
    held_out_activating: list[Context] = field(default_factory=list)
    non_activating: list[Context] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "latent": self.latent,
            "top": [c.to_dict() for c in self.top],
            "held_out_activating": [c.to_dict() for c in self.held_out_activating],
            "non_activating": [c.to_dict() for c in self.non_activating],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatentExamples:
        return cls(
            int(d["latent"]),
            [Context.from_dict(c) for c in d.get("top", [])],
            [Context.from_dict(c) for c in d.get("held_out_activating", [])],
            [Context.from_dict(c) for c in d.get("non_activating", [])],
        )


def token_strings(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each token id decoded on its own (``" the"``, not ``"Ġthe"``), for display."""
    return [tokenizer.decode([int(i)]) for i in ids]


def _check_latents(latents: Sequence[int], n_latents: int) -> list[int]:
    out = [int(i) for i in latents]
    if not out:
        raise ValueError("latents is empty; pass at least one latent index")
    bad = [i for i in out if not 0 <= i < n_latents]
    if bad:
        raise ValueError(f"latents {bad} are out of range: the coder has {n_latents} latents")
    if len(set(out)) != len(out):
        raise ValueError(f"latents {out} holds duplicates")
    return out


@torch.no_grad()
def window_activations(
    coder: Any,
    adapter: Any,
    hook: str,
    texts: Iterable[str],
    latents: Sequence[int],
    *,
    context_size: int = 32,
    n_windows: int = 256,
    batch_size: int = 16,
    model_acts: tuple[Tensor, Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run ``adapter`` over ``n_windows`` windows of ``texts`` and encode ``hook`` with ``coder``.

    Returns ``(input_ids [W, T], keep [W, T] bool, acts [W, T, L])`` for the ``L`` requested
    ``latents``, with ``acts`` zeroed where ``keep`` is False (BOS / special tokens), on CPU.
    ``model_acts``: :func:`window_model_activations` of the same arguments, computed once and
    reused for several coders of one model and hook (then ``texts`` is not read).
    """
    sel = torch.tensor(_check_latents(latents, coder.n_latents), dtype=torch.long)
    if model_acts is None:
        model_acts = window_model_activations(
            adapter, hook, texts, context_size=context_size, n_windows=n_windows,
            batch_size=batch_size,
        )  # fmt: skip
    ids, keep, x = model_acts
    acts_out = []
    for i in range(0, ids.shape[0], batch_size):
        xb = x[i : i + batch_size]
        b, t = xb.shape[:2]
        xb = xb.reshape(b * t, -1).to(device=coder.device, dtype=torch.float32)
        codes = coder.encode(xb)[:, sel.to(coder.device)].reshape(b, t, -1).float().cpu()
        acts_out.append(codes * keep[i : i + batch_size].unsqueeze(-1))
    return ids, keep, torch.cat(acts_out)


@torch.no_grad()
def window_model_activations(
    adapter: Any,
    hook: str,
    texts: Iterable[str],
    *,
    context_size: int = 32,
    n_windows: int = 256,
    batch_size: int = 16,
) -> tuple[Tensor, Tensor, Tensor]:
    """The model's side of :func:`window_activations` (no coder): ``(input_ids [W, T], keep
    [W, T] bool, x [W, T, d])``, the activations at ``hook`` (float32, CPU) of the first
    ``n_windows`` windows of ``context_size`` tokens of ``texts``."""
    from sparsecodes.data import batch_windows, token_windows

    if n_windows < 1:
        raise ValueError(f"n_windows must be at least 1, got {n_windows}")
    windows = token_windows(texts, adapter.tokenizer, context_size)
    ids_out, keep_out, x_out = [], [], []
    seen = 0
    for ids, keep in batch_windows(windows, batch_size):
        if seen >= n_windows:
            break
        ids, keep = ids[: n_windows - seen], keep[: n_windows - seen]
        seen += ids.shape[0]
        x = adapter.run(ids.to(adapter.device), hooks=[hook])[hook]
        ids_out.append(ids.cpu())
        keep_out.append(keep.cpu())
        x_out.append(x.reshape(*x.shape[:2], -1).float().cpu())
    if not ids_out:
        raise ValueError(
            f"the texts gave no window of {context_size} tokens; pass more text or a smaller "
            "context_size"
        )
    return torch.cat(ids_out), torch.cat(keep_out), torch.cat(x_out)


def examples_from_activations(
    input_ids: Tensor,
    keep: Tensor,
    acts: Tensor,
    latents: Sequence[int],
    tokenizer: Any,
    *,
    n_top: int = 10,
    n_held_out: int = 10,
    n_non_activating: int = 10,
    seed: int = 0,
) -> list[LatentExamples]:
    """Split windows into explanation / held-out / non-activating contexts, per latent.

    ``input_ids``, ``keep``: ``[W, T]``; ``acts``: ``[W, T, L]`` (one column per entry of
    ``latents``). A window is activating for a latent when its maximum activation over kept
    positions is positive; the ``n_top`` strongest are ``top``, ``n_held_out`` of the rest are
    drawn uniformly (seeded by ``seed`` and the latent) as ``held_out_activating``, and
    ``n_non_activating`` windows with zero activation at every kept position are drawn as
    ``non_activating``. Fewer are returned where the windows do not hold enough.
    """
    for name, v in (("n_top", n_top), ("n_held_out", n_held_out), ("n_non", n_non_activating)):
        if v < 0:
            raise ValueError(f"{name} must be non-negative, got {v}")
    if acts.dim() != 3 or acts.shape[:2] != input_ids.shape or acts.shape[2] != len(latents):
        raise ValueError(
            f"acts must be [W, T, {len(latents)}] matching input_ids {tuple(input_ids.shape)}, "
            f"got {tuple(acts.shape)}"
        )
    acts = acts * keep.unsqueeze(-1)
    peak = acts.amax(dim=1)  # [W, L]
    strings: dict[int, list[str]] = {}

    def context(w: int, j: int) -> Context:
        if w not in strings:
            strings[w] = token_strings(tokenizer, input_ids[w].tolist())
        k = keep[w]
        toks = [s for s, kk in zip(strings[w], k.tolist(), strict=True) if kk]
        return Context(toks, acts[w, k, j].tolist())

    out = []
    for j, latent in enumerate(latents):
        rng = random.Random(f"autointerp-examples:{seed}:{latent}")
        p = peak[:, j]
        active = torch.nonzero(p > 0).flatten()
        order = active[torch.argsort(p[active], descending=True, stable=True)].tolist()
        top, rest = order[:n_top], order[n_top:]
        held = rng.sample(rest, min(n_held_out, len(rest)))
        zero = torch.nonzero(p <= 0).flatten().tolist()
        non = rng.sample(zero, min(n_non_activating, len(zero)))
        out.append(
            LatentExamples(
                int(latent),
                [context(w, j) for w in top],
                [context(w, j) for w in held],
                [context(w, j) for w in non],
            )
        )
    return out


def collect_examples(
    coder: Any,
    adapter: Any,
    hook: str,
    texts: Iterable[str],
    latents: Sequence[int],
    *,
    context_size: int = 32,
    n_windows: int = 256,
    n_top: int = 10,
    n_held_out: int = 10,
    n_non_activating: int = 10,
    batch_size: int = 16,
    seed: int = 0,
    model_acts: tuple[Tensor, Tensor, Tensor] | None = None,
) -> list[LatentExamples]:
    """:class:`LatentExamples` for ``latents`` of ``coder`` at ``hook`` of ``adapter``'s model.

    Runs :func:`window_activations` over the first ``n_windows`` windows of ``context_size``
    tokens (``model_acts``: the model's part, precomputed), then
    :func:`examples_from_activations` (same seed -> same examples).
    """
    ids, keep, acts = window_activations(
        coder,
        adapter,
        hook,
        texts,
        latents,
        context_size=context_size,
        n_windows=n_windows,
        batch_size=batch_size,
        model_acts=model_acts,
    )
    return examples_from_activations(
        ids,
        keep,
        acts,
        latents,
        adapter.tokenizer,
        n_top=n_top,
        n_held_out=n_held_out,
        n_non_activating=n_non_activating,
        seed=seed,
    )
