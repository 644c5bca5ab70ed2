"""Sparse probing, SCR and TPP where the answer is known by construction.

The coders are real ReLU ``SparseCoder`` s whose atoms are ``+b`` and ``-b`` for each vector
``b`` of an orthonormal basis: with the encoder initialised from the atoms (``W_enc = W_dec.T``)
the codes are ``relu(x . b)``, ``relu(-x . b)`` and the reconstruction is exact. With the
coordinate basis each attribute direction has its own two latents ("planted"); with the basis
rotated by 45 degrees in the plane of two attributes, every latent there mixes both ("mixed").
"""

from __future__ import annotations

import math

import pytest
import torch

from sparsecodes.evaluation.probing import sparse_probing, sparse_probing_scores
from sparsecodes.evaluation.scr_tpp import ablate, scr_scores, tpp_scores
from sparsecodes.sparse_coder import SparseCoder

D = 12


def signed_basis_coder(basis: torch.Tensor) -> SparseCoder:
    """ReLU coder with atoms ``[basis; -basis]`` (rows of ``basis`` orthonormal)."""
    coder = SparseCoder(D, 2 * D, "relu")
    coder.set_dictionary(torch.cat([basis, -basis]))
    return coder


def rotated(i: int, j: int) -> torch.Tensor:
    basis = torch.eye(D)
    c = 1 / math.sqrt(2)
    basis[i, [i, j]] = torch.tensor([c, c])
    basis[j, [i, j]] = torch.tensor([c, -c])
    return basis


def test_signed_basis_coder_reconstructs_and_ablation_removes_a_direction():
    x = torch.randn(50, D, generator=torch.Generator().manual_seed(0))
    coder = signed_basis_coder(torch.eye(D))
    codes = coder.encode(x)
    assert torch.allclose(coder.decode(codes), x, atol=1e-5)
    out = ablate(x, codes, coder, torch.tensor([0, D]))  # +e0 and -e0
    assert torch.allclose(out[:, 0], torch.zeros(50), atol=1e-5)
    assert torch.allclose(out[:, 1:], x[:, 1:], atol=1e-5)


# ------------------------------------------------------------------ sparse probing
def labelled_codes(planted: bool, n: int = 300, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = [("x", "y", "z")[i % 3] for i in range(n)]
    codes = torch.rand(n, 40, generator=g) * (torch.rand(n, 40, generator=g) < 0.3)
    if planted:
        codes[:, 10:13] = 0.0
        for i, lab in enumerate(labels):
            codes[i, 10 + "xyz".index(lab)] = 1.0 + torch.rand(1, generator=g).item()
    acts = torch.randn(n, 8, generator=g)
    return acts, codes, labels


def test_sparse_probing_is_perfect_for_a_planted_label_latent():
    acts, codes, labels = labelled_codes(planted=True)
    s = sparse_probing_scores(acts, codes, labels, ks=(1, 2), seed=1)
    assert s["sae_top_1_test_accuracy"] == 1.0
    assert s["sae_top_2_test_accuracy"] == 1.0
    # the activations are pure noise: their probe is near chance
    assert abs(s["llm_test_accuracy"] - 0.5) < 0.15


def test_sparse_probing_is_near_chance_without_a_label_latent():
    acts, codes, labels = labelled_codes(planted=False)
    s = sparse_probing_scores(acts, codes, labels, ks=(1,), seed=1)
    assert abs(s["sae_top_1_test_accuracy"] - 0.5) < 0.15


def test_sparse_probing_on_a_model_separates_texts_that_differ():
    from sparsecodes.evaluation.datasets import LabelledSet
    from sparsecodes.models import load_model

    lm = load_model("tiny-llama", device="cpu")
    texts = [f"zzzz qq {i}" for i in range(20)] + [f"aaaa bb {i}" for i in range(20)]
    ds = LabelledSet("toy", texts, {"kind": ["z"] * 20 + ["a"] * 20})
    coder = SparseCoder(lm.d_model, 128, "topk", k=8)
    out = sparse_probing(coder, lm, "blocks.0.resid_post", [ds], ks=(1, 2), seed=0)
    assert out["eval_type_id"] == "sparse_probing"
    assert out["eval_result_metrics"]["llm"]["llm_test_accuracy"] == 1.0
    assert out["eval_result_details"][0]["dataset_name"] == "toy"
    assert set(out["eval_result_metrics"]["sae"]) == {
        "sae_test_accuracy",
        "sae_top_1_test_accuracy",
        "sae_top_2_test_accuracy",
    }


# ------------------------------------------------------------------ SCR
def two_attribute_data(n_per_cell: int = 150, seed: int = 0):
    """Axis 0: profession (+1 professor, -1 nurse); axis 1: gender (+2 male, -2 female), so the
    biased probe (male professors vs female nurses) leans on gender; noise 0.6 elsewhere too."""
    g = torch.Generator().manual_seed(seed)
    rows, prof, gender = [], [], []
    for p, sp in (("professor", 1.0), ("nurse", -1.0)):
        for s, sg in (("male", 2.0), ("female", -2.0)):
            x = 0.6 * torch.randn(n_per_cell, D, generator=g)
            x[:, 0] += sp
            x[:, 1] += sg
            rows.append(x)
            prof += [p] * n_per_cell
            gender += [s] * n_per_cell
    return torch.cat(rows), prof, gender


def run_scr(basis: torch.Tensor):
    acts, prof, gender = two_attribute_data()
    coder = signed_basis_coder(basis)
    return scr_scores(
        acts,
        coder.encode(acts),
        coder,
        prof,
        gender,
        first_pair=("professor", "nurse"),
        second_pair=("male", "female"),
        thresholds=(2,),
        test_fraction=0.3,
        seed=0,
    )


def test_scr_removes_a_planted_spurious_gender_latent():
    s = run_scr(torch.eye(D))
    # the biased probe learnt gender: poor on the profession task, good on gender
    assert s["biased_probe_first_accuracy"] < 0.8 < s["biased_probe_second_accuracy"]
    assert s["clean_first_accuracy"] > 0.9
    # ablating the two gender latents restores most of the profession accuracy
    assert s["scr_dir1_threshold_2"] > 0.8
    assert s["scr_metric_threshold_2"] == s["scr_dir1_threshold_2"]
    # dir2 divides by clean - original on the gender task, here about 0.01: the metric takes dir1
    assert s["biased_probe_second_accuracy"] > 0.95


def test_scr_is_low_when_gender_and_profession_share_latents():
    s = run_scr(rotated(0, 1))
    assert s["scr_dir1_threshold_2"] < 0.3


# ------------------------------------------------------------------ TPP
def three_class_data(n_per_class: int = 120, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rows, labels = [], []
    for c in range(3):
        x = 0.3 * torch.randn(n_per_class, D, generator=g)
        x[:, c] += 2.0
        rows.append(x)
        labels += [f"c{c}"] * n_per_class
    return torch.cat(rows), labels


def run_tpp(basis: torch.Tensor):
    acts, labels = three_class_data()
    coder = signed_basis_coder(basis)
    return tpp_scores(acts, coder.encode(acts), coder, labels, thresholds=(1,), seed=0)


def test_tpp_ablating_a_class_latent_hurts_only_its_probe():
    s = run_tpp(torch.eye(D))
    # the class's probe falls to about chance, the others lose a few rows (class-c negatives
    # now sit at the origin, near their decision boundaries)
    assert s["tpp_threshold_1_intended_diff_only"] > 0.4
    assert s["tpp_threshold_1_unintended_diff_only"] < 0.06
    assert s["tpp_threshold_1_total_metric"] == pytest.approx(
        s["tpp_threshold_1_intended_diff_only"] - s["tpp_threshold_1_unintended_diff_only"]
    )


def test_tpp_is_lower_when_classes_share_latents():
    s = run_tpp(rotated(0, 1))
    # one latent no longer carries class c0: ablating it leaves most of c0's probe intact
    assert s["per_class"]["c0"]["tpp_threshold_1_intended_diff_only"] < 0.3
    planted = run_tpp(torch.eye(D))
    assert s["tpp_threshold_1_total_metric"] < planted["tpp_threshold_1_total_metric"] - 0.1
