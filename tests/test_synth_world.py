"""``sparsecodes synth --world``: every amortised encoder on one world at matched L0."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
from click.testing import CliRunner

from sparsecodes import metrics
from sparsecodes.cli import main
from sparsecodes.encoders import available_encoders, get_encoder_class
from sparsecodes.encoders.relu import ReLUConfig, ReLUEncoder
from sparsecodes.experiments import worlds as study
from sparsecodes.worlds import FiringSpec, HierarchySpec, MagnitudeSpec, World, WorldConfig

TINY = WorldConfig(
    n_features=12,
    n_dims=8,
    firing=FiringSpec(l0=2.0, zipf_exponent=0.5, max_prob=0.4),
    magnitude=MagnitudeSpec(mean=1.0, std=0.1),
    hierarchy=HierarchySpec(n_roots=2, branching=2, depth=1),
    block_rows=256,
)
FAST = {"steps": 30, "batch_size": 64, "eval_rows": 256, "threads": 1}
CLI_FAST = [
    "--seeds",
    "1",
    "--steps",
    "30",
    "--batch-size",
    "64",
    "--eval-rows",
    "256",
    "--calib-trials",
    "3",
]


def _cli(tmp_path, *extra: str):
    args = ["synth", "--world", "paper", "--methods", "topk,relu", "-q", "--out", str(tmp_path)]
    return CliRunner().invoke(main, [*args, *CLI_FAST, *extra])


def test_cli_world_writes_json_table_and_plots(tmp_path):
    res = _cli(tmp_path, "--l0", "2,3")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["schema"] == study.SCHEMA and report["world"] == "paper"
    assert report["config"]["world_config"]["n_features"] == 16
    assert report["config"]["n_latents"] == 16  # default: the world's feature count
    cells = {(c["encoder"], c["target_l0"], c["seed"]): c for c in report["cells"]}
    assert set(cells) == {(e, t, 0) for e in ("topk", "relu") for t in (2.0, 3.0)}
    for (enc, target, _), c in cells.items():
        assert set(c["metrics"]) >= {
            "code_mcc", "dict_mcc", "precision", "recall", "f1", "absorption",
            "code_shrinkage", "norm_shrinkage", "recovery_rate", "uniqueness", "fvu", "l0",
        }  # fmt: skip
        assert c["metrics"]["absorption"] is None  # the paper world has no hierarchy
        if enc == "topk":  # a count knob is set to the target itself: exact L0
            assert c["knob"] == {**c["knob"], "field": "k", "kind": "count", "value": int(target)}
            assert c["metrics"]["l0"] == pytest.approx(target)
        else:
            assert c["knob"]["field"] == "l1" and 1 <= len(c["knob"]["trials"]) <= 3
    assert [r["code_mcc"] for r in report["paper"]["rows"]] == [0.57, 0.69]
    assert "Paper (" in res.output and "code MCC 0.57" in res.output
    assert (tmp_path / "mcc_vs_l0.png").stat().st_size > 1000
    assert not (tmp_path / "absorption_vs_l0.png").exists()  # nothing to plot without parents


def test_cli_world_refuses_study_only_options(tmp_path):
    res = _cli(tmp_path, "--n-dims", "4")
    assert res.exit_code != 0 and "--n-dims do not apply with --world" in res.output
    res = CliRunner().invoke(main, ["synth", "--l0", "3", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "only apply with --world" in res.output
    res = CliRunner().invoke(main, ["synth", "--world", "nowhere", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "unknown world 'nowhere'" in res.output


def test_resume_after_interrupt_trains_only_missing_cells(tmp_path, monkeypatch):
    real_train = study._train
    calls: list[str] = []

    def counting(world, encoder, params, **kw):
        calls.append(encoder)
        if len(calls) == 2 and kill["on"]:
            raise KeyboardInterrupt  # dies during the second cell
        return real_train(world, encoder, params, **kw)

    kill = {"on": True}
    monkeypatch.setattr(study, "_train", counting)
    with pytest.raises(KeyboardInterrupt):
        study.run_world("tiny", world=TINY, encoders=["topk"], targets=[1, 2], out=tmp_path, **FAST)
    first = json.loads((tmp_path / "results.json").read_text())["cells"]
    assert [(c["encoder"], c["target_l0"]) for c in first] == [("topk", 1.0)]

    kill["on"], calls[:] = False, []
    report = study.run_world(
        "tiny", world=TINY, encoders=["topk"], targets=[1, 2], out=tmp_path, **FAST
    )
    assert calls == ["topk"]  # only the cell the interrupt lost was trained
    assert [c["target_l0"] for c in report["cells"]] == [1.0, 2.0]
    assert report["cells"][0] == first[0]  # the stored cell was kept, not recomputed

    calls[:] = []
    study.run_world("tiny", world=TINY, encoders=["topk"], targets=[1, 2], out=tmp_path, **FAST)
    assert calls == []
    with pytest.raises(ValueError, match="differs in: steps"):
        study.run_world(
            "tiny",
            world=TINY,
            encoders=["topk"],
            targets=[1],
            out=tmp_path,
            **{**FAST, "steps": 31},
        )


def test_same_seed_same_numbers_other_seed_other_numbers():
    kw = {"world": TINY, "encoders": ["topk", "relu"], "targets": [2], **FAST}
    a = study.run_world("tiny", seeds=[0], **kw)["cells"]
    b = study.run_world("tiny", seeds=[0], **kw)["cells"]
    c = study.run_world("tiny", seeds=[1], **kw)["cells"]
    assert [x["metrics"] for x in a] == [x["metrics"] for x in b]
    assert [x["knob"] for x in a] == [x["knob"] for x in b]
    assert a[0]["metrics"]["code_mcc"] != c[0]["metrics"]["code_mcc"]


def test_penalty_search_keeps_trial_closest_on_training_rows(monkeypatch):
    evaluated = []
    real_eval = study.evaluate_coder
    monkeypatch.setattr(
        study, "evaluate_coder", lambda *a, **k: evaluated.append(1) or real_eval(*a, **k)
    )
    calib = study.Calibration(max_trials=4, rows=256, rtol=0.0)
    cell = study.run_world(
        "tiny", world=TINY, encoders=["relu"], targets=[2], calibration=calib, **FAST
    )["cells"][0]
    trials = cell["knob"]["trials"]
    assert len(trials) == 4  # rtol 0: never close enough, so the search runs out its budget
    assert len({t["value"] for t in trials}) == 4
    import math

    closest = min(trials, key=lambda t: abs(math.log(t["train_l0"] / 2)))
    assert cell["knob"]["value"] == closest["value"]
    assert cell["knob"]["train_l0"] == pytest.approx(closest["train_l0"])
    # larger penalty, fewer actives: the search moved the right way from the start value
    by_value = sorted(trials, key=lambda t: t["value"])
    assert by_value[0]["train_l0"] > by_value[-1]["train_l0"]
    assert evaluated == [1]  # the held-out stream is scored once, after the choice


def test_evaluate_coder_scores_the_test_stream_and_absorption():
    from sparsecodes import SparseCoder

    world = World(TINY)
    coder = SparseCoder(TINY.n_dims, TINY.n_features, "topk", seed=0, k=3)
    coder.set_dictionary(world.dictionary)
    m = study.evaluate_coder(coder, world, 300, batch_size=128)
    test = world.sample(300, stream="test")
    codes = coder.encode(test.x)
    assert m["code_mcc"] == pytest.approx(float(metrics.code_mcc(test.codes, codes)), abs=1e-6)
    assert m["dict_mcc"] == pytest.approx(1.0, abs=1e-6)  # the true atoms
    assert m["recovery_rate"] == 1.0
    assert m["l0"] == pytest.approx(float(metrics.l0(codes)))
    ab = metrics.absorption(
        test.codes, codes, world.parent_children(), true_atoms=world.dictionary, atoms=coder
    )
    assert m["absorption"] == pytest.approx(ab.mean)


@dataclass
class _CloneConfig(ReLUConfig):
    sparsity_coef: float = 0.05


class _CloneEncoder(ReLUEncoder):
    name: ClassVar[str] = "relu_clone_for_test"
    config_cls = _CloneConfig


def test_encoders_registered_later_are_picked_up(monkeypatch):
    names = [*available_encoders(), _CloneEncoder.name]

    def classes(name):
        return _CloneEncoder if name == _CloneEncoder.name else get_encoder_class(name)

    monkeypatch.setattr(
        study,
        "available_encoders",
        lambda kind=None: [n for n in names if kind is None or classes(n).kind == kind],
    )
    monkeypatch.setattr(study, "get_encoder_class", classes)
    assert _CloneEncoder.name in study.amortised_encoders()
    # no declared knob: found by its field name, starting at its default
    assert study.sparsity_knob(_CloneEncoder.name) == study.SparsityKnob(
        "l1", "penalty", 0.001
    )  # "l1" comes before "sparsity_coef" in PENALTY_FIELDS
    assert study.sparsity_knob("topk") == study.SparsityKnob("k", "count")


def test_table_flags_cells_whose_l0_was_not_matched():
    cell = {"encoder": "relu", "target_l0": 4.0, "seed": 0, "knob": {"train_l0": 9.0},
            "matched": False, "metrics": {"code_mcc": 0.5, "l0": 9.0}}  # fmt: skip
    rows = study.summarise([cell, {**cell, "seed": 1, "matched": True}])
    assert rows[0]["matched"] is False  # one unmatched seed taints the row
    table = study.format_table({"summary": rows, "paper": None})
    assert table.splitlines()[2].endswith("(L0 not matched)")


def test_every_amortised_encoder_has_a_sparsity_knob():
    missing = [
        e
        for e in study.amortised_encoders()
        if study.sparsity_knob(e) is None and e not in study.NO_KNOB
    ]
    assert missing == [], f"declare a SparsityKnob for {missing} in experiments/worlds.py"
