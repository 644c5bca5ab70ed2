"""The graph page of the static browser: ``graph.html`` plus its assets, viewable from ``file://``.

Written next to a feature browser (``sparsecodes browse`` output) it shares its ``assets/``; its
feature nodes link to ``latents/{i}.html`` pages when the graph JSON gives them an ``href``.

A feature browser's index lists the graph pages registered with it in ``data/graphs.js``
(``window.SC_GRAPHS = [{"href", "title"}, ...]``, ``href`` relative to the site):
:func:`write_graph_page` registers the page with the site it is written into (a directory with
``data/index.js``) and with any ``sites`` given.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sparsecodes.files import write_bytes
from sparsecodes.interp import templates
from sparsecodes.interp.site import json_inline

__all__ = ["register_graph", "write_graph_page"]

_PREFIX = "window.SC_GRAPHS = "


def _title(data: dict[str, Any]) -> str:
    contrast = data["target"].get("contrast_token")
    versus = f" - {contrast!r}" if contrast is not None else ""
    return f"{data.get('model', '')}: {data.get('prompt', '')!r} -> {data['target']['token']!r}{versus}"


def register_graph(site: str | os.PathLike[str], page: str | os.PathLike[str], title: str) -> Path:
    """Add (or update) the graph page ``page`` in the list of feature-browser site ``site``
    (``site/data/graphs.js``, written atomically); returns that file."""
    site_dir = Path(site)
    if not (site_dir / "data" / "index.js").is_file():
        raise FileNotFoundError(
            f"{site_dir} is not a feature browser site (no data/index.js); build one with "
            "`sparsecodes browse`"
        )
    href = os.path.relpath(Path(page), site_dir).replace(os.sep, "/")
    path = site_dir / "data" / "graphs.js"
    entries: list[dict[str, str]] = []
    if path.is_file():
        text = path.read_text(encoding="utf-8").strip()
        if text.startswith(_PREFIX):
            try:
                entries = list(json.loads(text[len(_PREFIX) :].rstrip(";")))
            except ValueError:
                entries = []  # unreadable: rewritten with this page only
    entries = [e for e in entries if e.get("href") != href] + [{"href": href, "title": title}]
    return write_bytes(path, (_PREFIX + json_inline(entries) + ";\n").encode())


def write_graph_page(
    data: dict[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    name: str = "graph.html",
    sites: Sequence[str | os.PathLike[str]] = (),
) -> Path:
    """Write the graph page for graph JSON ``data`` into ``out_dir``; returns the page's path.

    The page is listed in the index of ``out_dir`` if it is a feature browser site, and in the
    index of each site in ``sites`` (:func:`register_graph`)."""
    out = Path(out_dir)
    title = _title(data)
    page = templates.page("graph.html", title=html.escape(title), data=json_inline(data))
    for asset in ("style.css", "common.js", "graph.js"):
        write_bytes(out / "assets" / asset, templates.asset(asset).encode())
    path = write_bytes(out / name, page.encode())
    targets = [Path(s) for s in sites]
    if (out / "data" / "index.js").is_file():
        targets.append(out)
    for site in dict.fromkeys(t.resolve() for t in targets):
        register_graph(site, path.resolve(), title)
    return path
