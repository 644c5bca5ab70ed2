"""Steering SmolLM2-135M with an SAE latent that fires on digits raises the digits' logits.

Setting: the small TopK SAE of ``uses_common.ensure_sae`` (1536 latents, k = 32, on
``blocks.12.resid_post``, trained on the embedded corpus with every 20th document held out).

1. **Token class**: the vocabulary entries whose text (stripped of spaces) is one or more
   decimal digits.
2. **Latent, chosen from activations only**: over windows of the training documents, the latent
   whose firing (code > 0) best matches "this token is a digit" (highest F1), BOS excluded.
   A **control** latent: the one with the nearest firing density among latents whose firings
   are at most 10% digits.
3. **Held-out prompts**: ``--n-prompts`` windows of up to ``--context`` tokens cut at random
   positions of the held-out documents (seeded).
4. **Steering**: ``alpha * d_i`` added at every position (``sparsecodes.uses.steering``),
   ``alpha`` = a multiple of the latent's largest activation seen in step 2. At the next
   position after each prompt: the probability mass of the digit class, the mean digit logit
   minus the mean logit over the vocabulary (shift-free), and whether the top token is a digit;
   steered vs unsteered, paired over prompts (mean change, bootstrap 95% interval, paired
   Cohen's d = mean change / sd of changes).

Run: ``python benchmarks/bench_steering.py [--cache-dir DIR]``; writes
``benchmarks/results/steering_smollm2.json``.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from pathlib import Path
from typing import Any

import torch

from sparsecodes.data import load_texts
from sparsecodes.files import write_json
from sparsecodes.models import load_model
from sparsecodes.seeding import derive_seed, generator
from sparsecodes.uses.steering import compare, steering
from uses_common import HOOK, MODEL, ensure_sae, environment

logger = logging.getLogger("bench_steering")


def digit_tokens(tokenizer: Any, vocab_size: int) -> list[int]:
    out = []
    for i in range(vocab_size):
        s = tokenizer.decode([i]).strip()
        if s and s.isascii() and s.isdigit():
            out.append(i)
    return out


@torch.no_grad()
def choose_latent(adapter: Any, coder: Any, texts: list[str], is_digit: torch.Tensor, args):
    """F1 of (code > 0) vs (token is a digit) per latent over ``args.select_tokens`` tokens."""
    L = coder.n_latents
    tp, fire, max_act = torch.zeros(L), torch.zeros(L), torch.zeros(L)
    n_digit = n_tok = 0
    for text in texts:
        ids = adapter.encode(text)[0][:, : args.select_context]
        codes = coder.encode(adapter.run(ids, None, [HOOK])[HOOK][0, 1:])  # BOS excluded
        dig = is_digit[ids[0, 1:]]
        f = (codes > 0).float()
        tp += f[dig].sum(0)
        fire += f.sum(0)
        max_act = torch.maximum(max_act, codes.max(0).values)
        n_digit += int(dig.sum())
        n_tok += dig.numel()
        if n_tok >= args.select_tokens:
            break
        logger.info("selection: %d tokens", n_tok)
    f1 = 2 * tp / (fire + n_digit).clamp(min=1)
    precision = tp / fire.clamp(min=1)
    best = int(f1.argmax())
    density = fire / n_tok
    ok = (precision <= 0.1) & (fire > 0)
    ok[best] = False
    control = int(torch.where(ok, (density - density[best]).abs(), torch.inf).argmin())

    def info(i: int) -> dict[str, float]:
        return {
            "latent": i,
            "f1_digit": float(f1[i]),
            "precision_digit": float(precision[i]),
            "recall_digit": float(tp[i] / max(n_digit, 1)),
            "density": float(density[i]),
            "max_activation": float(max_act[i]),
        }

    top5 = f1.topk(5).indices.tolist()
    return info(best), info(control), [info(i) for i in top5], n_tok, n_digit


def prompts_from(adapter: Any, texts: list[str], args) -> list[list[int]]:
    rng = random.Random(derive_seed(args.seed, "steer-prompts"))
    rows = []
    docs = [adapter.encode(t)[0][0].tolist() for t in texts]
    docs = [d for d in docs if len(d) > 8]
    while len(rows) < args.n_prompts:
        d = rng.choice(docs)
        cut = rng.randrange(8, len(d))
        start = max(1, cut - args.context + 1)
        rows.append([d[0], *d[start:cut]])  # BOS + up to context-1 tokens
    return rows


@torch.no_grad()
def next_token_stats(adapter: Any, rows: list[list[int]], digits: torch.Tensor, batch: int):
    """Per prompt: digit probability mass, centred digit logit, top token is a digit."""
    mass, centred, top = [], [], []
    pad = 0
    for i in range(0, len(rows), batch):
        part = rows[i : i + batch]
        width = max(len(r) for r in part)
        ids = torch.full((len(part), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, r in enumerate(part):
            ids[j, : len(r)] = torch.tensor(r)
            mask[j, : len(r)] = 1
        logits = adapter.logits(ids, mask).float()
        last = logits[torch.arange(len(part)), mask.sum(1) - 1]  # [b, V]
        p = last.softmax(-1)
        mass.append(p[:, digits].sum(-1))
        centred.append(last[:, digits].mean(-1) - last.mean(-1))
        top.append(torch.isin(last.argmax(-1), digits).float())
    return torch.cat(mass), torch.cat(centred), torch.cat(top)


def paired(diff: torch.Tensor, seed: int) -> dict[str, float]:
    g = generator(seed, "bootstrap")
    n = diff.numel()
    boots = diff[torch.randint(0, n, (2000, n), generator=g)].mean(1)
    lo, hi = boots.quantile(torch.tensor([0.025, 0.975], dtype=boots.dtype)).tolist()
    sd = float(diff.std())
    return {
        "mean_change": float(diff.mean()),
        "ci95": [lo, hi],
        "cohens_d_paired": float(diff.mean()) / sd if sd > 0 else None,  # no change at all
        "fraction_rose": float((diff > 0).float().mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--select-tokens", type=int, default=16_000)
    ap.add_argument("--select-context", type=int, default=128)
    ap.add_argument("--n-prompts", type=int, default=64)
    ap.add_argument("--context", type=int, default=24)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument(
        "--multiples",
        type=float,
        nargs="+",
        default=[0.0, 1.0, 2.0, 4.0, 8.0],
        help="alpha as multiples of the digit latent's largest activation",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/sparsecodes_uses"))
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "steering_smollm2.json"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    smol = load_model(MODEL, device="cpu")
    coder = ensure_sae(args.cache_dir, smol).eval()
    docs = list(load_texts(None))
    train = [t for i, t in enumerate(docs) if i % 20]
    held = [t for i, t in enumerate(docs) if i % 20 == 0]
    digit_ids = digit_tokens(smol.tokenizer, smol.vocab_size)
    digits = torch.tensor(digit_ids)
    is_digit = torch.zeros(smol.vocab_size, dtype=torch.bool)
    is_digit[digits] = True
    best, control, top5, n_tok, n_digit = choose_latent(smol, coder, train, is_digit, args)
    logger.info("chosen latent %s; control %s", best, control)
    rows = prompts_from(smol, held, args)
    logger.info("%d prompts; unsteered pass", len(rows))
    base = next_token_stats(smol, rows, digits, args.batch)
    curves: dict[str, list[dict[str, Any]]] = {}
    for role, lat in (("digit_latent", best), ("control_latent", control)):
        curves[role] = []
        for m in args.multiples:
            alpha = m * best["max_activation"]  # same alpha for both latents
            with steering(smol, coder, HOOK, add={lat["latent"]: alpha}):
                st = next_token_stats(smol, rows, digits, args.batch)
            entry = {
                "multiple_of_max_activation": m,
                "alpha": alpha,
                "digit_mass": float(st[0].mean()),
                "digit_mass_unsteered": float(base[0].mean()),
                "centred_digit_logit": float(st[1].mean()),
                "centred_digit_logit_unsteered": float(base[1].mean()),
                "top_token_is_digit": float(st[2].mean()),
                "top_token_is_digit_unsteered": float(base[2].mean()),
                "identical_to_unsteered": bool(torch.equal(st[0], base[0])),
                "digit_mass_change": paired(st[0] - base[0], args.seed),
                "centred_digit_logit_change": paired(st[1] - base[1], args.seed),
            }
            curves[role].append(entry)
            logger.info(
                "%s alpha %.2f: digit mass %.4f -> %.4f, centred logit %+.3f",
                role,
                alpha,
                entry["digit_mass_unsteered"],
                entry["digit_mass"],
                entry["centred_digit_logit_change"]["mean_change"],
            )
    examples = []
    for text in ("The answer is", "Python version", "Chapter"):
        r = compare(
            smol, coder, text, HOOK, add={best["latent"]: best["max_activation"]}, max_new_tokens=12
        )
        examples.append({"prompt": text, "unsteered": r.unsteered, "steered": r.steered})
    result = {
        "setting": {
            "model": MODEL,
            "hook": HOOK,
            "sae": str(args.cache_dir / "sae"),
            "n_latents": coder.n_latents,
            "token_class": "digits: vocabulary entries whose stripped text is ASCII decimal digits",
            "n_class_tokens": len(digit_ids),
            "selection": "F1 of (code > 0) vs (token is a digit) on training documents",
            "selection_tokens": n_tok,
            "selection_digit_tokens": n_digit,
            "steered_positions": "all",
            **{k: v for k, v in vars(args).items() if k not in ("cache_dir", "out")},
        },
        "digit_latent": best,
        "control_latent": control,
        "top5_by_f1": top5,
        "curves": curves,
        "generations_alpha_1x_max": examples,
        "seconds": round(time.perf_counter() - t0, 1),
        "environment": environment(),
    }
    write_json(args.out, result)


if __name__ == "__main__":
    main()
