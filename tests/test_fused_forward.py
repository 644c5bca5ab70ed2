"""The fused llama layers of the caching forward (``models.fused``): the same activations as the
model's own layers at every hook kind, the fast case taken only where it is exact, and the
concatenated weights kept in step with the model's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsecodes.activations.cache import caching_forward
from sparsecodes.kernels import gemm
from sparsecodes.models import ModelAdapter, load_model, tiny_llama
from sparsecodes.models.fused import FusedWeights, fusable_modules, fused_layers
from sparsecodes.models.hooks import all_hook_names

# every hook kind of blocks 0-2 (block 3 never runs: the forward stops after blocks.2.resid_post)
HOOKS = [h for h in all_hook_names(4) if h.startswith(("blocks.0.", "blocks.1.", "blocks.2."))]


@pytest.fixture(scope="module")
def lm() -> ModelAdapter:
    return load_model("tiny-llama", device="cpu")


@pytest.fixture(scope="module")
def ids(lm) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(3, lm.vocab_size, (5, 24), generator=g)


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    # float32, three blocks deep: the fused products sum in another order and the rotary
    # embedding rounds once less (addcmul); each value moves by a few ulps of the largest terms
    # it sums (2^-24 relative, grown by sqrt(width) per block): 1e-5 of the largest magnitude
    scale = float(b.abs().max())
    torch.testing.assert_close(a, b, atol=1e-5 * scale, rtol=0)


def _counting(modules: list[nn.Module]) -> list[str]:
    """Instance forwards that record each call (``fused_layers`` leaves these modules alone)."""
    calls: list[str] = []
    for m in modules:
        real = m.forward
        m.forward = lambda *a, _real=real, _name=type(m).__name__, **k: (
            calls.append(_name) or _real(*a, **k)
        )
    return calls


def _uncount(modules: list[nn.Module]) -> None:
    for m in modules:
        vars(m).pop("forward", None)


def test_fused_layers_give_the_eager_activations_at_every_hook_kind(lm, ids):
    ref = lm.run(ids, hooks=HOOKS)
    projections = [b.self_attn.q_proj for b in lm.blocks] + [b.mlp.up_proj for b in lm.blocks]
    calls = _counting(projections)
    weights = FusedWeights()
    try:
        with torch.inference_mode(), fused_layers(lm.model, weights) as n:
            got = lm.run(ids, hooks=HOOKS)
    finally:
        _uncount(projections)
    assert n == 4 * 4 + 1  # per block: attention, MLP, 2 RMSNorm; and the final norm
    assert calls == []  # q and up were computed by the fused products, never by their modules
    assert len(weights) == 2 * 3  # (q|k|v) and (gate|up) of the three blocks that ran
    for name in HOOKS:
        assert got[name].shape == ref[name].shape
        _close(got[name], ref[name])
    assert all("forward" not in vars(m) for m in lm.model.modules())  # the model's own is back


def test_fused_layers_add_the_biases_of_a_llama_with_biased_projections(ids):
    model, tok = tiny_llama(seed=2, attention_bias=True, mlp_bias=True)
    with torch.no_grad():  # the initialiser zeroes biases: give them values that matter
        for m in model.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(m.out_features))
    biased = ModelAdapter(model, tok, name="tiny-llama-biased")
    ref = biased.run(ids, hooks=HOOKS)
    with torch.inference_mode(), fused_layers(biased.model) as n:
        got = biased.run(ids, hooks=HOOKS)
    assert n == 17
    biases = [m.bias for m in model.modules() if isinstance(m, nn.Linear) and m.bias is not None]
    saved = [b.detach().clone() for b in biases]
    with torch.no_grad():
        for b in biases:
            b.zero_()
        unbiased = biased.run(ids, hooks=HOOKS)
        for b, v in zip(biases, saved, strict=True):
            b.copy_(v)
    name = "blocks.2.resid_post"  # the biases change it: a fused path dropping them would fail
    assert float((ref[name] - unbiased[name]).abs().max()) > 0.1 * float(ref[name].abs().max())
    for name in HOOKS:
        _close(got[name], ref[name])


def test_fused_forward_is_deterministic(lm, ids):
    forward = caching_forward(lm, 2)
    with torch.inference_mode():
        a = forward(ids, None, HOOKS)
        b = forward(ids, None, HOOKS)
    for name in HOOKS:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0)


def test_padded_windows_and_hooked_projections_fall_back_to_the_models_own_layers(lm, ids):
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0  # a right-padded row: attention needs the mask, the fused case does not
    ref = lm.run(ids, mask, HOOKS)
    qs = [b.self_attn.q_proj for b in lm.blocks]
    calls = _counting(qs)
    try:
        with torch.inference_mode(), fused_layers(lm.model):
            got = lm.run(ids, mask, HOOKS)
    finally:
        _uncount(qs)
    assert len(calls) == 3  # the three blocks' attention ran their own q_proj
    for name in HOOKS:
        _close(got[name], ref[name])

    seen: list[tuple[int, ...]] = []  # a hook on v_proj (as attention_internals puts one)
    h = lm.blocks[1].self_attn.v_proj.register_forward_hook(
        lambda _m, _a, out: seen.append(tuple(out.shape))
    )
    try:
        with torch.inference_mode(), fused_layers(lm.model):
            got = lm.run(ids, hooks=HOOKS)
    finally:
        h.remove()
    assert seen == [(5, 24, lm.n_kv_heads * lm.d_head)]  # the hooked layer ran its own v_proj
    ref = lm.run(ids, hooks=HOOKS)
    for name in HOOKS:
        _close(got[name], ref[name])


def test_fused_weights_follow_an_in_place_change_of_the_model(lm, ids):
    hook = "blocks.1.mlp_out"
    weights = FusedWeights()
    up = lm.blocks[1].mlp.up_proj.weight
    saved = up.detach().clone()
    try:
        with torch.inference_mode(), fused_layers(lm.model, weights):
            before = lm.run(ids, hooks=[hook])[hook]
        with torch.no_grad():
            up.mul_(2.0)  # a steering-style in-place edit of the weights after the first use
        with torch.inference_mode(), fused_layers(lm.model, weights):
            after = lm.run(ids, hooks=[hook])[hook]
        ref = lm.run(ids, hooks=[hook])[hook]
    finally:
        with torch.no_grad():
            up.copy_(saved)
    assert float((before - ref).abs().max()) > 0.1 * float(ref.abs().max())  # a real change
    _close(after, ref)  # the kept concatenation was rebuilt, not reused stale


def test_fused_layers_need_no_grad_and_restore_after_an_exception(lm, ids):
    with fused_layers(lm.model):  # gradients on: the model's own layers, same values
        grads = lm.run(ids[:2], hooks=["blocks.1.resid_post"], grad=True)
    assert grads["blocks.1.resid_post"].requires_grad
    with pytest.raises(RuntimeError, match="boom"), fused_layers(lm.model):
        raise RuntimeError("boom")
    assert all("forward" not in vars(m) for m in lm.model.modules())
    assert len(fusable_modules(lm.model)) == 17


def test_caching_forward_fused_products_go_through_gemm_only_for_one_thread_workers(
    lm, ids, openblas_small, monkeypatch
):
    calls: list[tuple[int, int]] = []
    real = gemm.matmul
    monkeypatch.setattr(gemm, "matmul", lambda a, b, **kw: calls.append(b.shape) or real(a, b))
    torch.set_num_threads(2)
    ref = lm.run(ids, hooks=HOOKS)
    with torch.inference_mode():
        split = caching_forward(lm, 2)(ids, None, HOOKS)
        # per slice and block: (q|k|v), o, (gate|up), down
        d, i = lm.d_model, 4 * lm.d_model
        per_block = [(d, (lm.n_heads + 2 * lm.n_kv_heads) * lm.d_head), (d, d), (d, 2 * i)]
        per_block.append((i, d))
        assert sorted(calls) == sorted(per_block * 3 * 2)
        calls.clear()
        caching_forward(lm, 1)(ids, None, HOOKS)  # 2 torch threads in one pass: torch.mm
        assert calls == []
        unfused = caching_forward(lm, 2, fused=False)(ids, None, HOOKS)
        assert len(calls) == 2 * 3 * 7  # the model's 7 Linear per block, through gemm
    for name in HOOKS:
        _close(split[name], ref[name])
        _close(unfused[name], ref[name])


@pytest.mark.embedded
@pytest.mark.requires_model("smollm2-135m")
def test_smollm2_layer12_fused_forward_matches_the_plain_forward():
    sm = load_model("smollm2-135m", device="cpu")
    ids, _ = sm.encode(["When Mary and John went to the store, John gave a drink to"] * 4)
    hooks = ["blocks.12.resid_post", "blocks.12.attn.heads", "blocks.12.mlp_out"]
    with torch.inference_mode():
        ref = sm.run(ids, hooks=hooks)
        got = caching_forward(sm, 2)(ids, None, hooks)
    # 13 blocks of width 576-1536 in float32. The residual stream carries one massive dimension
    # (max ~2.5e4 against an RMS near 1e3): summation-order differences there stay below 1e-5 of
    # its max (measured 5e-7). Hooks after a block's RMSNorm see that rounding relative to the
    # RMS, 20-30x larger against their own max: 1e-4 of it (measured 2e-5; 1e-5 for the model's
    # own layers through OpenBLAS, so the fused path costs about one more rounding per block).
    for h, tol in zip(hooks, (1e-5, 1e-4, 1e-4), strict=True):
        scale = float(ref[h].abs().max())
        torch.testing.assert_close(got[h], ref[h], atol=tol * scale, rtol=0)
