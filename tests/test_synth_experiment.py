"""The synthetic study (sparsecodes.experiments.synth) and the `synth` / `demo` commands."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from sparsecodes.cli import main
from sparsecodes.experiments import synth as study
from sparsecodes.synthetic import make_train_test

TINY = {"n_latents": 8, "n_dims": 4, "k": 2, "n_train": 64, "n_test": 64, "batch_size": 32}
ROW_KEYS = {
    "setting",
    "method",
    "seed",
    "code_mcc",
    "dict_mcc",
    "fvu",
    "l0",
    "train_flops",
    "infer_flops",
    "total_flops",
    "seconds",
    "curve",
    "config",
}


def _available(*methods):
    return [m for m in methods if study.method_available(m)[0]]


def test_tiny_run_writes_json_and_pngs(tmp_path):
    methods = _available("sae", "fista", "sae+fista")
    assert "sae" in methods
    rep = study.run(study.SETTINGS, methods, 1, steps=6, curve_points=3, out=tmp_path, **TINY)
    assert len(rep["results"]) == 3 * len(methods)
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data) >= {"config", "results", "summary", "skipped", "environment", "files"}
    for row in data["results"]:
        assert set(row) >= ROW_KEYS
        assert 0.0 <= row["code_mcc"] <= 1.0 + 1e-9
        assert 0.0 <= row["dict_mcc"] <= 1.0 + 1e-9
        assert row["config"]["data"]["n_latents"] == 8
        assert row["infer_flops"] > 0
    for setting in study.SETTINGS:
        for kind in ("mcc_vs_flops", "mcc_vs_steps"):
            png = tmp_path / f"{setting}_{kind}.png"
            assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    by = {(r["setting"], r["method"]): r for r in data["results"]}
    # trained encoders log a curve point every steps // curve_points = 2 steps
    assert [p["step"] for p in by[("unknown", "sae")]["curve"]] == [2, 4, 6]
    # the true dictionary is used as given in the known-dictionary setting
    assert by[("known_dictionary", "sae")]["dict_mcc"] == pytest.approx(1.0)
    assert by[("known_dictionary", "sae")]["train_flops"] > 0
    if "fista" in methods:
        # iterative inference on a known dictionary trains nothing
        assert by[("known_dictionary", "fista")]["train_flops"] == 0
        assert by[("known_dictionary", "fista")]["config"]["trained"] is False


def test_deterministic_given_seed():
    kw = {**TINY, "steps": 5, "curve_points": 0}
    a = study.run(["unknown"], ["sae"], [3], **kw)["results"][0]
    b = study.run(["unknown"], ["sae"], [3], **kw)["results"][0]
    c = study.run(["unknown"], ["sae"], [4], **kw)["results"][0]
    for key in ("code_mcc", "dict_mcc", "fvu", "l0"):
        assert a[key] == b[key]
    assert a["code_mcc"] != c["code_mcc"]


@pytest.mark.skipif(not study.method_available("fista")[0], reason="fista not registered")
def test_iterative_inference_on_true_dictionary_beats_untrained_sae():
    # FISTA on the true dictionary solves the noiseless problem; an SAE after 1 step cannot.
    train, test = make_train_test(256, 256, seed=0)
    fista = study.run_one("known_dictionary", "fista", train, test, curve_points=0)
    sae = study.run_one("known_dictionary", "sae", train, test, steps=1, curve_points=0)
    assert fista["code_mcc"] > 0.9
    assert fista["code_mcc"] > sae["code_mcc"]
    assert fista["fvu"] < 0.01


def test_unavailable_methods_are_skipped(monkeypatch):
    monkeypatch.setattr(study, "available_encoders", lambda kind=None: ["relu"])
    rep = study.run(["unknown"], ["sae", "mlp"], 1, steps=2, curve_points=0, **TINY)
    assert [r["method"] for r in rep["results"]] == ["sae"]
    assert rep["skipped"][0]["method"] == "mlp"


def test_bad_arguments():
    with pytest.raises(ValueError, match="setting"):
        study.run(["nope"], ["sae"], 1, **TINY)
    with pytest.raises(ValueError, match="method"):
        study.run(["unknown"], ["nope"], 1, **TINY)
    with pytest.raises(ValueError, match="relu"):
        study.encoder_params("relu", 3, {"not_a_field": 1})
    assert study.encoder_params("relu", 3, {"l1": 0.5}) == {"l1": 0.5}


def test_summary_and_table():
    rows = [
        {"setting": "unknown", "method": "sae", **dict.fromkeys(study.SUMMARY_KEYS, v)}
        for v in (1.0, 3.0)
    ]
    (s,) = study.summarise(rows)
    assert s["code_mcc"] == 2.0 and s["code_mcc_std"] == 1.0 and s["n_seeds"] == 2
    table = study.format_table([s])
    assert "unknown" in table and "2.000" in table


def test_cli_synth_runs_tiny(tmp_path):
    out = tmp_path / "res"
    args = [
        "synth",
        "--setting", "known_dictionary,unknown",
        "--methods", "sae",
        "--seeds", "1", "-N", "8", "-M", "4", "-K", "2",
        "--n-train", "64", "--n-test", "64", "--steps", "4", "--batch-size", "32",
        "--curve-points", "2", "--param", "relu.l1=0.05", "--out", str(out), "-q",
    ]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "code MCC" in res.output and "results.json" in res.output
    data = json.loads((out / "results.json").read_text())
    assert {r["setting"] for r in data["results"]} == {"known_dictionary", "unknown"}
    assert data["results"][0]["config"]["encoder_params"] == {"l1": 0.05}
    assert (out / "unknown_mcc_vs_flops.png").is_file()


def test_cli_synth_errors_and_help():
    runner = CliRunner()
    assert "known_dictionary" in runner.invoke(main, ["synth", "--help"]).output
    res = runner.invoke(main, ["synth", "--setting", "bogus"])
    assert res.exit_code != 0 and "bogus" in res.output
    res = runner.invoke(main, ["synth", "-N", "4", "-K", "5"])
    assert res.exit_code != 0 and "--k" in res.output
    res = runner.invoke(main, ["synth", "--param", "l1=3"])
    assert res.exit_code != 0 and "ENCODER.FIELD=VALUE" in res.output


def test_cli_demo_tiny(tmp_path):
    res = CliRunner().invoke(
        main, ["demo", "--synthetic", "--out", str(tmp_path / "d"), "--seeds", "1", "--steps", "3"]
    )
    assert res.exit_code == 0, res.output
    assert "known_dictionary" in res.output and (tmp_path / "d" / "results.json").is_file()
