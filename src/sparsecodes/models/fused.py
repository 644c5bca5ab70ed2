"""Fused inference forward of llama-style attention and MLP layers, for reading activations.

On a CPU the caching forward (``activations.cache.caching_forward``) is bound by the block's
seven matrix products; what is left is the work around them: separate ``q``/``k``/``v`` and
``gate``/``up`` products, and Hugging Face's eager element-wise code, which allocates a fresh
tensor for every step (``rotate_half``'s ``neg`` and ``cat``, ``act(gate) * up``, RMSNorm's
``pow``/``mean``/``rsqrt``/two ``mul``). Inside :func:`fused_layers`:

- ``LlamaAttention`` computes ``q``, ``k``, ``v`` with one product against the concatenated
  weight ``[(H + 2 H_kv) d_head, d_model]``, applies the rotary embedding to ``q`` and ``k`` at
  once with two ``addcmul_`` into one output, and calls ``scaled_dot_product_attention``
  (``is_causal``, grouped-query heads without repeating them) as the ``sdpa`` implementation
  does; ``o_proj`` is still called as a module, so ``attn.heads`` hooks (pre-hooks on
  ``o_proj``) see its input;
- ``LlamaMLP`` computes ``gate`` and ``up`` with one product against ``[2 I, d_model]`` and
  ``silu(gate) * up`` in place in that product's output; ``down_proj`` is called as a module;
- ``LlamaRMSNorm`` does the same arithmetic with one temporary less, in place where it can
  (``torch.nn.functional.rms_norm`` was no faster on the CPU).

The products go through :func:`sparsecodes.kernels.gemm.matmul` (OpenBLAS where the process's
backend is ``"openblas"``) or ``torch.mm`` (``gemm_products=False``). The modules' own hooks
still fire (only their ``forward`` is replaced, on the instances, for the duration of the
block, and restored after, also on an exception). A layer falls back to its own forward for
anything outside the fast case: gradients, an attention mask (padded windows), a KV cache,
``output_attentions``, an attention implementation other than ``sdpa``, an activation other than
SiLU, a non-float32 or non-CPU layer, or a hook on one of the fused projections (``q/k/v_proj``,
``gate/up_proj``), which the fused product would skip. Values equal the eager forward to float32
rounding (different summation order in the fused products, an ``addcmul`` in the rotary embedding),
not bit for bit.

The concatenated weights are built once per layer, on first use, and kept in a
:class:`FusedWeights` (the function ``caching_forward`` returns holds one); they are rebuilt
when a source weight is replaced or modified in place (its ``data_ptr`` or version counter
changes). They cost one extra copy of the fused projections' weights of the layers run.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsecodes.kernels import gemm
from sparsecodes.models.linear import swapped_forwards

_Key = tuple[tuple[int, int], ...]


def _version(w: Tensor) -> int:
    try:
        return w._version
    except RuntimeError:  # an inference tensor has no version counter (and cannot change)
        return -1


def _key(weights: list[Tensor | None]) -> _Key:
    return tuple((-1, -1) if w is None else (w.data_ptr(), _version(w)) for w in weights)


class FusedWeights:
    """Concatenated weights ``{module: ([sum of out, in] weight, bias or None)}``, built on
    first use and rebuilt when a source weight changes (thread-safe)."""

    def __init__(self) -> None:
        self._cache: weakref.WeakKeyDictionary[nn.Module, tuple[_Key, Tensor, Tensor | None]]
        self._cache = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, owner: nn.Module, parts: list[nn.Linear]) -> tuple[Tensor, Tensor | None]:
        """``(cat of the weights [sum out, in], cat of the biases or None)`` of ``parts``."""
        sources = [p.weight for p in parts] + [p.bias for p in parts]
        key = _key(sources)
        hit = self._cache.get(owner)
        if hit is not None and hit[0] == key:
            return hit[1], hit[2]
        with self._lock:
            hit = self._cache.get(owner)
            if hit is not None and hit[0] == key:
                return hit[1], hit[2]
            with torch.no_grad():
                w = torch.cat([p.weight.detach() for p in parts])
                biases = [p.bias for p in parts]
                b = None
                if any(x is not None for x in biases):
                    b = torch.cat(
                        [
                            x.detach() if x is not None else p.weight.new_zeros(p.out_features)
                            for x, p in zip(biases, parts, strict=True)
                        ]
                    )
            self._cache[owner] = (key, w, b)
            return w, b

    def __len__(self) -> int:
        return len(self._cache)


def _hooked(*modules: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def _plain_cpu_f32(x: Tensor, w: Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and w.device.type == "cpu"
        and x.dtype == torch.float32
        and w.dtype == torch.float32
        and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
    )


Matmul = Callable[[Tensor, Tensor], Tensor]


def _product(mm: Matmul, x2: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """``x2 [n, in] @ w.T + b`` -> ``[n, out]`` (a fresh tensor)."""
    y = mm(x2, w.t())
    if b is not None:
        y.add_(b)
    return y


def _rotate(t: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``t * cos + rotate_half(t) * sin`` for ``t`` ``[B, T, h, d]`` and ``cos``/``sin``
    ``[B, T, 1, d]``, in one new tensor: ``rotate_half(t) = cat(-t[..., d/2:], t[..., :d/2])``."""
    half = t.shape[-1] // 2
    out = t * cos
    out[..., :half].addcmul_(t[..., half:], sin[..., :half], value=-1)
    out[..., half:].addcmul_(t[..., :half], sin[..., half:])
    return out


def _attention_forward(
    attn: nn.Module, original: Callable, weights: FusedWeights, mm: Matmul
) -> Callable:
    parts = [attn.q_proj, attn.k_proj, attn.v_proj]

    def forward(hidden_states: Tensor, *args: Any, **kwargs: Any) -> Any:
        pe = kwargs.get("position_embeddings")
        fast = (
            not args
            and pe is not None
            and kwargs.get("attention_mask") is None
            and kwargs.get("cache") is None
            and kwargs.get("past_key_values") is None
            and kwargs.get("past_key_value") is None
            and not kwargs.get("output_attentions")
            and attn.config._attn_implementation == "sdpa"
            and not attn.training
            and _plain_cpu_f32(hidden_states, attn.q_proj.weight)
            and not _hooked(*parts)
        )
        if not fast:
            return original(hidden_states, *args, **kwargs)
        w, b = weights.get(attn, parts)
        *lead, d_model = hidden_states.shape
        d = attn.head_dim
        n_q = attn.q_proj.out_features // d
        n_kv = attn.k_proj.out_features // d
        qkv = _product(mm, hidden_states.reshape(-1, d_model), w, b).view(*lead, n_q + 2 * n_kv, d)
        cos, sin = (x.unsqueeze(-2) for x in pe)  # [B, T, 1, d]
        qk = _rotate(qkv[..., : n_q + n_kv, :], cos, sin)  # q and k heads in one pass
        q, k = qk.split([n_q, n_kv], dim=-2)  # [B, T, heads, d] views
        v = qkv[..., n_q + n_kv :, :]
        z = F.scaled_dot_product_attention(
            q.transpose(-3, -2),
            k.transpose(-3, -2),
            v.transpose(-3, -2),
            is_causal=q.shape[-3] > 1,
            scale=attn.scaling,
            enable_gqa=n_q != n_kv,
        )  # [B, H, T, d]
        z = z.transpose(-3, -2).reshape(*lead, n_q * d)
        return attn.o_proj(z), None

    return forward


def _mlp_forward(mlp: nn.Module, original: Callable, weights: FusedWeights, mm: Matmul) -> Callable:
    parts = [mlp.gate_proj, mlp.up_proj]
    silu_types = _silu_types()

    def forward(x: Tensor) -> Tensor:
        fast = (
            not mlp.training
            and type(mlp.act_fn) in silu_types
            and _plain_cpu_f32(x, mlp.gate_proj.weight)
            and not _hooked(*parts)
        )
        if not fast:
            return original(x)
        w, b = weights.get(mlp, parts)
        inter = mlp.gate_proj.out_features
        gate_up = _product(mm, x.reshape(-1, x.shape[-1]), w, b)  # [n, 2 I]
        gate, up = gate_up[:, :inter], gate_up[:, inter:]
        F.silu(gate, inplace=True).mul_(up)  # silu(gate) * up, in gate_up's first half
        return mlp.down_proj(gate.view(*x.shape[:-1], inter))

    return forward


def _norm_forward(norm: nn.Module, original: Callable) -> Callable:
    def forward(x: Tensor) -> Tensor:
        if not _plain_cpu_f32(x, norm.weight):
            return original(x)
        # Hugging Face's arithmetic (so the same float32 values), with two fresh tensors, not three
        r = torch.rsqrt(x.square().mean(-1, keepdim=True).add_(norm.variance_epsilon))
        return torch.mul(x, r).mul_(norm.weight)

    return forward


def _silu_types() -> tuple[type, ...]:
    try:
        from transformers.activations import SiLUActivation
    except ImportError:  # older transformers: ACT2FN["silu"] is nn.SiLU
        return (nn.SiLU,)
    return (nn.SiLU, SiLUActivation)


def _llama_classes() -> tuple[type, type, type] | None:
    try:
        from transformers.models.llama import modeling_llama as ml
    except ImportError:  # transformers is a core dependency; tolerate a build without llama
        return None
    return ml.LlamaAttention, ml.LlamaMLP, ml.LlamaRMSNorm


def fusable_modules(model: nn.Module) -> list[nn.Module]:
    """The llama attention, MLP and RMSNorm modules of ``model`` that :func:`fused_layers`
    would switch (exact ``LlamaAttention``/``LlamaMLP``/``LlamaRMSNorm`` instances, not
    subclasses, whose ``forward`` is not already replaced)."""
    classes = _llama_classes()
    if classes is None:
        return []
    return [m for m in model.modules() if type(m) in classes and "forward" not in vars(m)]


@contextmanager
def fused_layers(
    model: nn.Module, weights: FusedWeights | None = None, *, gemm_products: bool = True
) -> Iterator[int]:
    """Inside the ``with`` block the llama attention, MLP and RMSNorm layers of ``model`` run the
    fused forward (module docstring); yields how many modules were switched (0 for a model with
    none, which then runs unchanged).

    ``weights`` keeps the concatenated weights across blocks (pass the same one each time);
    None builds them for this block only. The fused products go through
    :func:`sparsecodes.kernels.gemm.matmul` with ``gemm_products``, else through ``torch.mm``
    (for a caller whose torch runs several threads, where OpenBLAS's would compete with them).
    """
    weights = weights if weights is not None else FusedWeights()
    mm: Matmul = gemm.matmul if gemm_products else torch.mm
    attn_cls, mlp_cls, _ = _llama_classes() or (None, None, None)

    def make(m: nn.Module) -> Callable:
        original = m.forward
        if type(m) is attn_cls:
            return _attention_forward(m, original, weights, mm)
        if type(m) is mlp_cls:
            return _mlp_forward(m, original, weights, mm)
        return _norm_forward(m, original)

    with swapped_forwards(fusable_modules(model), make) as n:
        yield n
