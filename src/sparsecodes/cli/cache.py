"""``sparsecodes cache``: cache a model's activations at hook points to sharded on-disk stores."""

from __future__ import annotations

from pathlib import Path

import click

from sparsecodes.cli.options import device_option, forward_workers_option, out_option

EPILOG = """
\b
Examples:
  sparsecodes cache --model smollm2-135m --hook blocks.12.resid_post \\
      --max-tokens 200000 --out acts/
  sparsecodes cache --model tiny-llama --hook blocks.0.resid_post --hook blocks.1.attn.heads \\
      --corpus my_texts.jsonl --out acts/ --dtype bfloat16

\b
Each hook gets its own store OUT/<model>/<hook>/ (manifest.json + shard-*.npy). Rows are the
activations at kept token positions (BOS/special tokens dropped), in corpus order. Interrupt
it at any time (Ctrl-C, kill -9): running the same command again verifies the store matches
(model, hook, corpus, dtype, forward dtype, context size, shard rows), skips what is stored and continues, and
ends with the same bytes as an uninterrupted run. A larger --max-tokens extends a finished store.
Read a store with sparsecodes.activations.StoreSource(path) or `sparsecodes train`.

\b
Several processes: torchrun --nproc-per-node N -m sparsecodes cache ... splits the shards
between N ranks (shard j on rank j mod N); the store is the same bytes as one process writes.
"""


@click.command("cache", epilog=EPILOG)
@click.option(
    "--model",
    required=True,
    help="Embedded name (smollm2-135m, minilm-l6, tiny-llama; see `sparsecodes models`), "
    "a local transformers directory or .gguf file.",
)
@click.option(
    "--hook",
    "hooks",
    multiple=True,
    required=True,
    help="Hook point, e.g. blocks.12.resid_post; repeat for several (one forward pass for all).",
)
@click.option(
    "--corpus",
    default="embedded",
    show_default=True,
    help="'embedded' (Python's own docs), a .txt/.jsonl/.parquet file or directory, or hf:NAME.",
)
@click.option(
    "--text-field", default="text", show_default=True, help="Text field of jsonl/parquet/hf rows."
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="Rows (kept tokens) to store per hook. [default: the whole corpus]",
)
@click.option(
    "--context-size",
    type=click.IntRange(min=2),
    default=128,
    show_default=True,
    help="Tokens per window.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Windows per forward pass (keep it the same when resuming for identical bytes).",
)
@out_option("runs/cache", "Root directory of the stores (one per hook).")
@click.option(
    "--dtype",
    type=click.Choice(["float16", "bfloat16", "float32"]),
    default="float16",
    show_default=True,
    help="Stored dtype (bfloat16 is stored as its uint16 bits).",
)
@click.option(
    "--forward-dtype",
    type=click.Choice(["float32", "bfloat16", "auto"]),
    default="float32",
    show_default=True,
    help="dtype of the model's forward: bfloat16 loads the weights in bf16 (activations differ "
    "from fp32 by bf16 rounding, ~1%% relative); auto = bfloat16 where the hardware has native "
    "bf16 (CUDA, CPUs with avx512_bf16/AMX), else float32. Recorded in the store: a resume with another forward dtype is refused.",
)
@click.option(
    "--shard-rows",
    type=click.IntRange(min=1),
    default=65536,
    show_default=True,
    help="Rows per shard file.",
)
@device_option
@forward_workers_option
@click.option(
    "--verify/--no-verify",
    default=False,
    show_default=True,
    help="Checksum existing shards before resuming.",
)
@click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Show a progress bar."
)
def cache(
    model: str,
    hooks: tuple[str, ...],
    corpus: str,
    text_field: str,
    max_tokens: int | None,
    context_size: int,
    batch_size: int,
    out: Path,
    dtype: str,
    forward_dtype: str,
    shard_rows: int,
    device: str,
    forward_workers: int | None,
    verify: bool,
    progress: bool,
) -> None:
    """Cache a model's activations at hook points to resumable sharded on-disk stores."""
    from sparsecodes import distributed
    from sparsecodes.activations.cache import cache_activations
    from sparsecodes.activations.store import StoreError
    from sparsecodes.data import corpus_fingerprint, load_texts
    from sparsecodes.models import ModelNotFoundError, load_model

    spec = None if corpus == "embedded" else corpus
    if distributed.launched():  # started by torchrun: join its process group
        from sparsecodes.devices import resolve_device

        dev = resolve_device(device)
        distributed.init_from_env(str(dev))
        device = distributed.local_device(str(dev))
    main = distributed.world().main
    progress = progress and main
    try:
        from sparsecodes.devices import native_bf16, resolve_device

        if forward_dtype == "auto":
            forward_dtype = "bfloat16" if native_bf16(resolve_device(device)) else "float32"
        lm = load_model(model, device=device, dtype=forward_dtype)
        # hf datasets are fingerprinted by name only (hashing a remote stream means reading it all)
        items = [] if corpus.startswith("hf:") else load_texts(spec, text_field=text_field)
        fp = corpus_fingerprint(spec, items, text_field=text_field)
        res = cache_activations(
            lm,
            load_texts(spec, text_field=text_field),
            list(hooks),
            out,
            context_size=context_size,
            batch_size=batch_size,
            max_tokens=max_tokens,
            dtype=dtype,
            shard_rows=shard_rows,
            corpus_fingerprint=fp,
            model_name=model,
            corpus_spec=corpus,
            verify=verify,
            progress=progress,
            forward_dtype=forward_dtype,
            forward_workers=forward_workers,
        )
    except (ModelNotFoundError, StoreError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    finally:
        distributed.shutdown()
    if not main:  # rank 0 reports
        return
    rate = res.new_rows / res.seconds_total if res.seconds_total > 0 else 0.0
    click.echo(
        f"{res.rows} rows per hook ({res.new_rows} new, {rate:,.0f} tokens/s; "
        f"store {res.seconds_store:.1f} s = {res.store_overhead:.1%} of model forward "
        f"{res.seconds_model:.1f} s){'; corpus exhausted' if res.corpus_exhausted else ''}"
    )
    for hook, path in res.stores.items():
        click.echo(f"  {hook}: {path}")
