"""Atomic writes: readers see the old file or the new one, never half of one, and no temp is left."""

from __future__ import annotations

import os

import pytest

from adfm.files import write_atomic


def test_writes_text_and_bytes_with_mode(tmp_path):
    p = write_atomic(tmp_path / "a" / "x.json", '{"k": "ü"}', mode=0o640)
    assert p.read_text(encoding="utf-8") == '{"k": "ü"}'
    assert oct(p.stat().st_mode & 0o777) == oct(0o640)
    write_atomic(p, b"\x00\x01", durable=True)
    assert p.read_bytes() == b"\x00\x01"
    assert [f.name for f in p.parent.iterdir()] == ["x.json"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    p = write_atomic(tmp_path / "m.json", "old")

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(p, "new")
    assert p.read_text() == "old"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m.json"]
