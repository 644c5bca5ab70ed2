"""The offline labelled sets and the bias_in_bios loader (on a local parquet in the hub's schema)."""

from __future__ import annotations

from collections import Counter

import pytest

from conftest import require
from sparsecodes.evaluation.datasets import (
    BIAS_IN_BIOS_PROFESSIONS,
    LabelledSet,
    language_id,
    load_bias_in_bios,
    profession_gender,
)


@pytest.mark.requires("faker")
def test_profession_gender_fills_every_cell_and_pronouns_agree():
    ds = profession_gender(7, professions=("professor", "nurse"), seed=1)
    cells = Counter(zip(ds.labels["profession"], ds.labels["gender"], strict=True))
    assert cells == {(p, g): 7 for p in ("professor", "nurse") for g in ("male", "female")}
    for text, prof, gender in zip(
        ds.texts, ds.labels["profession"], ds.labels["gender"], strict=True
    ):
        assert f" {prof}" in text
        assert (" He " in f" {text} ") == (gender == "male")
    assert profession_gender(7, professions=("professor", "nurse"), seed=1).texts == ds.texts
    assert profession_gender(7, professions=("professor", "nurse"), seed=2).texts != ds.texts


@pytest.mark.requires("faker")
def test_language_id_labels_match_the_locale_text():
    ds = language_id(5, seed=0)
    assert Counter(ds.labels["language"]) == {k: 5 for k in ("en", "fr", "de", "es", "nl")}
    assert len(set(ds.texts)) == 25


def test_labelled_set_rejects_a_label_column_of_the_wrong_length():
    with pytest.raises(ValueError, match="attribute 'y' has 1 labels for 2 texts"):
        LabelledSet("bad", ["a", "b"], {"y": ["1"]})


def test_bias_in_bios_loads_a_local_parquet_in_the_hub_schema(tmp_path):
    pa = require("pyarrow")
    pq = require("pyarrow.parquet")
    prof = BIAS_IN_BIOS_PROFESSIONS
    table = pa.table(
        {
            "hard_text": ["She teaches maths.", "He nurses.", "She draws.", "He lectures."],
            "profession": [prof["professor"], prof["nurse"], prof["painter"], prof["professor"]],
            "gender": [1, 0, 1, 0],
        }
    )
    pq.write_table(table, tmp_path / "train.parquet")
    ds = load_bias_in_bios(tmp_path, split="train")
    assert ds.texts == ["She teaches maths.", "He nurses.", "He lectures."]  # painter dropped
    assert ds.labels == {
        "profession": ["professor", "nurse", "professor"],
        "gender": ["female", "male", "male"],
    }
    pq.write_table(table.drop(["gender"]), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="lacks the bias_in_bios columns"):
        load_bias_in_bios(tmp_path / "bad.parquet")
