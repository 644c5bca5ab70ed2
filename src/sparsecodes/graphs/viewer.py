"""The graph page of the static browser: ``graph.html`` plus its assets, viewable from ``file://``.

Written next to a feature browser (``sparsecodes browse`` output) it shares its ``assets/``; its
feature nodes link to ``latents/{i}.html`` pages when the graph JSON gives them an ``href``.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from sparsecodes.files import write_bytes
from sparsecodes.interp import templates
from sparsecodes.interp.site import json_inline

__all__ = ["write_graph_page"]


def write_graph_page(
    data: dict[str, Any], out_dir: str | os.PathLike[str], *, name: str = "graph.html"
) -> Path:
    """Write the graph page for graph JSON ``data`` into ``out_dir``; returns the page's path."""
    out = Path(out_dir)
    title = f"{data.get('model', '')}: {data.get('prompt', '')!r} -> {data['target']['token']!r}"
    page = templates.page("graph.html", title=html.escape(title), data=json_inline(data))
    for asset in ("style.css", "common.js", "graph.js"):
        write_bytes(out / "assets" / asset, templates.asset(asset).encode())
    return write_bytes(out / name, page.encode())
