"""SAEBench-style judgements of one SAE on the embedded SmolLM2-135M, offline, on the CPU.

Runs first-letter absorption, sparse probing (offline labelled sets), SCR and TPP (faker
profession x gender biographies) and RAVEL-style cause/isolation (world cities: country,
continent) on a trained SAE directory (default: the demo's TopK SAE on
``blocks.12.resid_post``; ``sparsecodes demo`` writes it), with reduced sizes so the whole run
stays within minutes on two CPU cores. Each metric's dict has SAEBench's key names.

Run: ``OMP_NUM_THREADS=1 python benchmarks/saebench_suite.py --sae sparsecodes_demo/sae/final``
writes ``benchmarks/results/saebench_suite_smollm2.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

import sparsecodes
from sparsecodes.evaluation import absorption, ravel, scr, sparse_probing, tpp
from sparsecodes.evaluation.datasets import city_continent, language_id, profession_gender
from sparsecodes.evaluation.ravel import city_entities
from sparsecodes.files import write_json
from sparsecodes.models import load_model

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sae", default="sparsecodes_demo/sae/final")
    ap.add_argument("--hook", default=None, help="default: the hook the SAE records")
    ap.add_argument("--words", type=int, default=1000, help="vocabulary words for absorption")
    ap.add_argument("--icl", type=int, default=10, help="in-context examples per prompt")
    ap.add_argument("--entities", type=int, default=300, help="cities for RAVEL")
    ap.add_argument("--pairs", type=int, default=150, help="RAVEL pairs per attribute")
    ap.add_argument("--only", default="absorption,probing,scr,tpp,ravel")
    ap.add_argument("--out", default=str(RESULTS / "saebench_suite_smollm2.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)
    coder = sparsecodes.load(args.sae)
    hook = args.hook or coder.source.hook_name
    lm = load_model("smollm2-135m", device="cpu")
    result: dict[str, Any] = {
        "model": "smollm2-135m",
        "hook": hook,
        "sae": str(args.sae),
        "sae_encoder": coder.encoder.name,
        "n_latents": coder.n_latents,
        "machine": "2 shared CPU cores, other jobs running (timings under load)",
        "metrics": {},
        "seconds": {},
    }
    if Path(args.out).exists():  # a run of other metrics: keep what is there
        old = json.loads(Path(args.out).read_text())
        if old.get("sae") == result["sae"] and old.get("hook") == hook:
            result["metrics"], result["seconds"] = old["metrics"], old["seconds"]
    only = set(args.only.split(","))
    bios = profession_gender(60, seed=0) if {"scr", "tpp"} & only else None
    jobs = {
        "absorption": lambda: absorption(coder, lm, hook, max_words=args.words, n_icl=args.icl),
        "probing": lambda: sparse_probing(
            coder,
            lm,
            hook,
            [profession_gender(30, seed=1), language_id(60), city_continent(300)],
        ),
        "scr": lambda: scr(coder, lm, hook, bios),
        "tpp": lambda: tpp(coder, lm, hook, bios),
        "ravel": lambda: ravel(
            coder, lm, hook, city_entities(args.entities), k=8, n_pairs=args.pairs
        ),
    }
    for name, job in jobs.items():
        if name not in only:
            continue
        t0 = time.perf_counter()
        try:
            result["metrics"][name] = job()
        except ValueError as e:  # e.g. too few entities the model answers correctly
            result["metrics"][name] = {"error": str(e)}
        result["seconds"][name] = round(time.perf_counter() - t0, 1)
        logging.info("%s: %.1f s", name, result["seconds"][name])
        write_json(args.out, result)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
