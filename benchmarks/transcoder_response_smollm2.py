"""Do SmolLM2's transcoders respond to a perturbation as its MLPs do? (why graphs mispredict)

An attribution graph predicts an ablation's total effect by propagating it linearly through the
downstream transcoders (attention, norms and every feature's on/off state held). That is right
only if each transcoder's response to a change of its input matches its MLP's. This measures it
directly, on held-out IOI prompts: ablate one active feature (``--per-prompt`` random draws among
features with layer < 26, through its transcoder, error term kept, as ``sparsecodes intervene``
does), run the real model, and at every later layer ``m`` compare, for the same change of the
MLP's input ``dx_m`` (all positions):

- ``real``: the MLP's change ``MLP(x + dx) - MLP(x)``;
- ``linear``: the transcoder's response with its active set and gates held (the graph's edges),
  ``(gate * (pre(x + dx) - pre(x))) @ W_dec (+ dx @ W_skip)``;
- ``nonlinear``: ``tc(x + dx) - tc(x)`` (active sets free);
- ``mlp_jacobian``: the MLP's own Jacobian at the clean input times ``dx`` (``torch.func.jvp``):
  what the best model linear in the MLP's input change could predict (the rest is the MLP's
  curvature over a change of that size).

Per layer it reports ``|linear - real| / |real|``, ``|nonlinear - real| / |real|`` and
``|mlp_jacobian - real| / |real|`` (squared norms summed over prompts, draws and positions before
the ratio; 1.0 = no better than predicting no change) and ``|linear| / |real|``. Run:
``python benchmarks/transcoder_response_smollm2.py --transcoders DIR [--prompts 4 --per-prompt 8]``
(writes ``benchmarks/results/transcoder_response_smollm2.json``).

``--candidate NAME=DIR`` (repeatable) scores other transcoders (e.g. a skip transcoder, or one
trained longer) on the very same input changes: the ablations still go through ``--transcoders``,
and every candidate transcoder of a scored layer gets the same three numbers under
``candidates[NAME]``. ``--score-layers A-B`` scores only those layers (the model then runs only
up to the last of them, and features are drawn below it), which makes such a comparison quick.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from sparsecodes.circuits.tasks import ioi
from sparsecodes.files import write_json
from sparsecodes.graphs.io import open_transcoders
from sparsecodes.models import load_model
from sparsecodes.seeding import generator
from sparsecodes.uses.steering import LatentEdit, intervening

OUT = Path(__file__).parent / "results" / "transcoder_response_smollm2.json"


def least_squares_maps(lm, layers: list[int], n_windows: int) -> dict[int, torch.Tensor]:
    """Per layer, ``W`` ``[d, d]`` of the least-squares fit ``mlp_out ~ mlp_in @ W + c`` over the
    first ``n_windows`` 128-token windows of the embedded corpus (ridge 1e-4 of the mean
    variance)."""
    from sparsecodes.data import batch_windows, load_texts, token_windows

    wins = []
    for w in token_windows(list(load_texts(None)), lm.tokenizer, 128):
        wins.append(w)
        if len(wins) == n_windows:
            break
    hooks = [h for i in layers for h in (f"blocks.{i}.mlp_in", f"blocks.{i}.mlp_out")]
    d = lm.d_model
    mom = {
        i: [
            0,
            torch.zeros(d + 1, d + 1, dtype=torch.float64),
            torch.zeros(d + 1, d, dtype=torch.float64),
        ]
        for i in layers
    }
    for ids, keep in batch_windows(wins, 8):
        acts = lm.run(ids, hooks=hooks)
        for i in layers:
            x = acts[f"blocks.{i}.mlp_in"][keep].double()
            x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
            y = acts[f"blocks.{i}.mlp_out"][keep].double()
            mom[i][1] += x.T @ x
            mom[i][2] += x.T @ y
    out = {}
    for i, (_, xx, xy) in mom.items():
        lam = 1e-4 * float(torch.diagonal(xx)[:d].mean())
        reg = lam * torch.eye(d + 1, dtype=xx.dtype)
        reg[d, d] = 0
        out[i] = torch.linalg.solve(xx + reg, xy)[:d].float()
    return out


def _response_sums(tc, x0, x1, real, lsr) -> torch.Tensor:
    """``[6]`` float64: ``|real|^2, |lin - real|^2, |nl - real|^2, |lin|^2, |nl|^2, |ls - real|^2``
    for one transcoder's linear (active set and gates held) and nonlinear responses to
    ``x0 -> x1``, against the MLP's ``real`` change and the least-squares map's ``lsr``."""
    pre0, pre1 = tc.encode_pre(x0), tc.encode_pre(x1)
    gate = (tc.activate(pre0) != 0).to(pre0.dtype)
    lin = (gate * (pre1 - pre0)) @ tc.W_dec_out
    if tc.W_skip is not None:
        lin = lin + (x1 - x0) @ tc.W_skip
    nl = tc.forward_out(x1) - tc.forward_out(x0)
    parts = [real, lin - real, nl - real, lin, nl, lsr - real]
    return torch.tensor([float(t.pow(2).sum()) for t in parts], dtype=torch.float64)


def _ratios(s: torch.Tensor, with_ls: bool) -> dict[str, float]:
    out = {
        "rel_err_linear": float((s[1] / s[0]).sqrt()),
        "rel_err_nonlinear": float((s[2] / s[0]).sqrt()),
        "norm_ratio_linear": float((s[3] / s[0]).sqrt()),
        "norm_ratio_nonlinear": float((s[4] / s[0]).sqrt()),
    }
    if with_ls:
        out["rel_err_least_squares"] = float((s[5] / s[0]).sqrt())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--transcoders", type=Path, required=True)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--per-prompt", type=int, default=8)
    ap.add_argument("--max-layer", type=int, default=25, help="ablated features' last layer")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--ls-windows",
        type=int,
        default=0,
        help="also score a plain least-squares linear map mlp_in -> mlp_out per layer, fitted on "
        "this many 128-token windows of the embedded corpus (the MLP's average Jacobian)",
    )
    ap.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also score the transcoders in DIR on the same input changes (repeatable)",
    )
    ap.add_argument("--score-layers", default=None, help="score only layers A-B (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    lm = load_model("smollm2-135m", device="cpu")
    _, tcs = open_transcoders([a.transcoders], model="smollm2-135m")
    by_layer = {int(tc.in_hook.split(".")[1]): tc for tc in tcs}
    layers = sorted(by_layer)
    if a.score_layers:
        lo, _, hi = a.score_layers.partition("-")
        scored = [i for i in layers if int(lo) <= i <= int(hi or lo)]
        if not scored:
            ap.error(f"--score-layers {a.score_layers}: no transcoder of {a.transcoders} is there")
        layers = [i for i in layers if i <= scored[-1]]
    else:
        scored = layers
    candidates = {}  # name -> {layer: transcoder}
    for spec in a.candidate:
        name, _, path = spec.partition("=")
        _, extra = open_transcoders([Path(path)], model="smollm2-135m")
        candidates[name] = {int(tc.in_hook.split(".")[1]): tc for tc in extra}
    hooks = [h for i in layers for h in (f"blocks.{i}.mlp_in", f"blocks.{i}.mlp_out")]
    prompts = [p.text for p in ioi(lm.tokenizer, a.prompts, seed=1)]  # held out: seed 0 fits
    g = generator(a.seed, "transcoder-response")
    ls = least_squares_maps(lm, scored, a.ls_windows) if a.ls_windows else {}
    # per layer: |real|^2, |lin - real|^2, |nl - real|^2, |lin|^2, |nl|^2, |ls - real|^2
    sums = {i: torch.zeros(6, dtype=torch.float64) for i in scored}
    # per scored layer: |real|^2 and |J dx - real|^2 for the MLP's own Jacobian at the clean input
    jac_sums = {i: torch.zeros(2, dtype=torch.float64) for i in scored}
    cand_sums = {
        (name, i): torch.zeros(6, dtype=torch.float64)
        for name, tcs_ in candidates.items()
        for i in tcs_
        if i in scored
    }
    draws = []
    with torch.no_grad():
        for text in prompts:
            ids = lm.encode(text)[0]
            T = ids.shape[1]
            clean = lm.run(ids, hooks=hooks)
            active = []  # (layer, pos, latent, code)
            for i in layers:
                if i > a.max_layer or i >= scored[-1]:
                    continue
                codes = by_layer[i].activate(by_layer[i].encode_pre(clean[f"blocks.{i}.mlp_in"][0]))
                for p, j in (codes != 0).nonzero().tolist():
                    if p > 0:  # not the first token (attention sink)
                        active.append((i, p, j, float(codes[p, j])))
            for n in torch.randperm(len(active), generator=g)[: a.per_prompt].tolist():
                layer, pos, lat, code = active[n]
                mask = torch.zeros(T, dtype=torch.bool)
                mask[pos] = True
                with intervening(lm, [LatentEdit(by_layer[layer], ablate=[lat], positions=mask)]):
                    abl = lm.run(ids, hooks=hooks)
                draws.append({"layer": layer, "pos": pos, "latent": lat, "code": code})
                for m in scored:
                    if m <= layer:
                        continue
                    x0, x1 = clean[f"blocks.{m}.mlp_in"][0], abl[f"blocks.{m}.mlp_in"][0]
                    real = abl[f"blocks.{m}.mlp_out"][0] - clean[f"blocks.{m}.mlp_out"][0]
                    lsr = (x1 - x0) @ ls[m] if m in ls else torch.zeros_like(real)
                    sums[m] += _response_sums(by_layer[m], x0, x1, real, lsr)
                    mlp = lm.model.model.layers[m].mlp
                    jdx = torch.func.jvp(mlp, (x0,), (x1 - x0,))[1]
                    jac_sums[m] += torch.tensor(
                        [float(real.pow(2).sum()), float((jdx - real).pow(2).sum())],
                        dtype=torch.float64,
                    )
                    for name, tcs_ in candidates.items():
                        if m in tcs_:
                            cand_sums[name, m] += _response_sums(tcs_[m], x0, x1, real, lsr)
    per_layer = {m: _ratios(s, bool(ls)) for m, s in sums.items() if s[0] > 0}
    for m, (real2, err2) in jac_sums.items():
        if m in per_layer:  # the best a model linear in the MLP's input can do at this point
            per_layer[m]["rel_err_mlp_jacobian"] = float((err2 / real2).sqrt())
    by_candidate: dict[str, dict[int, dict[str, float]]] = {}
    for (name, m), s in cand_sums.items():
        if s[0] > 0:
            by_candidate.setdefault(name, {})[m] = _ratios(s, bool(ls))
    tot = sum(sums.values())
    jac_tot = sum(jac_sums.values())
    out = {
        "what": "transcoder vs MLP response to the same input change, after ablating one active "
        "feature (real model, error kept); 1.0 = no better than predicting no change",
        "transcoders": str(a.transcoders),
        "prompts": prompts,
        "draws": draws,
        "per_layer": per_layer,
        "candidates": {
            name: {"dir": spec.partition("=")[2], "per_layer": by_candidate.get(name, {})}
            for name, spec in zip(candidates, a.candidate, strict=True)
        },
        "all_layers": {
            "rel_err_linear": float((tot[1] / tot[0]).sqrt()),
            "rel_err_nonlinear": float((tot[2] / tot[0]).sqrt()),
            "norm_ratio_linear": float((tot[3] / tot[0]).sqrt()),
            "norm_ratio_nonlinear": float((tot[4] / tot[0]).sqrt()),
            **({"rel_err_least_squares": float((tot[5] / tot[0]).sqrt())} if ls else {}),
            "rel_err_mlp_jacobian": float((jac_tot[1] / jac_tot[0]).sqrt()),
        },
        "seconds": time.perf_counter() - t0,
        "command": "python benchmarks/transcoder_response_smollm2.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if k != "out"),
        "env": {"torch": torch.__version__, "threads": a.threads, "load": os.getloadavg()},
    }
    write_json(a.out, out)
    print(json.dumps({"all_layers": out["all_layers"], "per_layer": per_layer}, indent=1))


if __name__ == "__main__":
    main()
