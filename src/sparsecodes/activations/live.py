"""Stream activations from a live model: one forward pass feeds every hook (and every SAE).

:class:`LiveModelSource` runs the model over fixed-length windows of a corpus, keeps the
non-special positions, shuffles each forward pass's tokens (seeded by the pass index) and cuts
them into batches. It is deterministic and resumable: its state is the number of forward passes
done and the position inside the current one, and a resumed source recomputes that pass.
:meth:`LiveModelSource.hook_source` gives an :class:`~sparsecodes.activations.ActivationSource`
view for one hook, :meth:`LiveModelSource.pair_source` one that yields ``(input, output)`` pairs
of hooks (transcoders; several hooks per side, concatenated, for crosscoders); views of one
source share its forward passes, and a pair's rows are the same tokens on both sides.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from sparsecodes.activations.cache import caching_forward
from sparsecodes.data import token_windows
from sparsecodes.data.windows import batch_windows


class LiveModelSource:
    """Activations of ``hooks`` over ``texts``, computed on demand.

    Args:
        adapter: a :class:`~sparsecodes.models.ModelAdapter`.
        texts: a re-iterable corpus (a list, or a callable returning a fresh iterator).
        hooks: hook names; rows of a per-head hook ``[n_heads, d_head]`` are flattened.
        context_size: tokens per window. windows_per_pass: windows per forward pass.
        seed: seeds the shuffles. The corpus is cycled when exhausted (epochs).
        rank, world_size: data-parallel ranks: pass ``i`` of this rank is forward pass
            ``i * world_size + rank`` of the window stream, so ranks run the model on disjoint
            windows (each tokenises the whole stream, which is cheap).
        forward_workers: threads each forward pass is split over (on a CPU: slices of windows
            with one torch thread each); None = the torch thread count on a CPU, else 1. The
            forward is ``activations.cache.caching_forward``'s, as when caching.
    """

    KEEP_PASSES = 2

    def __init__(
        self,
        adapter: Any,
        texts: Sequence[str] | Any,
        hooks: Sequence[str],
        *,
        context_size: int = 128,
        windows_per_pass: int = 32,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        forward_workers: int | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.rank, self.world_size = rank, world_size
        if not hooks:
            raise ValueError("hooks is empty; name at least one hook point")
        self.adapter = adapter
        self._forward = caching_forward(adapter, forward_workers)
        self._texts = texts
        self.hooks = list(hooks)
        self.context_size = context_size
        self.windows_per_pass = windows_per_pass
        self.seed = seed
        self.d_in = {h: int(torch.tensor(adapter.hook_shape(h)).prod()) for h in self.hooks}
        # the last KEEP_PASSES forward passes' rows: views in lockstep straddle at most two
        self._recent: dict[int, dict[str, Tensor]] = {}
        self._windows: Iterator[tuple[Tensor, Tensor]] | None = None
        self._next_window_pass = 0

    def _texts_iter(self) -> Iterable[str]:
        return self._texts() if callable(self._texts) else self._texts

    def _window_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        while True:  # epochs over the corpus
            it = batch_windows(
                token_windows(self._texts_iter(), self.adapter.tokenizer, self.context_size),
                self.windows_per_pass,
            )
            first = next(it, None)
            if first is None:
                raise ValueError(
                    "the corpus gave no full window; give more text or a smaller context"
                )
            yield from itertools.chain([first], it)

    def _compute_pass(self, index: int) -> dict[str, Tensor]:
        """Rows of forward pass ``index`` for every hook, shuffled: ``{hook: [rows, d]}``."""
        index = index * self.world_size + self.rank  # this rank's passes of the window stream
        if self._windows is None or index < self._next_window_pass:
            self._windows = self._window_batches()
            self._next_window_pass = 0
        while self._next_window_pass < index:  # skip passes already consumed (resume)
            next(self._windows)
            self._next_window_pass += 1
        ids, keep = next(self._windows)
        self._next_window_pass += 1
        acts = self._forward(ids.to(self.adapter.device), None, self.hooks)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + index) % 2**63)
        flat_keep = keep.reshape(-1)
        perm = torch.randperm(int(flat_keep.sum()), generator=g)
        out = {}
        for h, a in acts.items():
            rows = a.reshape(-1, self.d_in[h])[flat_keep.to(a.device)]
            out[h] = rows[perm.to(rows.device)].float().cpu()
        return out

    def pass_rows(self, index: int) -> dict[str, Tensor]:
        """Rows of forward pass ``index`` for every hook, computed once while recent."""
        rows = self._recent.get(index)
        if rows is None:
            rows = self._recent[index] = self._compute_pass(index)
            while len(self._recent) > self.KEEP_PASSES:
                del self._recent[min(self._recent)]
        return rows

    def hook_source(self, hook: str) -> _HookView:
        if hook not in self.hooks:
            raise ValueError(f"hook {hook!r} is not streamed by this source; it has {self.hooks}")
        return _HookView(self, hook)

    def pair_source(self, in_hooks: Sequence[str], out_hooks: Sequence[str]) -> _PairView:
        """A view yielding ``(x [batch, d_in], y [batch, d_out])``: ``in_hooks`` and ``out_hooks``
        rows of the same tokens, each side the concatenation of its hooks in order."""
        missing = [h for h in (*in_hooks, *out_hooks) if h not in self.hooks]
        if missing or not in_hooks or not out_hooks:
            raise ValueError(
                f"pair hooks {missing or [in_hooks, out_hooks]} are not streamed by this source; "
                f"it has {self.hooks}"
            )
        return _PairView(self, tuple(in_hooks), tuple(out_hooks))


class _HookView:
    """One hook's batches from a shared :class:`LiveModelSource` (an ActivationSource).

    Views consuming at the same pace (same batch size, stepped in lockstep) share each forward
    pass; a view that falls behind makes the parent recompute the pass it needs (correct, slower).
    """

    def __init__(self, parent: LiveModelSource, hook: str) -> None:
        self.parent = parent
        self.hook = hook
        self.d_in = parent.d_in[hook]
        self.world_size = parent.world_size  # data-parallel ranks the parent splits passes for
        self.pass_index = 0
        self.pos = 0

    def _rows_of(self, index: int) -> Tensor:
        return self.parent.pass_rows(index)[self.hook]

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor | None]]:
        while True:
            parts, need = [], batch_size
            while need > 0:
                rows = self._rows_of(self.pass_index)
                take = min(need, rows.shape[0] - self.pos)
                parts.append(rows[self.pos : self.pos + take])
                self.pos += take
                need -= take
                if self.pos >= rows.shape[0]:
                    self.pass_index += 1
                    self.pos = 0
            yield torch.cat(parts), None

    def state_dict(self) -> dict[str, Any]:
        return {"pass": self.pass_index, "pos": self.pos, "hook": self.hook}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("hook") != self.hook:
            raise ValueError(f"state is for hook {state.get('hook')!r}, not {self.hook!r}")
        self.pass_index, self.pos = int(state["pass"]), int(state["pos"])


class _PairView(_HookView):
    """``(input, output)`` batches of hook groups from a shared :class:`LiveModelSource`: rows
    ``[batch, d_in]`` of ``in_hooks`` and ``[batch, d_out]`` of ``out_hooks`` at the same tokens
    (each side concatenated over its hooks). State and pacing as :class:`_HookView`."""

    def __init__(
        self, parent: LiveModelSource, in_hooks: tuple[str, ...], out_hooks: tuple[str, ...]
    ):
        super().__init__(parent, in_hooks[0])
        self.in_hooks, self.out_hooks = in_hooks, out_hooks
        self.hook = "+".join(in_hooks) + "->" + "+".join(out_hooks)
        self.d_in = sum(parent.d_in[h] for h in in_hooks)
        self.d_out = sum(parent.d_in[h] for h in out_hooks)
        self._joined: tuple[int, Tensor] | None = None

    def _rows_of(self, index: int) -> Tensor:
        if self._joined is None or self._joined[0] != index:
            rows = self.parent.pass_rows(index)
            both = torch.cat([rows[h] for h in (*self.in_hooks, *self.out_hooks)], dim=1)
            self._joined = (index, both)
        return self._joined[1]

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor | None]]:
        for rows, _ in super().batches(batch_size):
            yield rows[:, : self.d_in], rows[:, self.d_in :]
