"""Metrics of sparse coders on real models: reconstruction, CE/KL splicing, amortisation gap.

>>> from sparsecodes.evaluation import EvalConfig, run_eval
>>> payload = run_eval(EvalConfig("runs/sae", ce_tokens=4096))     # doctest: +SKIP
>>> payload["eval_result_metrics"]["model_performance_preservation"]["ce_loss_score"]  # doctest: +SKIP

The SAE is loaded with :func:`sparsecodes.load` (checked against the model and hook with
:func:`sparsecodes.loading.resolve_target` and :func:`~sparsecodes.loading.check_width`).
Modules: :mod:`.corpus` (held-out and
calibration text), :mod:`.core` (FVU, MSE, cosine, L0, dead/dense latents, density),
:mod:`.atoms` (the atoms paper's
uniqueness and exact-recovery conditions on a dictionary), :mod:`.splice` (CE-loss and KL scores with the reconstruction spliced in), :mod:`.gap` (the SAE's
encoder vs FISTA/MP/OMP at matched L0), :mod:`.report` (JSON and PNGs), :mod:`.run` (all of it).
SAEBench-style judgements, each ``f(coder, adapter, hook, ...) -> JSON-able dict`` with SAEBench's
key names: :mod:`.absorption` (first-letter absorption), :mod:`.probing` (sparse probing),
:mod:`.scr_tpp` (SCR, TPP), :mod:`.ravel` (entity attributes); :mod:`.probes` (the probes they
share) and :mod:`.datasets` (offline labelled sets). :mod:`.suite`: all of them over several SAEs
(``sparsecodes bench``); :mod:`.during_training`: CE/KL scores as a training callback.
See ``docs/evaluation.md``.
"""

from sparsecodes.evaluation.absorption import absorption, absorption_scores
from sparsecodes.evaluation.atoms import AtomsReport, check_atoms
from sparsecodes.evaluation.core import ReconstructionAccumulator, reconstruction_pass
from sparsecodes.evaluation.gap import GapRow, Method, calibrate_methods, match_l0
from sparsecodes.evaluation.probing import sparse_probing, sparse_probing_scores
from sparsecodes.evaluation.ravel import ravel, ravel_scores
from sparsecodes.evaluation.run import EvalConfig, GapSetup, evaluate, run_eval
from sparsecodes.evaluation.scr_tpp import scr, scr_scores, tpp, tpp_scores
from sparsecodes.evaluation.splice import (
    DownstreamResult,
    Variant,
    ce_loss_score,
    downstream_scores,
    kl_score,
    splice_edit,
)

__all__ = [
    "AtomsReport",
    "DownstreamResult",
    "EvalConfig",
    "GapRow",
    "GapSetup",
    "Method",
    "ReconstructionAccumulator",
    "Variant",
    "absorption",
    "absorption_scores",
    "calibrate_methods",
    "ce_loss_score",
    "check_atoms",
    "downstream_scores",
    "evaluate",
    "kl_score",
    "match_l0",
    "ravel",
    "ravel_scores",
    "reconstruction_pass",
    "run_eval",
    "scr",
    "scr_scores",
    "sparse_probing",
    "sparse_probing_scores",
    "splice_edit",
    "tpp",
    "tpp_scores",
]
