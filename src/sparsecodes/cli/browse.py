"""``sparsecodes browse`` / ``serve`` / ``inspect``: look at what a coder's latents respond to."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from sparsecodes.cli.options import (
    coder_hook_option,
    coder_model_option,
    device_option,
    out_option,
    seed_option,
)


@click.command(
    help=(
        "Build a static feature browser for the coder in SAE_DIR (a run directory, our format, "
        "SAELens or sparsify): one streamed pass over --n-tokens held-out tokens collects each "
        "latent's top and sampled contexts, histogram, density and logit effects; the site works "
        "from file:// (open OUT/index.html). Explanations are read from explanations.json in "
        "SAE_DIR when present."
    )
)
@click.argument("sae_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@out_option(None, "Output directory for the site [default: SAE_DIR/site, which serve finds].")
@coder_model_option()
@coder_hook_option
@click.option("--n-tokens", type=int, default=50_000, show_default=True)
@click.option(
    "--corpus", default=None, help="'embedded' (default), a .txt/.jsonl/.parquet file or dir."
)
@click.option(
    "--skip-windows",
    type=int,
    default=0,
    show_default=True,
    help="Skip this many windows first (hold out what training read from the corpus start).",
)
@click.option("--context-size", type=int, default=128, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True, help="Windows per pass.")
@click.option("--top-k", type=int, default=16, show_default=True, help="Top contexts per latent.")
@click.option("--n-samples", type=int, default=16, show_default=True, help="Sampled contexts.")
@click.option(
    "--explanations",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="explanations.json ({latent: {explanation, score}}); default: SAE_DIR/explanations.json.",
)
@click.option(
    "--stats",
    "stats_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Reuse feature statistics saved here, or save them here (rebuild without the model).",
)
@click.option(
    "--bench",
    "bench_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="The --out directory of a `sparsecodes bench` run that evaluated this SAE: the index "
    "links its comparison page.",
)
@seed_option("Seed of the sampled contexts.")
@device_option
def browse(
    sae_dir: Path,
    out: Path | None,
    model: str | None,
    hook: str | None,
    n_tokens: int,
    corpus: str | None,
    skip_windows: int,
    context_size: int,
    batch_size: int,
    top_k: int,
    n_samples: int,
    explanations: Path | None,
    stats_dir: Path | None,
    bench_dir: Path | None,
    seed: int,
    device: str,
) -> None:
    from sparsecodes.interp.explanations import find_explanations, read_explanations
    from sparsecodes.interp.site import write_site
    from sparsecodes.interp.stats import STATS_META, FeatureStats, collect
    from sparsecodes.loading import load_with_model

    out = out or sae_dir / "site"
    bench = None
    if bench_dir is not None:
        import os

        from sparsecodes.evaluation.suite import bench_label

        try:
            bench_label(bench_dir, sae_dir)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--bench") from e
        bench = Path(os.path.relpath(bench_dir / "bench.html", out)).as_posix()
    coder, adapter, hook_name = load_with_model(sae_dir, model=model, hook=hook, device=device)
    if stats_dir is not None and (stats_dir / STATS_META).is_file():
        stats = FeatureStats.load(stats_dir)
        if stats.n_latents != coder.n_latents:
            raise ValueError(
                f"--stats {stats_dir} holds {stats.n_latents} latents but the coder has "
                f"{coder.n_latents}; pass another --stats directory"
            )
        click.echo(f"reusing feature statistics from {stats_dir}")
    else:
        from sparsecodes.data import load_texts

        stats = collect(
            coder,
            adapter,
            load_texts(corpus),
            hook_name,
            n_tokens,
            context_size=context_size,
            batch_size=batch_size,
            top_k=top_k,
            n_samples=n_samples,
            skip_windows=skip_windows,
            seed=seed,
            progress=sys.stderr.isatty(),
        )
        stats.meta["sae_dir"] = str(sae_dir)
        stats.meta["corpus"] = corpus or "embedded"
        click.echo(
            f"collected statistics over {stats.n_tokens:,} tokens in {stats.meta['seconds']:.1f} s"
        )
        if stats_dir is not None:
            stats.save(stats_dir)
    expl = read_explanations(explanations or find_explanations(sae_dir))
    report = write_site(stats, adapter.tokenizer, out, explanations=expl, bench=bench)
    click.echo(
        f"wrote {report.n_latents} latent pages to {out} in {report.seconds:.1f} s: "
        f"{report.total_bytes / 1e6:.1f} MB total, index {report.index_bytes / 1e3:.0f} kB, "
        f"latent pages {report.latent_page_mean_bytes / 1e3:.1f} kB mean / "
        f"{report.latent_page_max_bytes / 1e3:.1f} kB max\nopen {out / 'index.html'}"
    )


@click.command(
    help=(
        "Serve the feature browser of SAE_DIR (SAE_DIR/site, or --site) with a live page: type "
        "any text and see which latents fire on which tokens (JSON API: POST /api/annotate "
        '{"text": ...}). Binds 127.0.0.1 only unless --host says otherwise.'
    )
)
@click.argument("sae_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--port", type=int, default=8000, show_default=True, help="0 picks a free port.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--site",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Site directory written by `sparsecodes browse` (default: SAE_DIR/site if present).",
)
@coder_model_option()
@coder_hook_option
@device_option
@click.option("--verbose", is_flag=True, help="Log every request.")
def serve(
    sae_dir: Path,
    port: int,
    host: str,
    site: Path | None,
    model: str | None,
    hook: str | None,
    device: str,
    verbose: bool,
) -> None:
    from sparsecodes.interp.serve import AnnotateServer
    from sparsecodes.interp.site import write_shell
    from sparsecodes.loading import load_with_model

    coder, adapter, hook_name = load_with_model(sae_dir, model=model, hook=hook, device=device)
    if site is None and (sae_dir / "site" / "index.html").is_file():
        site = sae_dir / "site"
    tmp = None
    if site is None:
        tmp = tempfile.TemporaryDirectory(prefix="sparsecodes-site-")
        site = Path(tmp.name)
        write_shell(site, f"{adapter.name} · {hook_name}", hook_name, index=False)
        click.echo("no site built (run `sparsecodes browse`); serving the live page only")
    server = AnnotateServer(site, coder, adapter, hook_name, host=host, port=port, verbose=verbose)
    click.echo(f"serving {site} at {server.url} (live text: {server.url}live.html); Ctrl-C stops")
    import signal

    def _stop(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)  # `kill PID` stops as cleanly as Ctrl-C
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped")
    finally:
        server.server_close()
        if tmp is not None:
            tmp.cleanup()


@click.command(
    help=(
        "Show which latents of the coder in SAE_DIR fire on each token of TEXT (per token: its "
        "strongest latents and their activations), then the strongest latents overall."
    )
)
@click.argument("sae_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("text")
@click.option("--top-n", type=int, default=5, show_default=True, help="Latents shown per token.")
@coder_model_option()
@coder_hook_option
@device_option
@click.option(
    "--color/--no-color", default=None, help="Shade tokens (default: when writing to a terminal)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the annotation as JSON.")
def inspect(
    sae_dir: Path,
    text: str,
    top_n: int,
    model: str | None,
    hook: str | None,
    device: str,
    color: bool | None,
    as_json: bool,
) -> None:
    from sparsecodes.interp.annotate import annotate
    from sparsecodes.interp.terminal import format_annotation, latent_summary
    from sparsecodes.loading import load_with_model

    coder, adapter, hook_name = load_with_model(sae_dir, model=model, hook=hook, device=device)
    ann = annotate(coder, adapter, hook_name, text, top_n=top_n)
    if as_json:
        click.echo(json.dumps(ann.to_json(), ensure_ascii=False))
        return
    use_color = sys.stdout.isatty() if color is None else color
    click.echo(f"{adapter.name} · {hook_name} · {coder.n_latents} latents")
    click.echo(format_annotation(ann, color=use_color), color=use_color)
    click.echo("\nstrongest latents:")
    click.echo(latent_summary(ann))
