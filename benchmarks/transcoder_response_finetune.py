"""Fine-tune one SmolLM2 transcoder to respond to input changes as its MLP does (an experiment).

`transcoder_response_smollm2.py` shows that transcoders trained on reconstruction respond to a
change of their input almost unlike their MLP (linear response error ~0.9-1.0), which is why
attribution graphs mispredict ablations. This tries the direct fix on one layer: continue training
a trained transcoder with a second loss on its response.

Per step, on ``--batch-tokens`` tokens of the embedded corpus read live at ``blocks.L.mlp_in`` /
``blocks.L.mlp_out`` (``L = --layer``):

- reconstruction: ``|tc(x) - y|^2 / |y - mean(y)|^2`` (the FVU of the batch);
- response: for directions ``v`` scaled by ``--eps`` (``--directions tokens``: another token's
  input minus this one's, ``x[perm] - x``; ``gaussian``: isotropic Gaussian directions with each
  row's norm; ``upstream``: the decoder direction ``u`` of a random feature of the transcoders in
  ``--upstream DIR`` below layer L, carried into this MLP's input through its RMSNorm at the row,
  ``g * (u - (x_hat . u / d) x_hat)`` with ``x_hat = mlp_in / g``, i.e. the direct path by which
  an upstream ablation moves the input; each direction scaled to the row's norm), the MLP's
  change ``r = MLP(x + eps v) - MLP(x)`` (the model's own MLP module, no gradient) against the transcoder's linear response with its active set held,
  ``lin = (gate * (pre(x + eps v) - pre(x))) @ W_dec_out (+ eps v @ W_skip)``, as the graph's
  edges use it: ``|lin - r|^2 / |r|^2``;
- loss = reconstruction + ``--weight`` x response; Adam at ``--lr``; decoder rows renormalised to
  unit norm after each step (the dictionary's constraint).

The fine-tuned transcoder is saved to ``--out-dir`` (a transcoder directory that
``transcoder_response_smollm2.py --candidate NAME=DIR`` scores on held-out ablation-induced
changes). Run::

    python benchmarks/transcoder_response_finetune.py --transcoder RUN/final --layer 14 \\
        --steps 300 --out-dir /tmp/jac14
"""

from __future__ import annotations

import argparse
import json
import time
from itertools import cycle
from pathlib import Path

import torch

from sparsecodes.data import batch_windows, load_texts, token_windows
from sparsecodes.graphs.io import open_transcoders
from sparsecodes.graphs.transcoder import hook_layer
from sparsecodes.models import load_model
from sparsecodes.transcoder import Transcoder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--transcoder", type=Path, required=True, help="a trained transcoder directory")
    ap.add_argument("--layer", type=int, required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-tokens", type=int, default=512)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--directions", choices=["tokens", "gaussian", "upstream"], default="tokens")
    ap.add_argument(
        "--upstream",
        type=Path,
        default=None,
        help="with --directions upstream: transcoders whose features below --layer give them",
    )
    ap.add_argument("--weight", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dir", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t0 = time.perf_counter()
    lm = load_model("smollm2-135m", device="cpu")
    mlp = lm.model.model.layers[a.layer].mlp
    if a.directions == "upstream":
        if a.upstream is None:
            ap.error("--directions upstream needs --upstream DIR")
        gain = lm.model.model.layers[a.layer].post_attention_layernorm.weight.detach()
        _, ups = open_transcoders([a.upstream], model="smollm2-135m")
        atoms = [tc.W_dec_out for tc in ups if hook_layer(tc.in_hook, "mlp_in") < a.layer]
        if not atoms:
            ap.error(f"--upstream {a.upstream}: no transcoder below layer {a.layer}")
        atoms = torch.cat(atoms).detach()
        atoms = atoms / atoms.norm(dim=1, keepdim=True).clamp_min(1e-12)
    tc = Transcoder.load(a.transcoder)
    tc.train()
    hooks = [f"blocks.{a.layer}.mlp_in", f"blocks.{a.layer}.mlp_out"]
    per = max(1, a.batch_tokens // 128)
    windows = cycle(list(batch_windows(token_windows(load_texts(None), lm.tokenizer, 128), per)))
    opt = torch.optim.Adam([p for p in tc.parameters() if p.requires_grad], lr=a.lr)
    log = []
    for step in range(a.steps):
        ids, keep = next(windows)
        with torch.no_grad():
            acts = lm.run(ids, hooks=hooks)
            x, y = acts[hooks[0]][keep], acts[hooks[1]][keep]
            if a.directions == "tokens":
                v = a.eps * (x[torch.randperm(len(x))] - x)
            else:  # a direction per row, scaled to the row's norm
                if a.directions == "gaussian":
                    g = torch.randn_like(x)
                else:  # an upstream atom through this MLP's RMSNorm at the row
                    u = atoms[torch.randint(len(atoms), (len(x),))]
                    x_hat = x / gain
                    g = gain * (u - (x_hat * u).sum(1, keepdim=True) / x.shape[1] * x_hat)
                v = a.eps * g * (x.norm(dim=1, keepdim=True) / g.norm(dim=1, keepdim=True))
            r = mlp(x + v) - mlp(x)
        pre0, pre1 = tc.encode_pre(x), tc.encode_pre(x + v)
        codes = tc.activate(pre0)
        gate = (codes != 0).to(pre0.dtype)
        y_hat = codes @ tc.W_dec_out + tc.b_dec_out
        lin = (gate * (pre1 - pre0)) @ tc.W_dec_out
        if tc.W_skip is not None:
            y_hat = y_hat + x @ tc.W_skip
            lin = lin + v @ tc.W_skip
        rec = (y_hat - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum()
        resp = (lin - r).pow(2).sum() / r.pow(2).sum()
        loss = rec + a.weight * resp
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            W = tc.dictionary.W_dec
            W.div_(W.norm(dim=1, keepdim=True).clamp_min(1e-8))
        if step % 25 == 0 or step == a.steps - 1:
            row = {"step": step, "fvu": rec.item(), "response_error": resp.item() ** 0.5}
            log.append(row)
            print(json.dumps(row), flush=True)
    tc.eval()
    tc.save(a.out_dir)
    (a.out_dir / "finetune.json").write_text(
        json.dumps(
            {
                "args": {k: str(v) for k, v in vars(a).items()},
                "log": log,
                "seconds": time.perf_counter() - t0,
            },
            indent=1,
        )
    )
    print(f"saved {a.out_dir} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
