"""The amortisation gap on a real model: the SAE's own encoder vs iterative inference.

For one trained dictionary, each iterative method (``fista``, ``ista``, ``mp``, ``omp``, and
``fista+debias``/``ista+debias``: the lasso followed by a least-squares refit on its support) runs
on the *same* dictionary, cold (from zero) and warm-started from the SAE's codes, at the SAE's L0:

- the target L0 is the SAE encoder's mean L0 on *calibration* tokens (text the evaluation never
  uses, see :mod:`sparsecodes.evaluation.corpus`);
- each method's sparsity parameter is chosen on those calibration tokens: ``k`` for mp/omp (integer
  search for the L0 closest to the target), ``l1`` for ista/fista (bisection on ``log10(l1)``
  between ``max |<x, d_j>|``, where the codes are all zero, and 6 decades below it), stopping once
  within ``l0_tolerance`` (relative) of the target;
- then FVU, L0, FLOPs and wall time per token are measured on held-out tokens, and the CE-loss
  score by splicing each method's reconstruction in (:mod:`sparsecodes.evaluation.splice`).

All iterative methods are run non-negative (``nonneg=True``) like the SAE's codes. FLOPs per token
are the encoders' analytical ``inference_flops(b) / b`` for the batch size ``b`` the codes were
computed with (so per-call costs such as OMP's atom Gram are amortised over the batch); a warm
start adds the SAE encoder's FLOPs. Decoding is not counted (it is the same for every method).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sparsecodes.codes import SparseCodes, to_dense
from sparsecodes.encoders import make_encoder
from sparsecodes.metrics import fvu as fvu_metric

#: methods understood by --inference and the parameter matched to the L0
ITERATIVE_METHODS = {
    "fista": "l1",
    "ista": "l1",
    "mp": "k",
    "omp": "k",
    "fista+debias": "l1",
    "ista+debias": "l1",
}
#: methods that are an iterative encoder with fixed config fields: name -> (encoder, fields)
METHOD_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "fista+debias": ("fista", {"debias": True}),
    "ista+debias": ("ista", {"debias": True}),
}
#: rows per encode call (SparseCoder.encode's default)
ENCODE_BATCH = 8192


@dataclass(frozen=True)
class Method:
    """One inference procedure on the SAE's dictionary: ``name`` is ``"sae"`` or an iterative
    encoder, ``warm`` starts it from the SAE's codes, ``params`` its config fields."""

    name: str
    warm: bool = False
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def encoder(self) -> str:
        """The encoder that runs: ``name`` without a variant suffix (``fista+debias`` -> fista)."""
        return METHOD_VARIANTS.get(self.name, (self.name, {}))[0]

    @property
    def label(self) -> str:
        if self.name == "sae":
            return "sae"
        return f"{self.name} ({'warm' if self.warm else 'cold'})"


def parse_methods(spec: str | Sequence[str]) -> list[str]:
    """``"fista,mp,omp"`` -> ``["fista", "mp", "omp"]``; unknown names raise ``ValueError``."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for raw in items:
        m = raw.strip().lower()
        if not m:
            continue
        if m not in ITERATIVE_METHODS:
            raise ValueError(
                f"--inference {raw!r} is not an iterative method; choose from "
                f"{', '.join(sorted(ITERATIVE_METHODS))} (comma-separated)"
            )
        if m not in out:
            out.append(m)
    return out


def encode(coder: Any, x: Tensor, method: Method) -> Any:
    """Codes of ``x`` ``[n, d_in]`` by ``method`` on ``coder``'s dictionary."""
    if method.name == "sae":
        return coder.encode(x, sparse=coder.encoder.fixed_k)
    return coder.encode(
        x, inference=method.encoder, warm_start=method.warm, sparse=True, **method.params
    )


def reconstructor(coder: Any, method: Method) -> Callable[[Tensor], Tensor]:
    """``x [n, d_in] -> x_hat [n, d_in]`` with ``method`` (for splicing)."""

    def recon(x: Tensor) -> Tensor:
        return coder.decode(encode(coder, x.to(coder.device, torch.float32), method))

    return recon


def mean_l0(codes: Any) -> float:
    """Mean per-row count of nonzeros of dense or sparse codes."""
    if isinstance(codes, SparseCodes):
        return float((codes.values != 0).sum()) / max(codes.values.shape[0], 1)
    z = to_dense(codes)
    return float((z != 0).sum()) / max(z.shape[0], 1)


def flops_per_token(
    coder: Any, method: Method, n_rows: int, *, support: int | None = None
) -> float:
    """Analytical inference FLOPs per token (see the module docstring); ``support`` is passed to a
    debiasing encoder's ``inference_flops`` (the refit's padded support width)."""
    b = max(1, min(n_rows, ENCODE_BATCH))
    own = coder.encoder.inference_flops(b) / b
    if method.name == "sae":
        return own
    enc = make_encoder(method.encoder, coder.d_in, coder.n_latents, **method.params)
    kw = {"support": support} if method.params.get("debias") else {}
    return enc.inference_flops(b, **kw) / b + (own if method.warm else 0.0)


def _max_correlation(coder: Any, x: Tensor) -> float:
    """``max_i,j |<x_i - b_dec, d_j>|`` in the coder's input scale: above it the lasso gives 0."""
    with torch.no_grad():
        xn = coder.normaliser(x.to(coder.device, torch.float32)) - coder.dictionary.b_dec
        return float((xn @ coder.W_dec.T).abs().max())


@dataclass
class Calibration:
    """The matched parameter of one method and the L0 it gave on the calibration tokens."""

    method: Method
    l0: float
    target_l0: float
    evaluations: int


def match_l0(
    coder: Any,
    name: str,
    warm: bool,
    x_calib: Tensor,
    target_l0: float,
    *,
    iters: int = 50,
    l0_tolerance: float = 0.05,
    max_steps: int = 10,
) -> Calibration:
    """Choose ``name``'s sparsity parameter so its mean L0 on ``x_calib`` is near ``target_l0``."""
    param = ITERATIVE_METHODS[name]
    base: dict[str, Any] = {"nonneg": True, **METHOD_VARIANTS.get(name, ("", {}))[1]}
    if param == "l1":
        base["iters"] = iters
    cache: dict[float, float] = {}

    def l0_at(value: float) -> float:
        if value not in cache:
            p = {**base, param: int(value) if param == "k" else float(value)}
            cache[value] = mean_l0(encode(coder, x_calib, Method(name, warm, p)))
        return cache[value]

    def close(v: float) -> bool:
        return abs(l0_at(v) - target_l0) <= l0_tolerance * target_l0

    if param == "k":
        hi_k = min(coder.n_latents, max(8, 4 * math.ceil(target_l0)))
        k0 = min(hi_k, max(1, round(target_l0)))
        if not close(k0):
            lo, hi = 1, hi_k  # smallest k with l0_at(k) >= target (l0 grows with k)
            while lo < hi and len(cache) < max_steps + 1:
                mid = (lo + hi) // 2
                if l0_at(mid) >= target_l0:
                    hi = mid
                else:
                    lo = mid + 1
            for k in {lo, max(1, lo - 1)}:
                l0_at(k)
        best = min(cache, key=lambda v: (abs(cache[v] - target_l0), v))
        value: Any = int(best)
    else:
        top = _max_correlation(coder, x_calib)
        if not top > 0:
            raise ValueError("the calibration activations are all zero; cannot match the L0")
        lo, hi = math.log10(top) - 6.0, math.log10(top)  # log10(l1): L0 falls as l1 grows
        for _ in range(max_steps):
            mid = (lo + hi) / 2
            if close(10**mid):
                break
            if l0_at(10**mid) > target_l0:
                lo = mid
            else:
                hi = mid
        best = min(cache, key=lambda v: abs(cache[v] - target_l0))
        value = float(best)
    params = {**base, param: value}
    return Calibration(Method(name, warm, params), cache[best], target_l0, len(cache))


@dataclass
class GapRow:
    """One method's row of the amortisation-gap table (held-out tokens)."""

    method: str
    encoder: str
    warm_start: bool
    params: dict[str, Any]
    fvu: float
    l0: float
    calibration_l0: float | None
    flops_per_token: float
    seconds_per_token: float
    ce_loss_score: float | None = None
    kl_div_score: float | None = None
    ce_loss_with_method: float | None = None


@torch.no_grad()
def measure(coder: Any, method: Method, x: Tensor, calibration_l0: float | None = None) -> GapRow:
    """FVU (about the mean), L0, FLOPs and wall time per token of ``method`` on ``x`` ``[n, d]``."""
    x = x.to(coder.device, torch.float32)
    t0 = time.perf_counter()
    codes = encode(coder, x, method)
    seconds = time.perf_counter() - t0
    x_hat = coder.decode(codes)
    # a debiasing refit is counted at the width of the densest returned row; the refit pads each
    # encode batch to its densest row *before* non-negative drops, so this is approximate
    support = codes.indices.shape[1] if isinstance(codes, SparseCodes) else None
    fvu = fvu_metric(x, x_hat)
    return GapRow(
        method=method.label,
        encoder=coder.encoder.name if method.name == "sae" else method.encoder,
        warm_start=method.warm,
        params=dict(method.params),
        fvu=fvu,
        l0=mean_l0(codes),
        calibration_l0=calibration_l0,
        flops_per_token=flops_per_token(coder, method, x.shape[0], support=support),
        seconds_per_token=seconds / max(x.shape[0], 1),
    )


def calibrate_methods(
    coder: Any,
    names: Sequence[str],
    x_calib: Tensor,
    *,
    iters: int = 50,
    l0_tolerance: float = 0.05,
    max_steps: int = 10,
    echo: Callable[[str], None] | None = None,
) -> tuple[float, list[Calibration]]:
    """The SAE's L0 on ``x_calib`` and, per method, cold and warm (when the SAE encoder is
    amortised), the matched parameter."""
    target = mean_l0(encode(coder, x_calib.to(coder.device, torch.float32), Method("sae")))
    if target <= 0:
        raise ValueError("the SAE's codes are all zero on the calibration tokens; no L0 to match")
    warms = [False, True] if coder.encoder.kind == "amortised" else [False]
    out = []
    for name in names:
        for warm in warms:
            t0 = time.perf_counter()
            cal = match_l0(
                coder,
                name,
                warm,
                x_calib,
                target,
                iters=iters,
                l0_tolerance=l0_tolerance,
                max_steps=max_steps,
            )
            if echo is not None:
                echo(
                    f"  {cal.method.label}: {cal.method.params} -> L0 {cal.l0:.2f} "
                    f"(target {target:.2f}, {cal.evaluations} tries, "
                    f"{time.perf_counter() - t0:.1f}s)"
                )
            out.append(cal)
    return target, out


def verdict(rows: Sequence[GapRow], l0_tolerance: float) -> dict[str, Any]:
    """Does any iterative method beat the SAE's encoder on FVU at matched L0 (held-out)?"""
    sae = next(r for r in rows if r.method == "sae")
    matched = [
        r
        for r in rows
        if r.method != "sae" and abs(r.l0 - sae.l0) <= max(l0_tolerance, 0.1) * max(sae.l0, 1e-9)
    ]
    if not matched:
        return {
            "iterative_beats_encoder": None,
            "summary": "no iterative method reached the SAE's L0 on held-out tokens within "
            "tolerance; no verdict",
        }
    best = min(matched, key=lambda r: r.fvu)
    beats = best.fvu < sae.fvu
    if beats:
        text = (
            f"iterative inference beats the SAE's own encoder at matched L0: {best.method} has "
            f"FVU {best.fvu:.4f} vs {sae.fvu:.4f} (L0 {best.l0:.1f} vs {sae.l0:.1f}) at "
            f"{best.flops_per_token / max(sae.flops_per_token, 1):.1f}x the encoder's FLOPs/token"
        )
    else:
        text = (
            f"iterative inference does NOT beat the SAE's own encoder on FVU at matched L0: the "
            f"best, {best.method}, has FVU {best.fvu:.4f} vs the encoder's {sae.fvu:.4f}"
        )
    return {
        "iterative_beats_encoder": beats,
        "best_method": best.method,
        "best_fvu": best.fvu,
        "encoder_fvu": sae.fvu,
        "summary": text,
    }
