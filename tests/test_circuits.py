"""Tests for circuit discovery from discrete sparse codes (synthetic activations and tiny-llama)."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch
from sklearn.metrics import f1_score

from sparsecodes.circuits import (
    SILENT,
    discretise,
    edge_counts,
    forward_pairs,
    node_counts,
    precision_recall_f1,
    roc_auc,
    score_heads,
    select_circuit,
)
from sparsecodes.circuits.codes import fit_head_coder
from sparsecodes.encoders import available_encoders

L, H, D = 5, 4, 12
CIRCUIT = {(1, 2), (2, 0), (3, 3), (4, 1)}


def planted(n: int = 16, seed: int = 0, strength: float = 8.0):
    """Head outputs where the CIRCUIT heads add a positive-only direction of random size."""
    g = torch.Generator().manual_seed(seed)
    pos, neg = {}, {}
    for layer in range(L):
        for h in range(H):
            base = 3 * torch.randn(D, generator=g)
            noise = 0.3
            p = base + noise * torch.randn(n, D, generator=g)
            q = base + noise * torch.randn(n, D, generator=g)
            if (layer, h) in CIRCUIT:
                direction = torch.randn(D, generator=g)
                p = p + strength * direction * (0.5 + 0.5 * torch.rand(n, 1, generator=g))
            pos[(layer, h)], neg[(layer, h)] = p, q
    return pos, neg


FAST = {"n_latents": 32, "steps": 60, "edges": False}


def test_planted_circuit_is_found():
    pos, neg = planted()
    # the set-of-active-latents code with the coverage score (docs/circuits.md)
    kw = {**FAST, "mode": "set", "node_score": "coverage"}
    aucs = [roc_auc(score_heads(pos, neg, seed=s, **kw).node, CIRCUIT) for s in range(3)]
    assert sum(aucs) / len(aucs) >= 0.9, aucs
    # with nothing planted the same heads are not singled out
    null_pos, null_neg = planted(strength=0.0)
    null = [roc_auc(score_heads(null_pos, null_neg, seed=s, **kw).node, CIRCUIT) for s in range(3)]
    assert sum(null) / len(null) < 0.75, null


def test_shuffled_labels_give_chance_auc():
    pos, neg = planted()
    heads = sorted(pos)
    allx = {h: torch.cat([pos[h], neg[h]]) for h in heads}
    rng = random.Random(0)
    aucs = []
    for s in range(4):
        perm = list(range(32))
        rng.shuffle(perm)
        p_idx, n_idx = perm[:16], perm[16:]
        sp = {h: allx[h][p_idx] for h in heads}
        sn = {h: allx[h][n_idx] for h in heads}
        aucs.append(roc_auc(score_heads(sp, sn, seed=s, **FAST).node, CIRCUIT))
    mean = sum(aucs) / len(aucs)
    assert 0.3 <= mean <= 0.7, aucs


def test_silent_head_gets_its_own_code():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, D, generator=g)
    coder = fit_head_coder(x, n_latents=16, steps=50, seed=0)
    acts = torch.randn(3, 5, D, generator=g)
    acts[1] = 0.0  # head 1 silent on every prompt
    # head 0 fires latent 0 most strongly on every prompt: its input is along atom 0
    acts[0] = coder.dictionary.b_dec.detach() + 5.0 * coder.W_dec[0].detach()
    acts[0] += 0.01 * torch.randn(5, D, generator=g)
    codes, vocab, silent_id = discretise(coder, acts)
    assert silent_id >= 0 and vocab[silent_id] == SILENT
    assert (codes[1] == silent_id).all()
    assert not (codes[[0, 2]] == silent_id).any()
    # every other code names the prompt's strongest latent; latent 0 is not silence
    z = coder.encode(acts.reshape(-1, D)).reshape(3, 5, -1)
    assert z[0].argmax(dim=-1).tolist() == [0] * 5
    for h in (0, 2):
        assert [vocab[c] for c in codes[h].tolist()] == z[h].argmax(dim=-1).tolist()
    codes_s, vocab_s, sid_s = discretise(coder, acts, mode="set")
    assert vocab_s[sid_s] == SILENT and (codes_s[1] == sid_s).all()


def _brute_edges(codes, labels, pairs):
    out = []
    for a, b in zip(*pairs, strict=True):
        pos = Counter(
            (int(codes[a, i]), int(codes[b, i])) for i in range(codes.shape[1]) if labels[i]
        )
        neg = {(int(codes[a, i]), int(codes[b, i])) for i in range(codes.shape[1]) if not labels[i]}
        only = [k for k in pos if k not in neg]
        out.append((len(only), len(only) / max(len(pos), 1)))
    return out


def test_sparse_edge_counts_equal_brute_force():
    g = torch.Generator().manual_seed(1)
    heads = [(layer, h) for layer in range(4) for h in range(3)]
    codes = torch.randint(0, 5, (len(heads), 20), generator=g)
    labels = torch.rand(20, generator=g) < 0.5
    labels[0], labels[1] = True, False
    pairs = forward_pairs(heads)
    assert all(heads[a][0] < heads[b][0] for a, b in zip(*pairs, strict=True))
    for chunk in (7, 8192):
        got = edge_counts(codes, labels, pairs, chunk=chunk)
        want = _brute_edges(codes, labels, pairs)
        assert got["raw"].tolist() == [w[0] for w in want]
        assert torch.allclose(got["normalised"], torch.tensor([w[1] for w in want]))
    nodes = node_counts(codes, labels)
    for h in range(len(heads)):
        pos = {int(c) for c, y in zip(codes[h], labels, strict=True) if y}
        neg = {int(c) for c, y in zip(codes[h], labels, strict=True) if not y}
        assert nodes["raw"][h] == len(pos - neg)


def test_chance_level_is_the_mean_over_label_permutations():
    # calibrated = raw - E[raw | shuffled labels]; the exact expectation must match sampling
    g = torch.Generator().manual_seed(2)
    codes = torch.randint(0, 6, (5, 14), generator=g)
    codes[0] = torch.arange(14)  # a fresh code on every prompt: raw = n_pos by construction
    codes[1] = 0  # one code everywhere: never positive-only
    labels = torch.zeros(14, dtype=torch.bool)
    labels[:6] = True
    exact = node_counts(codes, labels)
    sampled = {k: torch.zeros(5) for k in ("raw", "coverage")}
    n = 4000
    for _ in range(n):
        perm = labels[torch.randperm(14, generator=g)]
        got = node_counts(codes, perm)
        for k in sampled:
            sampled[k] += got[k] / n
    assert torch.allclose(exact["raw"] - exact["calibrated"], sampled["raw"], atol=0.05)
    assert torch.allclose(
        exact["coverage"] - exact["coverage_calibrated"], sampled["coverage"], atol=0.01
    )
    assert exact["raw"][0] == 6 and exact["calibrated"][0] == pytest.approx(0.0, abs=1e-5)
    assert exact["calibrated"][1] == 0
    # edges use the same formula on joint codes
    pairs = (torch.tensor([2]), torch.tensor([3]))
    joint = codes[2] * 6 + codes[3]
    e = edge_counts(codes, labels, pairs)
    assert e["calibrated"][0] == pytest.approx(
        float(node_counts(joint[None], labels)["calibrated"][0])
    )


def test_magnitude_codes_keep_how_strongly_a_head_writes():
    g = torch.Generator().manual_seed(3)
    direction = torch.randn(D, generator=g)
    x = torch.cat([torch.randn(300, D, generator=g), direction * torch.rand(300, 1, generator=g)])
    coder = fit_head_coder(x, n_latents=16, steps=150, seed=0)
    acts = (direction * torch.tensor([0.25, 0.5, 1.0, 2.0, 4.0])[:, None])[None]  # one head
    argmax, _, _ = discretise(coder, acts, mode="argmax")
    octave, vocab, _ = discretise(coder, acts, mode="magnitude")
    assert len(set(argmax[0].tolist())) == 1  # one direction -> one latent
    assert len(set(octave[0].tolist())) == 5  # five octaves -> five codes
    # each code is (strongest latent, octave of its activation), in order of magnitude
    vals, lats = coder.encode(acts[0]).max(dim=-1)
    want = [(int(j), math.floor(math.log2(float(v)))) for j, v in zip(lats, vals, strict=True)]
    assert [vocab[c] for c in octave[0].tolist()] == want
    assert [o for _, o in want] == sorted({o for _, o in want})


def test_coder_ensemble_averages_and_is_deterministic():
    pos, neg = planted()
    one = score_heads(pos, neg, seed=0, **FAST)
    again = score_heads(pos, neg, seed=0, **FAST)
    three = score_heads(pos, neg, seed=0, n_coders=3, **FAST)
    assert one.node == again.node
    assert three.meta["n_coders"] == 3 and len(three.meta["n_codes"]) == 3
    assert three.node != one.node
    with pytest.raises(ValueError, match="n_coders"):
        score_heads(pos, neg, n_coders=0, **FAST)
    with pytest.raises(ValueError, match="node_score"):
        score_heads(pos, neg, node_score="best", **FAST)


def test_f1_is_true_f1():
    keys = list(range(20))
    ref = {1, 2, 3, 4, 5}
    pred = {2, 3, 9, 10}
    m = precision_recall_f1(pred, ref)
    y_true = [k in ref for k in keys]
    y_pred = [k in pred for k in keys]
    assert m["f1"] == pytest.approx(f1_score(y_true, y_pred))
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.4)
    assert m["f1"] != pytest.approx((m["precision"] + m["recall"]) / 2)


def test_threshold_rule_uses_scores_only():
    scores = {i: float(i == 3) * 10 + 0.01 * i for i in range(30)}
    assert select_circuit(scores) == {3}
    assert len(select_circuit(scores, rule="top_fraction", fraction=0.1)) == 3
    with pytest.raises(ValueError, match="reference holds"):
        roc_auc(scores, set(scores))


def test_labels_must_hold_both_classes():
    with pytest.raises(ValueError, match="both positives"):
        node_counts(torch.zeros(2, 4, dtype=torch.long), torch.ones(4, dtype=torch.bool))


def test_tasks_carry_labels_and_never_right_is_refused():
    from sparsecodes.circuits.heads import collect_heads, keep_solved
    from sparsecodes.circuits.tasks import TASKS, make_task
    from sparsecodes.models import load_model

    lm = load_model("tiny-llama", device="cpu")
    for task in TASKS:
        prompts = make_task(task, lm.tokenizer, 3, seed=0)
        assert [p.positive for p in prompts] == [True, False] * 3
        for p, q in zip(prompts[::2], prompts[1::2], strict=True):
            assert p.pair == q.pair and p.text != q.text
            assert len(lm.encode(p.text)[0][0]) == len(lm.encode(q.text)[0][0])
    prompts = make_task("ioi", lm.tokenizer, 4, seed=0)
    run = collect_heads(lm, prompts)
    assert run.last.shape == (8, lm.n_layers, lm.n_heads, lm.d_head)
    assert run.mean.shape == run.last.shape
    # make every positive wrong: swap correct and wrong tokens
    from dataclasses import replace

    flipped = [replace(p, correct=p.wrong, wrong=p.correct) if p.positive else p for p in prompts]
    ok_run = collect_heads(lm, prompts)
    bad_run = collect_heads(lm, flipped)
    pos = ok_run.labels
    assert torch.allclose(bad_run.logit_diff[pos], -ok_run.logit_diff[pos], atol=1e-5)
    never = replace(ok_run, logit_diff=-ok_run.logit_diff.abs() - 1.0)
    with pytest.raises(ValueError, match="gets none of the 4 positive"):
        keep_solved(never)


def test_circuit_cli_and_sensitivity_on_tiny_llama(tmp_path):
    import json

    from click.testing import CliRunner

    from sparsecodes.circuits.report import plot_sensitivity
    from sparsecodes.circuits.study import sensitivity
    from sparsecodes.cli import main
    from sparsecodes.models import load_model

    out = tmp_path / "circ"
    args = ["circuit", "--task", "ioi", "--model", "tiny-llama", "--seeds", "2", "--n-pairs", "6"]
    r = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "circuit-ioi.json").read_text())
    assert (out / "circuit-ioi.png").stat().st_size > 0
    assert res["node_score"] == "raw" and len(res["per_seed"]) == 2
    assert {"codes_calibrated", "attribution_patching", "random"} <= set(res["methods"])
    assert res["reference"]["n_heads"] == len(res["reference"]["heads"])
    # the cached reference is reused, not recomputed
    r = CliRunner().invoke(main, [*args, "--seeds", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "circuit-ioi.json").read_text())["reference"]["cached"]
    # without the reference: scores, found circuit and timings, no metrics, no ablation cost
    fast = tmp_path / "fast"
    r = CliRunner().invoke(main, [*args, "--no-reference", "--out", str(fast)])
    assert r.exit_code == 0, r.output
    res = json.loads((fast / "circuit-ioi.json").read_text())
    assert res["reference"] is None and res["methods"] == {} and not (fast / "cache").exists()
    assert "mean_ablation_reference" not in res["time_s"] and res["found_circuit"]
    assert (fast / "circuit-ioi.png").stat().st_size > 0
    r = CliRunner().invoke(main, [*args, "--no-reference", "--sensitivity", "--out", str(fast)])
    assert r.exit_code != 0 and "needs the reference" in r.output

    lm = load_model("tiny-llama", device="cpu")
    rows = sensitivity(
        lm, "ioi", n_pairs=6, seeds=1, cache_dir=out / "cache",
        train_prompts=(2, 4, 99), score_prompts=(4, 99), ks=(1, 2), l1s=(1e-2,),
    )  # fmt: skip
    got = {(r["factor"], r["value"]) for r in rows if r["factor"] != "_time_s"}
    assert got == {("n_train_prompts", 2), ("n_train_prompts", 4), ("n_score_prompts", 4),
                   ("k", 1), ("k", 2), ("l1", 1e-2)}  # fmt: skip
    # the first row (2 training prompts, one seed) is that setting's AUC against the reference
    from sparsecodes.circuits.ablation import cached_mean_ablation, reference_circuit
    from sparsecodes.circuits.metrics import evaluate
    from sparsecodes.circuits.study import method_scores, prepare

    run, pos, neg, _ = prepare(lm, "ioi", n_pairs=6)
    abl = cached_mean_ablation(lm, run, pos, out / "cache")
    ref = reference_circuit(abl["effect"], abl["clean_ld"], 0.05)
    sc = method_scores(run, pos, neg, view="last", seed=0, n_train_prompts=2, edges=False)
    auc = evaluate(sc.node_variants["calibrated"], ref)["roc_auc"]
    assert rows[0]["roc_auc"]["calibrated"] == {"mean": auc, "std": 0.0, "min": auc, "max": auc,
                                                "n": 1}  # fmt: skip
    png = plot_sensitivity({"ioi": rows}, tmp_path / "sens.png")
    assert png.stat().st_size > 0


def test_positions_view_scores_only_where_pairs_differ():
    # per-position codes: a position where every pair is identical can never give a
    # positive-only code, so identical tails score exactly 0 for every head
    from dataclasses import replace

    from sparsecodes.circuits.heads import collect_heads
    from sparsecodes.circuits.study import method_scores
    from sparsecodes.circuits.tasks import make_task
    from sparsecodes.models import load_model

    lm = load_model("tiny-llama", device="cpu")
    run = collect_heads(lm, make_task("ioi", lm.tokenizer, 4, seed=0), max_positions=6)
    assert run.tail.shape[:2] == (8, 6) and torch.equal(run.tail[:, -1], run.last)
    pos = [i for i, p in enumerate(run.prompts) if p.positive]
    neg = [i for i, p in enumerate(run.prompts) if not p.positive]
    kw = {"seed": 0, "n_latents": 32, "steps": 40, "n_train_prompts": 4}
    sc = method_scores(run, pos, neg, view="positions", **kw)
    assert set(sc.node) == {(l, h) for l in range(lm.n_layers) for h in range(lm.n_heads)}
    assert sc.meta["n_positions"] == 6 and max(sc.node.values()) > 0
    same = run.tail.clone()
    same[neg] = same[pos]  # every negative identical to its matched positive at every position
    flat = method_scores(replace(run, tail=same), pos, neg, view="positions", **kw)
    assert all(v == 0 for v in flat.node.values())
    with pytest.raises(ValueError, match="view must be"):
        method_scores(run, pos, neg, view="first", **kw)


@pytest.mark.parametrize("encoder", sorted(available_encoders()))
def test_codes_from_every_encoder_of_the_core(encoder):
    # amortised and iterative encoders alike give codes that find a strongly planted circuit
    pos, neg = planted()
    s = score_heads(pos, neg, encoder=encoder, seed=0, **FAST)
    assert s.meta["encoder"] == encoder and s.meta["n_codes"][0] > 1
    assert roc_auc(s.node, CIRCUIT) >= 0.6
