"""SAELens / sparsify formats: round trips against the installed packages, and error handling.

Tests that need ``sae_lens`` or ``sparsify`` skip (with the reason) when it is not importable; the
rest (our own round trip, corrupt files) always run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import require
from sparsecodes.encoders import available_encoders
from sparsecodes.formats import load_saelens, load_sparsify, save_saelens
from sparsecodes.formats.saelens import ENCODER_TO_ARCH
from sparsecodes.sparse_coder import SparseCoder

D_IN, N_LAT = 12, 40
SAELENS_ENCODERS = ["relu", "topk", "jumprelu", "gated", "batchtopk"]


def _inputs(n: int = 96, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D_IN, generator=g) * 2.5 + 0.7  # off-centre and not unit scale


def _extra_params(encoder: str) -> dict:
    return {"k": 5, "matmul_dtype": "float32"} if encoder in ("topk", "batchtopk") else {}


def _random_model(encoder: str, normalize: str = "none", seed: int = 0) -> SparseCoder:
    """A model with every parameter perturbed (biases nonzero, thresholds varied)."""
    m = SparseCoder(D_IN, N_LAT, encoder, normalize=normalize, seed=seed, **_extra_params(encoder))
    m.normaliser.fit(_inputs(256, seed=7))
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
        if encoder == "jumprelu":
            m.encoder.log_threshold.copy_(torch.randn(N_LAT, generator=g) * 0.5 - 1.0)
        if encoder == "batchtopk":
            m.encoder.threshold.fill_(0.25)
            m.encoder.threshold_updates.fill_(3)
    return m


@pytest.fixture(scope="module")
def sae_lens():
    return require("sae_lens", reason="sae-lens is not installed (test extra)")


@pytest.fixture(scope="module")
def sparsify():
    return require("sparsify", reason="eai-sparsify is not installed (test extra)")


# ------------------------------------------------------------------ ours -> SAELens
def test_attn_heads_coder_exports_as_hook_z_and_saelens_takes_per_head_inputs(sae_lens, tmp_path):
    m = _random_model("topk", "expected_norm")  # d_in 12 = 3 heads x 4
    save_saelens(m, tmp_path, model_name="tiny", hook_name="blocks.2.attn.heads")
    sae = sae_lens.SAE.load_from_disk(tmp_path)
    assert sae.cfg.metadata.hook_name == "blocks.2.attn.hook_z"
    assert sae.cfg.reshape_activations == "hook_z"
    x = _inputs()
    with torch.no_grad():
        z_theirs = sae.encode(x.view(-1, 3, 4))  # SAELens flattens [..., n_heads, d_head]
        r_theirs = sae.decode(z_theirs)
    torch.testing.assert_close(z_theirs, m.encode(x), rtol=1e-5, atol=1e-5)
    assert r_theirs.shape == (len(x), 3, 4)
    torch.testing.assert_close(r_theirs.flatten(1), m.reconstruct(x), rtol=1e-5, atol=1e-5)
    back = load_saelens(tmp_path)
    torch.testing.assert_close(back.encode(x), m.encode(x), rtol=1e-5, atol=1e-5)
    # other hooks are written as given, with no reshaping
    save_saelens(m, tmp_path / "r", hook_name="blocks.2.hook_resid_post")
    cfg = json.loads((tmp_path / "r" / "cfg.json").read_text())
    assert (cfg["metadata"]["hook_name"], cfg["reshape_activations"]) == (
        "blocks.2.hook_resid_post",
        "none",
    )


@pytest.mark.parametrize("normalize", ["none", "expected_norm"])
@pytest.mark.parametrize("encoder", SAELENS_ENCODERS)
def test_saved_file_reproduces_our_outputs_in_saelens(sae_lens, tmp_path, encoder, normalize):
    m = _random_model(encoder, normalize)
    if normalize == "expected_norm":
        assert not math.isclose(float(m.normaliser.scale), 1.0, rel_tol=0.05)
    save_saelens(m, tmp_path, model_name="tiny", hook_name="blocks.0.hook_resid_pre")
    sae = sae_lens.SAE.load_from_disk(tmp_path)
    assert sae.cfg.architecture() == ENCODER_TO_ARCH[encoder]
    assert sae.cfg.metadata.hook_name == "blocks.0.hook_resid_pre"
    x = _inputs()
    with torch.no_grad():
        z_theirs = sae.encode(x)
        r_theirs = sae.decode(z_theirs)
    z_ours = m.encode(x)
    assert (z_ours > 0).sum(dim=1).float().mean() > 1  # codes are not trivially empty
    assert torch.equal(z_ours > 0, z_theirs > 0)
    torch.testing.assert_close(z_theirs, z_ours, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r_theirs, m.reconstruct(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ ours -> ours
@pytest.mark.parametrize("encoder", SAELENS_ENCODERS)
def test_own_round_trip_is_bit_exact(tmp_path, encoder):
    m = _random_model(encoder)
    m.train_config = {"steps": 7, "lr": 0.001}
    save_saelens(m, tmp_path)
    m2 = load_saelens(tmp_path)
    assert m2.encoder.name == encoder
    assert m2.encoder.config == m.encoder.config
    assert m2.train_config == m.train_config
    s1, s2 = m.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    for k in s1:
        if k == "encoder.log_threshold":  # stored as exp(); the threshold itself is exact
            assert torch.equal(s1[k].exp(), s2[k].exp())
        else:
            assert torch.equal(s1[k], s2[k]), k
    x = _inputs()
    assert torch.equal(m.encode(x), m2.encode(x))
    assert torch.equal(m.reconstruct(x), m2.reconstruct(x))


def test_own_round_trip_with_input_scale(tmp_path):
    m = _random_model("relu", "expected_norm")
    save_saelens(m, tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["normalize_activations"] == "none"  # folded into the weights
    assert cfg["metadata"]["sparsecodes"]["normaliser_scale"] == float(m.normaliser.scale)
    # the file holds the folded weights: W_enc * s
    w = load_file(str(tmp_path / "sae_weights.safetensors"))
    s = float(m.normaliser.scale)
    torch.testing.assert_close(w["W_enc"], m.encoder.W_enc.detach() * s)
    m2 = load_saelens(tmp_path)
    assert m2.normaliser.kind == "expected_norm"
    assert torch.equal(m2.normaliser.scale, m.normaliser.scale)
    for k, v in m.state_dict().items():  # unfolded to float32 rounding
        torch.testing.assert_close(m2.state_dict()[k], v, rtol=1e-6, atol=1e-7)
    x = _inputs()
    torch.testing.assert_close(m2.reconstruct(x), m.reconstruct(x), rtol=1e-5, atol=1e-5)


def test_save_writes_atomically_and_overwrites(tmp_path, monkeypatch):
    import sparsecodes.formats.saelens as saelens_mod

    old = _random_model("relu", seed=1)
    save_saelens(old, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_save_file = saelens_mod.save_file

    def half_then_die(tensors, filename, *a, **kw):  # a crash midway through the weights
        real_save_file(tensors, filename, *a, **kw)
        with open(filename, "r+b") as f:
            f.truncate(len(before["sae_weights.safetensors"]) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(saelens_mod, "save_file", half_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_saelens(_random_model("relu", seed=2), tmp_path)
    # the old files are untouched and load; no temporary file is left behind
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert torch.equal(load_saelens(tmp_path).W_dec, old.W_dec)
    monkeypatch.undo()

    m = _random_model("relu", seed=2)
    save_saelens(m, tmp_path, metadata={"context_size": 128})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    assert json.loads((tmp_path / "cfg.json").read_text())["metadata"]["context_size"] == 128
    assert torch.equal(load_saelens(tmp_path).W_dec, m.W_dec)


def test_save_refuses_what_saelens_cannot_hold(tmp_path):
    # matryoshka_batchtopk and mp_sae: tests/test_matryoshka.py, tests/test_mp_sae.py
    assert sorted(ENCODER_TO_ARCH) == sorted([*SAELENS_ENCODERS, "matryoshka_batchtopk", "mp_sae"])
    others = sorted(set(available_encoders()) - set(ENCODER_TO_ARCH))
    assert {"fista", "lista", "omp"} <= set(others)
    for name in others:
        with pytest.raises(ValueError, match="no SAELens architecture"):
            save_saelens(SparseCoder(D_IN, N_LAT, name), tmp_path / "a")
    with pytest.raises(ValueError, match="reserved"):
        save_saelens(_random_model("relu"), tmp_path / "b", metadata={"sparsecodes": 1})
    untrained = SparseCoder(D_IN, N_LAT, "batchtopk", k=3)
    with pytest.raises(ValueError, match="no inference threshold"):
        save_saelens(untrained, tmp_path / "c")
    assert not (tmp_path / "a").exists()
    assert not (tmp_path / "b" / "cfg.json").exists()


# ------------------------------------------------------------------ SAELens -> ours
def _saelens_sae(sae_lens, arch: str, *, apply_b_dec: bool = True, rescale: bool = False):
    """A SAELens inference SAE built with its own API, every parameter random."""
    kw = {"d_in": D_IN, "d_sae": N_LAT, "apply_b_dec_to_input": apply_b_dec}
    if arch == "standard":
        sae = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(**kw))
    elif arch == "topk":
        cfg = sae_lens.TopKSAEConfig(k=4, rescale_acts_by_decoder_norm=rescale, **kw)
        sae = sae_lens.TopKSAE(cfg)
    elif arch == "jumprelu":
        sae = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(**kw))
    else:
        sae = sae_lens.GatedSAE(sae_lens.GatedSAEConfig(**kw))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if name != "W_dec" else 1.0))
        if arch == "jumprelu":  # positive thresholds, plus a zero and a negative one
            sae.threshold.copy_(torch.rand(N_LAT, generator=g) * 0.5)
            sae.threshold[:2] = torch.tensor([0.0, -0.3])
    return sae


@pytest.mark.parametrize(
    ("arch", "apply_b_dec", "rescale"),
    [
        ("standard", True, False),
        ("standard", False, False),
        ("topk", True, False),
        ("topk", False, True),
        ("jumprelu", True, False),
        ("gated", True, False),
        ("gated", False, False),
    ],
)
def test_saelens_saved_sae_loads_with_equal_outputs(sae_lens, tmp_path, arch, apply_b_dec, rescale):
    sae = _saelens_sae(sae_lens, arch, apply_b_dec=apply_b_dec, rescale=rescale)
    sae.save_model(tmp_path)
    m = load_saelens(tmp_path)
    x = _inputs()
    with torch.no_grad():
        z = sae.encode(x)
        r = sae.decode(z)
    assert (z > 0).sum(dim=1).float().mean() > 1
    z_ours = m.encode(x)
    assert torch.equal(z_ours > 0, z > 0)
    torch.testing.assert_close(z_ours, z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.reconstruct(x), r, rtol=1e-5, atol=1e-5)
    if rescale:  # SAELens's decoder-norm rescaling is folded in: the atoms come back unit-norm
        torch.testing.assert_close(m.W_dec.norm(dim=1), torch.ones(N_LAT))


def test_saelens_expected_average_without_scale_warns(sae_lens, tmp_path):
    sae = sae_lens.StandardSAE(
        sae_lens.StandardSAEConfig(
            d_in=D_IN, d_sae=N_LAT, normalize_activations="expected_average_only_in"
        )
    )
    sae.save_model(tmp_path)
    with pytest.warns(UserWarning, match="scale the inputs yourself"):
        m = load_saelens(tmp_path)
    assert m.normaliser.kind == "none"  # like SAELens's inference SAE: no scaling applied
    x = _inputs()
    torch.testing.assert_close(m.encode(x), sae.encode(x).detach(), rtol=1e-5, atol=1e-5)


def test_legacy_config_without_architecture_loads(tmp_path):
    m = _random_model("relu")
    save_saelens(m, tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    legacy = {
        "d_in": D_IN,
        "d_sae": N_LAT,
        "activation_fn_str": "relu",
        "dtype": "float32",
        "hook_point": "blocks.0.hook_resid_pre",
        "apply_b_dec_to_input": True,
    }
    assert cfg["architecture"] == "standard"
    (tmp_path / "cfg.json").write_text(json.dumps(legacy))
    m2 = load_saelens(tmp_path)
    x = _inputs()
    assert torch.equal(m2.encode(x), m.encode(x))


# ------------------------------------------------------------------ errors
def _edit_cfg(path: Path, **changes) -> None:
    cfg = json.loads((path / "cfg.json").read_text())
    cfg.update(changes)
    (path / "cfg.json").write_text(json.dumps(cfg))


def test_corrupt_or_truncated_weights_name_the_file(tmp_path):
    save_saelens(_random_model("relu"), tmp_path)
    w = tmp_path / "sae_weights.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"sae_weights\.safetensors"):
        load_saelens(tmp_path)
    w.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match=r"sae_weights\.safetensors.*corrupt"):
        load_saelens(tmp_path)
    (tmp_path / "cfg.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"cfg\.json is not valid JSON"):
        load_saelens(tmp_path)


def test_shape_mismatch_names_both_files(tmp_path):
    save_saelens(_random_model("relu"), tmp_path)
    _edit_cfg(tmp_path, d_sae=N_LAT + 1)
    with pytest.raises(ValueError, match=r"sae_weights\.safetensors.*cfg\.json.*W_enc has shape"):
        load_saelens(tmp_path)


def test_missing_and_unexpected_tensors(tmp_path):
    save_saelens(_random_model("relu"), tmp_path)
    w = tmp_path / "sae_weights.safetensors"
    tensors = load_file(str(w))
    tensors["extra"] = torch.zeros(3)
    del tensors["b_enc"]
    save_file(tensors, str(w))
    with pytest.raises(ValueError, match=r"missing \['b_enc'\], unexpected \['extra'\]"):
        load_saelens(tmp_path)


def test_unsupported_saelens_configs_are_refused(tmp_path):
    save_saelens(_random_model("relu"), tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        load_saelens(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"cfg\.json not found.*pass one of"):
        load_saelens(tmp_path.parent)
    _edit_cfg(tmp_path, architecture="skip_transcoder")
    with pytest.raises(ValueError, match="'skip_transcoder' is not supported"):
        load_saelens(tmp_path)
    _edit_cfg(tmp_path, architecture="standard", normalize_activations="layer_norm")
    with pytest.raises(ValueError, match="rescales every token"):
        load_saelens(tmp_path)
    _edit_cfg(tmp_path, normalize_activations="none", architecture="jumprelu")
    with pytest.raises(ValueError, match="missing \\['threshold'\\]"):
        load_saelens(tmp_path)


def test_edited_metadata_is_caught(tmp_path):
    save_saelens(_random_model("topk"), tmp_path)
    _edit_cfg(tmp_path, k=7)
    with pytest.raises(ValueError, match="k=7 but metadata"):
        load_saelens(tmp_path)
    _edit_cfg(tmp_path, k=5, architecture="standard")
    with pytest.raises(ValueError, match="does not match architecture 'standard'"):
        load_saelens(tmp_path)


# ------------------------------------------------------------------ sparsify -> ours
def _sparsify_coder(sparsify, *, dtype=None, **cfg):
    coder = sparsify.SparseCoder(
        D_IN, sparsify.SparseCoderConfig(num_latents=N_LAT, k=4, **cfg), dtype=dtype
    )
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in coder.parameters():
            p.copy_(torch.randn(p.shape, generator=g).to(p.dtype) * 0.3)
    return coder


def test_sparsify_saved_coder_loads_with_equal_codes(sparsify, tmp_path):
    coder = _sparsify_coder(sparsify)
    coder.save_to_disk(tmp_path)
    m = load_sparsify(tmp_path)
    x = _inputs()
    with torch.no_grad():
        acts, idx, _pre = coder.encode(x)
        recon = coder.decode(acts, idx)
    dense = torch.zeros(x.shape[0], N_LAT).scatter_(1, idx, acts)
    codes = m.encode(x, sparse=True)
    assert torch.equal(codes.indices.sort(dim=1).values, idx.sort(dim=1).values)
    torch.testing.assert_close(m.encode(x), dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.reconstruct(x), recon, rtol=1e-5, atol=1e-5)
    assert m.encoder.config.k == 4


def test_sparsify_bf16_file_upcasts_exactly(sparsify, tmp_path):
    coder = _sparsify_coder(sparsify, dtype=torch.bfloat16)
    coder.save_to_disk(tmp_path)
    m = load_sparsify(tmp_path)
    assert torch.equal(m.encoder.W_enc, coder.encoder.weight.float().T)
    assert torch.equal(m.W_dec, coder.W_dec.float())


@pytest.mark.parametrize(
    ("cfg", "match"),
    [({"transcode": True}, "transcode=true"), ({"skip_connection": True}, "skip_connection")],
)
def test_sparsify_unrepresentable_options_refused(sparsify, tmp_path, cfg, match):
    _sparsify_coder(sparsify, **cfg).save_to_disk(tmp_path)
    with pytest.raises(ValueError, match=match):
        load_sparsify(tmp_path)


def test_sparsify_errors_name_the_file(sparsify, tmp_path):
    _sparsify_coder(sparsify).save_to_disk(tmp_path)
    _edit_cfg(tmp_path, activation="groupmax")
    with pytest.raises(ValueError, match="groupmax"):
        load_sparsify(tmp_path)
    _edit_cfg(tmp_path, activation="topk", num_latents=N_LAT * 2)
    with pytest.raises(ValueError, match=r"sae\.safetensors does not match.*encoder\.weight"):
        load_sparsify(tmp_path)
    (tmp_path / "sae.safetensors").write_bytes(b"broken")
    with pytest.raises(ValueError, match=r"sae\.safetensors could not be read"):
        load_sparsify(tmp_path)
    with pytest.raises(FileNotFoundError, match="pass one of"):
        load_sparsify(tmp_path.parent)
