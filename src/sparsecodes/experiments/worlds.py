"""Every amortised encoder on one synthetic world, at matched L0 (``sparsecodes synth --world``).

For each registered amortised encoder (:func:`sparsecodes.encoders.available_encoders`, so
encoders added later are picked up without editing this module) and each target L0, one *cell*:

1. **Match the L0 on training data.** The encoder's sparsity knob (:func:`sparsity_knob`) is
   either a count (``k``: set to ``round(target)``, one run) or a penalty (``l1``, ``l0_coef``,
   ...: a declared geometric search, :class:`Calibration`). Each penalty trial trains on the
   world's ``"train"`` stream and measures the L0 of its codes on the first ``calib_rows`` rows of
   that same stream; the trial whose L0 is closest to the target (in ``|log(L0 / target)|``) is
   kept. Nothing in the choice looks at the held-out stream or at any ground-truth metric.
2. **Train** (Adam, the world's ``"train"`` stream via :class:`~sparsecodes.worlds.WorldSource`,
   streamed: no ``[n_samples, n_features]`` tensor is made). When the calibration trials ran at
   the full step count, the kept trial *is* the trained model.
3. **Evaluate** on ``eval_rows`` rows of the independent ``"test"`` stream: code MCC and
   dictionary MCC (:mod:`sparsecodes.metrics.mcc`), firing precision/recall/F1 of Hungarian-matched
   pairs, uniqueness, norm and code shrinkage, recovery rate, absorption (hierarchical worlds),
   FVU and L0 (:mod:`sparsecodes.metrics.features`).

Results go to ``OUT/results.json`` after every cell (atomically), so an interrupted run resumes:
cells already in the file (same encoder, target L0 and seed, same world and training config) are
skipped. Plots: ``OUT/mcc_vs_l0.png`` and ``OUT/absorption_vs_l0.png``, one curve per encoder.

Where a paper reports the same setting (:data:`PAPER_REFERENCE`), its numbers are stored beside
ours in the JSON and printed by the CLI.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch

from sparsecodes import metrics
from sparsecodes.encoders import available_encoders, get_encoder_class
from sparsecodes.files import write_json
from sparsecodes.sparse_coder import SparseCoder
from sparsecodes.training.trainer import TrainConfig, Trainer
from sparsecodes.worlds import World, WorldConfig, WorldSource, world_config

__all__ = [
    "PAPER_REFERENCE",
    "SCHEMA",
    "Calibration",
    "SparsityKnob",
    "amortised_encoders",
    "default_targets",
    "evaluate_coder",
    "format_table",
    "run_world",
    "sparsity_knob",
]

SCHEMA = "sparsecodes.synth_world/1"

KnobKind = Literal["count", "penalty"]


@dataclass(frozen=True)
class SparsityKnob:
    """The config field that sets an encoder's sparsity.

    ``kind="count"``: the field is the number of active latents (set to ``round(target L0)``).
    ``kind="penalty"``: a positive coefficient whose increase lowers L0 (searched, see
    :class:`Calibration`); ``start`` is the first value tried.

    An encoder class may declare its own as a class attribute ``sparsity_knob`` (a
    ``SparsityKnob`` or a ``(field, kind)`` pair); otherwise :data:`KNOBS` or the field-name rules
    of :func:`sparsity_knob` apply.
    """

    field: str
    kind: KnobKind
    start: float | None = None


#: Declared knobs of the built-in encoders (start values: the synthetic study's defaults, set
#: for unit-norm atoms and unit-scale codes).
KNOBS: dict[str, SparsityKnob] = {
    "relu": SparsityKnob("l1", "penalty", 0.1),
    "gated": SparsityKnob("l1", "penalty", 0.1),
    "mlp": SparsityKnob("l1", "penalty", 0.1),
    "lista": SparsityKnob("l1", "penalty", 0.1),
    "jumprelu": SparsityKnob("l0_coef", "penalty", 0.01),
    "topk": SparsityKnob("k", "count"),
    "batchtopk": SparsityKnob("k", "count"),
}

#: Encoders with no sparsity knob to search, and why: they train at their defaults and a cell
#: whose L0 misses the target is reported ``matched: false``.
NO_KNOB: dict[str, str] = {
    "gba": "L0 follows its groups' target firing rates (htf, ltf); there is no penalty to search",
}

#: Field names recognised on encoders without a declared knob (first match wins).
COUNT_FIELDS: tuple[str, ...] = ("k", "target_l0")
PENALTY_FIELDS: tuple[str, ...] = ("l1", "l0_coef", "l1_coef", "sparsity_coef", "l0_coeff")


def sparsity_knob(encoder: str) -> SparsityKnob | None:
    """The sparsity knob of a registered encoder, or None if it has none we know of."""
    cls = get_encoder_class(encoder)
    own = getattr(cls, "sparsity_knob", None)
    if isinstance(own, SparsityKnob):
        return own
    if isinstance(own, tuple) and len(own) == 2:
        return SparsityKnob(str(own[0]), own[1])
    if encoder in KNOBS:
        return KNOBS[encoder]
    fields = {f.name: f for f in dataclasses.fields(cls.config_cls)}
    for name in COUNT_FIELDS:
        if name in fields:
            return SparsityKnob(name, "count")
    for name in PENALTY_FIELDS:
        if name in fields:
            default = fields[name].default
            start = float(default) if isinstance(default, int | float) and default > 0 else 0.01
            return SparsityKnob(name, "penalty", start)
    return None


def amortised_encoders() -> list[str]:
    """Every registered amortised encoder, in registry order."""
    return available_encoders("amortised")


@dataclass(frozen=True)
class Calibration:
    """The declared search for a penalty knob (run on training data only).

    Start at the knob's ``start``; while the trial's training L0 is above the target multiply the
    penalty by ``factor`` (below: divide), until the target is bracketed; then bisect the bracket
    geometrically. Stop after ``max_trials`` trials or once ``|L0 / target - 1| <= rtol``.
    ``steps``: training steps of each trial (None: the full run's, and the kept trial is the
    final model); ``rows``: training rows on which each trial's L0 is measured.
    """

    max_trials: int = 6
    factor: float = 4.0
    rtol: float = 0.1
    steps: int | None = None
    rows: int = 2048
    #: a cell is reported ``matched`` when its training L0 is within this relative distance
    match_tol: float = 0.25

    def __post_init__(self) -> None:
        if self.max_trials < 1:
            raise ValueError(f"calibration max_trials must be >= 1, got {self.max_trials}")
        if not self.factor > 1:
            raise ValueError(f"calibration factor must be > 1, got {self.factor}")
        if self.rows < 1:
            raise ValueError(f"calibration rows must be >= 1, got {self.rows}")


PAPER_REFERENCE: dict[str, dict[str, Any]] = {
    "paper": {
        "source": (
            "O'Neill, Gumran & Klindt, Compute Optimal Inference and Provable Amortisation Gap in "
            "Sparse Autoencoders (arXiv:2411.13117), synthetic 'unknown' setting, N=16, M=8, K=3 "
            "(figures as quoted in docs/synthetic.md)"
        ),
        "note": (
            "the paper trains its SAE with an L1 penalty, not at matched L0; its sparse coding "
            "(FISTA) is iterative, so it has no row of ours here"
        ),
        "rows": [
            {"method": "relu", "paper_method": "SAE", "code_mcc": 0.57, "dict_mcc": 0.75},
            {
                "method": None,
                "paper_method": "sparse coding (FISTA)",
                "code_mcc": 0.69,
                "dict_mcc": 0.84,
            },
        ],
    },
}


def default_targets(world: World) -> list[float]:
    """``[L0 / 2, L0, 2 L0]`` (rounded, at least 1) of the world's measured training L0."""
    l0 = world_l0(world)
    return sorted({max(1, round(l0 * f)) for f in (0.5, 1.0, 2.0)})


def world_l0(world: World, rows: int = 4096) -> float:
    """Mean number of active true features per row on the first ``rows`` training rows."""
    batch = world.rows(0, rows, "train")
    return float((batch.codes.values != 0).sum(dim=1).float().mean())


# ---------------------------------------------------------------------------- one cell


def _train(
    world: World,
    encoder: str,
    params: dict[str, Any],
    *,
    n_latents: int,
    seed: int,
    steps: int,
    lr: float,
    batch_size: int,
) -> SparseCoder:
    coder = SparseCoder(world.n_dims, n_latents, encoder, seed=seed, **params)
    cfg = TrainConfig(
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        log_every=max(1, steps // 10),
        b_dec_init="zeros",
    )
    trainer = Trainer(coder, cfg)
    coder.history = trainer.fit(WorldSource(world, stream="train"))
    coder.train_config = {**trainer.config_dict(), "world": world.config.to_dict()}
    coder.mark_fitted()
    return coder


@torch.no_grad()
def _encode_csr(coder: SparseCoder, x: torch.Tensor) -> sp.csr_matrix:
    return sp.csr_matrix(coder.encode(x).detach().cpu().float().numpy())


@torch.no_grad()
def train_l0(coder: SparseCoder, world: World, rows: int, batch_size: int = 4096) -> float:
    """Mean L0 of ``coder``'s codes on the first ``rows`` rows of the world's training stream."""
    total, seen = 0.0, 0
    for lo in range(0, rows, batch_size):
        n = min(batch_size, rows - lo)
        codes = coder.encode(world.rows(lo, n, "train").x)
        total += float((codes != 0).sum())
        seen += n
    return total / seen


def _fit_cell(
    world: World,
    encoder: str,
    target: float,
    knob: SparsityKnob | None,
    base: dict[str, Any],
    calib: Calibration,
    train_kw: dict[str, Any],
) -> tuple[SparseCoder, dict[str, Any]]:
    """Train at the knob value that matches ``target`` on training data; returns model + record."""
    if knob is None:
        coder = _train(world, encoder, base, **train_kw)
        l0 = train_l0(coder, world, calib.rows)
        return coder, {"field": None, "kind": None, "value": None, "train_l0": l0, "trials": []}
    if knob.kind == "count":
        value = max(1, round(target))
        coder = _train(world, encoder, {**base, knob.field: value}, **train_kw)
        l0 = train_l0(coder, world, calib.rows)
        rec = {"field": knob.field, "kind": "count", "value": value, "train_l0": l0, "trials": []}
        return coder, rec
    trial_kw = dict(train_kw)
    if calib.steps is not None:
        trial_kw["steps"] = calib.steps
    trials: list[dict[str, float]] = []
    best: tuple[float, SparseCoder | None, float] = (math.inf, None, 0.0)
    value = float(knob.start if knob.start is not None else 0.01)
    lo = hi = None  # penalties known to give L0 above / below the target
    for _ in range(calib.max_trials):
        coder = _train(world, encoder, {**base, knob.field: value}, **trial_kw)
        l0 = train_l0(coder, world, calib.rows)
        trials.append({"value": value, "train_l0": l0})
        err = abs(math.log(max(l0, 1e-3) / target))
        if err < best[0]:
            best = (err, coder, value)
        if abs(l0 / target - 1) <= calib.rtol:
            break
        if len(trials) >= 3 and len({t["train_l0"] for t in trials}) == 1:
            break  # the penalty does not move L0 at this training length: stop searching
        if l0 > target:
            lo = value
        else:
            hi = value
        if lo is not None and hi is not None:
            value = math.sqrt(lo * hi)
        else:
            value = value * calib.factor if hi is None else value / calib.factor
    _, coder, value = best
    assert coder is not None
    if calib.steps is not None and calib.steps != train_kw["steps"]:
        coder = _train(world, encoder, {**base, knob.field: value}, **train_kw)
    l0 = train_l0(coder, world, calib.rows)
    rec = {"field": knob.field, "kind": "penalty", "value": value, "train_l0": l0, "trials": trials}
    return coder, rec


def _nanmean(a: np.ndarray) -> float | None:
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else None


@torch.no_grad()
def evaluate_coder(
    coder: SparseCoder, world: World, rows: int, batch_size: int = 4096
) -> dict[str, float | None]:
    """Every feature metric of ``coder`` on ``rows`` rows of the world's ``"test"`` stream.

    Returns ``code_mcc, dict_mcc, precision, recall, f1, accuracy, uniqueness, norm_shrinkage,
    code_shrinkage, recovery_rate, absorption`` (None without a hierarchy), ``fvu``, ``l0``.
    Codes are held as CSR matrices ``[rows, n_latents]``; memory is ``O(nnz)``.
    """
    xs, xh, true, codes = [], [], [], []
    for lo in range(0, rows, batch_size):
        batch = world.rows(lo, min(batch_size, rows - lo), "test")
        c = coder.encode(batch.x)
        xs.append(batch.x)
        xh.append(coder.decode(c))
        codes.append(sp.csr_matrix(c.detach().cpu().float().numpy()))
        true.append(sp.csr_matrix(batch.dense_codes().numpy()))
    x, x_hat = torch.cat(xs), torch.cat(xh)
    t_csr, c_csr = sp.vstack(true).tocsr(), sp.vstack(codes).tocsr()
    atoms = coder.W_dec.detach().cpu()
    truth = world.dictionary
    fs = metrics.firing_scores(t_csr, c_csr, truth, atoms).means()
    _, _, ratio = metrics.code_shrinkage(t_csr, c_csr, truth, atoms)
    absorb = None
    if world.levels:
        absorb = metrics.absorption(
            t_csr, c_csr, world.parent_children(), true_atoms=truth, atoms=atoms
        ).mean
        absorb = None if math.isnan(absorb) else absorb
    return {
        "code_mcc": float(metrics.code_mcc(t_csr, c_csr)),
        "dict_mcc": float(metrics.dictionary_mcc(truth, atoms)),
        **fs,
        "uniqueness": float(metrics.uniqueness(truth, atoms).uniqueness),
        "norm_shrinkage": metrics.norm_shrinkage(x, x_hat),
        "code_shrinkage": _nanmean(ratio),
        "recovery_rate": metrics.recovery_rate(truth, atoms),
        "absorption": absorb,
        "fvu": float(metrics.fvu(x, x_hat)),
        "l0": float(metrics.l0(c_csr)),
    }


# ---------------------------------------------------------------------------- the study


def _fingerprint(config: dict[str, Any]) -> dict[str, Any]:
    """The part of the config that must match for stored cells to be reused."""
    keys = (
        "world_config",
        "n_latents",
        "steps",
        "lr",
        "batch_size",
        "eval_rows",
        "calibration",
        "params",
    )
    return {k: config.get(k) for k in keys}


def _load_existing(path: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); move it away to start afresh") from e
    if old.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not a synth --world result ({SCHEMA}); use another --out")
    mine, theirs = _fingerprint(config), _fingerprint(old.get("config", {}))
    # JSON round trip so tuples and lists compare equal
    mine = json.loads(json.dumps(mine, default=str))
    if mine != theirs:
        diff = sorted(k for k in mine if mine[k] != theirs.get(k))
        raise ValueError(
            f"{path} holds results of a different run (differs in: {', '.join(diff)}); "
            "use another --out, or the same settings to resume"
        )
    return list(old.get("cells", []))


def run_world(
    world_name: str,
    *,
    encoders: Sequence[str] | None = None,
    targets: Sequence[float] | None = None,
    seeds: Sequence[int] = (0,),
    world_overrides: dict[str, Any] | None = None,
    world: WorldConfig | None = None,
    n_latents: int | None = None,
    steps: int = 1000,
    lr: float = 3e-3,
    batch_size: int = 256,
    eval_rows: int = 4096,
    calibration: Calibration | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    out: str | Path | None = None,
    plots: bool = True,
    threads: int | None = 1,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every (encoder, target L0, seed) cell on one world; see the module docstring.

    Args:
        world_name: a preset (:func:`sparsecodes.worlds.available_worlds`); ``world`` replaces
            its config outright (the name is then a label), ``world_overrides`` edit it.
        encoders: amortised encoders (default: all registered, :func:`amortised_encoders`).
        targets: target L0s (default :func:`default_targets`).
        seeds: model initialisation seeds (the world's own seed is in its config).
        n_latents: dictionary size (default: the world's ``n_features``).
        steps, lr, batch_size: Adam training of every model.
        eval_rows: held-out ``"test"`` rows scored.
        calibration: the penalty search (default :class:`Calibration`).
        params: extra fixed encoder parameters, ``{encoder: {field: value}}``.
        out: directory for ``results.json`` and the plots (None: nothing written, no resume).

    Returns the report: ``{"schema", "world", "config", "cells", "summary", "paper", "skipped",
    "environment", "files"}``; each cell has ``encoder, target_l0, seed, knob`` (field, kind,
    chosen value, training L0, trials), ``metrics`` (:func:`evaluate_coder`), ``seconds``.
    """
    cfg = world if world is not None else world_config(world_name, **(world_overrides or {}))
    w = World(cfg)
    calib = calibration or Calibration()
    amortised = amortised_encoders()
    enc_list = list(dict.fromkeys(encoders)) if encoders else amortised
    for e in enc_list:
        if e not in available_encoders():
            raise ValueError(
                f"unknown encoder {e!r}; registered: {', '.join(available_encoders())}"
            )
    skipped = [
        {"encoder": e, "reason": "iterative encoder (no amortised encoder to train)"}
        for e in enc_list
        if e not in amortised
    ]
    enc_list = [e for e in enc_list if e in amortised]
    tgt = [float(t) for t in targets] if targets else [float(t) for t in default_targets(w)]
    if any(not t > 0 for t in tgt):
        raise ValueError(f"target L0s must be > 0, got {tgt}")
    n_lat = int(n_latents or cfg.n_features)
    params = params or {}
    say = log or (lambda _m: None)
    config: dict[str, Any] = {
        "world": world_name,
        "world_config": cfg.to_dict(),
        "world_l0": world_l0(w),
        "encoders": enc_list,
        "targets": tgt,
        "seeds": [int(s) for s in seeds],
        "n_latents": n_lat,
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "eval_rows": eval_rows,
        "calibration": dataclasses.asdict(calib),
        "params": params,
        "matching": (
            "sparsity knob chosen on training rows only (L0 of the codes on the first "
            f"{calib.rows} rows of the train stream); never on a held-out or ground-truth metric"
        ),
    }
    path = Path(out) / "results.json" if out is not None else None
    cells = _load_existing(path, config) if path is not None else []
    done = {(c["encoder"], float(c["target_l0"]), int(c["seed"])) for c in cells}
    train_kw = {"n_latents": n_lat, "steps": steps, "lr": lr, "batch_size": batch_size}
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    t_all = time.perf_counter()
    try:
        for enc in enc_list:
            knob = sparsity_knob(enc)
            base = dict(params.get(enc, {}))
            if knob is not None:
                base.pop(knob.field, None)
            for target in tgt:
                for seed in config["seeds"]:
                    if (enc, target, seed) in done:
                        say(f"{enc:20s} L0 {target:g} seed {seed}: done, skipped")
                        continue
                    t0 = time.perf_counter()
                    coder, rec = _fit_cell(
                        w, enc, target, knob, base, calib, {**train_kw, "seed": seed}
                    )
                    m = evaluate_coder(coder, w, eval_rows)
                    cell = {
                        "encoder": enc,
                        "target_l0": target,
                        "seed": seed,
                        "matched": abs(rec["train_l0"] / target - 1) <= calib.match_tol,
                        "knob": rec,
                        "metrics": m,
                        "seconds": time.perf_counter() - t0,
                    }
                    cells.append(cell)
                    done.add((enc, target, seed))
                    ab = m["absorption"]
                    say(
                        f"{enc:20s} L0 {target:g} seed {seed}: {rec['field']}={rec['value']} "
                        f"train L0 {rec['train_l0']:.2f} test L0 {m['l0']:.2f} "
                        f"MCC {m['code_mcc']:.3f} absorption "
                        f"{'-' if ab is None else f'{ab:.3f}'} ({cell['seconds']:.1f}s)"
                    )
                    if path is not None:
                        _write(path, _report(world_name, config, cells, skipped, t_all, []))
    finally:
        torch.set_num_threads(old_threads)
    report = _report(world_name, config, cells, skipped, t_all, [])
    if path is not None:
        files = [str(path)]
        if plots:
            files += [str(p) for p in plot_world(report, path.parent)]
        report["files"] = files
        _write(path, report)
    return report


def _write(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, report, default=str)


def _report(
    world_name: str,
    config: dict[str, Any],
    cells: list[dict[str, Any]],
    skipped: list[dict[str, Any]],
    t_all: float,
    files: list[str],
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "world": world_name,
        "config": config,
        "cells": cells,
        "summary": summarise(cells),
        "paper": PAPER_REFERENCE.get(world_name),
        "skipped": skipped,
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "seconds_this_run": time.perf_counter() - t_all,
        },
        "files": files,
    }


SUMMARY_METRICS: tuple[str, ...] = (
    "code_mcc", "dict_mcc", "f1", "precision", "recall", "absorption", "code_shrinkage",
    "norm_shrinkage", "recovery_rate", "uniqueness", "fvu", "l0",
)  # fmt: skip


def summarise(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per (encoder, target L0), in first-seen order."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["encoder"], float(c["target_l0"])), []).append(c)
    rows = []
    for (enc, target), cs in groups.items():
        row: dict[str, Any] = {
            "encoder": enc,
            "target_l0": target,
            "n_seeds": len(cs),
            "matched": all(c.get("matched", False) for c in cs),
        }
        for key in (*SUMMARY_METRICS, "train_l0"):
            vals = [
                c["knob"]["train_l0"] if key == "train_l0" else c["metrics"].get(key) for c in cs
            ]
            vals = [float(v) for v in vals if v is not None]
            row[key] = float(np.mean(vals)) if vals else None
            row[f"{key}_std"] = float(np.std(vals)) if len(vals) > 1 else 0.0 if vals else None
        rows.append(row)
    return rows


def format_table(report: dict[str, Any]) -> str:
    """Fixed-width table of the summary, and the paper's numbers beside ours where it has some."""

    def f(v: Any, w: int = 6) -> str:
        return f"{v:{w}.3f}" if isinstance(v, int | float) else f"{'-':>{w}s}"

    head = (
        f"{'encoder':20s} {'L0*':>5s} {'trainL0':>7s} {'testL0':>6s} {'MCC':>6s} {'dMCC':>6s} "
        f"{'F1':>6s} {'absorb':>6s} {'shrink':>6s} {'recov':>6s} {'FVU':>6s}"
    )
    lines = [head, "-" * len(head)]
    for r in report["summary"]:
        lines.append(
            f"{r['encoder']:20s} {r['target_l0']:5g} {f(r['train_l0'], 7)} {f(r['l0'])} "
            f"{f(r['code_mcc'])} {f(r['dict_mcc'])} {f(r['f1'])} {f(r['absorption'])} "
            f"{f(r['code_shrinkage'])} {f(r['recovery_rate'])} {f(r['fvu'])}"
            + ("" if r["matched"] else "  (L0 not matched)")
        )
    paper = report.get("paper")
    if paper:
        lines += ["", f"Paper ({paper['source']}); {paper['note']}:"]
        ours = {}
        for r in report["summary"]:
            ours.setdefault(r["encoder"], []).append(r)
        for p in paper["rows"]:
            mine = ours.get(p["method"] or "", [])
            beside = "; ".join(
                f"ours at L0 {r['target_l0']:g}: {r['code_mcc']:.3f} / {r['dict_mcc']:.3f}"
                for r in mine
            )
            lines.append(
                f"  {p['paper_method']:24s} code MCC {p['code_mcc']:.2f}  dict MCC "
                f"{p['dict_mcc']:.2f}" + (f"   ({p['method']}: {beside})" if beside else "")
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- plots


def plot_world(report: dict[str, Any], out: str | Path) -> list[Path]:
    """``mcc_vs_l0.png`` and ``absorption_vs_l0.png`` (the latter only with a hierarchy)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from sparsecodes.files import write_figure

    out = Path(out)
    written = []
    for metric, label, name in (
        ("code_mcc", "code MCC", "mcc_vs_l0.png"),
        ("absorption", "absorption", "absorption_vs_l0.png"),
    ):
        by: dict[str, list[dict[str, Any]]] = {}
        for r in report["summary"]:
            if r.get(metric) is not None:
                by.setdefault(r["encoder"], []).append(r)
        if not by:
            continue
        fig = Figure(figsize=(6, 4))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        for enc, rs in by.items():
            rs = sorted(rs, key=lambda r: r["l0"])
            ax.errorbar(
                [r["l0"] for r in rs],
                [r[metric] for r in rs],
                yerr=[r[f"{metric}_std"] or 0.0 for r in rs],
                marker="o",
                capsize=3,
                label=enc,
            )
        ax.set_xlabel("L0 on held-out rows")
        ax.set_ylabel(label)
        ax.set_title(f"world {report['world']}: {label} vs L0 (matched on training data)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(write_figure(out / name, fig, dpi=120))
    return written
