"""``sparsecodes circuit``: circuit discovery from discrete sparse codes, checked against ablation."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sparsecodes.circuits.scores import NODE_SCORES
from sparsecodes.cli.options import device_option, out_option


@click.command("circuit")
@click.option(
    "--task",
    type=click.Choice(["ioi", "greater-than", "docstring"]),
    required=True,
    help="Prompt task.",
)
@click.option("--model", default="smollm2-135m", show_default=True, help="Model name or path.")
@click.option("--seeds", default=10, show_default=True, help="Seeds of the method.")
@out_option("runs/circuit", "Output directory (circuit-TASK.json, plots, cache/).")
@click.option("--n-pairs", default=24, show_default=True, help="Positive/negative prompt pairs.")
@click.option(
    "--view",
    type=click.Choice(["last", "mean", "positions"]),
    default="last",
    show_default=True,
    help="Final position, mean over positions, or each of the last 16 positions.",
)
@click.option("--encoder", default="topk", show_default=True, help="Any registered encoder.")
@click.option("--n-latents", default=256, show_default=True)
@click.option("--n-train-prompts", default=8, show_default=True)
@click.option(
    "--mode",
    type=click.Choice(["argmax", "set", "magnitude"]),
    default="argmax",
    show_default=True,
    help="Discrete code: top latent, set of active latents, or top latent + octave of its value.",
)
@click.option(
    "--node-score",
    type=click.Choice(list(NODE_SCORES)),
    default="raw",
    show_default=True,
    help="Score variant used for the summary, plot and found circuit (all are in the JSON).",
)
@click.option(
    "--n-coders", default=1, show_default=True, help="Coders averaged per seed (1 = published)."
)
@click.option(
    "--head-norm", type=click.Choice(["none", "head", "center"]), default="head", show_default=True
)
@click.option("--ref-frac", default=0.05, show_default=True, help="Reference-circuit rule.")
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the ablation reference is cached (default: OUT/cache).",
)
@click.option(
    "--reference/--no-reference",
    default=True,
    show_default=True,
    help="Run the mean-ablation reference (minutes) and score every method against it; "
    "--no-reference gives the codes' circuit in seconds.",
)
@click.option("--sensitivity", is_flag=True, help="Also run the sensitivity study.")
@device_option
def circuit(
    task: str,
    model: str,
    seeds: int,
    out: Path,
    n_pairs: int,
    view: str,
    encoder: str,
    n_latents: int,
    n_train_prompts: int,
    mode: str,
    node_score: str,
    n_coders: int,
    head_norm: str,
    ref_frac: float,
    cache_dir: Path | None,
    reference: bool,
    sensitivity: bool,
    device: str,
) -> None:
    """Score heads by codes unique to positives; compare with mean ablation and attribution."""
    from sparsecodes.circuits.report import plot_grid, plot_sensitivity
    from sparsecodes.circuits.study import run_task
    from sparsecodes.circuits.study import sensitivity as run_sensitivity
    from sparsecodes.files import write_json
    from sparsecodes.models import load_model

    if sensitivity and not reference:
        raise click.UsageError("--sensitivity needs the reference; drop --no-reference")
    adapter = load_model(model, device=device)
    cache = cache_dir or out / "cache"
    kw = dict(
        encoder=encoder,
        n_latents=n_latents,
        n_train_prompts=n_train_prompts,
        mode=mode,
        node_score=node_score,
        n_coders=n_coders,
        head_norm=head_norm,
    )
    res = run_task(
        adapter,
        task,
        n_pairs=n_pairs,
        seeds=seeds,
        view=view,
        ref_frac=ref_frac,
        cache_dir=cache,
        reference=reference,
        progress=click.echo,
        **kw,
    )
    stem = f"circuit-{task}"
    write_json(
        out / f"{stem}.json", res, default=str
    )  # written before the (long) sensitivity study
    plot_grid(res, out / f"{stem}.png")
    if sensitivity:
        res["sensitivity"] = run_sensitivity(
            adapter,
            task,
            n_pairs=n_pairs,
            view=view,
            ref_frac=ref_frac,
            cache_dir=cache,
            **kw,
        )
        write_json(out / f"{stem}.json", res, default=str)
        plot_sensitivity({task: res["sensitivity"]}, out / f"{stem}-sensitivity.png", node_score)
    summary: dict = {
        "task": task,
        "kept_fraction": res["prompts"]["kept_fraction"],
        "node_score": node_score,
        "found_circuit": res["found_circuit"],
        "time_s": res["time_s"],
        "out": str(out),
    }
    m = res["methods"]
    if res["reference"]:
        summary.update(
            reference_heads=res["reference"]["n_heads"],
            codes_roc_auc=m[f"codes_{node_score}"]["roc_auc"],
            attribution_roc_auc=m["attribution_patching"]["roc_auc"],
            random_roc_auc=m["random"]["roc_auc"]["mean"],
        )
    click.echo(json.dumps(summary, indent=2))
