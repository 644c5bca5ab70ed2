"""The feature browser's HTML, CSS and JavaScript, read from package data (``interp/static/``).

Everything works from ``file://``: data reach the pages as ``<script>`` files or inline JSON
(``fetch`` of local JSON is blocked there), and all scripts and styles are relative files.
Only ``live.html`` needs ``sparsecodes serve`` (it POSTs text to ``/api/annotate``).

The pages are ``string.Template`` files (``${name}`` placeholders, filled with HTML-escaped text
by :mod:`sparsecodes.interp.site`). The scripts build the DOM with ``textContent`` and
``setAttribute`` only (``common.js``), so no string from the data is ever parsed as HTML.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from string import Template

__all__ = ["ASSETS", "asset", "page"]

ASSETS: tuple[str, ...] = (
    "style.css",
    "common.js",
    "index.js",
    "latent.js",
    "graph.js",
    "heads.js",
    "live.js",
    "steer.js",
)
"""The files copied verbatim into a site's ``assets/`` directory."""

PAGES: tuple[str, ...] = ("index.html", "latent.html", "live.html", "no_index.html", "graph.html")


@cache
def asset(name: str) -> str:
    """The text of the packaged file ``static/{name}`` (a page template or an asset)."""
    if name not in ASSETS and name not in PAGES:
        raise ValueError(f"no browser file {name!r}; known: {', '.join(ASSETS + PAGES)}")
    return resources.files("sparsecodes.interp").joinpath("static", name).read_text("utf-8")


def page(name: str, **values: object) -> str:
    """The page template ``name`` filled with ``values`` (already HTML-escaped where text)."""
    if name not in PAGES:
        raise ValueError(f"no page template {name!r}; known: {', '.join(PAGES)}")
    return Template(asset(name)).substitute(values)
