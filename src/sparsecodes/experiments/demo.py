"""The main job end to end on an embedded real model (``sparsecodes demo``).

1. Cache ``blocks.12.resid_post`` of the embedded SmolLM2-135M over the embedded corpus (Python's
   own documentation): training windows and disjoint held-out windows (every 20th document).
2. Train a TopK SAE (4608 latents, k=32) on the training store, resumably.
3. On held-out tokens, compare the SAE's own encoder with iterative inference on the *same*
   dictionary: OMP at the same L0 (k=32) and FISTA warm-started from the SAE codes, its L1
   penalty chosen on *training* tokens so that its L0 matches k.
4. Print a table (FVU, L0, FLOPs and wall time per token; the SAE's dead %) and write ``demo.json``.

Everything is cached and resumable: running the demo again reuses what is done.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from sparsecodes.files import write_json

logger = logging.getLogger(__name__)

HOOK = "blocks.12.resid_post"


@dataclass
class DemoConfig:
    model: str = "smollm2-135m"
    hook: str = HOOK
    train_tokens: int = 200_000
    eval_tokens: int = 4096
    context_size: int = 128
    n_latents: int = 4608
    k: int = 32
    steps: int = 1200
    batch_size: int = 1024
    lr: float = 1e-3
    seed: int = 0
    fista_iters: int = 50
    out: str = "sparsecodes_demo"
    device: str = "auto"


def _load_rows(store: Path, n: int) -> torch.Tensor:
    from sparsecodes.activations.reader import StoreSource

    src = StoreSource(store, seed=0, shuffle_buffer_shards=1)
    x, _ = next(src.batches(min(n, len(src))))
    return x


def _row(label: str, sae: Any, method: Any, x: torch.Tensor) -> dict[str, Any]:
    """One table row from :func:`sparsecodes.evaluation.gap.measure` on held-out rows ``x``."""
    from sparsecodes.evaluation.gap import measure

    r = measure(sae, method, x)
    return {
        "method": label,
        "fvu": r.fvu,
        "l0": r.l0,
        "flops_per_token": round(r.flops_per_token),
        "us_per_token": 1e6 * r.seconds_per_token,
        "params": r.params,
    }


def run_demo(cfg: DemoConfig, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the whole demo; returns (and writes to ``out/demo.json``) the results.

    ``echo(message)`` receives progress lines (default: this module's logger, INFO level).
    """
    echo = echo or logger.info
    from sparsecodes.activations.cache import cache_activations
    from sparsecodes.activations.reader import StoreSource
    from sparsecodes.data import load_texts
    from sparsecodes.devices import resolve_device
    from sparsecodes.models import load_model
    from sparsecodes.sparse_coder import SparseCoder
    from sparsecodes.training.run import train_run
    from sparsecodes.training.trainer import TrainConfig

    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    echo(f"[1/4] loading {cfg.model} ...")
    adapter = load_model(cfg.model, device=cfg.device)
    timings["load_model_s"] = time.perf_counter() - t0

    texts = list(load_texts(None))
    eval_texts = texts[::20]
    train_texts = [t for i, t in enumerate(texts) if i % 20]
    echo(
        f"[2/4] caching {cfg.hook}: {cfg.train_tokens:,} training + {cfg.eval_tokens:,} "
        f"held-out tokens (embedded corpus: {len(texts)} documents) ..."
    )
    t0 = time.perf_counter()
    train_cache = cache_activations(
        adapter,
        train_texts,
        [cfg.hook],
        out / "cache" / "train",
        context_size=cfg.context_size,
        max_tokens=cfg.train_tokens,
        corpus_spec="embedded[train]",
        shard_rows=16384,
    )
    eval_cache = cache_activations(
        adapter,
        eval_texts,
        [cfg.hook],
        out / "cache" / "eval",
        context_size=cfg.context_size,
        max_tokens=cfg.eval_tokens,
        corpus_spec="embedded[heldout]",
        shard_rows=16384,
    )
    timings["cache_s"] = time.perf_counter() - t0
    cache_tok_s = (train_cache.new_rows + eval_cache.new_rows) / max(
        train_cache.seconds_total + eval_cache.seconds_total, 1e-9
    )

    echo(
        f"[3/4] training a TopK SAE ({cfg.n_latents} latents, k={cfg.k}, {cfg.steps} steps "
        f"of {cfg.batch_size} tokens) ..."
    )
    t0 = time.perf_counter()
    store = train_cache.stores[cfg.hook]
    source = StoreSource(store, seed=cfg.seed)
    d_in = source.d_in
    sae = SparseCoder(
        d_in,
        cfg.n_latents,
        "topk",
        k=cfg.k,
        normalize="expected_norm",
        seed=cfg.seed,
        device=resolve_device(cfg.device),
    )
    train_sample = _load_rows(store, 8192)
    sae.normaliser.fit(train_sample)
    tcfg = TrainConfig(
        steps=cfg.steps,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        decay_fraction=0.2,
        progress=True,
        log_every=25,
        dead_after_tokens=200_000,
    )
    run_dir = out / "sae"
    sae = train_run(
        sae, source, tcfg, run_dir, checkpoint_every=100, extra_config={"demo": asdict(cfg)}
    )
    timings["train_s"] = time.perf_counter() - t0
    rates = [r["tokens_per_s"] for r in sae.history if "tokens_per_s" in r]
    train_tok_s = rates[-1] if rates else float("nan")
    try:
        from sparsecodes.formats.saelens import save_saelens

        save_saelens(sae, run_dir / "final_saelens", model_name=cfg.model, hook_name=cfg.hook)
    except (ImportError, ValueError) as e:  # pragma: no cover - informative only
        echo(f"note: SAELens export skipped: {e}")

    echo("[4/4] held-out evaluation: the SAE's encoder vs iterative inference on its dictionary")
    t0 = time.perf_counter()
    x_eval = _load_rows(eval_cache.stores[cfg.hook], cfg.eval_tokens)
    from sparsecodes.evaluation.gap import Method, match_l0

    # FISTA's penalty is matched to the SAE's L0 on *training* tokens, never the held-out ones
    fista = match_l0(sae, "fista", True, train_sample[:1024], float(cfg.k), iters=cfg.fista_iters)
    rows = [
        _row("topk (SAE encoder)", sae, Method("sae"), x_eval),
        _row(f"omp k={cfg.k}", sae, Method("omp", False, {"k": cfg.k, "nonneg": True}), x_eval),
        _row(f"fista warm, {cfg.fista_iters} it", sae, fista.method, x_eval),
    ]
    with torch.no_grad():
        sae_codes = sae.encode(x_eval)
    dead_pct = 100.0 * float(((sae_codes != 0).sum(0) == 0).float().mean())
    timings["eval_s"] = time.perf_counter() - t0
    result = {
        "config": asdict(cfg),
        "fista_l1": fista.method.params["l1"],
        "sae_dead_pct_heldout": dead_pct,
        "rows": rows,
        "train_tokens_per_s": train_tok_s,
        "cache_tokens_per_s": cache_tok_s,
        "timings": timings,
        "files": {
            "sae": str(run_dir / "final"),
            "saelens": str(run_dir / "final_saelens"),
            "train_store": str(store),
            "eval_store": str(eval_cache.stores[cfg.hook]),
        },
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    write_json(out / "demo.json", result)
    return result


def format_table(result: dict[str, Any]) -> str:
    head = f"{'method':<26}{'FVU':>8}{'L0':>8}{'MFLOP/tok':>11}{'us/tok':>9}"
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        lines.append(
            f"{r['method']:<26}{r['fvu']:>8.3f}{r['l0']:>8.1f}"
            f"{r['flops_per_token'] / 1e6:>11.2f}{r['us_per_token']:>9.0f}"
        )
    t = result["timings"]
    lines.append("")
    cache = result["cache_tokens_per_s"]
    cache_txt = f"{cache:,.0f} tokens/s" if cache > 0 else "reused from an earlier run"
    lines.append(
        f"training {result['train_tokens_per_s']:,.0f} tokens/s; caching {cache_txt}; total "
        f"{sum(t.values()):.0f} s ({', '.join(f'{k} {v:.0f}' for k, v in t.items())})"
    )
    lines.append(f"FISTA l1 = {result['fista_l1']:.3g} (chosen on training tokens to match L0)")
    lines.append(
        f"SAE latents never active on the held-out tokens: {result['sae_dead_pct_heldout']:.1f}%"
    )
    if not math.isfinite(result["train_tokens_per_s"]):
        lines.append("(training was already complete: resumed from the checkpoint)")
    return "\n".join(lines)
