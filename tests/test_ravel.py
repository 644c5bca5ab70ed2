"""RAVEL-style cause and isolation scores on constructed entities with a known answer.

Entities carry two independent attributes: ``A`` (4 values, axes 0-3) and ``B`` (3 values, axes
4-6); an entity's activation is ``e_A + e_B``, and the "model" answers an attribute by the
largest coordinate among that attribute's axes. A coder with one latent per axis ("planted")
moves exactly one attribute when that attribute's latents are patched: cause 1, isolation 1. A
coder with one latent per entity kind (``A`` and ``B`` together) moves both: cause 1,
isolation 0.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from sparsecodes.evaluation.ravel import Entities, attribute_latents, ravel_scores
from sparsecodes.sparse_coder import SparseCoder

D = 8
A_VALUES, B_VALUES = ["a0", "a1", "a2", "a3"], ["b0", "b1", "b2"]


def entities(copies: int = 3):
    names, a, b, rows = [], [], [], []
    for (i, va), (j, vb) in itertools.product(enumerate(A_VALUES), enumerate(B_VALUES)):
        for c in range(copies):
            x = torch.zeros(D)
            x[i] = 1.0
            x[4 + j] = 1.0
            names.append(f"{va}{vb}#{c}")
            a.append(va)
            b.append(vb)
            rows.append(x)
    return torch.stack(rows), Entities(names, {"A": a, "B": b})


def predict(attr, patched, _base):
    axes, values = ((0, 4), A_VALUES) if attr == "A" else ((4, 7), B_VALUES)
    return [values[int(i)] for i in patched[:, axes[0] : axes[1]].argmax(1)]


class KindCoder:
    """One latent per (A, B) combination: code 1 on it, atom ``e_A + e_B``."""

    def __init__(self) -> None:
        self.combos = list(itertools.product(range(4), range(3)))
        self.W_dec = torch.zeros(len(self.combos), D)
        for n, (i, j) in enumerate(self.combos):
            self.W_dec[n, i] = self.W_dec[n, 4 + j] = 1.0
        self.n_latents = len(self.combos)

    def encode(self, x):
        return (x @ self.W_dec.T >= 2.0 - 1e-6).float()

    def decode(self, z):
        return z @ self.W_dec


def test_planted_attribute_latents_give_full_cause_and_isolation():
    acts, ents = entities()
    coder = SparseCoder(D, D, "relu")
    coder.set_dictionary(torch.eye(D))  # codes relu(x): one latent per axis
    chosen = attribute_latents(coder.encode(acts), ents.attributes, k=4)
    assert sorted(chosen["A"].tolist()) == [0, 1, 2, 3]
    assert sorted(chosen["B"].tolist()) == [4, 5, 6]
    s = ravel_scores(acts, ents, coder, predict, k=4, n_pairs=300, seed=0)
    assert s["cause_score"] == 1.0
    assert s["isolation_score"] == 1.0
    assert s["disentanglement_score"] == 1.0


def test_entangled_latents_have_cause_but_no_isolation():
    acts, ents = entities()
    coder = KindCoder()
    every = torch.arange(coder.n_latents)
    s = ravel_scores(
        acts, ents, coder, predict, latents={"A": every, "B": every}, n_pairs=300, seed=0
    )
    # patching every latent swaps in the whole source entity: the asked attribute always moves
    # to the source's value (cause 1) and the other one always leaves the base's (isolation 0)
    assert s["cause_score"] == 1.0
    assert s["isolation_score"] == 0.0
    assert s["disentanglement_score"] == pytest.approx(0.5)


def test_patching_no_latent_changes_nothing():
    acts, ents = entities()
    coder = SparseCoder(D, D, "relu")
    coder.set_dictionary(torch.eye(D))
    none = torch.zeros(0, dtype=torch.long)
    s = ravel_scores(acts, ents, coder, predict, latents={"A": none, "B": none}, seed=0)
    assert s["cause_score"] == 0.0 and s["isolation_score"] == 1.0
