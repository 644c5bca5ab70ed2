"""Atomic file writes: the one place in sparsecodes that writes a file safely.

Every writer goes through :func:`atomic_write`: the content is written to a temporary file in
the same directory, optionally fsynced, then renamed over the target (``os.replace``), so a reader
sees the old file or the new one, never a half-written one, even if the writer is killed.
``durable=True`` also fsyncs the directory after the rename (power-loss safety).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_write",
    "fsync_dir",
    "write_bytes",
    "write_figure",
    "write_json",
    "write_text",
]


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename inside ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: read once at import: os.umask can only be read by setting it, which is not thread-safe
_UMASK = _read_umask()


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[IO[bytes]], Any] | None = None,
    *,
    write_path: Callable[[str], Any] | None = None,
    durable: bool = False,
) -> Path:
    """Write ``path`` atomically; returns it.

    Give exactly one of ``write(f)`` (writes into an open binary file) or ``write_path(tmp)``
    (writes a file at the temporary path itself, for libraries that take a file name, such as
    ``safetensors.torch.save_file``). The parent directory is created. On any error (or
    interrupt) the temporary file is removed and ``path`` is left as it was.
    """
    if (write is None) == (write_path is None):
        raise TypeError("atomic_write needs exactly one of write= or write_path=")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a plain open() honours the umask
        if write is not None:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                if durable:
                    os.fsync(f.fileno())
        else:
            os.close(fd)
            write_path(tmp)  # type: ignore[misc]
            if durable:
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def write_bytes(path: str | os.PathLike[str], data: bytes, *, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data), durable=durable)


def write_text(path: str | os.PathLike[str], text: str, *, durable: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"), durable=durable)


def write_json(
    path: str | os.PathLike[str],
    obj: Any,
    *,
    indent: int | None = 2,
    durable: bool = False,
    **dumps_kwargs: Any,
) -> Path:
    """Write ``obj`` as JSON (UTF-8, trailing newline) to ``path`` atomically.

    ``dumps_kwargs`` go to :func:`json.dumps` (e.g. ``default=str``, ``allow_nan=False``).
    The object is serialised before anything is written, so an unserialisable object leaves
    ``path`` untouched.
    """
    text = json.dumps(obj, indent=indent, **dumps_kwargs) + "\n"
    return write_text(path, text, durable=durable)


def write_figure(path: str | os.PathLike[str], fig: Any, *, dpi: int = 120) -> Path:
    """Save a matplotlib ``fig`` to ``path`` atomically; the format follows the suffix (``.png``)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    return atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi))


def cache_root() -> Path | None:
    """Where sparsecodes keeps what it builds once per machine (converted embedded models, the
    compiled CPU kernels): ``$SPARSECODES_CACHE`` (``0``/``off`` disables it), else ``$XDG_CACHE_HOME/sparsecodes`` or ``~/.cache/sparsecodes``."""
    v = os.environ.get("SPARSECODES_CACHE")
    if v is not None and v.strip().lower() in ("", "0", "off", "false", "no"):
        return None
    if v:
        return Path(v)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sparsecodes"
