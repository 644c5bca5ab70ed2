"""A ground-truth circuit task: a model, labelled prompts, and the set of heads in the circuit.

Every prompt carries its label in a separate tensor (never inferred from array position): the
positives are prompts on which the circuit produces the answer, the negatives are matched prompts
on which it cannot. Extraction returns per-head activations in the dict form the circuit scorer
takes: ``{(layer, head): Tensor [n_prompts, d_head]}``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from sparsecodes.circuits.groundtruth.model import Head, HeadTransformer, mean_ablation

View = Literal["final", "mean"]


@dataclass
class GroundTruthTask:
    """A model with a circuit known by construction (or by exhaustive ablation).

    Attributes:
        name: short identifier.
        model: the model.
        ids: prompts ``[n, T]`` int64 (positives and negatives interleaved in pairs).
        labels: ``[n]`` bool, True = positive.
        answers: ``[n]`` int64 answer class at ``readout`` for positives (-1 for negatives).
        circuit: the ground-truth heads.
        readout: the position whose prediction is the answer (default: the last).
        key_mask: optional ``[n, T]`` bool (False = padding).
        notes: how the ground truth was established.
    """

    name: str
    model: HeadTransformer
    ids: Tensor
    labels: Tensor
    answers: Tensor
    circuit: frozenset[Head]
    readout: int = -1
    key_mask: Tensor | None = None
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.ids.shape[0]
        if self.labels.shape != (n,) or self.answers.shape != (n,):
            raise ValueError(
                f"labels and answers must have shape [n_prompts] = [{n}], got "
                f"{tuple(self.labels.shape)} and {tuple(self.answers.shape)}"
            )
        bad = set(self.circuit) - set(self.model.heads)
        if bad:
            raise ValueError(f"circuit names heads {sorted(bad)} that the model does not have")

    @property
    def heads(self) -> list[Head]:
        return self.model.heads

    @property
    def positives(self) -> Tensor:
        return self.ids[self.labels]

    @property
    def negatives(self) -> Tensor:
        return self.ids[~self.labels]

    def truth_vector(self, heads: list[Head] | None = None) -> Tensor:
        """``[n_heads_total]`` bool, True for heads in the circuit (order of ``heads``)."""
        heads = heads or self.heads
        return torch.tensor([h in self.circuit for h in heads])


@torch.no_grad()
def head_activations(
    model: HeadTransformer,
    ids: Tensor,
    *,
    view: View = "final",
    position: int = -1,
    key_mask: Tensor | None = None,
) -> dict[Head, Tensor]:
    """Per-head outputs ``{(layer, head): [n, d_head]}`` for prompts ``ids`` ``[n, T]``.

    ``view="final"``: the head's output at ``position``; ``view="mean"``: the mean over the
    (unpadded) positions.
    """
    if view not in ("final", "mean"):
        raise ValueError(f"view must be 'final' or 'mean', got {view!r}")
    out = model.run(ids, key_mask=key_mask)
    acts: dict[Head, Tensor] = {}
    for layer, z in enumerate(out.heads):  # [B, T, H, dh]
        if view == "final":
            sel = z[:, position]
        else:
            w = torch.ones(z.shape[:2], dtype=z.dtype) if key_mask is None else key_mask.to(z.dtype)
            sel = (z * w[:, :, None, None]).sum(1) / w.sum(1)[:, None, None]
        for h in range(model.n_heads):
            acts[(layer, h)] = sel[:, h].clone()
    return acts


def task_activations(
    task: GroundTruthTask, *, view: View = "final"
) -> tuple[dict[Head, Tensor], dict[Head, Tensor]]:
    """``(positive, negative)`` head activations of ``task`` (labels from ``task.labels``)."""
    pos = task.labels
    km = task.key_mask
    a_pos = head_activations(
        task.model,
        task.ids[pos],
        view=view,
        position=task.readout,
        key_mask=None if km is None else km[pos],
    )
    a_neg = head_activations(
        task.model,
        task.ids[~pos],
        view=view,
        position=task.readout,
        key_mask=None if km is None else km[~pos],
    )
    return a_pos, a_neg


@torch.no_grad()
def accuracy(
    model: HeadTransformer,
    ids: Tensor,
    answers: Tensor,
    *,
    readout: int = -1,
    head_edits: dict | None = None,
    key_mask: Tensor | None = None,
) -> float:
    """Fraction of prompts whose argmax prediction at ``readout`` equals ``answers``."""
    logits = model.run(ids, head_edits=head_edits, key_mask=key_mask).logits[:, readout]
    return float((logits.argmax(-1) == answers).float().mean())


@torch.no_grad()
def mean_head_outputs(model: HeadTransformer, ids: Tensor) -> dict[Head, Tensor]:
    """Per-position mean output of each head over ``ids`` ``[n, T]``: ``{head: [T, d_head]}``."""
    out = model.run(ids)
    return {
        (layer, h): z[:, :, h].mean(0)
        for layer, z in enumerate(out.heads)
        for h in range(z.shape[2])
    }


@dataclass
class AblationResult:
    """Accuracy of the positives with heads mean-ablated.

    ``clean``: no ablation; ``single[h]``; ``pairs[(h, g)]``; ``circuit``: heads selected by
    the rule in :func:`exhaustive_ablation`; ``threshold``: the accuracy below which an ablation
    counts as destroying the behaviour.
    """

    clean: float
    chance: float
    threshold: float
    single: dict[Head, float]
    pairs: dict[tuple[Head, Head], float]
    circuit: frozenset[Head]


def exhaustive_ablation(
    model: HeadTransformer,
    ids: Tensor,
    answers: Tensor,
    *,
    reference_ids: Tensor,
    chance: float,
    readout: int = -1,
    pairs: bool = True,
    fraction: float = 0.5,
) -> AblationResult:
    """Mean-ablate every head and every head pair on the positives ``ids`` ``[n, T]``.

    Each ablated head's output is replaced by its per-position mean over ``reference_ids``
    (prompts from the training distribution). Rule, fixed before any circuit score is seen: the
    behaviour is *destroyed* when accuracy falls below ``threshold = chance + fraction * (clean -
    chance)``. A head is in the circuit when its single ablation destroys the behaviour, or when
    it is in a pair whose joint ablation destroys it while neither single ablation does
    (redundant heads that back each other up).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    means = mean_head_outputs(model, reference_ids)
    clean = accuracy(model, ids, answers, readout=readout)
    threshold = chance + fraction * (clean - chance)
    single = {
        h: accuracy(model, ids, answers, readout=readout, head_edits={h: mean_ablation(means[h])})
        for h in model.heads
    }
    circuit = {h for h, a in single.items() if a < threshold}
    pair_acc: dict[tuple[Head, Head], float] = {}
    if pairs:
        for a, b in itertools.combinations(model.heads, 2):
            edits = {a: mean_ablation(means[a]), b: mean_ablation(means[b])}
            acc = accuracy(model, ids, answers, readout=readout, head_edits=edits)
            pair_acc[(a, b)] = acc
            if acc < threshold and single[a] >= threshold and single[b] >= threshold:
                circuit |= {a, b}
    return AblationResult(clean, chance, threshold, single, pair_acc, frozenset(circuit))


def label_separation(
    head_acts_pos: dict[Head, Tensor], head_acts_neg: dict[Head, Tensor]
) -> dict[Head, float]:
    """How much each head's output depends on the label: ``|mean_pos - mean_neg|`` over the mean
    within-class spread (``0.5 * (|std_pos| + |std_neg|)``, norms over ``d_head``).

    A head near 0 carries no label information at the scored view; no contrast of its codes can
    flag it, whatever its causal role. Inputs: ``{(layer, head): [n, d_head]}``.
    """
    out: dict[Head, float] = {}
    for h, p in head_acts_pos.items():
        n = head_acts_neg[h]
        spread = 0.5 * (p.std(0).norm() + n.std(0).norm())
        out[h] = float((p.mean(0) - n.mean(0)).norm() / spread.clamp_min(1e-12))
    return out
