"""Terminal view of an :class:`~sparsecodes.interp.annotate.Annotation` (``sparsecodes inspect``).

One line per token: position, the token (``repr``), then its strongest latents as
``#id=activation``. With ``color=True`` the token is shaded by its strongest activation (ANSI
256-colour backgrounds); off by default when the output is not a terminal.
"""

from __future__ import annotations

from sparsecodes.interp.annotate import Annotation

_SHADES = (231, 230, 229, 223, 222, 216, 215, 209, 208, 202)  # light -> strong orange


def format_annotation(ann: Annotation, *, color: bool = False, width: int = 18) -> str:
    """The annotation as text lines (see the module docstring)."""
    peak = max((row[0][1] for row in ann.latents if row), default=0.0) or 1.0
    lines = []
    for i, (tok, special, row) in enumerate(zip(ann.tokens, ann.special, ann.latents, strict=True)):
        shown = repr(tok)
        if len(shown) > width:
            shown = shown[: width - 1] + "…"
        cell = shown.ljust(width)
        if color and row:
            level = min(int(row[0][1] / peak * (len(_SHADES) - 1) + 0.5), len(_SHADES) - 1)
            cell = f"\x1b[48;5;{_SHADES[level]}m\x1b[30m{shown}\x1b[0m" + " " * (width - len(shown))
        if special:
            desc = "(special, not encoded)"
        elif row:
            desc = "  ".join(f"#{j}={a:.3g}" for j, a in row)
        else:
            desc = "-"
        lines.append(f"{i:4d}  {cell}  {desc}")
    return "\n".join(lines)


def latent_summary(ann: Annotation, top: int = 10) -> str:
    """The latents with the largest activation anywhere in the text, one per line."""
    best: dict[int, tuple[float, int]] = {}
    for i, row in enumerate(ann.latents):
        for j, a in row:
            if j not in best or a > best[j][0]:
                best[j] = (a, i)
    ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:top]
    return "\n".join(f"#{j:<6d} max {a:.3g} at token {i} {ann.tokens[i]!r}" for j, (a, i) in ranked)
