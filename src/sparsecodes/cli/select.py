"""``sparsecodes select``: pick the pool documents whose codes look most like a target set's."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from sparsecodes.cli.options import coder_hook_option, coder_model_option, device_option


@click.command(
    help=(
        "Select the pool documents most similar to a target set by their sparse codes: each "
        "document is the mean of its tokens' codes (BOS/special tokens excluded), scored by the "
        "generalised Jaccard index (sum of minima over sum of maxima) against the mean code of "
        "the target documents. Files hold one document per line, or JSON Lines with a 'text' "
        "field. Writes the selected rows, best first, as JSON Lines with rank, score, "
        "pool_index and line. The pool streams in bounded memory."
    )
)
@click.option(
    "--sae",
    "sae_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="Coder directory (a run directory, our format, SAELens or sparsify).",
)
@click.option(
    "--target",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Documents to match (one per line, or JSON Lines with 'text').",
)
@click.option(
    "--pool",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Documents to select from (same formats).",
)
@click.option(
    "--top", default="5%", show_default=True, help="How many: a percentage (5%) or a count (500)."
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("runs/select/selected.jsonl"),
    show_default=True,
    help="Output JSON Lines file (written atomically).",
)
@coder_model_option()
@coder_hook_option
@click.option("--text-field", default="text", show_default=True, help="JSON Lines text field.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Documents per pass.")
@click.option(
    "--max-tokens",
    type=int,
    default=128,
    show_default=True,
    help="Tokens read per document (its first ones, BOS included).",
)
@device_option
@click.option("--progress/--no-progress", default=True, show_default=True)
def select(
    sae_dir: Path,
    target: Path,
    pool: Path,
    top: str,
    out: Path,
    model: str | None,
    hook: str | None,
    text_field: str,
    batch_size: int,
    max_tokens: int,
    device: str,
    progress: bool,
) -> None:
    from sparsecodes.loading import load_with_model
    from sparsecodes.uses.documents import count_documents, read_documents
    from sparsecodes.uses.selection import parse_top, select_documents, write_selection

    logging.basicConfig(level=logging.WARNING)
    n_pool = count_documents(pool, text_field)
    k = parse_top(top, n_pool)  # fail on a bad --top before loading anything
    coder, adapter, hook_name = load_with_model(sae_dir, model=model, hook=hook, device=device)
    chosen, _ = select_documents(
        coder,
        adapter,
        hook_name,
        (r.text for r in read_documents(target, text_field)),
        read_documents(pool, text_field),
        k,
        n_pool=n_pool,
        text_of=lambda r: r.text,
        batch_size=batch_size,
        max_tokens=max_tokens,
        progress=progress,
    )
    write_selection(out, chosen)
    best = f"{chosen[0].score:.4f}" if chosen else "-"
    click.echo(
        f"selected {len(chosen)} of {n_pool} documents (scores {best} .. "
        f"{chosen[-1].score:.4f}) -> {out}"
    )
