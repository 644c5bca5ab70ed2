"""Files of the attribution-graph tools: transcoder directories in, graph JSON out.

Transcoders come from two places, both read by :func:`load_transcoder`:

- anything :func:`sparsecodes.load` opens as a :class:`sparsecodes.transcoder.Transcoder`: a
  ``sparsecodes train --transcoder`` run directory (or its ``final/``), a ``Transcoder.save``
  directory, or a SAELens transcoder / skip-transcoder directory;
- a **dense transcoder directory** (least-squares transcoders from :func:`fit_transcoder`, quick to
  fit for a first graph), which holds ``transcoder.json`` (``{"format": "sparsecodes.dense_transcoder/1",
"in_hook": "blocks.{i}.mlp_in", "out_hook": "blocks.{i}.mlp_out", "k": int | null, "model":
str | null}``) and ``weights.safetensors`` (``W_enc [d_in, n]``, ``b_enc [n]``,
``W_dec_out [n, d_out]``, ``b_dec_out [d_out]``, optional ``W_skip [d_in, d_out]``), all in the
model's raw scale. :func:`load_transcoder` is the one reader.

The graph JSON schema is documented in docs/graphs.md; :func:`graph_json` builds it and
:func:`write_graph` writes it atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sparsecodes.files import atomic_write, write_json
from sparsecodes.graphs.attribution import AttributionGraph
from sparsecodes.graphs.prune import GraphScores, PruneResult
from sparsecodes.graphs.transcoder import DenseTranscoder, Transcoder

__all__ = [
    "GRAPH_SCHEMA",
    "find_transcoders",
    "graph_json",
    "load_transcoder",
    "open_transcoders",
    "recorded_model",
    "save_transcoder",
    "write_graph",
]

TRANSCODER_FORMAT = "sparsecodes.dense_transcoder/1"
GRAPH_SCHEMA = "sparsecodes.attribution_graph/1"


def save_transcoder(
    tc: DenseTranscoder, path: str | os.PathLike[str], *, model: str | None = None
) -> Path:
    """Write ``tc`` as a transcoder directory (see the module doc); returns the directory."""
    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in tc.tensors().items()}
    atomic_write(out / "weights.safetensors", write_path=lambda p: save_file(tensors, str(p)))
    meta = {
        "format": TRANSCODER_FORMAT,
        "in_hook": tc.in_hook,
        "out_hook": tc.out_hook,
        "k": tc.k,
        "model": model,
    }
    write_json(out / "transcoder.json", meta)
    return out


def _is_dense_dir(p: Path) -> bool:
    return (p / "transcoder.json").is_file()


def _is_trained_dir(p: Path) -> bool:
    """A directory :func:`sparsecodes.load` opens as a transcoder (ours or SAELens's)."""
    from sparsecodes.formats.saelens_transcoder import is_saelens_transcoder
    from sparsecodes.transcoder import FORMAT

    for cfg, check in (
        (p / "sparsecodes.json", lambda c: c.get("format") == FORMAT),
        (p / "final" / "sparsecodes.json", lambda c: c.get("format") == FORMAT),
        (p / "cfg.json", is_saelens_transcoder),
    ):
        if cfg.is_file():
            try:
                return bool(check(json.loads(cfg.read_text())))
            except (ValueError, AttributeError):
                return False
    return False


def load_transcoder(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Transcoder:
    """Read one transcoder (see the module doc) as an object of the :class:`Transcoder` protocol.

    A trained transcoder must read one hook and write one (a crosscoder is refused: a graph
    needs one transcoder per MLP).
    """
    from safetensors.torch import load_file

    d = Path(path)
    if not _is_dense_dir(d):
        from sparsecodes.loading import load
        from sparsecodes.transcoder import Transcoder as TrainedTranscoder

        coder = load(d, device=str(device))
        if not isinstance(coder, TrainedTranscoder):
            raise ValueError(
                f"{d} holds a sparse autoencoder, not a transcoder; train one with "
                "`sparsecodes train --transcoder IN:OUT` or fit one with fit_transcoder"
            )
        if len(coder.in_hooks) != 1 or len(coder.out_hooks) != 1:
            raise ValueError(
                f"{d} is a crosscoder ({len(coder.in_hooks)} inputs, {len(coder.out_hooks)} "
                "outputs); attribution graphs need one transcoder per MLP"
            )
        return coder  # type: ignore[return-value]
    cfg_path, w_path = d / "transcoder.json", d / "weights.safetensors"
    if not cfg_path.is_file() or not w_path.is_file():
        raise FileNotFoundError(
            f"{d} is not a transcoder directory: it needs transcoder.json and weights.safetensors "
            "(write one with sparsecodes.graphs.save_transcoder)"
        )
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("format") != TRANSCODER_FORMAT:
        raise ValueError(
            f"{cfg_path} has format {cfg.get('format')!r}; expected {TRANSCODER_FORMAT!r}"
        )
    w = load_file(str(w_path), device=str(device))
    missing = {"W_enc", "b_enc", "W_dec_out", "b_dec_out"} - set(w)
    if missing:
        raise ValueError(f"{w_path} lacks {sorted(missing)}")
    return DenseTranscoder(
        cfg["in_hook"],
        cfg["out_hook"],
        w["W_enc"],
        w["b_enc"],
        w["W_dec_out"],
        w["b_dec_out"],
        w.get("W_skip"),
        cfg.get("k"),
    )


def _r(x: float, digits: int = 6) -> float | None:
    x = float(x)
    return None if x != x else float(f"{x:.{digits}g}")


def graph_json(
    graph: AttributionGraph,
    pruned: PruneResult,
    scores: GraphScores,
    pruned_scores: GraphScores,
    tokens: Sequence[str],
    *,
    prompt: str,
    model: str,
    target_token: str,
    contrast_token: str | None = None,
    transcoders: Sequence[dict[str, Any]] = (),
    all_nodes: bool = False,
) -> dict[str, Any]:
    """The graph as a JSON-ready dict (schema ``sparsecodes.attribution_graph/1``, docs/graphs.md).

    Only kept nodes and kept edges are listed unless ``all_nodes`` (then every node, with its
    ``kept`` flag, and every nonzero edge among them).
    """
    T, L, nf = graph.n_pos, graph.n_layers, graph.n_features
    kinds = graph.kinds()
    keep = torch.ones_like(pruned.node_mask) if all_nodes else pruned.node_mask
    index = {}
    nodes = []
    infl = pruned.influence
    for i in keep.nonzero().squeeze(1).tolist():
        kind = kinds[i]
        if kind == "feature":
            layer, pos, lat = (int(v) for v in graph.features[i])
            node_id = f"F{layer}.{lat}@{pos}"
            act = _r(graph.activations[i])
        elif kind == "error":
            layer, pos = divmod(i - nf, T)
            lat, node_id, act = None, f"E{layer}@{pos}", None
        elif kind == "embedding":
            pos = i - graph.embed_slice.start
            layer, lat, node_id, act = -1, None, f"T@{pos}", None
        else:
            layer, pos, lat, node_id, act = L, T - 1, None, "target", None
        index[i] = len(nodes)
        nodes.append(
            {
                "id": node_id,
                "kind": kind,
                "layer": layer,
                "pos": pos,
                "feature": lat,
                "activation": act,
                "input": _r(graph.node_input[i]),
                "bias": _r(graph.bias[i]) if kind in ("feature", "target") else None,
                "influence": _r(infl[i]),
                "kept": bool(pruned.node_mask[i]),
            }
        )
    emask = pruned.edge_mask if not all_nodes else graph.adjacency != 0
    edges = []
    for t, s in emask.nonzero().tolist():
        if t in index and s in index:
            edges.append([index[s], index[t], _r(graph.adjacency[t, s])])
    n_edges_total = int((graph.adjacency != 0).sum())
    return {
        "schema": GRAPH_SCHEMA,
        "model": model,
        "prompt": prompt,
        "tokens": list(tokens),
        "token_ids": graph.input_ids,
        "n_layers": L,
        "target": {
            "token": target_token,
            "id": graph.target_id,
            "contrast_token": contrast_token,
            "contrast_id": graph.contrast_id,
            "position": T - 1,
            "value": _r(graph.node_input[graph.target_index]),
        },
        "transcoders": list(transcoders),
        "nodes": nodes,
        "edges": edges,
        "scores": {
            "replacement": _r(scores.replacement),
            "completeness": _r(scores.completeness),
            "pruned_replacement": _r(pruned_scores.replacement),
            "pruned_completeness": _r(pruned_scores.completeness),
        },
        "size": {
            "n_features": nf,
            "n_nodes": graph.n_nodes,
            "n_edges": n_edges_total,
            "n_nodes_kept": int(pruned.node_mask.sum()),
            "n_features_kept": int(pruned.node_mask[:nf].sum()),
            "n_edges_kept": int(pruned.edge_mask.sum()),
            "n_features_visited": nf if graph.visited is None else int(graph.visited.sum()),
        },
        "pruning": {
            "node_threshold": pruned.node_threshold,
            "edge_threshold": pruned.edge_threshold,
            "kept_influence_fraction": _r(pruned.kept_influence_fraction),
            "attribution_seconds": _r(graph.seconds, 4),
            "pruning_seconds": _r(pruned.seconds, 4),
        },
    }


def write_graph(path: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Write graph JSON ``data`` atomically to ``path``."""
    return write_json(path, data, indent=None, allow_nan=False)


def recorded_model(path: str | os.PathLike[str]) -> str | None:
    """The model a dense transcoder directory records (``transcoder.json``), or None."""
    cfg = Path(path) / "transcoder.json"
    return json.loads(cfg.read_text()).get("model") if cfg.is_file() else None


def open_transcoders(
    paths: Sequence[str | os.PathLike[str]],
    *,
    model: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[str, list[Transcoder]]:
    """``(model name, transcoders)``: every transcoder found in ``paths`` (:func:`find_transcoders`),
    each loaded once, and ``model`` or else the one model they record (``ValueError`` naming the
    fix when they record none or several)."""
    tcs: list[Transcoder] = []
    recorded: set[str] = set()
    for p in (q for d in paths for q in find_transcoders(d)):
        tc = load_transcoder(p, device=device)
        tcs.append(tc)
        source = getattr(tc, "source", None)
        name = recorded_model(p) or (source.model_name if source is not None else None)
        if name:
            recorded.add(name)
    if model is None:
        if len(recorded) != 1:
            raise ValueError(
                "give --model: the transcoders record "
                + (f"several models {sorted(recorded)}" if recorded else "no model")
            )
        model = recorded.pop()
    return model, tcs


def find_transcoders(path: str | os.PathLike[str]) -> list[Path]:
    """``[path]`` if it is a transcoder (dense, trained or SAELens), else the transcoders below
    it (any depth, checkpoints skipped; sorted)."""
    p = Path(path)
    if _is_dense_dir(p) or _is_trained_dir(p):
        return [p]
    found = sorted(
        d
        for d in p.rglob("*")
        if d.is_dir()
        and "checkpoint" not in d.name
        and d.name != "final"
        and (_is_dense_dir(d) or _is_trained_dir(d))
    )
    if not found:
        raise FileNotFoundError(
            f"{p} holds no transcoder: neither a `sparsecodes train --transcoder` run, a "
            "transcoder or SAELens transcoder directory, nor a dense transcoder directory "
            "(transcoder.json + weights.safetensors); see docs/graphs.md"
        )
    return found
