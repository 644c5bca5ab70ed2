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
        "Explain latents of the coder in SAE_DIR from their top contexts and score them. "
        "Scorers (--scorers): detection (balanced accuracy of telling held-out activating from "
        "non-activating contexts), fuzz (are the marked tokens the right ones), intruder (find "
        "the non-activating context among activating ones; needs no explanation), embedding "
        "(ROC AUC of explanation-context similarity with the embedded MiniLM; needs no chat "
        "model) and simulation (correlation of predicted and true per-token activations). Each "
        "score comes with a 95% interval; a failed call is never a score of 0. Uses any "
        "OpenAI-compatible endpoint (--endpoint, --model), else the embedded "
        "SmolLM2-135M-Instruct locally (offline; its scores are weak). Writes --out as JSON: "
        "summary, config and one record per latent."
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
@click.option(
    "--scorers",
    default="detection",
    show_default=True,
    help="Comma-separated scorers: detection, fuzz, intruder, embedding, simulation. The first "
    "gives each latent's 'score' and 'status'.",
)
@click.option(
    "--explanations",
    "explanations_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Score the explanations in this earlier output file instead of writing new ones "
    "(no explainer calls; with --scorers embedding no chat model is used at all).",
)
@click.option("--intruder-shown", default=5, show_default=True, help="Excerpts per intruder trial.")
@click.option(
    "--embedding-model",
    default="minilm-l6",
    show_default=True,
    help="Sentence encoder of the embedding scorer (an embedded name or a local directory).",
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
    scorers: str,
    explanations_file: Path | None,
    intruder_shown: int,
    embedding_model: str,
    attempts: int,
    backoff: float,
    seed: int,
    device: str,
    out: Path | None,
) -> None:
    import os

    import torch

    from sparsecodes.autointerp import (
        SCORER_NAMES,
        AutointerpConfig,
        LocalChatBackend,
        OpenAIChatClient,
        collect_examples,
        run_autointerp,
    )
    from sparsecodes.autointerp.pipeline import build_scorers, read_explanations
    from sparsecodes.data import load_texts
    from sparsecodes.loading import load_with_model

    ids = latents
    out = out or sae_dir / "explanations.json"
    names = [n.strip() for n in scorers.split(",") if n.strip()]
    bad = [n for n in names if n not in SCORER_NAMES]
    if bad or not names:
        raise click.BadParameter(
            f"unknown scorer(s) {bad}; choose from {', '.join(SCORER_NAMES)}",
            param_hint="--scorers",
        )
    given = read_explanations(explanations_file) if explanations_file else {}
    missing = [i for i in ids if i not in given]
    if explanations_file and missing:
        click.echo(
            f"note: {explanations_file} has no explanation for latents {missing[:10]}; they are "
            "explained now"
        )
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
    chat_needed = bool(missing) or any(n in names for n in ("detection", "fuzz", "intruder"))
    backend: Any = None
    if endpoint:
        backend = OpenAIChatClient(endpoint, llm or "", api_key=api_key, timeout=timeout)
    elif not chat_needed and "simulation" not in names:
        backend = None  # e.g. embedding of given explanations: no chat model at all
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
        others = " ".join(
            f"{k} {v.score:.3f}" if v.score is not None else f"{k} {v.status}"
            for k, v in list(r.scores.items())[1:]
        )
        tail = (f"  ({others})" if others else "") + tail
        click.echo(
            f"latent {r.latent:>6}  {r.status:<7} score {score:>5} "
            f"(n_pos {r.n_pos}, n_neg {r.n_neg})  {r.explanation or ''}{tail}"
        )

    chosen = build_scorers(
        names,
        backend,
        cfg,
        endpoint=endpoint,
        model=llm,
        api_key=api_key,
        timeout=timeout,
        intruder_shown=intruder_shown,
        embedding_model=embedding_model,
        device=device,
    )
    report = run_autointerp(
        examples, backend, config=cfg, scorers=chosen, explanations=given, on_result=show
    )
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
        f"{out}: {s['n_ok']} scored by {names[0]} (mean {mean}), "
        f"{s['n_failed']} failed, {s['n_skipped']} skipped; {s['elapsed_s']:.1f} s"
    )
    for name, b in s["scorers"].items():
        m = "n/a" if b["mean"] is None else f"{b['mean']:.3f}"
        ci = "" if b["mean_low"] is None else f" [{b['mean_low']:.3f}, {b['mean_high']:.3f}]"
        click.echo(
            f"  {name:<10} mean {m}{ci} (chance {b['chance']}) over {b['n_ok']} latents; "
            f"{b['n_failed']} failed, {b['n_skipped']} skipped"
        )
