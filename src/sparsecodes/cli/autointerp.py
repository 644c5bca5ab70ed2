"""``sparsecodes autointerp``: explain latents of a trained coder and score them by detection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from sparsecodes.cli.options import (
    LatentRange,
    coder_hook_option,
    coder_model_option,
    device_option,
    out_option,
    seed_option,
)


@click.command(
    help=(
        "Explain latents of the coder in SAE_DIR from their top contexts and score each "
        "explanation by detection (balanced accuracy of telling held-out activating from "
        "non-activating contexts). Uses any OpenAI-compatible chat endpoint (--endpoint, "
        "--model), else the embedded SmolLM2-135M-Instruct locally (offline; its scores are weak). "
        "Writes --out as JSON: summary, config and one record per latent."
    )
)
@click.argument("sae_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--latents",
    type=LatentRange(),
    default="0-9",
    show_default=True,
    help="Latent ids and inclusive ranges, e.g. 0-19 or 3,5,8-9.",
)
@click.option(
    "--endpoint",
    default=None,
    help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1 (default: run locally).",
)
@click.option("--model", "llm", default=None, help="Model name to request from --endpoint.")
@click.option(
    "--api-key-env",
    default=None,
    help="Environment variable holding the API key "
    "(default: SPARSECODES_LLM_API_KEY, then OPENAI_API_KEY; none sends no key).",
)
@click.option("--timeout", default=120.0, show_default=True, help="Seconds per chat request.")
@click.option(
    "--local-model",
    default="smollm2-135m",
    show_default=True,
    help="Local instruct model used when no --endpoint is given.",
)
@click.option(
    "--max-new-tokens", default=64, show_default=True, help="Reply length cap (local model)."
)
@coder_model_option("--lm", "lm")
@coder_hook_option
@click.option("--corpus", default=None, help="Texts to search: 'embedded' (default), a file, ...")
@click.option("--n-windows", default=256, show_default=True, help="Windows searched.")
@click.option("--context-size", default=32, show_default=True, help="Tokens per window.")
@click.option("--n-top", default=10, show_default=True, help="Top contexts shown to explain.")
@click.option("--n-held-out", default=10, show_default=True, help="Held-out activating contexts.")
@click.option("--n-non-activating", default=10, show_default=True, help="Non-activating contexts.")
@click.option(
    "--detect-format",
    type=click.Choice(["list", "yesno"]),
    default=None,
    help="Detection answers: 'list' (numbered excerpts, 'Answer: [1, 4]'; default with "
    "--endpoint) or 'yesno' (one excerpt per call; default locally: small models follow it).",
)
@click.option(
    "--detect-batch-size", default=10, show_default=True, help="Excerpts per 'list' prompt."
)
@click.option("--attempts", default=3, show_default=True, help="Tries per chat call.")
@click.option("--backoff", default=1.0, show_default=True, help="First retry delay (s), doubling.")
@seed_option()
@device_option
@out_option(
    None,
    "Output JSON file [default: SAE_DIR/explanations.json, which browse reads].",
    file_okay=True,
    dir_okay=False,
)
def autointerp(
    sae_dir: Path,
    latents: list[int],
    endpoint: str | None,
    llm: str | None,
    api_key_env: str | None,
    timeout: float,
    local_model: str,
    max_new_tokens: int,
    lm: str | None,
    hook: str | None,
    corpus: str | None,
    n_windows: int,
    context_size: int,
    n_top: int,
    n_held_out: int,
    n_non_activating: int,
    detect_format: str | None,
    detect_batch_size: int,
    attempts: int,
    backoff: float,
    seed: int,
    device: str,
    out: Path | None,
) -> None:
    import os

    import torch

    from sparsecodes.autointerp import (
        AutointerpConfig,
        LocalChatBackend,
        OpenAIChatClient,
        collect_examples,
        run_autointerp,
    )
    from sparsecodes.data import load_texts
    from sparsecodes.loading import load_with_model

    ids = latents
    out = out or sae_dir / "explanations.json"
    if llm and not endpoint:
        raise click.UsageError("--model names the model at --endpoint; give --endpoint too")
    if endpoint and not llm:
        raise click.UsageError("--endpoint needs --model NAME (the model the server serves)")
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise click.UsageError(f"--api-key-env {api_key_env}: that variable is not set")
    torch.manual_seed(seed)
    try:
        coder, adapter, hook = load_with_model(sae_dir, model=lm, hook=hook, device=device)
    except ValueError as e:  # this command names the coder's model --lm (--model is the LLM's)
        raise click.UsageError(str(e).replace("--model", "--lm")) from e
    lm = adapter.name
    recorded_corpus = coder.source.corpus if coder.source is not None else None
    if corpus is None and recorded_corpus not in (None, "embedded"):
        corpus = recorded_corpus
    click.echo(f"collecting contexts for {len(ids)} latents: {lm} {hook}, {n_windows} windows")
    examples = collect_examples(
        coder,
        adapter,
        hook,
        load_texts(corpus),
        ids,
        context_size=context_size,
        n_windows=n_windows,
        n_top=n_top,
        n_held_out=n_held_out,
        n_non_activating=n_non_activating,
        seed=seed,
    )
    if endpoint:
        backend: Any = OpenAIChatClient(endpoint, llm or "", api_key=api_key, timeout=timeout)
    elif local_model == adapter.name:
        backend = LocalChatBackend.from_adapter(adapter, max_new_tokens=max_new_tokens, seed=seed)
    else:
        backend = LocalChatBackend(
            local_model, max_new_tokens=max_new_tokens, device=device, seed=seed
        )
    cfg = AutointerpConfig(
        detect_batch_size=detect_batch_size,
        attempts=attempts,
        backoff=backoff,
        seed=seed,
        detect_format=detect_format or ("list" if endpoint else "yesno"),  # type: ignore[arg-type]
    )

    def show(r: Any) -> None:
        score = f"{r.score:.3f}" if r.score is not None else "-"
        tail = f"  [{r.error}]" if r.error else ""
        click.echo(
            f"latent {r.latent:>6}  {r.status:<7} score {score:>5} "
            f"(n_pos {r.n_pos}, n_neg {r.n_neg})  {r.explanation or ''}{tail}"
        )

    report = run_autointerp(examples, backend, config=cfg, on_result=show)
    report.config.update(
        {
            "sae_dir": str(sae_dir),
            "lm": lm,
            "hook": hook,
            "corpus": corpus or "embedded",
            "n_windows": n_windows,
            "context_size": context_size,
            "n_top": n_top,
            "n_held_out": n_held_out,
            "n_non_activating": n_non_activating,
        }
    )
    report.save(out)
    s = report.summary()
    mean = f"{s['mean_score']:.3f}" if s["mean_score"] is not None else "n/a"
    click.echo(
        f"{out}: {s['n_ok']} scored (mean balanced accuracy {mean}, chance 0.5), "
        f"{s['n_failed']} failed, {s['n_skipped']} skipped; {s['elapsed_s']:.1f} s"
    )
