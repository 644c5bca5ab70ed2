"""Write the static feature browser: an index and one page per latent, viewable from ``file://``.

Layout of the output directory::

    index.html            searchable, sortable table of latents (data/index.js)
    latents/{i}.html      one page per latent: stats, histogram (inline SVG), logit effects,
                          top and quantile-sampled contexts (data inline, drawn by latent.js);
                          attention-output coders add per-head shares and the source tokens
                          that wrote each top activation (drawn by heads.js)
    live.html             type text, see latents fire (only through ``sparsecodes serve``)
    assets/               style.css, common.js, index.js, latent.js, live.js, steer.js (package data)
    site.json             what was built from what (model, hook, tokens, sizes)

No external resources: every script and style is a relative file, data are ``<script>`` files
or inline JSON (``fetch`` of ``file://`` JSON is blocked by browsers).
"""

from __future__ import annotations

import html
import json
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparsecodes.files import write_bytes, write_json
from sparsecodes.interp import templates
from sparsecodes.interp.annotate import TokenStrings
from sparsecodes.interp.stats import FeatureStats

EXAMPLE_TEXT = "The quick brown fox jumps over the lazy dog. def main(): return 0"


@dataclass
class SiteReport:
    """Sizes and timing of a written site (bytes)."""

    path: str
    n_latents: int
    seconds: float
    total_bytes: int
    index_bytes: int
    latent_page_mean_bytes: float
    latent_page_max_bytes: int


def json_inline(obj: Any) -> str:
    """JSON safe inside a ``<script>`` element (no ``</script>`` or ``<!--`` can appear)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).replace("<", "\\u003c")


def hist_svg(counts: list[int], edges: list[float], width: int = 420, height: int = 130) -> str:
    """Inline SVG bar chart of the active bins of a histogram row (bin 0 = off is left out).

    ``counts`` ``[n_bins + 1]``, ``edges`` ``[n_bins + 1]`` log-spaced. Bar heights are
    ``log(1 + count)`` so rare strong activations stay visible; the x axis is log activation.
    """
    active = counts[1:]
    nz = [i for i, c in enumerate(active) if c > 0]
    if not nz:
        return "<p class='muted'>never active</p>"
    lo, hi = max(nz[0] - 1, 0), min(nz[-1] + 2, len(active))
    shown = active[lo:hi]
    pad_l, pad_b = 8, 18
    plot_w, plot_h = width - 2 * pad_l, height - pad_b - 6
    bw = plot_w / len(shown)
    top = math.log1p(max(shown))
    bars = []
    for j, c in enumerate(shown):
        if c == 0:
            continue
        h = plot_h * math.log1p(c) / top
        x = pad_l + j * bw
        a, b = edges[lo + j], edges[lo + j + 1]
        bars.append(
            f"<rect x='{x:.1f}' y='{6 + plot_h - h:.1f}' width='{max(bw - 1, 0.8):.1f}' "
            f"height='{h:.1f}' fill='#ea580c'><title>[{a:.3g}, {b:.3g}): {c}</title></rect>"
        )
    y = height - 4
    return (
        f"<svg class='hist' width='{width}' height='{height}' viewBox='0 0 {width} {height}' "
        f"role='img' aria-label='activation histogram'>"
        f"<line x1='{pad_l}' y1='{6 + plot_h}' x2='{width - pad_l}' y2='{6 + plot_h}' "
        f"stroke='#999'/>{''.join(bars)}"
        f"<text x='{pad_l}' y='{y}'>{edges[lo]:.3g}</text>"
        f"<text x='{width - pad_l}' y='{y}' text-anchor='end'>{edges[hi]:.3g}</text>"
        f"<text x='{width / 2:.0f}' y='{y}' text-anchor='middle'>activation (log scale; "
        f"bar height log count)</text></svg>"
    )


def _quantile_bands(order_acts: list[float], n_bands: int) -> list[tuple[int, int]]:
    """Split ``n`` examples sorted by activation (descending) into up to ``n_bands`` groups."""
    n = len(order_acts)
    if n == 0:
        return []
    n_bands = min(n_bands, n)
    cuts = [round(i * n / n_bands) for i in range(n_bands + 1)]
    return [(cuts[i], cuts[i + 1]) for i in range(n_bands) if cuts[i + 1] > cuts[i]]


class _PageStrings:
    """One page's string table: contexts of token ids -> indices into ``strings``.

    A token's display string depends on the tokens before it (a character split over several
    byte-level tokens shows on the token that completes it), so entries are strings, not ids;
    -1 (off the window) stays -1.
    """

    def __init__(self, decode: TokenStrings) -> None:
        self.decode = decode
        self.index: dict[str, int] = {}
        self.strings: list[str] = []

    def indices(self, ids: list[int]) -> list[int]:
        return [-1 if s is None else self._index(s) for s in context_strings(self.decode, ids)]

    def _index(self, s: str) -> int:
        j = self.index.get(s)
        if j is None:
            j = self.index[s] = len(self.strings)
            self.strings.append(s)
        return j


def context_strings(decode: TokenStrings, ids: list[int]) -> list[str | None]:
    """Display strings of a context ``ids`` (-1 = off the window -> None), decoded in sequence."""
    out: list[str | None] = [None] * len(ids)
    run: list[int] = []
    for k, t in enumerate([*ids, -1]):
        if t >= 0:
            run.append(k)
        elif run:
            for j, s in zip(run, decode.sequence([ids[j] for j in run]), strict=True):
                out[j] = s
            run = []
    return out


def source_rows(
    sources: tuple[list, list, list, list], i: int, j: int, strings: TokenStrings
) -> list[list[Any]]:
    """Latent ``i``'s top example ``j``: ``[[token, dfa, offset], ...]`` largest DFA first.

    ``offset`` is the source position minus the example's position (0: the token itself,
    negative: earlier); ``token`` is the source token decoded alone.
    """
    pos, ids, vals, dest = sources
    return [
        [strings(t), v, p - dest[i][j]]
        for p, t, v in zip(pos[i][j], ids[i][j], vals[i][j], strict=True)
        if p >= 0
    ]


def write_shell(
    out_dir: str | os.PathLike[str],
    title: str,
    hook: str | None,
    *,
    subtitle: str = "",
    index: bool = True,
    bench: str | None = None,
) -> int:
    """Write the pages and assets that carry no per-latent data; returns their total bytes.

    With ``index=False`` the index page says that no browser was built (``serve`` without
    ``browse``); the live page works either way. ``bench``: the URL (relative to the site) of a
    ``sparsecodes bench`` page that compares this SAE with others, linked from the index.
    """
    out = Path(out_dir)
    esc_title = html.escape(title)
    bench_link = (
        f' <a href="{html.escape(bench)}" id="bench-link">SAE comparison (sparsecodes bench)</a>'
        if bench
        else ""
    )
    index_html = (
        templates.page(
            "index.html", title=esc_title, subtitle=html.escape(subtitle), bench_link=bench_link
        )
        if index
        else templates.page("no_index.html", title=esc_title)
    )
    files = {
        "index.html": index_html,
        "live.html": templates.page(
            "live.html",
            title=esc_title,
            hook=html.escape(str(hook)),
            example=html.escape(EXAMPLE_TEXT),
        ),
        **{f"assets/{name}": templates.asset(name) for name in templates.ASSETS},
    }
    size = 0
    for name, text in files.items():
        raw = text.encode()
        write_bytes(out / name, raw)
        size += len(raw)
    return size


def write_site(
    stats: FeatureStats,
    tokenizer: Any,
    out_dir: str | os.PathLike[str],
    *,
    explanations: dict[int, dict[str, Any]] | None = None,
    title: str | None = None,
    n_bands: int = 4,
    index_tokens: int = 5,
    bench: str | None = None,
) -> SiteReport:
    """Write the browser for ``stats`` into ``out_dir`` and return its sizes.

    ``tokenizer`` decodes token ids for display; ``explanations`` maps latent ids to
    ``{"explanation": str, "score": float | None}`` (see ``read_explanations``); ``bench``: the
    URL of a bench page comparing this SAE with others (see :func:`write_shell`).
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    explanations = explanations or {}
    meta = stats.meta
    title = title or f"{meta.get('model_name') or 'model'} · {meta.get('hook_name') or 'hook'}"
    strings = TokenStrings(tokenizer)
    n_lat = stats.n_latents

    # everything as Python lists once (fast), activations rounded for compact JSON
    density = stats.density.tolist()
    fire = stats.fire_count.tolist()
    max_act = stats.max_act.tolist()
    mean_act = stats.mean_act.tolist()
    hist = stats.hist.tolist()
    edges = stats.hist_edges.tolist()

    def examples(buf: Any) -> tuple[list, list, list, list, list]:
        valid = buf.valid().numpy()
        acts = np.round(buf.acts.numpy().astype(np.float64), 4)
        ctx_acts = np.round(buf.ctx_acts.numpy().astype(np.float64), 3)
        return (
            valid.tolist(),
            acts.tolist(),
            buf.ctx_ids.tolist(),
            ctx_acts.tolist(),
            buf.window.tolist(),
        )

    top_valid, top_acts, top_ids, top_ctx, _ = examples(stats.top)
    s_valid, s_acts, s_ids, s_ctx, _ = examples(stats.samples)
    center = stats.ctx_left
    shares = None
    if stats.head_shares is not None:
        shares = np.round(stats.head_shares.numpy().astype(np.float64), 4).tolist()
    sources = None
    if stats.top.src_pos is not None:
        sources = (
            stats.top.src_pos.tolist(),
            stats.top.src_ids.tolist(),
            np.round(stats.top.src_val.numpy().astype(np.float64), 4).tolist(),
            stats.top.pos.tolist(),
        )
    logits = None
    if stats.logit_pos_ids is not None:
        logits = (
            stats.logit_pos_ids.tolist(),
            np.round(stats.logit_pos_vals.numpy().astype(np.float64), 4).tolist(),
            stats.logit_neg_ids.tolist(),
            np.round(stats.logit_neg_vals.numpy().astype(np.float64), 4).tolist(),
        )

    index_rows: list[list[Any]] = []
    page_sizes: list[int] = []
    esc_title = html.escape(title)
    for i in range(n_lat):
        table = _PageStrings(strings)

        def ex(ids: list[int], acts: list[float], act: float, table=table) -> list[Any]:
            return [table.indices(ids), acts, center, act]

        top = [
            ex(top_ids[i][j], top_ctx[i][j], top_acts[i][j])
            for j in range(len(top_valid[i]))
            if top_valid[i][j]
        ]
        samp = sorted(
            (j for j in range(len(s_valid[i])) if s_valid[i][j]),
            key=lambda j: -s_acts[i][j],
        )
        bands = []
        sorted_acts = [s_acts[i][j] for j in samp]
        for a, b in _quantile_bands(sorted_acts, n_bands):
            n_s = len(samp)
            label = (
                f"percentile {1 - b / n_s:.0%}-{1 - a / n_s:.0%} of {n_s} sampled firing tokens "
                f"(activation {sorted_acts[b - 1]:.3g} to {sorted_acts[a]:.3g})"
            )
            bands.append([label, [ex(s_ids[i][j], s_ctx[i][j], s_acts[i][j]) for j in samp[a:b]]])
        lg = None
        if logits is not None:
            lg = {
                "pos": [[strings(t), v] for t, v in zip(logits[0][i], logits[1][i], strict=True)],
                "neg": [[strings(t), v] for t, v in zip(logits[2][i], logits[3][i], strict=True)],
            }
        heads = None
        if shares is not None:
            heads = {"shares": shares[i], "sources": None}
            if sources is not None:
                heads["sources"] = [
                    source_rows(sources, i, j, strings)
                    for j in range(len(top_valid[i]))
                    if top_valid[i][j]
                ]
        e = explanations.get(i, {})
        data = {
            "id": i,
            "density": density[i],
            "fires": fire[i],
            "n_tokens": stats.n_tokens,
            "max": max_act[i],
            "mean": mean_act[i],
            "expl": e.get("explanation"),
            "score": e.get("score"),
            "strings": table.strings,
            "top": top,
            "samples": bands,
            "logits": lg,
            "heads": heads,
        }
        page = templates.page(
            "latent.html",
            id=i,
            title=esc_title,
            prev=f" <a href='{i - 1}.html'>&larr; #{i - 1}</a>" if i > 0 else "",
            next=f" <a href='{i + 1}.html'>#{i + 1} &rarr;</a>" if i + 1 < n_lat else "",
            hist_svg=hist_svg(hist[i], edges),
            no_logits="" if lg is not None else "not available for this model",
            data=json_inline(data),
        )
        raw = page.encode()
        write_bytes(out / "latents" / f"{i}.html", raw)
        page_sizes.append(len(raw))
        # the example's own token as shown in its context (alone if it completes no character)
        centers = Counter(
            table.strings[e[0][center]] or strings(top_ids[i][j][center])
            for j, e in zip(
                (j for j in range(len(top_valid[i])) if top_valid[i][j]), top, strict=True
            )
        )
        top_tokens = " ".join(
            json.dumps(s, ensure_ascii=False) for s, _ in centers.most_common(index_tokens)
        )
        promotes = (
            " ".join(json.dumps(s, ensure_ascii=False) for s, _ in lg["pos"][:index_tokens])
            if lg
            else ""
        )
        index_rows.append(
            [
                i,
                float(f"{density[i]:.4g}"),
                float(f"{max_act[i]:.4g}"),
                e.get("explanation"),
                e.get("score"),
                top_tokens,
                promotes,
            ]
        )

    index = {
        "columns": ["id", "density", "max", "expl", "score", "top", "logits"],
        "rows": index_rows,
        "meta": {**meta, "n_tokens": stats.n_tokens, "n_latents": n_lat},
    }
    index_js = ("window.SC_INDEX = " + json_inline(index) + ";\n").encode()
    write_bytes(out / "data" / "index.js", index_js)
    subtitle = (
        f"{n_lat} latents · {stats.n_tokens:,} tokens · {sum(1 for c in fire if c == 0)} dead"
    )
    shell = write_shell(out, title, meta.get("hook_name"), subtitle=subtitle, bench=bench)
    total = sum(page_sizes) + len(index_js) + shell
    report = SiteReport(
        path=str(out),
        n_latents=n_lat,
        seconds=round(time.perf_counter() - t0, 2),
        total_bytes=total,
        index_bytes=len(index_js),
        latent_page_mean_bytes=round(sum(page_sizes) / max(n_lat, 1), 1),
        latent_page_max_bytes=max(page_sizes, default=0),
    )
    write_json(
        out / "site.json",
        {"source": meta, "n_tokens": stats.n_tokens, "report": asdict(report)},
        default=str,
    )
    return report
