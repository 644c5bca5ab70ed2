"""``sparsecodes graph``: an attribution graph of a prompt from per-layer transcoders."""

from __future__ import annotations

import os
from pathlib import Path

import click

from sparsecodes.cli.options import device_option, out_option, transcoders_option

EPILOG = """
\b
Examples:
  sparsecodes graph --transcoders tc/ --prompt "When John and Mary went to the store, John
      gave a drink to" --target " Mary" --contrast " John" --out graphs/ioi
  sparsecodes graph --model smollm2-135m --transcoders tc/l0 --transcoders tc/l3 \\
      --prompt "The war lasted from the year 1732 to the year 17" --target 5 --contrast 2

\b
Each DIR is one layer's transcoder (reads blocks.{i}.mlp_in, writes blocks.{i}.mlp_out; the
directory layout is in docs/graphs.md) or a directory of them. MLPs without a transcoder
count wholly as error nodes.
Writes OUT/graph.json (schema in docs/graphs.md) and OUT/graph.html (open it in a browser;
feature nodes link to --browser sites, whose index pages then list the graph). Prints the graph's size and its replacement and
completeness scores.
"""


@click.command("graph", epilog=EPILOG)
@transcoders_option
@click.option("--prompt", required=True, help="The prompt; the graph explains its last position.")
@click.option("--target", required=True, help="Target token (one token, e.g. ' Mary').")
@click.option("--contrast", default=None, help="Contrast token: attribute target minus this.")
@click.option("--model", default=None, help="Model [default: the one the transcoders record].")
@click.option("--node-threshold", type=click.FloatRange(0, 1), default=0.8, show_default=True)
@click.option("--edge-threshold", type=click.FloatRange(0, 1), default=0.98, show_default=True)
@click.option(
    "--browser",
    "browsers",
    multiple=True,
    metavar="LAYER:DIR",
    help="Feature browser site (sparsecodes browse) of the transcoder of LAYER; its feature "
    "nodes link to DIR/latents/{i}.html. Repeatable.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option(
    "--max-feature-nodes",
    type=click.IntRange(min=0),
    default=None,
    help="Compute incoming edges for at most N features, visited in order of estimated "
    "influence on the target; the others stay as sources with no incoming edges (exact and "
    "approximate parts in docs/graphs.md) [default: all].",
)
@out_option("graph", "Output directory.")
@device_option
def graph(
    transcoder_dirs: tuple[str, ...],
    prompt: str,
    target: str,
    contrast: str | None,
    model: str | None,
    node_threshold: float,
    edge_threshold: float,
    browsers: tuple[str, ...],
    batch_size: int,
    max_feature_nodes: int | None,
    out: Path,
    device: str,
) -> None:
    """Compute, prune and score the attribution graph of PROMPT for TARGET; write JSON + page."""
    from sparsecodes.devices import resolve_device
    from sparsecodes.graphs import build_graph, write_graph, write_graph_page
    from sparsecodes.graphs.io import open_transcoders
    from sparsecodes.models import load_model

    dev = resolve_device(device)
    try:
        model, tcs = open_transcoders(transcoder_dirs, model=model, device=dev)
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    pages: dict[int, str] = {}
    sites: list[Path] = []
    for spec in browsers:
        layer, sep, site = spec.partition(":")
        if not sep or not layer.isdigit() or not Path(site).is_dir():
            raise click.UsageError(f"--browser {spec!r}: give LAYER:DIR with an existing DIR")
        pages[int(layer)] = os.path.relpath(Path(site) / "latents", out).replace(os.sep, "/") + "/"
        if (Path(site) / "data" / "index.js").is_file():
            sites.append(Path(site))
    adapter = load_model(model, device=dev)
    data = build_graph(
        adapter,
        tcs,
        prompt,
        target,
        contrast,
        node_threshold=node_threshold,
        edge_threshold=edge_threshold,
        batch_size=batch_size,
        max_feature_nodes=max_feature_nodes,
        feature_pages=pages,
    )
    write_graph(out / "graph.json", data)
    page = write_graph_page(data, out, sites=sites)
    size, sc, pr = data["size"], data["scores"], data["pruning"]
    click.echo(
        f"{size['n_features']} active features ({size['n_features_visited']} with incoming "
        f"edges), {size['n_nodes']} nodes, {size['n_edges']} "
        f"nonzero edges; kept {size['n_nodes_kept']} nodes ({size['n_features_kept']} features), "
        f"{size['n_edges_kept']} edges"
    )
    click.echo(
        f"target {data['target']['value']:.4f}; replacement score {sc['replacement']:.3f}, "
        f"completeness {sc['completeness']:.3f} (pruned {sc['pruned_replacement']:.3f}, "
        f"{sc['pruned_completeness']:.3f}); attribution {pr['attribution_seconds']:.2f} s, "
        f"pruning {pr['pruning_seconds']:.2f} s"
    )
    click.echo(f"wrote {out / 'graph.json'} and {page}")
