"""Does the graph predict what ablating its features does? Prediction against intervention.

For a set ``S`` of active features of an :class:`~sparsecodes.graphs.AttributionGraph`:

- **graph prediction** (:func:`predicted_change`): the change of the target when the features of
  ``S`` are set to 0 and everything else follows *linearly*, read off the adjacency matrix alone.
  Each feature's relative change ``r_j = Δa_j / a_j`` is ``-1`` on ``S``; for any other feature
  ``r_i = (sum_j A[i, j] r_j) / a_i`` (its input moves by its edges times their sources' relative
  change, and with its gate frozen its activation moves with its input); errors and embeddings do
  not move. The prediction is ``sum_j A[target, j] r_j``; its **direct** part is
  ``-sum_{j in S} A[target, j]``, the rest is **indirect** (through later features).
- **frozen replacement model** (:func:`frozen_change`): the same change computed by running the
  replacement model with attention patterns, norm scales, error terms and every feature's gate
  frozen (:meth:`ReplacementModel.forward` with ``gates``). It equals the graph prediction up to
  float rounding; this is what "the graph is exact" means for interventions.
- **real model** (:func:`real_change`): ``S`` ablated in the model itself through each layer's
  transcoder at each feature's position (:func:`sparsecodes.uses.steering.intervening`): the MLP
  output becomes ``mlp_out - a_j W_dec_out[j]``, attention and norms are recomputed, later MLPs
  run for real, and later transcoders read the changed inputs. The gap to the prediction is what
  the linear, frozen picture misses.
- **real with attention and/or norms frozen** (:func:`partly_frozen_change`): the real model
  (real MLPs, the same ablation) with the prompt's attention patterns and/or RMSNorm scales held
  at their clean values. Between the frozen replacement model and the real model it splits the
  gap: frozen -> both frozen is what the MLPs' real response (error terms, gates) adds; both
  frozen -> real is what recomputed attention and norms add. Holding the norm scales of a
  real model is not always stable: when an ablation shrinks the stream at a position whose
  scale is tiny (the first token, whose residual stream is huge in SmolLM2), the held scales no
  longer bound the MLPs' inputs, the SwiGLU outputs grow layer after layer and overflow to
  inf/NaN. Such a change is reported as None and the column is listed in ``diverged``.
- **the real model's first-order prediction** (:func:`first_order_change`): the derivative of
  the target with respect to the size of the ablation, through the real model (every MLP,
  attention pattern and norm scale linearised at the clean prompt, or attention and norms held).
  A linear attribution through the real MLPs predicts this; its gap to the real change is the
  ablation's nonlinearity, and its gap (with attention and norms held) to the graph's prediction
  is what the transcoders' linearisations and frozen error terms miss.
- **replacement model, run for real** (:func:`replacement_change`): ``S`` zeroed in the
  replacement model with each error term held at its clean value, every transcoder recomputing
  its features from its (changed) input with its own nonlinearity (active sets free), attention
  and norms recomputed (what circuit-tracer's feature interventions do). Frozen -> replacement is
  what linearisation misses (frozen attention, norms and gates); replacement -> real is how
  differently the real MLPs respond than their transcoders (the error terms are not constant).

With a capped graph (``attribute(..., max_feature_nodes=N)``) the prediction treats unvisited
features as held at their activations; :func:`frozen_change` takes them as ``held`` and then
still equals the prediction.

:func:`ablation_check` does all three for the top-``k`` features of a prompt's graph (by influence
on the target, :func:`~sparsecodes.graphs.prune.influence`) and for random active features of the
same count.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from sparsecodes.graphs.attribution import AttributionGraph, attribute
from sparsecodes.graphs.build import single_token
from sparsecodes.graphs.prune import influence, normalise_rows, target_weights
from sparsecodes.graphs.replacement import ReplacementModel, ReplacementRun
from sparsecodes.graphs.transcoder import Transcoder, hook_layer
from sparsecodes.models.adapter import ModelAdapter
from sparsecodes.seeding import generator
from sparsecodes.uses.steering import LatentEdit, intervening

__all__ = [
    "AblationCheck",
    "AblationResult",
    "ablation_check",
    "first_order_change",
    "frozen_change",
    "partly_frozen_change",
    "predicted_change",
    "real_change",
    "replacement_change",
    "top_features",
]

logger = logging.getLogger(__name__)


def _as_nodes(graph: AttributionGraph, nodes: Sequence[int] | Tensor) -> Tensor:
    idx = torch.as_tensor(nodes, dtype=torch.long).reshape(-1)
    if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= graph.n_features):
        raise ValueError(
            f"feature node indices must be in 0..{graph.n_features - 1} (the graph's feature "
            f"nodes), got {idx.tolist()}"
        )
    return idx


@torch.no_grad()
def predicted_change(graph: AttributionGraph, nodes: Sequence[int] | Tensor) -> tuple[float, float]:
    """``(total, direct)``: the graph's linear prediction of the change of the target when the
    feature nodes ``nodes`` (indices into ``graph.features``) are set to 0 (see the module doc).
    """
    idx = _as_nodes(graph, nodes)
    adj, nf = graph.adjacency, graph.n_features
    a = graph.activations.double()
    # only features move (errors and embeddings do not), so only their columns matter; rows are
    # taken per layer in float64 (a capped graph's unvisited rows are zero: skipped)
    r = torch.zeros(nf, dtype=torch.float64, device=adj.device)
    removed = torch.zeros(nf, dtype=torch.bool, device=adj.device)
    removed[idx.to(adj.device)] = True
    layers = graph.features[:, 0]
    for layer in layers.unique().tolist():  # layer-major: edges into a layer come from below
        rows = (layers == layer).nonzero().squeeze(1)
        free = rows[~removed[rows]]
        if graph.visited is not None:
            free = free[graph.visited[free]]
        r[free] = (adj[free, :nf].double() @ r) / a[free]
        r[rows[removed[rows]]] = -1.0
    t = graph.target_index
    total = float(adj[t, :nf].double() @ r)
    direct = float(-adj[t, idx.to(adj.device)].double().sum())
    return total, direct


def _target_value(logits: Tensor, target_id: int, contrast_id: int | None) -> float:
    c = float(logits[-1, contrast_id]) if contrast_id is not None else 0.0
    return float(logits[-1, target_id]) - c


def _by_layer(features: Tensor) -> dict[int, list[tuple[int, int]]]:
    out: dict[int, list[tuple[int, int]]] = {}
    for layer, pos, lat in features.tolist():
        out.setdefault(int(layer), []).append((int(pos), int(lat)))
    return out


@torch.no_grad()
def frozen_change(
    rm: ReplacementModel,
    run: ReplacementRun,
    features: Tensor,
    target_id: int,
    contrast_id: int | None = None,
    *,
    held: Tensor | None = None,
) -> float:
    """The change of the target in the frozen replacement model (attention, norms, errors and
    every feature's gate frozen) when ``features`` ``[k, 3]`` ``(layer, position, latent)`` are
    set to 0. Features in ``held`` ``[m, 3]`` keep their activations instead of following their
    inputs (a capped graph's unvisited features)."""
    gates = {layer: (c != 0).to(c.dtype) for layer, c in run.codes.items()}
    hold = None
    if held is not None and len(held):
        hold = {layer: torch.zeros_like(c) for layer, c in run.codes.items()}
        for layer, items in _by_layer(held).items():
            for pos, lat in items:
                hold[layer][pos, lat] = 1
    base = rm.forward(run, gates=gates, held=hold)
    for layer, items in _by_layer(features).items():
        g = gates[layer].clone()
        for pos, lat in items:
            g[pos, lat] = 0
            if hold is not None:
                hold[layer][pos, lat] = 0
        gates[layer] = g
    out = rm.forward(run, gates=gates, held=hold)
    return _target_value(out, target_id, contrast_id) - _target_value(base, target_id, contrast_id)


@torch.no_grad()
def real_change(
    adapter: ModelAdapter,
    transcoders: Sequence[Transcoder],
    input_ids: Tensor,
    features: Tensor,
    target_id: int,
    contrast_id: int | None = None,
) -> float:
    """The change of the target in the model itself when ``features`` ``[k, 3]`` are ablated
    through their transcoders at their positions (error term kept; see the module doc)."""
    ids = input_ids.reshape(1, -1).to(adapter.device)
    T = ids.shape[1]
    by_layer = {hook_layer(tc.in_hook, "mlp_in"): tc for tc in transcoders}
    edits = []
    for layer, items in _by_layer(features).items():
        by_pos: dict[int, list[int]] = {}
        for pos, lat in items:
            by_pos.setdefault(pos, []).append(lat)
        for pos, lats in sorted(by_pos.items()):
            mask = torch.zeros(T, dtype=torch.bool)
            mask[pos] = True
            edits.append(LatentEdit(by_layer[layer], ablate=lats, positions=mask))
    base = adapter.logits(ids)[0]
    with intervening(adapter, edits):
        out = adapter.logits(ids)[0]
    return _target_value(out, target_id, contrast_id) - _target_value(base, target_id, contrast_id)


@torch.no_grad()
def partly_frozen_change(
    rm: ReplacementModel,
    run: ReplacementRun,
    features: Tensor,
    target_id: int,
    contrast_id: int | None = None,
    *,
    freeze_patterns: bool = True,
    freeze_norms: bool = True,
) -> float:
    """The change of the target in the real model (real MLPs; ``features`` ``[k, 3]`` ablated
    through their transcoders as in :func:`real_change`) with ``run``'s attention patterns and/or
    RMSNorm scales held. With neither held it is :func:`real_change`. With norm scales held the
    pass can overflow (inf/NaN; see the module doc)."""
    kw = {"freeze_patterns": freeze_patterns, "freeze_norms": freeze_norms}
    base = rm.real_logits(run, **kw)
    out = rm.real_logits(run, mlp_edit=_ablation_edit(rm, features), **kw)
    return _target_value(out, target_id, contrast_id) - _target_value(base, target_id, contrast_id)


def first_order_change(
    rm: ReplacementModel,
    run: ReplacementRun,
    features: Tensor,
    target_id: int,
    contrast_id: int | None = None,
    *,
    freeze_patterns: bool = False,
    freeze_norms: bool = False,
) -> float:
    """The real model's first-order (linear) prediction of :func:`partly_frozen_change`.

    The ablation is taken along a straight path from the clean run (``t = 0``) to the ablated
    one (``t = 1``): at each feature's layer and position the MLP output becomes ``mlp_out -
    (a_j - (1 - t) a_j^clean) W_dec_out[j]``, with ``a_j`` read by the layer's transcoder from
    the MLP input of this pass, so an ablated feature stops following its input exactly as the
    graph's ``r_j = -1`` does. The result is ``d target / d t`` at ``t = 0``, by autograd through
    the model's own modules: every MLP, attention pattern and norm scale linearised at the clean
    prompt (or held, with ``freeze_patterns`` / ``freeze_norms``). It is what a linear
    attribution through the *real* model predicts: its gap to the real change is the ablation's
    nonlinearity, its gap (with attention and norms held) to the graph's prediction is what the
    transcoders' linearisations and frozen error terms miss. Attention and norms held and every
    MLP equal to its transcoder, it is :func:`predicted_change`.
    """
    t = torch.zeros((), dtype=run.logits.dtype, device=run.logits.device, requires_grad=True)
    logits = rm.real_logits(
        run,
        freeze_patterns=freeze_patterns,
        freeze_norms=freeze_norms,
        mlp_edit=_ablation_edit(rm, features, run, t),
        grad=True,
    )
    c = logits[-1, contrast_id] if contrast_id is not None else 0.0
    (slope,) = torch.autograd.grad(logits[-1, target_id] - c, t)
    return float(slope)


def _ablation_edit(
    rm: ReplacementModel,
    features: Tensor,
    clean: ReplacementRun | None = None,
    t: Tensor | float = 1.0,
) -> Callable[[int, Tensor, Tensor], Tensor]:
    """``mlp_edit`` for :meth:`ReplacementModel.real_logits` that ablates ``features``
    ``[k, 3]``: subtract ``(a_j - (1 - t) a_j^clean) W_dec_out[j]`` at each one's position, with
    ``a_j`` read by the layer's transcoder from the MLP input of this pass and ``a_j^clean``
    from ``clean``'s codes (needed only when ``t`` is not 1: at ``t = 1`` the whole ``a_j``)."""
    by_layer = _by_layer(features)

    def edit(layer: int, mlp_in: Tensor, mlp_out: Tensor) -> Tensor:
        items = by_layer.get(layer)
        if not items:
            return mlp_out
        tc = rm.transcoders[layer]
        pos = torch.tensor([p for p, _ in items], device=mlp_in.device)
        lat = torch.tensor([j for _, j in items], device=mlp_in.device)
        codes = tc.activate(tc.encode_pre(mlp_in[pos]))  # [k, n] at the ablated positions
        a = codes[torch.arange(len(items)), lat]  # [k]
        if clean is not None:
            a = a - (1 - t) * clean.codes[layer][pos, lat]
        return mlp_out.index_add(0, pos, -(a[:, None] * tc.W_dec_out[lat]).to(mlp_out.dtype))

    return edit


@torch.no_grad()
def replacement_change(
    rm: ReplacementModel,
    run: ReplacementRun,
    features: Tensor,
    target_id: int,
    contrast_id: int | None = None,
) -> float:
    """The change of the target in the replacement model run for real
    (:meth:`ReplacementModel.replacement_logits`: error terms held, features recomputed by
    their transcoders, attention and norms recomputed) when ``features`` ``[k, 3]`` are set to 0
    at their positions."""
    by_layer = _by_layer(features)

    def edit(layer: int, codes: Tensor) -> Tensor:
        items = by_layer.get(layer)
        if not items:
            return codes
        codes = codes.clone()
        pos = torch.tensor([p for p, _ in items], device=codes.device)
        lat = torch.tensor([j for _, j in items], device=codes.device)
        codes[pos, lat] = 0
        return codes

    base = rm.replacement_logits(run)
    out = rm.replacement_logits(run, code_edit=edit)
    return _target_value(out, target_id, contrast_id) - _target_value(base, target_id, contrast_id)


_PARTLY = ("real_frozen_attention", "real_frozen_patterns", "real_frozen_norms")


def top_features(graph: AttributionGraph, k: int) -> Tensor:
    """Indices ``[k]`` of the ``k`` feature nodes of most influence on the target (in a capped
    graph, of its visited features)."""
    infl = influence(normalise_rows(graph.adjacency), target_weights(graph))[: graph.n_features]
    if graph.visited is not None:
        infl = infl.masked_fill(~graph.visited, -1.0)
    return infl.topk(min(k, graph.n_features)).indices


@dataclass
class AblationResult:
    """Prediction against intervention for one set of ablated features (changes of the target:
    logit, or logit difference)."""

    kind: str
    """``"top"`` (by influence) or ``"random"``."""
    features: list[list[int]]
    """``(layer, position, latent)`` of each ablated feature."""
    predicted: float
    predicted_direct: float
    frozen: float
    real: float
    replacement: float | None = None
    """The replacement model run for real (:func:`replacement_change`); None when not measured."""
    real_frozen_attention: float | None = None
    """Real model with the prompt's attention patterns and norm scales held
    (:func:`partly_frozen_change`); None when not measured."""
    real_frozen_patterns: float | None = None
    """Real model with only the attention patterns held."""
    real_frozen_norms: float | None = None
    """Real model with only the RMSNorm scales held."""
    real_first_order: float | None = None
    """The real model's first-order prediction of ``real`` (:func:`first_order_change`); None
    when not measured."""
    real_first_order_frozen: float | None = None
    """The same with attention patterns and norm scales held (first order of
    ``real_frozen_attention``)."""
    diverged: list[str] = field(default_factory=list)
    """Columns whose pass overflowed (inf/NaN; see the module doc); their value is None."""

    @property
    def relative_error(self) -> float:
        """``|real - predicted| / |predicted|``."""
        return abs(self.real - self.predicted) / max(abs(self.predicted), 1e-12)


@dataclass
class AblationCheck:
    """:func:`ablation_check`'s result for one prompt."""

    prompt: str
    target_value: float
    n_features: int
    top: AblationResult
    random: list[AblationResult] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        def row(r: AblationResult) -> dict[str, Any]:
            return {**asdict(r), "relative_error": r.relative_error}

        return {
            "prompt": self.prompt,
            "target_value": self.target_value,
            "n_features": self.n_features,
            "top": row(self.top),
            "random": [row(r) for r in self.random],
        }


def ablation_check(
    adapter: ModelAdapter,
    transcoders: Sequence[Transcoder],
    prompt: str,
    target: str | int,
    contrast: str | int | None = None,
    *,
    k: int = 10,
    n_random: int = 5,
    seed: int = 0,
    batch_size: int = 64,
    graph: AttributionGraph | None = None,
    partly_frozen: bool = False,
    max_feature_nodes: int | None = None,
    first_order: bool = False,
) -> AblationCheck:
    """Build ``prompt``'s graph (or take ``graph``), ablate its top-``k`` features by influence
    and ``n_random`` draws of ``k`` random active features (seeded by ``seed``); for each set the
    graph's prediction, the frozen replacement model's change and the real model's change.
    ``target``/``contrast`` are single tokens (text, e.g. ``" Mary"``, or token ids). With
    ``partly_frozen`` each set also gets the real model's change with attention patterns and/or
    norm scales held (:func:`partly_frozen_change`), which locates the gap. Every set gets the
    replacement model's change (:func:`replacement_change`). ``max_feature_nodes`` caps the graph
    built here (see :func:`~sparsecodes.graphs.attribute`); with a capped graph the top set is
    drawn from its visited features, the random sets from all active features (an unvisited
    feature's outgoing edges are complete, so ablating it is predicted like any other), and the
    frozen column holds the unvisited features not ablated at their activations. With
    ``first_order`` each set also gets the real model's first-order prediction
    (:func:`first_order_change`), with everything recomputed (``real_first_order``) and with
    attention patterns and norm scales held (``real_first_order_frozen``)."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")

    def token(t: str | int) -> int:
        return int(t) if isinstance(t, int) else single_token(adapter, t)

    tid = token(target)
    cid = token(contrast) if contrast is not None else None
    ids = adapter.encode(prompt)[0][0]
    rm = ReplacementModel(adapter, transcoders)
    run = rm.run(ids)
    if graph is None:
        graph = attribute(
            rm, run, tid, cid, batch_size=batch_size, max_feature_nodes=max_feature_nodes
        )
    if graph.n_features < k:
        raise ValueError(f"the graph has {graph.n_features} active features, fewer than k={k}")
    held = None if graph.visited is None else graph.features[~graph.visited]

    def result(kind: str, nodes: Tensor) -> AblationResult:
        feats = graph.features[nodes.to(graph.features.device)]
        pred, direct = predicted_change(graph, nodes)
        res = AblationResult(
            kind,
            feats.tolist(),
            pred,
            direct,
            frozen_change(rm, run, feats, tid, cid, held=held),
            real_change(adapter, transcoders, ids, feats, tid, cid),
            replacement_change(rm, run, feats, tid, cid),
        )
        if partly_frozen:
            for attr, fp, fn in (
                ("real_frozen_attention", True, True),
                ("real_frozen_patterns", True, False),
                ("real_frozen_norms", False, True),
            ):
                ch = partly_frozen_change(
                    rm, run, feats, tid, cid, freeze_patterns=fp, freeze_norms=fn
                )
                setattr(res, attr, ch)
        if first_order:
            res.real_first_order = first_order_change(rm, run, feats, tid, cid)
            res.real_first_order_frozen = first_order_change(
                rm, run, feats, tid, cid, freeze_patterns=True, freeze_norms=True
            )
        for attr in ("replacement", *_PARTLY):
            v = getattr(res, attr)
            if v is not None and not math.isfinite(v):
                setattr(res, attr, None)
                res.diverged.append(attr)
        return res

    g = generator(seed, "graph ablation random features")
    draws = [torch.randperm(graph.n_features, generator=g)[:k] for _ in range(n_random)]
    return AblationCheck(
        prompt,
        float(graph.node_input[graph.target_index]),
        graph.n_features,
        result("top", top_features(graph, k)),
        [result("random", d) for d in draws],
    )
