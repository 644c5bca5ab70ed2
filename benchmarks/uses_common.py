"""Shared by the data-selection and spatial benchmarks: a small TopK SAE on the embedded SmolLM2.

``ensure_sae(dir)`` reuses ``dir/sae/final`` when present; otherwise it caches
``blocks.12.resid_post`` over the embedded corpus (Python's documentation) and trains a TopK SAE
with the same recipe as ``sparsecodes demo`` but small enough for a shared CPU (24k tokens, 1536 latents, k=32), recording the
model and hook so that ``sparsecodes select --sae dir/sae`` finds them.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

MODEL = "smollm2-135m"
HOOK = "blocks.12.resid_post"


@dataclass
class SAERecipe:
    train_tokens: int = 24_000
    context_size: int = 128
    n_latents: int = 1536
    k: int = 32
    steps: int = 400
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0


def ensure_sae(root: Path, adapter: Any, recipe: SAERecipe | None = None) -> Any:
    """The trained coder in ``root/sae`` (trained now if absent; resumable)."""
    from sparsecodes.activations.cache import cache_activations
    from sparsecodes.activations.reader import StoreSource
    from sparsecodes.data import load_texts
    from sparsecodes.loading import load
    from sparsecodes.sparse_coder import SparseCoder
    from sparsecodes.training.run import train_run
    from sparsecodes.training.trainer import TrainConfig

    r = recipe or SAERecipe()
    run_dir = root / "sae"
    if (run_dir / "final" / "sparsecodes.json").is_file():
        coder = load(run_dir)
        return coder
    texts = [t for i, t in enumerate(load_texts(None)) if i % 20]  # every 20th held out
    cache = cache_activations(
        adapter,
        texts,
        [HOOK],
        root / "cache",
        context_size=r.context_size,
        max_tokens=r.train_tokens,
        corpus_spec="embedded[train]",
        shard_rows=16384,
    )
    store = cache.stores[HOOK]
    source = StoreSource(store, seed=r.seed)
    coder = SparseCoder(
        source.d_in, r.n_latents, "topk", k=r.k, normalize="expected_norm", seed=r.seed
    )
    sample, _ = next(StoreSource(store, seed=0, shuffle_buffer_shards=1).batches(8192))
    coder.normaliser.fit(sample)
    cfg = TrainConfig(
        steps=r.steps,
        lr=r.lr,
        batch_size=r.batch_size,
        seed=r.seed,
        decay_fraction=0.2,
        progress=True,
        log_every=25,
        dead_after_tokens=100_000,
    )
    source_meta = {"model_name": MODEL, "hook_name": HOOK, "context_size": r.context_size}
    extra = {"source": source_meta, "recipe": asdict(r)}
    return train_run(coder, source, cfg, run_dir, checkpoint_every=100, extra_config=extra)


def environment() -> dict[str, Any]:
    import platform

    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
