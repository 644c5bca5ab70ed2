"""``sparsecodes.load``: one loader for our format, run directories, SAELens and sparsify files.

The SAELens and sparsify files are written by the real packages (``sae-lens``, ``eai-sparsify``:
the ``peers`` extra); the loaded coder must encode like the package's own ``encode``, and
``sparsecodes eval``, ``browse`` and ``inspect`` must run on the files with the tiny random llama.
Also here: the hook-name translation table, the shared CLI parameter types and option defaults.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import click
import pytest
import torch
from click.testing import CliRunner

import sparsecodes as sc
from conftest import require
from sparsecodes.cli import COMMANDS, main
from sparsecodes.cli.options import LatentRange, NameValue, params_dict
from sparsecodes.evaluation.core import collect_rows
from sparsecodes.evaluation.corpus import eval_windows, heldout_texts
from sparsecodes.loading import check_width, load, locate, resolve_target
from sparsecodes.models import load_model
from sparsecodes.models.hooks import translate_hook_name

D, N_LAT, K, CTX = 64, 128, 6, 16
TEXT = (
    "The quick brown fox jumps over the lazy dog. Sphinx of black quartz, judge my vow. "
    "def add(a, b):\n    return a + b\n\nimport os\nprint(os.getcwd())\n"
) * 3


def _peer(name: str, dist: str) -> ModuleType:
    """The installed peer package; skipped where absent, but a failure when ``CI=true``."""
    return require(name, f"{dist} is not installed (extra 'peers')")


@pytest.fixture(scope="module")
def lm():
    return load_model("tiny-llama", device="cpu")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("corpus") / "held.txt"
    p.write_text(TEXT + "\n\n" + TEXT[::-1])
    return p


def _randomise(module: torch.nn.Module, seed: int, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_((torch.randn(p.shape, generator=g) * scale).to(p.dtype))


# ------------------------------------------------------------------ hook names
@pytest.mark.parametrize(
    ("given", "ours"),
    [
        ("blocks.8.resid_pre", "blocks.8.resid_pre"),  # ours: unchanged
        ("blocks.3.attn.heads", "blocks.3.attn.heads"),
        ("blocks.8.hook_resid_pre", "blocks.8.resid_pre"),  # TransformerLens / SAELens
        ("blocks.8.hook_resid_post", "blocks.8.resid_post"),
        ("blocks.0.hook_attn_out", "blocks.0.attn_out"),
        ("blocks.11.hook_mlp_out", "blocks.11.mlp_out"),
        ("blocks.3.attn.hook_z", "blocks.3.attn.heads"),
        ("layers.8", "blocks.8.resid_post"),  # sparsify: module paths of the base model
        ("layers.8.mlp", "blocks.8.mlp_out"),
        ("layers.8.self_attn", "blocks.8.attn_out"),
        ("h.2.attn", "blocks.2.attn_out"),  # gpt2
        ("h.2", "blocks.2.resid_post"),
        ("layers.5.attention", "blocks.5.attn_out"),  # gpt-neox
        ("model.layers.4.mlp", "blocks.4.mlp_out"),  # path from the causal-LM wrapper
        ("gpt_neox.layers.4", "blocks.4.resid_post"),
        ("blocks.8.hook_resid_mid", "blocks.8.hook_resid_mid"),  # no equivalent: unchanged
        ("layers.8.mlp.act_fn", "layers.8.mlp.act_fn"),
        ("embed", "embed"),
    ],
)
def test_translate_hook_name_table(given, ours):
    assert translate_hook_name(given) == ours


# ------------------------------------------------------------------ our format and run dirs
def _ours(tmp_path: Path) -> sc.SparseCoder:
    c = sc.SparseCoder(D, N_LAT, "topk", k=K, normalize="expected_norm", seed=1)
    with torch.no_grad():
        c.normaliser.scale.fill_(0.5)
    c.train_config = {
        "source": {
            "model_name": "tiny-llama",
            "hook_name": "blocks.1.resid_post",
            "context_size": 24,
        }
    }
    return c


def test_our_format_and_run_dirs_record_their_source(tmp_path):
    c = _ours(tmp_path)
    x = torch.randn(20, D)
    c.save(tmp_path / "model")
    c.save(tmp_path / "run" / "final")
    c.save(
        tmp_path / "sl_run" / "final_saelens",
        format="saelens",
        hook_name="blocks.1.hook_resid_post",
    )
    for path, where, fmt in [
        (tmp_path / "model", tmp_path / "model", "sparsecodes"),
        (tmp_path / "run", tmp_path / "run" / "final", "sparsecodes"),
        (tmp_path / "sl_run", tmp_path / "sl_run" / "final_saelens", "saelens"),
    ]:
        got = load(path)
        src = got.source
        assert (src.path, src.format) == (where, fmt)
        assert (src.model_name, src.hook_name, src.context_size) == (
            "tiny-llama",
            "blocks.1.resid_post",
            24,
        )
        assert (src.normalize, src.scale) == ("expected_norm", 0.5)
        assert not got.training
        torch.testing.assert_close(got.encode(x), c.encode(x), rtol=1e-5, atol=1e-6)
    assert load(tmp_path / "sl_run").source.recorded_hook_name == "blocks.1.hook_resid_post"


def test_save_formats_and_unknown_format(tmp_path):
    c = _ours(tmp_path)
    assert (c.save(tmp_path / "a", format="saelens") / "sae_weights.safetensors").is_file()
    with pytest.raises(ValueError, match=r"unknown format 'npz'.*'sparsecodes', 'saelens'"):
        c.save(tmp_path / "b", format="npz")
    with pytest.raises(TypeError, match="takes no options"):
        c.save(tmp_path / "c", hook_name="x")
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_missing_and_unrecorded_are_named(tmp_path, lm):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="holds no coder"):
        load(tmp_path)
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ValueError, match="is a directory, got the file"):
        load(tmp_path / "f.txt")
    sc.SparseCoder(D, 8, "relu").save(tmp_path / "bare")
    bare = load(tmp_path / "bare")
    with pytest.raises(ValueError, match="pass --model and --hook"):
        resolve_target(bare)
    assert resolve_target(bare, "tiny-llama", "blocks.0.hook_mlp_out") == (
        "tiny-llama",
        "blocks.0.mlp_out",
    )
    c = _ours(tmp_path)
    c.save(tmp_path / "rec")
    rec = load(tmp_path / "rec")
    with pytest.raises(ValueError, match=r"trained on hook 'blocks\.1\.resid_post'"):
        resolve_target(rec, None, "blocks.0.resid_post")
    assert resolve_target(rec, None, "blocks.1.hook_resid_post") == (
        "tiny-llama",
        "blocks.1.resid_post",
    )
    with pytest.raises(ValueError, match="trained on model 'tiny-llama'"):
        resolve_target(rec, "smollm2-135m")
    narrow = sc.SparseCoder(32, 8, "relu")
    narrow.save(tmp_path / "narrow")
    with pytest.raises(
        ValueError, match=r"d_in=32 but tiny-llama's blocks\.1\.resid_post has width 64"
    ):
        check_width(load(tmp_path / "narrow"), lm, "blocks.1.resid_post")


# ------------------------------------------------------------------ SAELens, written by sae-lens
@pytest.fixture(scope="module")
def saelens_dir(tmp_path_factory) -> tuple[Path, object]:
    """A TopK SAE on ``blocks.1.attn.hook_z`` (4 heads x 16 = 64 wide) saved by SAELens itself."""
    sae_lens = _peer("sae_lens", "sae-lens")
    cfg = sae_lens.TopKSAEConfig(d_in=D, d_sae=N_LAT, k=K, apply_b_dec_to_input=True)
    cfg.metadata.model_name = "tiny-llama"
    cfg.metadata.hook_name = "blocks.1.attn.hook_z"
    cfg.metadata.context_size = CTX
    sae = sae_lens.TopKSAE(cfg)
    _randomise(sae, seed=3)
    d = tmp_path_factory.mktemp("saelens") / "sae"
    sae.save_model(d)
    return d, sae


def test_saelens_file_loads_with_its_source_and_encodes_like_saelens(saelens_dir):
    d, sae = saelens_dir
    coder = load(d)
    src = coder.source
    assert (src.format, src.model_name, src.context_size) == ("saelens", "tiny-llama", CTX)
    assert (src.recorded_hook_name, src.hook_name) == (
        "blocks.1.attn.hook_z",
        "blocks.1.attn.heads",
    )
    x = torch.randn(50, D, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = sae.encode(x)
        recon = sae.decode(want)
    assert int((want > 0).sum(1).max()) == K
    torch.testing.assert_close(coder.encode(x), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(coder.reconstruct(x), recon, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ sparsify, written by sparsify
@pytest.fixture(scope="module")
def sparsify_run(tmp_path_factory) -> tuple[Path, object]:
    """A sparsify run directory: ``config.json`` (its RunConfig) + ``layers.1/`` (one coder)."""
    sparsify = _peer("sparsify", "eai-sparsify")
    from sparsify.__main__ import RunConfig

    sae_cfg = sparsify.SparseCoderConfig(num_latents=N_LAT, k=K)
    coder = sparsify.SparseCoder(D, sae_cfg)
    _randomise(coder, seed=5)
    run = tmp_path_factory.mktemp("sparsify") / "run"
    coder.save_to_disk(run / "layers.1")
    RunConfig(sae=sae_cfg, model="tiny-llama", ctx_len=CTX, hookpoints=["layers.1"]).save_json(
        run / "config.json"
    )
    return run, coder


def test_sparsify_run_loads_with_its_source_and_encodes_like_sparsify(sparsify_run, tmp_path):
    run, peer = sparsify_run
    for path in (run, run / "layers.1"):
        coder = load(path)
        src = coder.source
        assert (src.path, src.format) == (run / "layers.1", "sparsify")
        assert (src.model_name, src.context_size) == ("tiny-llama", CTX)
        assert (src.recorded_hook_name, src.hook_name) == ("layers.1", "blocks.1.resid_post")
    x = torch.randn(50, D, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        acts, idx, _ = peer.encode(x)
        recon = peer.decode(acts, idx)
    want = torch.zeros(50, N_LAT).scatter_(1, idx, acts)
    torch.testing.assert_close(coder.encode(x), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(coder.reconstruct(x), recon, rtol=1e-5, atol=1e-5)
    # a run with several hookpoints: the error lists them
    several = tmp_path / "several"
    peer.save_to_disk(several / "layers.0")
    peer.save_to_disk(several / "layers.1.mlp")
    with pytest.raises(ValueError, match=r"2 hookpoints; pass one.*layers\.0, layers\.1\.mlp"):
        locate(several)
    assert load(several / "layers.1.mlp").source.hook_name == "blocks.1.mlp_out"
    peer.save_to_disk(tmp_path / "my_sae")  # not named after a hookpoint: nothing recorded
    assert load(tmp_path / "my_sae").source.hook_name is None


# ------------------------------------------------------------------ CLI on the peers' files
def _peer_fvu(lm, hook: str, corpus: Path, reconstruct) -> float:
    """FVU of ``reconstruct`` (the peer's own) over every kept token ``eval`` reads."""
    windows = eval_windows(heldout_texts(str(corpus)), lm.tokenizer, CTX)
    x = collect_rows(lm, hook, windows, 10**9)
    with torch.no_grad():
        r = reconstruct(x)
    return float(((x - r) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


@pytest.mark.parametrize("which", ["saelens", "sparsify"])
def test_eval_browse_inspect_run_on_peer_files(
    which, saelens_dir, sparsify_run, lm, corpus, tmp_path
):
    if which == "saelens":
        path, peer = saelens_dir
        hook = "blocks.1.attn.heads"

        def peer_codes(x):
            return peer.encode(x)

        def peer_reconstruct(x):
            return peer.decode(peer.encode(x))
    else:
        path, peer = sparsify_run
        hook = "blocks.1.resid_post"

        def peer_codes(x):
            acts, idx, _ = peer.encode(x)
            return torch.zeros(x.shape[0], N_LAT).scatter_(1, idx, acts)

        def peer_reconstruct(x):
            return peer.decode(*peer.encode(x)[:2])

    runner = CliRunner()
    out = tmp_path / "eval"
    args = ["eval", str(path), "--corpus", str(corpus), "--ce-tokens", "0", "--out", str(out)]
    r = runner.invoke(main, args)
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "eval.json").read_text())
    assert rep["eval_config"]["hook"] == hook and rep["eval_config"]["context_size"] == CTX
    assert rep["sae"]["format"] == which
    fvu = rep["eval_result_metrics"]["reconstruction_quality"]["fvu"]
    assert fvu == pytest.approx(_peer_fvu(lm, hook, corpus, peer_reconstruct), rel=1e-4)

    site = tmp_path / "site"
    args = ["browse", str(path), "-o", str(site), "--n-tokens", "100", "--corpus", str(corpus)]
    r = runner.invoke(main, [*args, "--context-size", str(CTX), "--top-k", "3"])
    assert r.exit_code == 0, r.output
    assert (site / "latents" / f"{N_LAT - 1}.html").is_file()

    text = "def alpha(): return beta"
    r = runner.invoke(main, ["inspect", str(path), text, "--top-n", "2", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)["latents"]
    ids, mask = lm.encode([text])
    with torch.no_grad():
        codes = peer_codes(lm.run(ids, mask, [hook])[hook][0, 1:].flatten(1))  # [T-1, N_LAT]
    assert rows[0] == [] and len(rows) == codes.shape[0] + 1  # BOS, then one row per token
    for row, z in zip(rows[1:], codes, strict=True):
        vals, idx = z.topk(2)
        assert [j for j, _ in row] == [j for v, j in zip(vals, idx.tolist(), strict=True) if v > 0]
        assert [a for _, a in row] == pytest.approx([float(v) for v in vals if v > 0], abs=1e-3)


# ------------------------------------------------------------------ shared CLI types and options
def _cmd(param_type: click.ParamType, multiple: bool) -> click.Command:
    @click.command()
    @click.option("--x", type=param_type, multiple=multiple)
    def cmd(x):
        click.echo(json.dumps(params_dict(x) if multiple else x))

    return cmd


@pytest.mark.parametrize(
    ("ptype", "args", "want"),
    [
        (NameValue(), ["k=32", "l1=1e-3", "flag=True", "none=none", "name=topk"],
         {"k": 32, "l1": 0.001, "flag": True, "none": None, "name": "topk"}),
        (NameValue(), ["k=3", "k=4", "eq=a=b"], {"k": 4, "eq": "a=b"}),
        (NameValue(dotted=True), ["relu.l1=0.05", "fista.iters=50", "relu.k=2"],
         {"relu": {"l1": 0.05, "k": 2}, "fista": {"iters": 50}}),
        (LatentRange(), ["0-3,7"], [0, 1, 2, 3, 7]),
        (LatentRange(), ["5, 2-3,5,,2"], [5, 2, 3]),
    ],
)  # fmt: skip
def test_param_types_parse_good_values(ptype, args, want):
    multiple = isinstance(ptype, NameValue)
    argv = [a for v in args for a in ("--x", v)]
    r = CliRunner().invoke(_cmd(ptype, multiple), argv)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == want


@pytest.mark.parametrize(
    ("ptype", "value", "message"),
    [
        (NameValue(), "k32", "'k32' is not NAME=VALUE"),
        (NameValue(), "=3", "'=3' is not NAME=VALUE"),
        (NameValue(dotted=True), "l1=0.05", "'l1=0.05' is not GROUP.NAME=VALUE"),
        (NameValue(dotted=True), "relu.=1", "'relu.=1' is not GROUP.NAME=VALUE"),
        (NameValue(True, "ENCODER.FIELD=VALUE"), "l1=3", "'l1=3' is not ENCODER.FIELD=VALUE"),
        (LatentRange(), "3-1", "'3-1' is not a latent id"),
        (LatentRange(), "a", "'a' is not a latent id"),
        (LatentRange(), "-2", "'-2' is not a latent id"),
        (LatentRange(), ",", "no latents in ','"),
    ],
)
def test_param_types_reject_bad_values_naming_the_option(ptype, value, message):
    r = CliRunner().invoke(_cmd(ptype, isinstance(ptype, NameValue)), ["--x", value])
    assert r.exit_code == 2  # click's usage error
    assert "Invalid value for '--x'" in r.output and message in r.output


def test_train_and_autointerp_report_bad_values_as_usage_errors(tmp_path):
    r = CliRunner().invoke(main, ["train", "--store", str(tmp_path), "--param", "k"])
    assert r.exit_code == 2 and "Invalid value for '--param'" in r.output
    r = CliRunner().invoke(main, ["autointerp", str(tmp_path), "--latents", "9-2"])
    assert r.exit_code == 2 and "Invalid value for '--latents'" in r.output
    r = CliRunner().invoke(main, ["train", "--steps", "1"])  # neither --store nor --model
    assert r.exit_code == 2 and "--store/--model" in r.output


def test_every_device_option_defaults_to_auto_and_every_out_has_a_default():
    ctx = click.Context(main)
    devices, outs = {}, {}
    for name in COMMANDS:
        cmd = main.get_command(ctx, name)
        for p in cmd.params:
            if "--device" in p.opts:
                devices[name] = p.default
            if "--out" in p.opts:
                outs[name] = (p.required, p.default)
    assert set(devices) >= {"models", "circuit", "train", "eval", "browse", "cache"}
    assert set(devices.values()) == {"auto"}
    assert not any(required for required, _ in outs.values())
    assert outs["circuit"][1] == Path("runs/circuit")
