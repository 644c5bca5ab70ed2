"""``sparsecodes eval``: held-out metrics of a trained SAE, and the amortisation gap."""

from __future__ import annotations

from pathlib import Path

import click

from sparsecodes.cli.options import (
    coder_hook_option,
    coder_model_option,
    device_option,
    out_option,
    seed_option,
)

EPILOG = """
\b
Examples:
  sparsecodes eval runs/train                      # a run dir (uses final/), recorded model+hook
  sparsecodes eval path/to/saelens_sae --model smollm2-135m --hook blocks.12.resid_post
  sparsecodes eval runs/train --inference fista,mp,omp --out runs/train/gap

\b
Held-out text: --corpus, else the embedded corpus's held-out split (every 20th document, which
the demo never trains on; about 6k tokens). Reconstruction metrics use every held-out window
(forward stopped after the hook); CE/KL scores use the first --ce-tokens tokens (4 full forward
passes each: clean, spliced, spliced + error term, zero ablation). BOS/special positions are
excluded everywhere. Writes OUT/eval.json (SAEBench core key names), OUT/feature_density.png
and, with --inference, OUT/amortisation_gap.png. See docs/evaluation.md.
"""


@click.command("eval", epilog=EPILOG)
@click.argument("sae_dir", type=click.Path(exists=True, file_okay=False))
@coder_model_option()
@coder_hook_option
@click.option(
    "--corpus",
    default=None,
    help="Held-out text: .txt/.jsonl/.parquet file or directory, or hf:NAME "
    "[default: the embedded corpus's held-out split].",
)
@click.option("--text-field", default="text", show_default=True)
@click.option(
    "--context-size",
    type=click.IntRange(min=2),
    default=None,
    help="Tokens per window [default: the SAE's training context, else 128].",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="Held-out tokens for the reconstruction metrics [default: all of the corpus].",
)
@click.option(
    "--ce-tokens",
    type=click.IntRange(min=0),
    default=4096,
    show_default=True,
    help="Held-out tokens for the CE/KL scores (full forward passes; 0 skips them).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Windows per forward pass (reconstruction pass).",
)
@click.option(
    "--ce-batch-size",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Windows per forward pass (CE/KL pass; logits are batch x context x vocab).",
)
@click.option(
    "--dense-threshold",
    type=click.FloatRange(0, 1),
    default=0.1,
    show_default=True,
    help="A latent firing on more than this fraction of tokens counts as dense.",
)
@click.option(
    "--inference",
    default=None,
    help="Amortisation gap: iterative methods to compare with the SAE's encoder on its "
    "dictionary, comma-separated (fista, ista, mp, omp, fista+debias, ista+debias: the lasso "
    "refitted by least squares on its support), each cold and warm-started.",
)
@click.option(
    "--gap-tokens",
    type=click.IntRange(min=1),
    default=4096,
    show_default=True,
    help="Held-out tokens for the gap table's FVU, L0 and timing.",
)
@click.option(
    "--calib-tokens",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Calibration tokens (embedded training split) for matching the L0.",
)
@click.option(
    "--calib-corpus",
    default=None,
    help="Calibration text for matching the L0 (must not be the evaluation text) "
    "[default: the embedded corpus's training split].",
)
@click.option("--fista-iters", type=click.IntRange(min=1), default=50, show_default=True)
@click.option(
    "--l0-tolerance",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.05,
    show_default=True,
    help="Relative L0 mismatch accepted when matching.",
)
@out_option(None, "Output directory [default: RUN_DIR/eval or SAE_DIR/eval].")
@device_option
@seed_option()
def eval_cmd(sae_dir: str, inference: str | None, out: Path | None, **kwargs: object) -> None:
    """Evaluate an SAE on held-out text: FVU, L0, dead/dense latents, CE-loss and KL scores."""
    from sparsecodes.evaluation.gap import parse_methods
    from sparsecodes.evaluation.run import EvalConfig, run_eval

    methods = tuple(parse_methods(inference)) if inference else ()
    cfg = EvalConfig(
        sae_dir=sae_dir,
        inference=methods,
        out=str(out) if out is not None else None,
        progress=True,
        **kwargs,  # type: ignore[arg-type]
    )
    payload = run_eval(cfg, echo=click.echo)
    m = payload["eval_result_metrics"]
    rows = [
        ("FVU", m["reconstruction_quality"]["fvu"]),
        ("explained variance", m["reconstruction_quality"]["explained_variance"]),
        ("MSE", m["reconstruction_quality"]["mse"]),
        ("cosine", m["reconstruction_quality"]["cossim"]),
        ("L0", m["sparsity"]["l0"]),
        ("dead latents", m["misc"]["n_dead"]),
        ("dense latents", m["misc"]["n_dense"]),
    ]
    if "model_performance_preservation" in m:
        perf, beh = m["model_performance_preservation"], m["model_behavior_preservation"]
        rows += [
            (
                "CE clean / spliced / zero",
                (
                    f"{perf['ce_loss_without_sae']:.4f} / {perf['ce_loss_with_sae']:.4f} / "
                    f"{perf['ce_loss_with_ablation']:.4f}"
                ),
            ),
            ("CE-loss score", perf["ce_loss_score"]),
            ("KL score", beh["kl_div_score"]),
            ("CE-loss score with error term", perf["ce_loss_score_with_error_term"]),
        ]
    for name, v in rows:
        click.echo(f"  {name:30s} {v:.4f}" if isinstance(v, float) else f"  {name:30s} {v}")
