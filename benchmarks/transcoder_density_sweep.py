"""Do wider or denser transcoders respond to input changes more like their MLP? (an experiment)

`transcoder_response_smollm2.py` finds that SmolLM2's transcoders (BatchTopK, k = 32 of 1152)
respond to an upstream change of their input almost unlike their MLP: linear response error
0.87-1.0, while the MLP's own Jacobian predicts the change to 0.018. With its active set held, a
transcoder's response is ``dx @ W_enc[:, S] @ W_dec_out[S] (+ dx @ W_skip)``: rank at most
``k`` plus one token-independent map, where the MLP's Jacobian (1536 gated units) changes from
token to token. This script tests that explanation on one layer: it trains transcoders of
several widths and ``k`` on the same cached activations, so that the response check can score
them side by side.

1. Reads ``blocks.L.mlp_in`` / ``blocks.L.mlp_out`` (``L = --layer``) for ``--tokens`` tokens of
   the embedded corpus (128-token windows, BOS rows dropped) once, in memory; the last
   ``--held-out`` tokens are kept out of training.
2. Trains one BatchTopK transcoder per ``--config NAME=K:WIDTH`` (``--skip`` adds the linear skip
   path) with ``Transcoder.fit`` for ``--steps`` steps of ``--batch-size`` rows, the same seed.
3. Writes each to ``OUT/NAME/`` (a transcoder directory) and ``OUT/sweep.json`` with the
   held-out FVU of the MLP output, L0 and the training time.

Then score them on held-out ablation-induced changes::

    python benchmarks/transcoder_density_sweep.py --layer 14 --out-dir /tmp/dens14 \\
        --config k32=32:1152 --config k128=128:4608 --config k512=512:4608 --skip
    python benchmarks/transcoder_response_smollm2.py --transcoders runs/tc30 --score-layers 14 \\
        --candidate k32=/tmp/dens14/k32 --candidate k128=/tmp/dens14/k128 ...
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sparsecodes.data import load_texts, token_windows
from sparsecodes.evaluation.core import collect_rows_at
from sparsecodes.models import load_model
from sparsecodes.transcoder import Transcoder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layer", type=int, default=14)
    ap.add_argument(
        "--tokens",
        type=int,
        default=237_000,
        help="training rows; with --held-out at most the embedded corpus's 253,895 tokens",
    )
    ap.add_argument("--held-out", type=int, default=16_384)
    ap.add_argument(
        "--config",
        action="append",
        required=True,
        metavar="NAME=K:WIDTH",
        help="one BatchTopK transcoder with k=K and WIDTH latents (repeatable)",
    )
    ap.add_argument("--skip", action="store_true", help="every transcoder gets a skip path")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dir", type=Path, required=True)
    a = ap.parse_args()
    configs = []
    for spec in a.config:
        name, _, kw = spec.partition("=")
        k, _, width = kw.partition(":")
        if not (name and k.isdigit() and width.isdigit()):
            ap.error(f"--config {spec!r}: expected NAME=K:WIDTH, e.g. k128=128:4608")
        configs.append((name, int(k), int(width)))
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    lm = load_model("smollm2-135m", device="cpu")
    hooks = [f"blocks.{a.layer}.mlp_in", f"blocks.{a.layer}.mlp_out"]
    windows = token_windows(load_texts(None), lm.tokenizer, 128)
    rows = collect_rows_at(lm, hooks, windows, a.tokens + a.held_out, workers=a.threads)
    x, y = rows[hooks[0]], rows[hooks[1]]
    if len(x) < a.tokens + a.held_out:
        ap.error(f"the embedded corpus gave {len(x)} tokens, fewer than --tokens + --held-out")
    x_tr, y_tr, x_te, y_te = x[: a.tokens], y[: a.tokens], x[a.tokens :], y[a.tokens :]
    collect_s = time.perf_counter() - t0
    print(f"collected {len(x)} rows of layer {a.layer} in {collect_s:.0f} s", flush=True)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for name, k, width in configs:
        t1 = time.perf_counter()
        tc = Transcoder(
            x.shape[1],
            width,
            "batchtopk",
            skip=a.skip,
            in_hooks=hooks[0],
            out_hooks=hooks[1],
            normalize="expected_norm",
            seed=a.seed,
            k=k,
        )
        tc.fit(x_tr, y_tr, steps=a.steps, batch_size=a.batch_size, lr=a.lr, decay_fraction=0.2)
        train_s = time.perf_counter() - t1
        tc.eval()
        with torch.no_grad():
            codes = tc.activate(tc.encode_pre(x_te))
            y_hat = tc.forward_out(x_te)
        fvu = float((y_hat - y_te).pow(2).sum() / (y_te - y_te.mean(0)).pow(2).sum())
        l0 = float((codes != 0).sum(1).float().mean())
        tc.save(a.out_dir / name)
        row = {"name": name, "k": k, "width": width, "skip": a.skip, "heldout_fvu": fvu}
        row |= {"heldout_l0": l0, "train_seconds": train_s}
        results.append(row)
        print(json.dumps(row), flush=True)
    (a.out_dir / "sweep.json").write_text(
        json.dumps(
            {
                "args": {k: str(v) for k, v in vars(a).items()},
                "collect_seconds": collect_s,
                "results": results,
                "seconds": time.perf_counter() - t0,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
