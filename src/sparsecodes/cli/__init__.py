"""Command-line interface: ``sparsecodes <command>``. Thin: parse, call the API, print.

Each command lives in its own module and is imported only when invoked, so ``--help`` is fast.
"""

from __future__ import annotations

import importlib

import click

# command name -> "module:function" (a click.Command)
COMMANDS: dict[str, str] = {
    "demo": "sparsecodes.cli.demo:demo",
    "synth": "sparsecodes.cli.synth:synth",
    "models": "sparsecodes.cli.models:models",
    "cache": "sparsecodes.cli.cache:cache",
    "train": "sparsecodes.cli.train:train",
    "encoders": "sparsecodes.cli.encoders:encoders",
    "circuit": "sparsecodes.cli.circuit:circuit",
    "eval": "sparsecodes.cli.eval:eval_cmd",
    "bench": "sparsecodes.cli.bench:bench",
    "atoms": "sparsecodes.cli.atoms:atoms",
    "autointerp": "sparsecodes.cli.autointerp:autointerp",
    "browse": "sparsecodes.cli.browse:browse",
    "serve": "sparsecodes.cli.browse:serve",
    "inspect": "sparsecodes.cli.browse:inspect",
    "select": "sparsecodes.cli.select:select",
    "graph": "sparsecodes.cli.graph:graph",
    "steer": "sparsecodes.cli.steer:steer",
    "intervene": "sparsecodes.cli.intervene:intervene",
}

HELP = {
    "demo": "Run the main job end to end on an embedded default.",
    "synth": "The compute-optimal-inference paper's synthetic settings: MCC vs FLOPs.",
    "models": "List the models available offline and their hook points.",
    "cache": "Cache a model's activations at hook points to a sharded on-disk store.",
    "train": "Train sparse coders on cached or streamed activations.",
    "encoders": "List the registered encoders and their parameters.",
    "circuit": "Find attention-head circuits from discrete sparse codes; compare with ablation.",
    "eval": "Evaluate an SAE on held-out text: FVU, L0, CE/KL scores, amortisation gap.",
    "bench": "Compare several SAEs: core, gap, absorption, probing, SCR/TPP, RAVEL, autointerp.",
    "atoms": "Check an SAE's atoms: AIP coherence, uniqueness 1/(2K-1), exact-recovery condition.",
    "autointerp": "Explain latents with a chat model and score them by detection.",
    "browse": "Build a static feature browser (top contexts, histograms, logit effects).",
    "serve": "Serve the feature browser with a live text box (localhost JSON API).",
    "inspect": "Show which latents fire on each token of a text, in the terminal.",
    "select": "Select pool documents whose sparse codes resemble a target set's (data selection).",
    "graph": "Attribution graph of a prompt from per-layer transcoders (JSON + graph page).",
    "steer": "Generate with a latent added, clamped or ablated at the coder's hook, beside as is.",
    "intervene": "Zero or scale transcoder features in the model: target logit and generations.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as e:
            if e.name == module:
                return None
            raise

    def invoke(self, ctx: click.Context) -> object:
        """Turn the library's validation errors into one clear line instead of a traceback."""
        try:
            return super().invoke(ctx)
        except (ValueError, FileNotFoundError, FloatingPointError, RuntimeError) as e:
            if isinstance(e, click.ClickException | click.exceptions.Exit | click.Abort):
                raise
            raise click.ClickException(f"{type(e).__name__}: {e}") from e

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sparsecodes")
def main() -> None:
    """sparsecodes: sparse, interpretable codes for neural-network activations."""


if __name__ == "__main__":
    main()
