"""``ModelAdapter``: one interface to read and edit named activations of any supported model.

Wraps a Hugging Face model (causal LM or BERT-style encoder) and its tokenizer. Activations are
read and edited with PyTorch forward hooks and pre-hooks on the model's own modules, so the
model's code runs unchanged; see :mod:`sparsecodes.models.hooks` for the names and shapes and
:mod:`sparsecodes.models.architectures` for where each one lives.

A :meth:`ModelAdapter.run` stops right after the deepest requested activation has been
computed: a hook raises a private exception that the adapter catches, so later blocks (and the
unembedding) never run.

The hooks of one :meth:`ModelAdapter.run` act only on the thread that called it, so several
threads may run the same adapter at once; ``run(..., workers=n)`` uses that to split a batch
into ``n`` row slices computed in parallel, each with one torch thread (on a CPU this avoids the
synchronisation of torch's thread pool inside every operation).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from sparsecodes.kernels.gemm import run_row_blocks
from sparsecodes.models.architectures import Architecture, detect_architecture, find_blocks
from sparsecodes.models.hooks import (
    HOOK_PATTERN,
    HookPoint,
    StopForward,
    all_hook_names,
    parse_hook,
)

Edit = Callable[[Tensor], Tensor]
"""Maps an activation ``[B, T, *hook_shape]`` to a replacement of the same shape."""

_PRE_KINDS = ("resid_pre", "attn.heads", "mlp_in")  # read from a module's input (pre-hook)


def _first(out: Any) -> Tensor:
    return out[0] if isinstance(out, tuple) else out


def _replace_first(out: Any, new: Tensor) -> Any:
    return (new, *out[1:]) if isinstance(out, tuple) else new


def _cfg(config: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


class ModelAdapter:
    """A language model with named hook points ``blocks.{i}.{kind}``.

    Attributes: ``name``, ``model`` (the ``nn.Module``, in eval mode), ``tokenizer``,
    ``d_model``, ``n_layers``, ``n_heads`` (query heads), ``n_kv_heads``, ``d_head``,
    ``family`` ("llama", "bert", "gpt2"), ``is_causal``, ``additive`` (whether
    ``resid_post == resid_pre + attn_out + mlp_out``).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, *, name: str) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.blocks = find_blocks(model)
        self.arch: Architecture = detect_architecture(self.blocks[0])
        cfg = model.config
        self.d_model: int = int(_cfg(cfg, "hidden_size", "n_embd", "d_model"))
        self.n_layers: int = len(self.blocks)
        self.n_heads: int = int(_cfg(cfg, "num_attention_heads", "n_head"))
        self.n_kv_heads: int = int(_cfg(cfg, "num_key_value_heads", default=self.n_heads))
        self.d_head: int = int(_cfg(cfg, "head_dim", default=self.d_model // self.n_heads))
        self.vocab_size: int = int(_cfg(cfg, "vocab_size"))
        self.family: str = self.arch.family
        self.is_causal: bool = self.family in ("llama", "gpt2")
        self.additive: bool = self.arch.additive

    # ---------------------------------------------------------------- introspection
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def hook_points(self) -> list[str]:
        """Every hook-point name, in forward-pass order."""
        return all_hook_names(self.n_layers)

    def hook_shape(self, hook: str) -> tuple[int, ...]:
        """Trailing shape of ``hook``'s activation (after ``[B, T]``)."""
        hp = parse_hook(hook, self.n_layers)
        return (self.n_heads, self.d_head) if hp.kind == "attn.heads" else (self.d_model,)

    def __repr__(self) -> str:
        return (
            f"ModelAdapter({self.name!r}, family={self.family}, n_layers={self.n_layers}, "
            f"d_model={self.d_model}, n_heads={self.n_heads}, d_head={self.d_head}, "
            f"hooks={HOOK_PATTERN})"
        )

    # ---------------------------------------------------------------- tokenising
    def encode(
        self, texts: str | Sequence[str], *, prepend_bos: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Tokenise ``texts`` (right-padded) -> ``(input_ids [B, T], attention_mask [B, T])``.

        With ``prepend_bos`` the tokenizer's BOS token (CLS for BERT-style tokenizers) is put at
        position 0 of every row; no other special tokens are added.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        tok = self.tokenizer
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
        rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        if prepend_bos and bos is not None:
            rows = [[bos, *r] for r in rows]
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        width = max(1, *(len(r) for r in rows))
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return ids.to(self.device), mask.to(self.device)

    # ---------------------------------------------------------------- running
    def run(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        hooks: Iterable[str] = (),
        *,
        edits: Mapping[str, Edit] | None = None,
        grad: bool = False,
        workers: int = 1,
    ) -> dict[str, Tensor]:
        """Activations at ``hooks``: ``{hook: Tensor [B, T, *hook_shape(hook)]}``.

        The forward pass stops right after the deepest requested hook (later blocks never run).
        ``edits`` maps hook names to functions applied in flight before capture (a hook both
        edited and captured returns the edited activation). Runs under ``torch.no_grad()``
        unless ``grad`` is true.

        ``workers > 1`` splits the batch into that many slices of rows, run at the same time in
        as many threads with one torch thread each (the caller's thread count is restored
        after), and concatenates the activations: the same values as one pass up to the
        floating-point summation order of the kernels at the smaller batch and one thread
        (bit-identical on SmolLM2 with MKL's matmuls, not on every shape). Not with ``edits`` or
        ``grad``.
        """
        names = [hooks] if isinstance(hooks, str) else list(dict.fromkeys(hooks))
        if not names:
            raise ValueError(
                f"hooks is empty; pass at least one hook name ({HOOK_PATTERN}), "
                "or call logits() for a full forward pass"
            )
        for name in names:
            parse_hook(name, self.n_layers)  # unknown names fail here, listing the valid ones
        if workers < 1:
            raise ValueError(f"workers={workers} must be >= 1")
        n = min(workers, int(input_ids.shape[0])) if isinstance(input_ids, Tensor) else 1
        if n > 1:
            if edits or grad:
                raise ValueError(
                    "workers > 1 splits the batch into slices run in parallel, which is only "
                    "for reading activations; use workers=1 with edits or grad=True"
                )
            return self._run_split(input_ids, attention_mask, names, n)
        return self._run_one(input_ids, attention_mask, names, edits or {}, grad)

    def _run_one(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        names: list[str],
        edits: Mapping[str, Edit],
        grad: bool,
    ) -> dict[str, Tensor]:
        points = [parse_hook(n, self.n_layers) for n in names]
        stop = max(points, key=lambda p: p.order)
        cache: dict[str, Tensor] = {}
        self._forward(input_ids, attention_mask, points, cache, edits, stop, grad)
        return {n: cache[n] for n in names}

    def _run_split(
        self, input_ids: Tensor, attention_mask: Tensor | None, names: list[str], n: int
    ) -> dict[str, Tensor]:
        """``run`` on ``n`` row slices in ``n`` threads of one torch thread each; concatenated."""
        self._check_ids(input_ids, attention_mask)  # bad input fails here, not in n threads
        inference = torch.is_inference_mode_enabled()
        threads = torch.get_num_threads()

        def one(i: int, j: int) -> dict[str, Tensor]:
            torch.set_num_threads(1)  # this thread's own setting
            mask = attention_mask[i:j] if attention_mask is not None else None
            with torch.inference_mode(inference):
                return self._run_one(input_ids[i:j], mask, names, {}, False)

        try:  # the caller's thread and the process's sleeping worker threads (kernels.gemm)
            outs = run_row_blocks(int(input_ids.shape[0]), one, min_rows=1, threads=n)
        finally:
            torch.set_num_threads(threads)
        return {h: torch.cat([o[h] for o in outs]) for h in names}

    def run_with_edit(
        self,
        input_ids: Tensor,
        hook: str,
        fn: Edit,
        attention_mask: Tensor | None = None,
        *,
        grad: bool = False,
    ) -> Tensor:
        """Full forward pass with ``hook``'s activation replaced by ``fn(activation)``.

        Returns the model output: logits ``[B, T, vocab]`` for a causal LM, the last hidden
        state ``[B, T, d_model]`` for an encoder. Used to splice a reconstruction in (CE/KL
        scores) or to steer.
        """
        return self.run_with_edits(input_ids, {hook: fn}, attention_mask, grad=grad)

    def run_with_edits(
        self,
        input_ids: Tensor,
        edits: Mapping[str, Edit],
        attention_mask: Tensor | None = None,
        *,
        grad: bool = False,
    ) -> Tensor:
        """Like :meth:`run_with_edit` with several ``{hook: fn}`` edits at once."""
        return self._forward(input_ids, attention_mask, [], {}, dict(edits), None, grad)

    def logits(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, *, grad: bool = False
    ) -> Tensor:
        """Clean full forward pass: logits ``[B, T, vocab]`` (encoders: last hidden state)."""
        return self._forward(input_ids, attention_mask, [], {}, {}, None, grad)

    @contextmanager
    def editing(self, edits: Mapping[str, Edit]) -> Iterator[None]:
        """Keep ``{hook: fn}`` edits attached to every forward pass inside the ``with`` block.

        Unlike :meth:`run_with_edits` the edits stay on across calls, so they act in
        ``adapter.model.generate`` too (with a KV cache each step's activation is only the new
        positions, ``[B, t, *hook_shape]``). The hooks are removed on exit, also on an exception.
        """
        handles: list[Any] = []
        try:
            for name, fn in edits.items():
                self._add_hook(
                    parse_hook(name, self.n_layers), self._checked_edit(name, fn), handles
                )
            yield
        finally:
            for h in handles:
                h.remove()

    # ---------------------------------------------------------------- internals
    def _check_ids(self, input_ids: Tensor, attention_mask: Tensor | None) -> dict[str, Tensor]:
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids)
            raise ValueError(
                f"input_ids must be an integer Tensor [batch, seq], got {shape}; "
                "add a batch dimension with input_ids[None] or use adapter.encode(texts)"
            )
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
        if input_ids.numel() and (
            int(input_ids.max()) >= self.vocab_size or int(input_ids.min()) < 0
        ):
            raise ValueError(
                f"input_ids holds ids outside 0..{self.vocab_size - 1} (the vocabulary of "
                f"{self.name}); tokenise with this model's tokenizer"
            )
        kwargs = {"input_ids": input_ids.to(self.device, torch.long)}
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(
                    f"attention_mask shape {tuple(attention_mask.shape)} must equal input_ids "
                    f"shape {tuple(input_ids.shape)}"
                )
            kwargs["attention_mask"] = attention_mask.to(self.device)
        return kwargs

    def _module(self, hp: HookPoint) -> nn.Module:
        block = self.blocks[hp.layer]
        if hp.kind in ("resid_pre", "resid_post"):
            return block
        if hp.kind == "attn_out":
            return self.arch.attn_out_module(block)
        if hp.kind == "mlp_in":
            return self.arch.mlp_in_module(block)
        if hp.kind == "mlp_out":
            return self.arch.mlp_out_module(block)
        return self.arch.heads_module(block)

    def _add_hook(
        self,
        hp: HookPoint,
        fn: Callable[[Tensor], Tensor | None],
        handles: list[Any],
        thread: int | None = None,
    ) -> None:
        """Attach ``fn(activation) -> replacement or None`` at hook point ``hp``; with ``thread``
        (a ``threading.get_ident()``) it acts only on forward passes run by that thread."""
        module = self._module(hp)
        heads = hp.kind == "attn.heads"
        shape = (self.n_heads, self.d_head)

        def foreign() -> bool:
            return thread is not None and threading.get_ident() != thread

        if hp.kind in _PRE_KINDS:
            # ``kwargs`` may be missing: torch inserts a pre-hook before flagging it with_kwargs
            # (and removes it in the same two steps), so a forward on another thread in between
            # calls it as hook(module, args). Only another thread can see that: it returns first.
            def pre_hook(_m: nn.Module, args: tuple, kwargs: dict | None = None) -> Any:
                if foreign():
                    return None
                assert kwargs is not None  # this thread's own forward: the hook is complete
                x = args[0] if args else kwargs["hidden_states"]
                act = x.unflatten(-1, shape) if heads else x
                new = fn(act)
                if new is None:
                    return None
                new = new.flatten(-2) if heads else new
                if args:
                    return (new, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": new}

            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        else:

            def fwd_hook(_m: nn.Module, _args: tuple, out: Any) -> Any:
                if foreign():
                    return None
                new = fn(_first(out))
                return None if new is None else _replace_first(out, new)

            handles.append(module.register_forward_hook(fwd_hook))

    def _forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        captures: Sequence[HookPoint],
        cache: dict[str, Tensor],
        edits: Mapping[str, Edit],
        stop: HookPoint | None,
        grad: bool,
    ) -> Tensor:
        kwargs = self._check_ids(input_ids, attention_mask)
        if self.is_causal:
            kwargs["use_cache"] = False
        handles: list[Any] = []
        me = threading.get_ident()  # other threads may run this model at the same time
        try:
            # order matters: edit, then capture, then stop, at the same module
            for name, fn in edits.items():
                hp = parse_hook(name, self.n_layers)
                self._add_hook(hp, self._checked_edit(name, fn), handles, me)
            for hp in captures:
                self._add_hook(hp, self._capturer(hp.name, cache), handles, me)
            if stop is not None:
                self._add_hook(stop, _raise_stop, handles, me)
            with torch.enable_grad() if grad else torch.no_grad():
                try:
                    out = self.model(**kwargs)
                except StopForward:
                    return torch.empty(0)
        finally:
            for h in handles:
                h.remove()
        if self.is_causal and getattr(out, "logits", None) is not None:
            return out.logits
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    @staticmethod
    def _capturer(name: str, cache: dict[str, Tensor]) -> Callable[[Tensor], None]:
        def capture(act: Tensor) -> None:
            cache[name] = act

        return capture

    @staticmethod
    def _checked_edit(name: str, fn: Edit) -> Callable[[Tensor], Tensor]:
        def edit(act: Tensor) -> Tensor:
            new = fn(act)
            if not isinstance(new, Tensor) or new.shape != act.shape:
                got = tuple(new.shape) if isinstance(new, Tensor) else type(new).__name__
                raise ValueError(
                    f"edit function for {name!r} must return a Tensor of shape "
                    f"{tuple(act.shape)} (same as its input), got {got}"
                )
            return new.to(act.dtype)

        return edit


def _raise_stop(_act: Tensor) -> None:
    raise StopForward
