"""sparsecodes.files: the one atomic writer."""

from __future__ import annotations

import json
import os
import stat

import pytest

from sparsecodes import files


def _leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_interrupted_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.bin"
    files.write_bytes(target, b"old content")

    def half_then_fail(f):
        f.write(b"new cont")
        raise KeyboardInterrupt  # an interrupt in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old content"
    assert _leftovers(tmp_path) == []


def test_write_path_variant_is_atomic_too(tmp_path):
    target = tmp_path / "w.txt"
    files.write_text(target, "before")

    def fail_after_writing(tmp):
        with open(tmp, "w") as f:
            f.write("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.atomic_write(target, write_path=fail_after_writing)
    assert target.read_text() == "before"
    assert _leftovers(tmp_path) == []


def test_unserialisable_json_leaves_the_file_untouched(tmp_path):
    target = tmp_path / "r.json"
    files.write_json(target, {"a": 1})
    with pytest.raises(TypeError):
        files.write_json(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}
    with pytest.raises(ValueError):
        files.write_json(target, {"a": float("nan")}, allow_nan=False)
    assert json.loads(target.read_text()) == {"a": 1}


def test_written_file_mode_follows_the_umask_like_open(tmp_path):
    files.write_text(tmp_path / "a.txt", "x")
    (tmp_path / "b.txt").write_text("x")  # a plain open(): the reference
    mode_a = stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode)
    mode_b = stat.S_IMODE(os.stat(tmp_path / "b.txt").st_mode)
    assert mode_a == mode_b


def test_atomic_write_needs_exactly_one_writer(tmp_path):
    with pytest.raises(TypeError, match="exactly one"):
        files.atomic_write(tmp_path / "x")
    with pytest.raises(TypeError, match="exactly one"):
        files.atomic_write(tmp_path / "x", lambda f: None, write_path=lambda t: None)
