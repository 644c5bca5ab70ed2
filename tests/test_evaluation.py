"""`sparsecodes eval`: splicing, CE/KL scores, held-out metrics, refusals, the amortisation gap.

Fast: everything runs on the random tiny llama (d_model 64) with SAEs made or trained in the test.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from sparsecodes.cli import main
from sparsecodes.data import Window, token_windows
from sparsecodes.evaluation.core import ReconstructionAccumulator, reconstruction_pass
from sparsecodes.evaluation.splice import (
    Variant,
    counted_positions,
    downstream_scores,
    zero_ablation,
)
from sparsecodes.loading import check_width, load, resolve_target
from sparsecodes.models import load_model
from sparsecodes.sparse_coder import SparseCoder

HOOK = "blocks.1.resid_post"
CTX = 24
TEXT = (
    "The quick brown fox jumps over the lazy dog. Sparse autoencoders learn a dictionary of "
    "feature directions; iterative inference recovers the codes. "
) * 12


@pytest.fixture(scope="module")
def lm():
    return load_model("tiny-llama", device="cpu")


@pytest.fixture(scope="module")
def windows(lm) -> list[Window]:
    ws = list(token_windows([TEXT, TEXT[::-1]], lm.tokenizer, CTX))
    assert len(ws) >= 6
    return ws[:8]


def _acts(lm, windows) -> torch.Tensor:
    ids = torch.stack([w.input_ids for w in windows])
    keep = torch.stack([w.keep for w in windows])
    return lm.run(ids, hooks=[HOOK])[HOOK][keep]


@pytest.fixture(scope="module")
def topk_coder(lm, windows) -> SparseCoder:
    x = _acts(lm, windows)
    coder = SparseCoder(64, 128, "topk", k=6, normalize="expected_norm", seed=0)
    return coder.fit(x, steps=40, batch_size=64)


def perfect_coder(d: int = 64) -> SparseCoder:
    """A ReLU SAE that reconstructs exactly: atoms [I; -I], codes [relu(x), relu(-x)]."""
    c = SparseCoder(d, 2 * d, "relu", l1=0.0, seed=0)
    eye = torch.eye(d)
    c.set_dictionary(torch.cat([eye, -eye]), torch.zeros(d))
    with torch.no_grad():
        c.encoder.W_enc.copy_(torch.cat([eye, -eye]).T)
        c.encoder.b_enc.zero_()
    return c.eval()


def save_run(coder: SparseCoder, path, model="tiny-llama", hook=HOOK):
    coder.train_config = {
        **coder.train_config,
        "source": {"model_name": model, "hook_name": hook, "context_size": CTX},
    }
    coder.save(path / "final")
    return path


# ------------------------------------------------------------------ splicing and scores
def test_error_term_reproduces_clean_exactly_and_zero_ablation_scores_zero(lm, windows, topk_coder):
    recon = topk_coder.reconstruct
    res = downstream_scores(
        lm,
        HOOK,
        windows[:3],
        {
            "sae": Variant(recon),
            "err": Variant(recon, error_term=True),
            "zero": Variant(zero_ablation),
        },
    )
    assert res.ce["err"] == res.ce_clean  # exactly, not approximately
    assert res.kl["err"] == 0.0
    assert res.ce_loss_score("err") == 1.0 and res.kl_score("err") == 1.0
    assert res.ce_loss_score("zero") == 0.0 and res.kl_score("zero") == 0.0
    # the splice without the error term really changes the model
    assert res.ce["sae"] != res.ce_clean and res.kl["sae"] > 0
    assert res.kl["zero"] > 0 and res.ce["zero"] != res.ce_clean


def test_perfect_reconstruction_scores_one(lm, windows):
    coder = perfect_coder()
    rec = reconstruction_pass(coder, lm, HOOK, windows[:3])
    assert rec.metrics["fvu"] == 0.0 and rec.metrics["explained_variance"] == 1.0
    assert rec.metrics["cossim"] == pytest.approx(1.0, abs=1e-12)
    res = downstream_scores(
        lm, HOOK, windows[:3], {"sae": Variant(coder.reconstruct), "zero": Variant(zero_ablation)}
    )
    assert res.ce_loss_score("sae") == 1.0
    assert res.kl_score("sae") == 1.0


def test_bos_excluded_from_reconstruction_metrics(topk_coder):
    """A huge activation at BOS (keep False) must not change any metric."""

    class HugeBOS:
        def __init__(self, acts):
            self.acts = acts

        def run(self, ids, hooks):
            return {hooks[0]: self.acts}

    g = torch.Generator().manual_seed(0)
    acts = torch.randn(2, 6, 64, generator=g)
    acts[:, 0] = 1e4  # the BOS outlier
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[:, 0] = False
    ws = [Window(torch.zeros(6, dtype=torch.long), keep[i]) for i in range(2)]
    got = reconstruction_pass(topk_coder, HugeBOS(acts), HOOK, ws).metrics

    x = acts[keep]
    x_hat = topk_coder.reconstruct(x)
    fvu = float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    assert got["n_tokens"] == 10
    assert got["fvu"] == pytest.approx(fvu, rel=1e-5)
    mse = float(((x - x_hat) ** 2).sum(1).mean())
    assert got["mse"] == pytest.approx(mse, rel=1e-5)
    assert got["l2_norm_in"] == pytest.approx(float(x.norm(dim=1).mean()), rel=1e-5)
    xa = acts.reshape(-1, 64)  # what counting BOS would give: dominated by the outlier
    mse_all = float(((xa - topk_coder.reconstruct(xa)) ** 2).sum(1).mean())
    assert mse_all > 100 * got["mse"]


def test_bos_and_special_excluded_from_loss_averages(lm, windows):
    """CE is averaged over positions t with keep[t] and keep[t+1], nothing else."""
    ws = windows[:2]
    assert not ws[0].keep[0]  # BOS
    ids = torch.stack([w.input_ids for w in ws])
    keep = torch.stack([w.keep for w in ws])
    res = downstream_scores(lm, HOOK, ws, {"zero": Variant(zero_ablation)})
    logp = torch.log_softmax(lm.logits(ids)[:, :-1].float(), -1)
    ce = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    mask = counted_positions(keep)
    assert res.n_positions == int(mask.sum()) < ce.numel()
    assert res.ce_clean == pytest.approx(float(ce[mask].mean()), rel=1e-6)
    assert abs(float(ce.mean()) - res.ce_clean) > 1e-4  # counting BOS would change it
    # the splice leaves BOS untouched: a recon that only sees kept rows
    seen = []
    downstream_scores(lm, HOOK, ws, {"id": Variant(lambda x: seen.append(len(x)) or x)})
    assert seen == [int(keep.sum())]


def test_accumulator_matches_direct_definitions():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 8, generator=g) + 3.0
    x_hat = x + 0.3 * torch.randn(50, 8, generator=g)
    z = torch.relu(torch.randn(50, 16, generator=g))
    acc = ReconstructionAccumulator(16, 8)
    acc.update(x[:20], x_hat[:20], z[:20])
    acc.update(x[20:], x_hat[20:], z[20:])
    m = acc.result(dense_threshold=0.45)
    assert m["fvu"] == pytest.approx(float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()))
    assert m["mse"] == pytest.approx(float(((x - x_hat) ** 2).sum(1).mean()))
    assert m["l0"] == pytest.approx(float((z != 0).sum(1).float().mean()))
    dens = (z != 0).float().mean(0)
    assert m["n_dense"] == int((dens > 0.45).sum())
    assert m["n_dead"] == int((dens == 0).sum())


# ------------------------------------------------------------------ refusals
def test_refuses_other_model_hook_and_width(tmp_path, lm, topk_coder):
    run = save_run(topk_coder, tmp_path / "run")
    sae = load(run)
    src = sae.source
    assert (src.model_name, src.hook_name, src.context_size) == ("tiny-llama", HOOK, CTX)
    assert resolve_target(sae, None, None) == ("tiny-llama", HOOK)
    with pytest.raises(ValueError, match="trained on model 'tiny-llama'"):
        resolve_target(sae, "smollm2-135m", None)
    with pytest.raises(ValueError, match="trained on hook"):
        resolve_target(sae, None, "blocks.0.resid_post")
    narrow = save_run(SparseCoder(32, 64, "relu"), tmp_path / "narrow")
    with pytest.raises(ValueError, match="d_in=32"):
        check_width(load(narrow), lm, HOOK)
    # the CLI says so in one line, before loading any model
    r = CliRunner().invoke(main, ["eval", str(run), "--hook", "blocks.2.resid_post"])
    assert r.exit_code != 0 and "trained on hook" in r.output and "Traceback" not in r.output


def test_demo_run_dir_records_origin(tmp_path):
    coder = SparseCoder(64, 128, "relu")
    coder.train_config = {"demo": {"model": "tiny-llama", "hook": HOOK, "context_size": 16}}
    coder.save(tmp_path / "sae" / "final")
    src = load(tmp_path / "sae").source
    assert src.path.name == "final"
    assert (src.model_name, src.hook_name, src.context_size) == ("tiny-llama", HOOK, 16)
    with pytest.raises(FileNotFoundError, match="holds no coder"):
        load(tmp_path)


def test_saelens_dir_with_translated_hook_and_empty_corpus(tmp_path, topk_coder):
    from sparsecodes.formats import save_saelens

    d = save_saelens(
        topk_coder, tmp_path / "sl", model_name="tiny-llama", hook_name="blocks.1.hook_resid_post"
    )
    src = load(d).source
    assert src.format == "saelens" and src.hook_name == HOOK
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    r = CliRunner().invoke(main, ["eval", str(d), "--corpus", str(empty)])
    assert r.exit_code != 0 and "is empty" in r.output
    short = tmp_path / "short.txt"
    short.write_text("hi")
    r = CliRunner().invoke(main, ["eval", str(d), "--corpus", str(short)])
    assert r.exit_code != 0 and "no token window" in r.output


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("corpus") / "held.txt"
    p.write_text(TEXT + "\n\n" + TEXT[::-1])
    return p


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("calib") / "calib.txt"
    p.write_text(" ".join(TEXT.split()[::-1]) * 2)
    return p


def test_cli_writes_saebench_keys_and_pngs(tmp_path, topk_coder, corpus_file):
    run = save_run(topk_coder, tmp_path / "run")
    out = tmp_path / "ev"
    r = CliRunner().invoke(
        main,
        ["eval", str(run), "--corpus", str(corpus_file), "--ce-tokens", "64", "--out", str(out)],
    )
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "eval.json").read_text())
    m = rep["eval_result_metrics"]
    for cat, keys in {
        "model_behavior_preservation": ["kl_div_score", "kl_div_with_ablation", "kl_div_with_sae"],
        "model_performance_preservation": [
            "ce_loss_score",
            "ce_loss_with_ablation",
            "ce_loss_with_sae",
            "ce_loss_without_sae",
            "ce_loss_score_with_error_term",
        ],
        "reconstruction_quality": ["explained_variance", "mse", "cossim", "fvu"],
        "shrinkage": ["l2_norm_in", "l2_norm_out", "l2_ratio"],
        "sparsity": ["l0", "l1"],
        "misc": ["frac_alive", "n_dead", "n_dense"],
        "token_stats": ["total_tokens_eval_reconstruction", "total_tokens_eval_sparsity_variance"],
    }.items():
        for k in keys:
            assert k in m[cat], (cat, k)
    perf = m["model_performance_preservation"]
    assert perf["ce_loss_score_with_error_term"] == 1.0
    assert perf["ce_loss_with_sae_and_error_term"] == perf["ce_loss_without_sae"]
    assert m["sparsity"]["l0"] == pytest.approx(6.0)
    assert 0 < m["token_stats"]["total_tokens_eval_reconstruction"] <= 64 + CTX
    assert sum(rep["feature_density"]["counts"]) + rep["feature_density"]["n_dead"] == 128
    assert (out / "feature_density.png").stat().st_size > 1000


def test_gap_table_one_row_per_method_at_matched_l0(tmp_path, lm, windows, topk_coder, calib_file):
    from sparsecodes.evaluation.core import collect_rows
    from sparsecodes.evaluation.corpus import calibration_texts, eval_windows
    from sparsecodes.evaluation.gap import calibrate_methods
    from sparsecodes.evaluation.report import plot_gap
    from sparsecodes.evaluation.run import GapSetup, evaluate

    calib = eval_windows(calibration_texts(str(calib_file)), lm.tokenizer, CTX, 256)
    assert not any(torch.equal(c.input_ids, w.input_ids) for c in calib for w in windows)
    x_cal = collect_rows(lm, HOOK, calib, 256)
    target, cals = calibrate_methods(
        topk_coder, ["fista", "mp", "omp"], x_cal, iters=30, l0_tolerance=0.1
    )
    rep = evaluate(
        topk_coder,
        lm,
        HOOK,
        windows,
        ce_tokens=48,
        gap=GapSetup(target, cals, x_cal.shape[0]),
        gap_tokens=256,
        l0_tolerance=0.1,
    )
    gap = rep["amortisation_gap"]
    labels = [r["method"] for r in gap["rows"]]
    assert labels == [
        "sae",
        "fista (cold)",
        "fista (warm)",
        "mp (cold)",
        "mp (warm)",
        "omp (cold)",
        "omp (warm)",
    ]
    target = gap["target_l0"]
    assert target == pytest.approx(6.0)
    perf = rep["eval_result_metrics"]["model_performance_preservation"]
    ce_zero, ce_clean = perf["ce_loss_with_ablation"], perf["ce_loss_without_sae"]
    for row in gap["rows"]:
        assert abs(row["calibration_l0"] - target) <= 0.1 * target + 1e-9, row
        assert abs(row["l0"] - target) <= 0.25 * target, row  # held-out, not tuned on
        assert row["flops_per_token"] > 0 and row["seconds_per_token"] > 0
        # each row's CE score is its own spliced CE on the SAEBench scale (zero ablation -> 0)
        want = (ce_zero - row["ce_loss_with_method"]) / (ce_zero - ce_clean)
        assert row["ce_loss_score"] == pytest.approx(want, rel=1e-9), row
    sae = gap["rows"][0]
    # the SAE row is the same encoder on the same tokens as the core metrics
    assert sae["ce_loss_with_method"] == perf["ce_loss_with_sae"]
    assert sae["ce_loss_score"] == pytest.approx(perf["ce_loss_score"], rel=1e-12)
    fvu = rep["eval_result_metrics"]["reconstruction_quality"]["fvu"]
    assert sae["fvu"] == pytest.approx(fvu, rel=1e-9)
    assert all(r["flops_per_token"] > sae["flops_per_token"] for r in gap["rows"][1:])
    # the verdict: the best iterative row within the L0 tolerance against the SAE's FVU
    tol = max(gap["l0_tolerance"], 0.1) * sae["l0"]
    matched = [r for r in gap["rows"][1:] if abs(r["l0"] - sae["l0"]) <= tol]
    best = min(matched, key=lambda r: r["fvu"])
    verdict = gap["verdict"]
    assert verdict["iterative_beats_encoder"] is (best["fvu"] < sae["fvu"])
    assert (verdict["best_method"], verdict["best_fvu"]) == (best["method"], best["fvu"])
    assert verdict["encoder_fvu"] == sae["fvu"]
    assert ("does NOT beat" in verdict["summary"]) != verdict["iterative_beats_encoder"]
    assert plot_gap(gap["rows"], tmp_path / "gap.png", "gap").stat().st_size > 1000


def test_gap_debias_variant_is_fista_with_refit():
    from conftest import sparse_problem
    from sparsecodes.evaluation.gap import Method, match_l0, measure, parse_methods

    assert parse_methods("fista+debias, omp") == ["fista+debias", "omp"]
    x, _, atoms = sparse_problem(32, 16, 3, 256, seed=4)
    x = x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    coder = SparseCoder(16, 32, "topk", k=3, seed=0)
    coder.set_dictionary(atoms)
    cal = match_l0(coder, "fista+debias", False, x, 3.0, iters=100, l0_tolerance=0.1)
    meth = cal.method
    assert meth.encoder == "fista" and meth.params["debias"] is True
    assert meth.label == "fista+debias (cold)"
    row = measure(coder, meth, x)
    plain = measure(coder, Method("fista", params={**meth.params, "debias": False}), x)
    assert row.encoder == "fista" and row.l0 <= plain.l0
    assert row.fvu < plain.fvu and row.flops_per_token > plain.flops_per_token


def test_collect_rows_at_reads_every_hook_at_the_same_tokens(lm, windows):
    """An MLP's input and output rows collected together are the same tokens: the MLP applied to
    each input row gives its output row; one hook alone gives the same rows as collect_rows."""
    from sparsecodes.evaluation.core import collect_rows, collect_rows_at

    hooks = ["blocks.0.mlp_in", "blocks.0.mlp_out"]
    rows = collect_rows_at(lm, hooks, windows, 100, batch_size=4)
    x, y = rows[hooks[0]], rows[hooks[1]]
    assert x.shape[0] == y.shape[0] == 100
    with torch.no_grad():
        mlp_y = lm.blocks[0].mlp(x)
    # float32 rounding of one MLP applied to a row instead of a batch of windows
    assert torch.allclose(mlp_y, y, atol=1e-5 * float(y.abs().max()))
    assert not torch.allclose(mlp_y[1:], y[:-1], atol=1e-3 * float(y.abs().max()))
    assert torch.equal(collect_rows(lm, hooks[1], windows, 100, batch_size=4), y)
