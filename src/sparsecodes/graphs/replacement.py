"""The replacement model: a llama-family model, for one prompt, made linear from its inputs.

For a prompt, :func:`replacement_run` runs the model once (its own modules' weights, the same
arithmetic as the Hugging Face forward) and records what becomes frozen: each attention head's
pattern ``[T, T]`` and every RMSNorm's per-position scale ``1 / sqrt(mean(x^2) + eps)``. Each
chosen MLP is replaced by its transcoder plus an **error term** (the true ``mlp_out`` minus the
transcoder's output at this prompt); an MLP without a transcoder is all error. With patterns and
scales frozen and feature activations held at their values, the residual stream at every point
is a linear function of the *sources*: token embeddings, feature activations times decoder rows,
error terms and constant biases. :meth:`ReplacementModel.forward` evaluates it (and equals the
model's logits), :meth:`ReplacementModel.backward` applies its transpose to a batch of
cotangents (the vector-Jacobian products that give attribution edges).

The first ``zero_positions`` positions (default 1: the BOS token the adapter prepends, which
later positions use as an attention sink) have no features: their transcoders' activations are
set to 0 there, so each of those MLP outputs is all error term, a constant of the prompt. This is
circuit-tracer's convention; without it the sink's features dominate graphs and ablations through
attention-pattern changes that the frozen graph cannot see.

Shapes: ``T`` positions, ``d`` d_model, ``L`` layers, ``H`` query heads, ``n`` latents.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sparsecodes.graphs.transcoder import Transcoder, affine_weights, hook_layer
from sparsecodes.models.adapter import ModelAdapter

__all__ = ["ReplacementModel", "ReplacementRun", "replacement_run"]


def _rotate_half(x: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


@dataclass
class LayerWeights:
    """The linear pieces of one block (views of the model's own parameters)."""

    g_attn: Tensor  # [d] input_layernorm weight
    g_mlp: Tensor  # [d] post_attention_layernorm weight
    W_v: Tensor  # [n_kv * d_head, d]
    b_v: Tensor | None
    W_o: Tensor  # [d, H * d_head]
    b_o: Tensor | None


@dataclass
class ReplacementRun:
    """One prompt through the replacement model: frozen quantities, sources and activations."""

    input_ids: Tensor  # [T]
    embed: Tensor  # [T, d]
    attn_scale: Tensor  # [L, T]
    mlp_scale: Tensor  # [L, T]
    final_scale: Tensor  # [T]
    patterns: Tensor  # [L, H, T, T]
    mlp_in: Tensor  # [L, T, d]
    mlp_out: Tensor  # [L, T, d] true MLP outputs
    logits: Tensor  # [T, V] the model's logits
    pre: dict[int, Tensor] = field(default_factory=dict)  # layer -> [T, n] pre-activations
    codes: dict[int, Tensor] = field(default_factory=dict)  # layer -> [T, n] activations
    error: Tensor | None = None  # [L, T, d] true mlp_out - transcoder output (all of it if none)


class ReplacementModel:
    """A llama-family ``ModelAdapter`` with transcoders for some MLPs (any subset of layers)."""

    def __init__(
        self,
        adapter: ModelAdapter,
        transcoders: Sequence[Transcoder],
        *,
        zero_positions: int = 1,
    ) -> None:
        if not isinstance(zero_positions, int) or zero_positions < 0:
            raise ValueError(f"zero_positions must be an integer >= 0, got {zero_positions!r}")
        self.zero_positions = zero_positions
        if adapter.family != "llama" or not adapter.additive:
            raise ValueError(
                f"the replacement model supports llama-family models with plain pre-norm blocks "
                f"(Llama, SmolLM, Qwen2, Mistral); {adapter.name!r} is family "
                f"{adapter.family!r}{'' if adapter.additive else ' with extra sub-layer norms'}"
            )
        self.adapter = adapter
        self.L, self.d = adapter.n_layers, adapter.d_model
        self.H, self.n_kv, self.d_head = adapter.n_heads, adapter.n_kv_heads, adapter.d_head
        self.transcoders: dict[int, Transcoder] = {}
        for tc in transcoders:
            layer = hook_layer(tc.in_hook, "mlp_in")
            if hook_layer(tc.out_hook, "mlp_out") != layer:
                raise ValueError(f"transcoder reads {tc.in_hook!r} but writes {tc.out_hook!r}")
            if layer >= self.L:
                raise ValueError(f"transcoder for layer {layer}; {adapter.name} has {self.L}")
            if layer in self.transcoders:
                raise ValueError(f"two transcoders for layer {layer}; give one per layer")
            if tc.W_dec_out.shape[1] != self.d:
                raise ValueError(
                    f"transcoder of layer {layer} writes width {tc.W_dec_out.shape[1]}, "
                    f"the model's d_model is {self.d}"
                )
            self.transcoders[layer] = tc
        self.enc: dict[int, tuple[Tensor, Tensor]] = {
            layer: affine_weights(tc, self.d) for layer, tc in self.transcoders.items()
        }
        self.layers = [self._layer_weights(b) for b in adapter.blocks]
        inner = adapter.model.model
        self.embed_tokens = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.g_final = inner.norm.weight
        self.eps_final = float(inner.norm.variance_epsilon)
        self.W_U = adapter.model.lm_head.weight  # [V, d]
        self.b_U = getattr(adapter.model.lm_head, "bias", None)

    @staticmethod
    def _layer_weights(block: torch.nn.Module) -> LayerWeights:
        at = block.self_attn
        return LayerWeights(
            block.input_layernorm.weight,
            block.post_attention_layernorm.weight,
            at.v_proj.weight,
            at.v_proj.bias,
            at.o_proj.weight,
            at.o_proj.bias,
        )

    def features(self, layer: int, mlp_in: Tensor) -> tuple[Tensor, Tensor]:
        """``(pre-activations, codes)``, each ``[T, n]``, of ``layer``'s transcoder on ``mlp_in``
        ``[T, d]``, with no features at the first ``zero_positions`` positions (module doc)."""
        tc = self.transcoders[layer]
        pre = tc.encode_pre(mlp_in)
        codes = tc.activate(pre)
        codes[: self.zero_positions] = 0
        return pre, codes

    # ---------------------------------------------------------------- the clean run
    @torch.no_grad()
    def run(self, input_ids: Tensor) -> ReplacementRun:
        """Run ``input_ids`` ``[T]`` (or ``[1, T]``) through the model, freezing what is frozen."""
        ids = input_ids.reshape(-1).to(self.adapter.device)
        rec: dict[str, list[Tensor]] = {k: [] for k in ("s1", "s2", "pat", "mi", "mo")}
        logits, embed, sf = self._pass(ids, record=rec)
        run = ReplacementRun(
            ids,
            embed,
            torch.stack(rec["s1"]),
            torch.stack(rec["s2"]),
            sf,
            torch.stack(rec["pat"]),
            torch.stack(rec["mi"]),
            torch.stack(rec["mo"]),
            logits,
        )
        err = run.mlp_out.clone()
        for layer in self.transcoders:
            pre, codes = self.features(layer, run.mlp_in[layer])
            run.pre[layer], run.codes[layer] = pre, codes
            err[layer] -= self.transcoder_output(layer, codes, run.mlp_in[layer])
        run.error = err
        return run

    def real_logits(
        self,
        run: ReplacementRun,
        *,
        freeze_patterns: bool = False,
        freeze_norms: bool = False,
        mlp_edit: Callable[[int, Tensor, Tensor], Tensor] | None = None,
        grad: bool = False,
    ) -> Tensor:
        """Logits ``[T, V]`` of the model itself on ``run``'s prompt (real MLPs, recomputed
        attention and norms), with ``run``'s attention patterns (``freeze_patterns``) and/or
        RMSNorm scales (``freeze_norms``: all of them, the final one included) held instead.
        ``mlp_edit(layer, mlp_in [T, d], mlp_out [T, d]) -> mlp_out`` changes an MLP's output
        (e.g. an ablation through a transcoder). Nothing frozen and no edit: the model's logits.
        Runs under ``torch.no_grad()`` unless ``grad`` is true.
        """
        with torch.set_grad_enabled(grad):
            return self._pass(
                run.input_ids,
                frozen=run,
                freeze_patterns=freeze_patterns,
                freeze_norms=freeze_norms,
                mlp_edit=mlp_edit,
            )[0]

    @torch.no_grad()
    def replacement_logits(
        self,
        run: ReplacementRun,
        *,
        code_edit: Callable[[int, Tensor], Tensor] | None = None,
    ) -> Tensor:
        """Logits ``[T, V]`` of the *replacement* model run for real on ``run``'s prompt: every
        MLP's output is its transcoder's output, with codes recomputed from the MLP input of this
        pass (the full nonlinearity: active sets may change), plus the error term held at its
        clean value from ``run`` (an MLP without a transcoder is its clean output); attention and
        norms are recomputed. ``code_edit(layer, codes [T, n]) -> codes`` changes a layer's codes
        (e.g. zeroes ablated features). No edit: the model's logits up to float rounding.
        """
        err = run.error if run.error is not None else run.mlp_out

        def edit(layer: int, mlp_in: Tensor, mlp_out: Tensor) -> Tensor:
            out = err[layer]
            if layer in self.transcoders:
                _, codes = self.features(layer, mlp_in)
                if code_edit is not None:
                    codes = code_edit(layer, codes)
                out = out + self.transcoder_output(layer, codes, mlp_in)
            return out

        return self._pass(run.input_ids, mlp_edit=edit)[0]

    def _pass(
        self,
        ids: Tensor,
        *,
        frozen: ReplacementRun | None = None,
        freeze_patterns: bool = False,
        freeze_norms: bool = False,
        mlp_edit: Callable[[int, Tensor, Tensor], Tensor] | None = None,
        record: dict[str, list[Tensor]] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The model's forward pass on ``ids`` ``[T]`` with its own modules: ``(logits [T, V],
        embeddings [T, d], final norm scale [T])``; optionally patterns/norm scales taken from
        ``frozen``, MLP outputs edited, and per-layer quantities appended to ``record``."""
        T = len(ids)
        x = self.embed_tokens(ids[None])[0]
        embed = x.clone()
        pos = torch.arange(T, device=x.device)[None]
        cos, sin = (t[0] for t in self.rotary(x[None], pos))
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()

        def scale(v: Tensor, eps: float, fixed: Tensor | None) -> Tensor:
            if fixed is not None:
                return fixed
            return torch.rsqrt(v.float().pow(2).mean(-1) + eps).to(v.dtype)

        for layer, block in enumerate(self.adapter.blocks):
            fr = frozen if freeze_norms else None
            at = block.self_attn
            s1 = scale(x, block.input_layernorm.variance_epsilon, fr and fr.attn_scale[layer])
            a_in = block.input_layernorm.weight * (x * s1[:, None])
            v = at.v_proj(a_in).view(T, -1, self.d_head).transpose(0, 1)
            if freeze_patterns and frozen is not None:
                pat = frozen.patterns[layer]
            else:
                q = at.q_proj(a_in).view(T, -1, self.d_head).transpose(0, 1)
                k = at.k_proj(a_in).view(T, -1, self.d_head).transpose(0, 1)
                if hasattr(at, "q_norm"):
                    q, k = at.q_norm(q), at.k_norm(k)
                q = q * cos + _rotate_half(q) * sin
                k = k * cos + _rotate_half(k) * sin
                k = k.repeat_interleave(self.H // k.shape[0], 0)
                scores = (q @ k.transpose(-1, -2)) * at.scaling
                scores = scores.masked_fill(~causal, float("-inf"))
                pat = torch.softmax(scores.float(), dim=-1).to(q.dtype)  # [H, T, T]
            v = v.repeat_interleave(self.H // v.shape[0], 0)
            z = (pat @ v).transpose(0, 1).reshape(T, -1)
            x = x + at.o_proj(z)
            norm = block.post_attention_layernorm
            s2 = scale(x, norm.variance_epsilon, fr and fr.mlp_scale[layer])
            mi = norm.weight * (x * s2[:, None])
            mo = block.mlp(mi)
            if mlp_edit is not None:
                mo = mlp_edit(layer, mi, mo)
            x = x + mo
            if record is not None:
                for key, val in (("s1", s1), ("s2", s2), ("pat", pat), ("mi", mi), ("mo", mo)):
                    record[key].append(val)
        sf = scale(x, self.eps_final, frozen.final_scale if freeze_norms and frozen else None)
        logits = (self.g_final * (x * sf[:, None])) @ self.W_U.T
        if self.b_U is not None:
            logits = logits + self.b_U
        return logits, embed, sf

    def transcoder_output(self, layer: int, codes: Tensor, mlp_in: Tensor) -> Tensor:
        """``codes @ W_dec_out + b_dec_out (+ mlp_in @ W_skip)``: ``[T, d]``."""
        tc = self.transcoders[layer]
        out = codes @ tc.W_dec_out + tc.b_dec_out
        return out if tc.W_skip is None else out + mlp_in @ tc.W_skip

    # ---------------------------------------------------------------- the linear model
    def attn_bias(self, layer: int) -> Tensor | None:
        """The constant the attention of ``layer`` adds at every position (``[d]``), or None."""
        w = self.layers[layer]
        if w.b_v is None and w.b_o is None:
            return None
        out = torch.zeros(self.d, device=w.W_o.device, dtype=w.W_o.dtype)
        if w.b_v is not None:  # pattern rows sum to 1, so the value bias passes unchanged
            bv = w.b_v.view(self.n_kv, self.d_head).repeat_interleave(self.H // self.n_kv, 0)
            out = out + w.W_o @ bv.reshape(-1)
        return out if w.b_o is None else out + w.b_o

    @torch.no_grad()
    def forward(
        self,
        run: ReplacementRun,
        *,
        codes: Mapping[int, Tensor] | None = None,
        embed: Tensor | None = None,
        error: Tensor | None = None,
        biases: bool = True,
        gates: Mapping[int, Tensor] | None = None,
        held: Mapping[int, Tensor] | None = None,
    ) -> Tensor:
        """Logits ``[T, V]`` of the frozen linear model from its sources.

        Defaults are the run's own sources, so ``forward(run)`` equals the model's logits.
        ``codes`` (per layer ``[T, n]``), ``embed`` ``[T, d]`` and ``error`` ``[L, T, d]`` replace
        them; with ``biases=False`` every constant (decoder, attention and unembedding biases)
        is left out, so the result is linear (not affine) in the sources. ``gates`` (per layer a
        0/1 mask ``[T, n]``) makes that layer's features follow their inputs instead:
        ``codes = encode_pre(mlp_in) * gate`` with ``mlp_in`` recomputed in this pass (the
        linearisation of ReLU/TopK/JumpReLU with the active set frozen; a 0 gate removes a
        feature and lets the change reach later features). ``held`` (per gated layer a 0/1 mask
        ``[T, n]``) keeps the features where it is 1 at their ``codes`` value instead (they do
        not follow their inputs; what a capped graph assumes of its unvisited features).
        """
        codes = {**run.codes, **(codes or {})}
        x = run.embed if embed is None else embed
        err = run.error if error is None else error
        for layer, w in enumerate(self.layers):
            x = x + self._attn(layer, x, run)
            ab = self.attn_bias(layer)
            if biases and ab is not None:
                x = x + ab
            mi = w.g_mlp * (x * run.mlp_scale[layer][:, None])
            out = err[layer]
            if layer in self.transcoders:
                tc = self.transcoders[layer]
                c = codes[layer]
                if gates is not None and layer in gates:
                    w_enc, b_enc = self.enc[layer]
                    follow = (mi @ w_enc + b_enc) * gates[layer]
                    c = (
                        follow
                        if held is None or layer not in held
                        else (torch.where(held[layer] != 0, c, follow))
                    )
                out = out + c @ tc.W_dec_out
                if biases:
                    out = out + tc.b_dec_out
                if tc.W_skip is not None:
                    out = out + mi @ tc.W_skip
            x = x + out
        logits = (self.g_final * (x * run.final_scale[:, None])) @ self.W_U.T
        return logits + self.b_U if biases and self.b_U is not None else logits

    def _attn(self, layer: int, x: Tensor, run: ReplacementRun) -> Tensor:
        """Frozen attention, linear part: ``[..., T, d] -> [..., T, d]``."""
        w = self.layers[layer]
        a_in = w.g_attn * (x * run.attn_scale[layer][:, None])
        v = (a_in @ w.W_v.T).unflatten(-1, (self.n_kv, self.d_head))
        v = v.repeat_interleave(self.H // self.n_kv, -2)  # [..., T, H, dh]
        z = torch.einsum("hts,...shd->...thd", run.patterns[layer], v)
        return z.flatten(-2) @ w.W_o.T

    @torch.no_grad()
    def backward(
        self,
        run: ReplacementRun,
        top: int,
        *,
        at_mlp_in: Tensor | None = None,
        at_final: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor | None], list[Tensor]]:
        """Transpose of the linear model for a batch of ``B`` cotangents.

        The cotangent sits either at ``blocks.{top}.mlp_in`` (``at_mlp_in`` ``[B, T, d]``; the
        gradient of a feature's pre-activation) or at the final residual stream (``at_final``
        ``[B, T, d]``, with ``top = L``; the gradient of a logit). Returns the gradients with
        respect to the embeddings ``[B, T, d]``, to what each layer ``l < top`` adds at its MLP
        output (``[B, T, d]``; None for ``l >= top``) and to the residual stream after each
        attention of layer ``l <= top`` (``[B, T, d]``; where attention biases enter).
        """
        if (at_mlp_in is None) == (at_final is None):
            raise ValueError("give exactly one of at_mlp_in and at_final")
        ref = at_final if at_final is not None else at_mlp_in
        g = at_final if at_final is not None else torch.zeros_like(ref)
        grad_out: list[Tensor | None] = [None] * self.L
        grad_mid: list[Tensor] = [torch.zeros(0)] * self.L
        for layer in range(min(top, self.L - 1), -1, -1):
            w = self.layers[layer]
            g_in = None
            if layer < top:
                grad_out[layer] = g
                tc = self.transcoders.get(layer)
                if tc is not None and tc.W_skip is not None:
                    g_in = g @ tc.W_skip.T
            else:
                g_in = at_mlp_in
            g_mid = g if g_in is None else g + g_in * w.g_mlp * run.mlp_scale[layer][:, None]
            grad_mid[layer] = g_mid
            g_z = (g_mid @ w.W_o).unflatten(-1, (self.H, self.d_head))
            g_v = torch.einsum("hts,...thd->...shd", run.patterns[layer], g_z)
            g_v = g_v.unflatten(-2, (self.n_kv, self.H // self.n_kv)).sum(-2).flatten(-2)
            g = g_mid + (g_v @ w.W_v) * w.g_attn * run.attn_scale[layer][:, None]
        return g, grad_out, grad_mid


def replacement_run(
    adapter: ModelAdapter, transcoders: Sequence[Transcoder], input_ids: Tensor
) -> tuple[ReplacementModel, ReplacementRun]:
    """Build the replacement model and run ``input_ids`` ``[T]`` through it."""
    rm = ReplacementModel(adapter, transcoders)
    return rm, rm.run(input_ids)
