"""emseg/core/atomic_io.py: readers see the old file or the new one, never a partial one."""

from __future__ import annotations

import os

import pytest

from emseg.core import atomic_io
from emseg.core.atomic_io import atomic_write, atomic_write_text


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_writes_through_a_temporary_name_then_renames(tmp_path):
    target = tmp_path / "deep" / "er" / "out.bin"  # parent folders are created
    seen = {}

    def write(p):
        seen["tmp"] = p
        assert not target.exists()  # the target appears only at the rename
        p.write_bytes(b"abc")

    assert atomic_write(target, write) == target
    assert target.read_bytes() == b"abc"
    assert seen["tmp"].parent == target.parent and seen["tmp"].name.startswith(".out.bin.")
    assert not seen["tmp"].exists() and leftovers(target.parent) == []


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "results.csv"
    atomic_write_text(target, "old\n")

    def half_then_fail(p):
        p.write_text("new, but only ha")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old\n" and leftovers(tmp_path) == []

    def interrupted(p):
        p.write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert target.read_text() == "old\n" and leftovers(tmp_path) == []


def test_text_is_written_verbatim_and_replaces(tmp_path):
    target = tmp_path / "a.tsv"
    atomic_write_text(target, "x\ty\r\nz\n")
    assert target.read_bytes() == b"x\ty\r\nz\n"  # no newline translation
    atomic_write_text(target, "é\n")
    assert target.read_text(encoding="utf-8") == "é\n"


def test_fsync_flushes_the_temporary_file_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic_io.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(atomic_io.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    atomic_write_text(tmp_path / "f.txt", "data", fsync=True)
    assert events == ["fsync", "replace"]
    events.clear()
    atomic_write_text(tmp_path / "g.txt", "data")
    assert events == ["replace"]


def test_atomic_write_image_encodes_by_extension_and_leaves_nothing_on_failure(tmp_path):
    import cv2
    import numpy as np

    from emseg.core.atomic_io import atomic_write_image

    img = (np.arange(12 * 20) % 256).astype(np.uint8).reshape(12, 20)
    atomic_write_image(tmp_path / "m.png", img, (cv2.IMWRITE_PNG_COMPRESSION, 1))
    assert np.array_equal(cv2.imread(str(tmp_path / "m.png"), cv2.IMREAD_UNCHANGED), img)
    with pytest.raises((OSError, cv2.error)):
        atomic_write_image(tmp_path / "m.unknownext", img)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.png"]
