"""`sparsecodes bench`: several SAEs, resumable per (SAE, metric), combined JSON, table, page.

Fast: two small SAEs on the random tiny llama, with the cheap metrics at small sizes.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from click.testing import CliRunner

from sparsecodes.cli import main
from sparsecodes.data import token_windows
from sparsecodes.evaluation import suite
from sparsecodes.evaluation.corpus import heldout_texts
from sparsecodes.evaluation.suite import BenchConfig, bench_html, run_bench, sae_labels
from sparsecodes.models import load_model
from sparsecodes.sparse_coder import SparseCoder

HOOK = "blocks.1.resid_post"
CTX = 32
SMALL = {
    "core_tokens": 128,
    "ce_tokens": 48,
    "gap_methods": ("omp",),
    "gap_tokens": 64,
    "calib_tokens": 64,
}


@pytest.fixture(scope="module")
def sae_dirs(tmp_path_factory):
    lm = load_model("tiny-llama", device="cpu")
    ws = list(token_windows(heldout_texts()[:4], lm.tokenizer, CTX))[:8]
    ids = torch.stack([w.input_ids for w in ws])
    x = lm.run(ids, hooks=[HOOK])[HOOK][torch.stack([w.keep for w in ws])]
    root = tmp_path_factory.mktemp("saes")
    dirs = []
    for name, enc, params in (("topk", "topk", {"k": 4}), ("relu", "relu", {"l1": 1e-3})):
        coder = SparseCoder(64, 96, enc, seed=0, **params).fit(x, steps=20, batch_size=64)
        coder.train_config = {
            **coder.train_config,
            "source": {"model_name": "tiny-llama", "hook_name": HOOK, "context_size": CTX},
        }
        coder.save(root / name / "final")
        dirs.append(str(root / name / "final"))
    return tuple(dirs)


def _counting(monkeypatch, calls: Counter):
    for name in ("core", "gap"):
        fn = suite.METRICS[name]

        def wrapped(ctx, fn=fn, name=name):
            calls[ctx.target.label, name] += 1
            return fn(ctx)

        monkeypatch.setitem(suite.METRICS, name, wrapped)


def test_bench_resumes_per_sae_and_metric(tmp_path, sae_dirs, monkeypatch):
    """Interrupted after the first (SAE, metric), a rerun computes only the other three; a third
    run computes none; the combined JSON holds each file's eval_result_metrics."""
    cfg = BenchConfig(
        sae_dirs, metrics=("core", "gap"), out=str(tmp_path / "b"), device="cpu", **SMALL
    )
    calls: Counter = Counter()
    _counting(monkeypatch, calls)

    def stop(label, metric, result):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_bench(cfg, on_result=stop)
    assert calls == Counter({("topk", "core"): 1})
    first = json.loads((tmp_path / "b" / "topk" / "core.json").read_text())
    assert not (tmp_path / "b" / "topk" / "gap.json").exists()

    combined = run_bench(cfg)
    assert calls == Counter(
        {("topk", "core"): 1, ("topk", "gap"): 1, ("relu", "core"): 1, ("relu", "gap"): 1}
    )
    import sparsecodes.models

    def no_model(*args, **kwargs):
        raise AssertionError("nothing to compute, so no model is loaded")

    monkeypatch.setattr(sparsecodes.models, "load_model", no_model)
    run_bench(cfg)
    assert sum(calls.values()) == 4
    again = json.loads((tmp_path / "b" / "topk" / "core.json").read_text())
    assert again == first  # not rewritten
    saes = combined["saes"]
    assert list(saes) == ["topk", "relu"]
    for label in saes:
        for metric in ("core", "gap"):
            stored = json.loads((tmp_path / "b" / label / f"{metric}.json").read_text())
            assert saes[label]["eval_result_metrics"][metric] == stored["eval_result_metrics"]
    core = saes["topk"]["eval_result_metrics"]["core"]
    assert core["sparsity"]["l0"] <= 4.0 + 1e-6  # TopK k = 4
    table = combined["headline"]
    assert table["rows"]["topk"][table["columns"].index("FVU")] == pytest.approx(
        core["reconstruction_quality"]["fvu"]
    )
    assert table["rows"]["relu"][table["columns"].index("CE-loss score")] == pytest.approx(
        saes["relu"]["eval_result_metrics"]["core"]["model_performance_preservation"][
            "ce_loss_score"
        ]
    )
    assert (tmp_path / "b" / "bench.png").stat().st_size > 1000
    md = (tmp_path / "b" / "bench.md").read_text()
    assert md.splitlines()[2].startswith("| topk |")


def test_bench_redoes_a_metric_whose_options_changed(tmp_path, sae_dirs, monkeypatch):
    """A finished file made with other cost options is recomputed, the rest kept."""
    cfg = BenchConfig(
        sae_dirs[:1], metrics=("core", "gap"), out=str(tmp_path / "b"), device="cpu", **SMALL
    )
    calls: Counter = Counter()
    _counting(monkeypatch, calls)
    run_bench(cfg)
    cfg.ce_tokens = 32
    out = run_bench(cfg)
    assert calls == Counter({("topk", "core"): 2, ("topk", "gap"): 1})
    stored = json.loads((tmp_path / "b" / "topk" / "core.json").read_text())
    assert stored["bench_options"]["ce_tokens"] == 32
    assert out["saes"]["topk"]["eval_result_metrics"]["core"] == stored["eval_result_metrics"]


def test_bench_page_escapes_every_value():
    """Labels, paths and model names reach the page only escaped (no markup of their own)."""
    evil = '<script>alert(1)</script>"'
    combined = {
        "saes": {
            evil: {
                "sae": {
                    "path": evil,
                    "encoder": "topk",
                    "n_latents": 8,
                    "model": evil,
                    "hook": "blocks.0.resid_post",
                },
                "eval_result_metrics": {"core": {"sparsity": {"l0": 3.0}}},
            }
        },
    }
    combined["headline"] = suite.headline_table(combined)
    page = bench_html(combined)
    assert "<script" not in page
    # label, path and model, each in the row tooltip and in the list
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 6
    assert "&quot;" in page
    assert "<td>3.000</td>" in page


def test_labels_name_runs_and_stay_unique(tmp_path):
    paths = [tmp_path / "a" / "final", tmp_path / "b" / "final_saelens", tmp_path / "x" / "a"]
    assert sae_labels([str(p) for p in paths]) == ["a", "b", "a-2"]


def test_cli_bench_writes_table_and_refuses_scorer_without_autointerp(tmp_path, sae_dirs):
    out = tmp_path / "cli"
    args = ["bench", *sae_dirs, "--metrics", "core", "--core-tokens", "128", "--ce-tokens", "0"]
    r = CliRunner().invoke(main, [*args, "--device", "cpu", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "| topk |" in r.output and "| relu |" in r.output
    page = (out / "bench.html").read_text()
    assert page.count("<tr><th title=") == 2
    r = CliRunner().invoke(main, [*args, "--autointerp-scorer", "embedding"])
    assert r.exit_code == 2 and "add autointerp to --metrics" in r.output
    r = CliRunner().invoke(main, ["bench", *sae_dirs, "--metrics", "core,nope"])
    assert r.exit_code == 2 and "unknown metric" in r.output


def test_autointerp_runs_only_when_asked():
    assert "autointerp" not in BenchConfig(("x",)).metrics
    assert "autointerp" in suite.ALL_METRICS


class _FakeChat:
    """Explains every latent as "the letter e" and answers yes to every detection excerpt."""

    @classmethod
    def from_adapter(cls, adapter, **kwargs):
        return cls()

    def describe(self) -> str:
        return "fake local explainer"

    def complete(self, messages) -> str:
        if "Explanation:" in messages[0]["content"]:
            return "Explanation: the letter e"
        return "yes"


def test_bench_autointerp_names_its_explainer(tmp_path, sae_dirs, monkeypatch):
    """Without an endpoint the local explainer is used and named in the JSON; detection that
    says yes to everything scores exactly chance (0.5)."""
    import sparsecodes.autointerp as ai

    monkeypatch.setattr(ai, "LocalChatBackend", _FakeChat)
    cfg = BenchConfig(
        sae_dirs[:1],
        metrics=("autointerp",),
        out=str(tmp_path / "b"),
        device="cpu",
        autointerp_scorers=("detection",),
        autointerp_latents=8,
        autointerp_windows=64,
        local_model="tiny-llama",
    )
    out = run_bench(cfg)
    m = out["saes"]["topk"]["eval_result_metrics"]["autointerp"]["autointerp"]
    assert m["explainer"] == "fake local explainer"
    stored = json.loads((tmp_path / "b" / "topk" / "autointerp.json").read_text())
    assert stored["eval_config"]["explainer"] == "fake local explainer"
    assert m["detection_n_ok"] >= 1
    assert m["autointerp_score"] == pytest.approx(0.5)


def _counting_model(monkeypatch, calls: Counter):
    """``load_model`` whose adapters count their clean full passes (``logits``) and their passes
    up to a hook (``run``)."""
    import sparsecodes.models

    def load(*args, **kwargs):
        lm = load_model(*args, **kwargs)  # the real one, imported before any patch
        for name in ("logits", "run"):
            fn = getattr(lm, name)

            def counted(*a, fn=fn, name=name, **kw):
                calls[name] += 1
                return fn(*a, **kw)

            setattr(lm, name, counted)
        return lm

    monkeypatch.setattr(sparsecodes.models, "load_model", load)


@pytest.mark.requires("faker")
def test_bench_runs_the_model_passes_once_for_all_saes(tmp_path, sae_dirs, monkeypatch):
    """Two SAEs of one model and hook in one run make the SAE-independent model passes (clean
    CE/KL pass, calibration rows, biography activations for SCR and TPP) once, and get exactly
    the figures each SAE gets in a run of its own."""
    metrics = ("core", "gap", "scr", "tpp")
    small = {**SMALL, "scr_per_cell": 4}
    alone: dict[str, Counter] = {}
    results = {}
    for i, label in enumerate(("topk", "relu")):
        alone[label] = Counter()
        _counting_model(monkeypatch, alone[label])
        cfg = BenchConfig(
            sae_dirs[i : i + 1], metrics, out=str(tmp_path / label), device="cpu", **small
        )
        results[label] = run_bench(cfg)["saes"][label]["eval_result_metrics"]
    both: Counter = Counter()
    _counting_model(monkeypatch, both)
    cfg = BenchConfig(sae_dirs, metrics, out=str(tmp_path / "both"), device="cpu", **small)
    shared = run_bench(cfg)["saes"]
    for label in ("topk", "relu"):
        assert shared[label]["eval_result_metrics"] == results[label]
    # the clean full passes: one SAE's worth, not two
    assert alone["topk"]["logits"] == alone["relu"]["logits"] > 0
    assert both["logits"] == alone["topk"]["logits"]
    # passes up to the hook (reconstruction windows, calibration rows, the biographies read
    # once for SCR and TPP): the second SAE makes none of its own
    assert alone["topk"]["run"] == alone["relu"]["run"] > 0
    assert both["run"] == alone["topk"]["run"]


def test_browser_index_links_the_bench_that_evaluated_its_sae(tmp_path):
    """bench_label finds a run's SAE whether bench got the run or its final/; the index page
    links the page (escaped); browse --bench refuses a bench that did not evaluate the SAE."""
    from sparsecodes.evaluation.suite import bench_label
    from sparsecodes.interp.site import write_shell

    run = tmp_path / "runs" / "topk"
    (run / "final").mkdir(parents=True)
    other = tmp_path / "runs" / "relu"
    other.mkdir()
    bench = tmp_path / "b&b"
    bench.mkdir()
    saes = {"topk": {"sae": {"path": str(run / "final")}}}
    (bench / "bench.json").write_text(json.dumps({"saes": saes}))
    (bench / "bench.html").write_text("<html></html>")
    assert bench_label(bench, run) == "topk"
    assert bench_label(bench, run / "final") == "topk"
    with pytest.raises(ValueError, match="did not evaluate"):
        bench_label(bench, other)
    with pytest.raises(ValueError, match=r"no bench\.json"):
        bench_label(tmp_path, run)
    write_shell(tmp_path / "site", "t", "blocks.0.resid_post", bench="../b&b/bench.html")
    index = (tmp_path / "site" / "index.html").read_text()
    assert '<a href="../b&amp;b/bench.html" id="bench-link">' in index
    write_shell(tmp_path / "site2", "t", "blocks.0.resid_post")
    assert "bench-link" not in (tmp_path / "site2" / "index.html").read_text()
    r = CliRunner().invoke(main, ["browse", str(other), "--bench", str(bench)])
    assert r.exit_code == 2 and "did not evaluate" in r.output, r.output


@pytest.mark.requires_model("minilm-l6")
def test_bench_autointerp_top_tokens_needs_no_chat_model(tmp_path, sae_dirs, monkeypatch):
    """--autointerp-explainer top-tokens with the embedding scorer builds no chat backend; each
    latent's explanation names its top contexts' most frequent active tokens, and the result
    says so."""
    import sparsecodes.autointerp as ai

    def no_chat(*args, **kwargs):
        raise AssertionError("no chat model is needed")

    monkeypatch.setattr(ai, "LocalChatBackend", no_chat)
    cfg = BenchConfig(
        sae_dirs[:1],
        metrics=("autointerp",),
        out=str(tmp_path / "b"),
        device="cpu",
        autointerp_latents=8,
        autointerp_windows=32,
        autointerp_explainer="top-tokens",
    )
    out = run_bench(cfg)
    m = out["saes"]["topk"]["eval_result_metrics"]["autointerp"]["autointerp"]
    assert m["explainer"] == suite.TOP_TOKENS_EXPLAINER
    stored = json.loads((tmp_path / "b" / "topk" / "autointerp.json").read_text())
    latents = stored["eval_result_unstructured"]["latents"]
    assert latents and all(r["explanation"].startswith('the tokens "') for r in latents.values())
    assert m["embedding_n_ok"] >= 1
