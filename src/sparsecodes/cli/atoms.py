"""``sparsecodes atoms``: the atoms paper's uniqueness and exact-recovery conditions on an SAE."""

from __future__ import annotations

from pathlib import Path

import click

from sparsecodes.cli.options import device_option, out_option, seed_option

EPILOG = """
\b
Examples:
  sparsecodes atoms runs/train/final --store cache/blocks.6.resid_post
  sparsecodes atoms path/to/saelens_sae --store cache/h --max-tokens 50000 --out report/

\b
Reports the dictionary's coherence under the atomic inner product (AIP, whitened by the
activations' inverse covariance, or the threshold encoder's own S), K (the largest L0 on the
rows), the bound 1/(2K-1), whether mu < 1/(2K-1) holds, and the threshold SAE's exact-recovery
condition delta_min > mu (2K-1) delta_max on the coder's own codes. Writes OUT/atoms.json.
See docs/atoms.md.
"""


@click.command("atoms", epilog=EPILOG)
@click.argument("sae_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--store",
    "stores",
    multiple=True,
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Activation store at the SAE's hook (repeatable; written by `sparsecodes cache`).",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=2),
    default=20_000,
    show_default=True,
    help="Rows of the store(s) to use.",
)
@click.option(
    "--raw-moment",
    is_flag=True,
    help="Whiten by the inverse raw second moment (the paper's (E[k k^T])^-1) instead of the "
    "inverse covariance (ignored for the threshold encoder, which has its own S).",
)
@out_option(None, "Output directory [default: SAE_DIR/atoms].")
@device_option
@seed_option("Seed of the store reader's row order.")
def atoms(
    sae_dir: str,
    stores: tuple[str, ...],
    max_tokens: int,
    raw_moment: bool,
    out: Path | None,
    device: str,
    seed: int,
) -> None:
    """Check an SAE's atoms: AIP coherence, uniqueness bound 1/(2K-1), exact-recovery condition."""
    from sparsecodes.evaluation.atoms import check_atoms_on_store
    from sparsecodes.files import write_json

    report = check_atoms_on_store(
        sae_dir,
        list(stores),
        max_tokens=max_tokens,
        seed=seed,
        device=device,
        center=not raw_moment,
    )
    out = out if out is not None else Path(sae_dir) / "atoms"
    out.mkdir(parents=True, exist_ok=True)
    path = write_json(out / "atoms.json", report.to_dict())
    click.echo(report.text())
    click.echo(f"wrote {path}")
